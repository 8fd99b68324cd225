"""Cascade's own reading of RS256 JWTs, held to PyJWT's verdict on any token."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.hashes import SHA256
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cascade.api.auth import TokenRefused, read_token
from tests.conftest import rsa_key

KEY = rsa_key()
OTHER_KEY = rsa_key()
NOW = int(time.time())
CLAIMS = {"application_id": str(uuid.uuid4()), "iat": NOW, "jti": "j-1", "exp": NOW + 900}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(header: dict[str, Any], claims: dict[str, Any], *, key: Any = KEY) -> str:
    """A compact JWS of these header and claims, RS256-signed with ``key``."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), PKCS1v15(), SHA256())
    return f"{signing_input}.{_b64(signature)}"


def ours(token: str) -> dict[str, Any] | None:
    """The claims as the accept path reads and verifies them, or None when refused."""
    try:
        read = read_token(token)
        KEY.public_key().verify(read.signature, read.signed, PKCS1v15(), SHA256())
    except (TokenRefused, InvalidSignature):
        return None
    return read.claims


def pyjwts(token: str) -> dict[str, Any] | None:
    """The claims as ``jwt.decode`` gives them (time claims left to the caller, as the accept
    path leaves them to ``_check_claims``), or None when it refuses the token."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            KEY.public_key(),
            algorithms=["RS256"],
            options={"verify_iat": False, "verify_exp": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        return None
    return claims


def stricter_on_purpose(token: str) -> bool:
    """Whether the token is one Cascade refuses and PyJWT may accept: padded segments,
    ``crit``/``b64`` headers, an empty ``aud``."""
    if "=" in token:
        return True
    header_segment, payload_segment = token.split(".")[:2]
    header = json.loads(base64.urlsafe_b64decode(header_segment + "=="))
    payload = json.loads(base64.urlsafe_b64decode(payload_segment + "=="))
    return bool({"crit", "b64"} & set(header)) or "aud" in payload


headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "RS256", "RS256", "HS256", "none", "RS512", "rs256", ""])},
    optional={
        "typ": st.sampled_from(["JWT", "jwt", 3]),
        "kid": st.one_of(st.text(max_size=5), st.integers()),
        "crit": st.lists(st.sampled_from(["b64", "exp"]), max_size=2),
        "b64": st.booleans(),
    },
)
claims = st.fixed_dictionaries(
    {},
    optional={
        "application_id": st.one_of(st.just(CLAIMS["application_id"]), st.integers()),
        "iat": st.one_of(st.just(NOW), st.floats(allow_nan=False), st.text(max_size=3)),
        "jti": st.one_of(st.just("j-1"), st.just(""), st.integers()),
        "exp": st.integers(),
        "aud": st.one_of(st.just(""), st.text(min_size=1, max_size=5), st.lists(st.text())),
        "sub": st.one_of(st.text(max_size=5), st.integers()),
        "iss": st.text(max_size=5),
    },
)


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """A signed token, sometimes changed after signing the way an attacker or a careless
    library would change it."""
    token = _token(draw(headers), draw(claims), key=draw(st.sampled_from([KEY, KEY, OTHER_KEY])))
    change = draw(st.sampled_from(["none", "none", "pad", "flip", "insert", "drop", "swap"]))
    segments = token.split(".")
    which = draw(st.integers(0, 2))
    if change == "pad":
        segments[which] += "=" * draw(st.integers(1, 3))
    elif change == "flip":  # the last character's unused bits, or any character
        at = draw(st.integers(-1, len(segments[which]) - 1))
        replacement = draw(st.sampled_from("AQgwBCRhx-_+/!.~é"))
        segments[which] = segments[which][:at] + replacement + segments[which][at:][1:]
    elif change == "insert":
        at = draw(st.integers(0, len(segments[which])))
        segments[which] = segments[which][:at] + draw(st.text(max_size=2)) + segments[which][at:]
    elif change == "drop":
        del segments[which]
    elif change == "swap":  # another token's signature: the alg/key confusion kind
        segments[2] = _token({"alg": "RS256"}, CLAIMS).split(".")[2]
    return ".".join(segments)


@settings(max_examples=400, deadline=None)
@given(tokens())
@example(_token({"alg": "RS256", "typ": "JWT"}, CLAIMS))
@example(_token({"alg": "RS256", "crit": ["b64"], "b64": True}, CLAIMS))
@example(_token({"alg": "RS256"}, {**CLAIMS, "aud": ""}))
def test_a_token_is_accepted_as_pyjwt_accepts_it(token: str) -> None:
    """Any token Cascade accepts, PyJWT accepts with the same claims; any PyJWT accepts,
    Cascade accepts unless it is of the kinds refused on purpose."""
    mine = ours(token)
    theirs = pyjwts(token)
    if mine is not None:
        assert theirs == mine
    elif theirs is not None:
        assert stricter_on_purpose(token), token


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (_token({"alg": "RS256"}, CLAIMS) + "=", "not three base64url segments"),
        ("a.b", "not three base64url segments"),
        ("eyJhbGciOiJSUzI1NiJ9x.e30.c2ln", "the header is not base64url"),
        # "eyJ9" and "eyJ8" decode to the same bytes: only the canonical text is taken
        (f"{_b64(b'{}')[:-1]}9.e30.c2ln", "the header is not in canonical base64url"),
        (f"{_b64(b'[1]')}.e30.c2ln", "the header is not a JSON object"),
        (f"{_b64(b'{')}.e30.c2ln", "the header is not JSON"),
        (f"{_b64(b'{}')}.e30.c2ln", "the alg is not RS256"),
        (_token({"alg": "none"}, CLAIMS), "the alg is not RS256"),
        (_token({"alg": "HS256"}, CLAIMS), "the alg is not RS256"),
        (_token({"alg": "RS256", "crit": ["exp"]}, CLAIMS), "an unsupported crit or b64 header"),
        (_token({"alg": "RS256", "kid": 7}, CLAIMS), "kid is not a string"),
        (_token({"alg": "RS256"}, {**CLAIMS, "aud": "x"}), "an aud claim, which nothing"),
        (_token({"alg": "RS256"}, {**CLAIMS, "sub": 7}), "sub is not a string"),
        (_token({"alg": "RS256"}, {**CLAIMS, "jti": 0}), "jti is not a string"),
    ],
)
def test_a_malformed_token_is_refused_saying_why(token: str, reason: str) -> None:
    """Each kind of malformed token is refused before any key is used, with a fixed reason."""
    with pytest.raises(TokenRefused, match=reason):
        read_token(token)
