"""Signed webhooks, as Nexmo signs them: ``Authorization: Bearer <JWT>``, HS256 with the
account's signature secret, claims ``iat, jti, iss, payload_hash, api_key, application_id``,
plus Cascade's ``delivery_id`` (the webhook's id for deduplication, the same on every attempt,
so that it is covered by the signature; ``jti`` stays fresh per token, as receivers that
reject a reused ``jti`` expect).

``payload_hash`` is the SHA-256 hex digest of the exact body bytes sent, so a receiver can
check the body was not altered; ``iat`` is whole seconds and never ahead of our clock (a
receiver that rejects tokens "issued in the future" must never see one).

The token is put together here rather than by ``jwt.encode``: an HS256 JWS with a fixed header
is three base64url parts and one HMAC, and PyJWT's generality (header merging, key-type checks,
``json.dumps`` twice) costs about 50 µs per webhook against 11 µs here, at two webhooks per
message. The tests verify every token with PyJWT and ``vonage_jwt``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import uuid

import msgspec

ISSUER = "Vonage"

_encode = msgspec.json.Encoder().encode


def _base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_HEADER = _base64url(b'{"alg":"HS256","typ":"JWT"}')


def sign(
    body: bytes,
    *,
    secret: str,
    api_key: str,
    application_id: str | None,
    now: float,
    delivery_id: str | None = None,
) -> str:
    """The bearer token for one webhook body (with its ``delivery_id`` claim when given)."""
    claims: dict[str, object] = {
        "iat": math.floor(now),
        "jti": str(uuid.uuid4()),
        "iss": ISSUER,
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": api_key,
    }
    if application_id is not None:
        claims["application_id"] = application_id
    if delivery_id is not None:
        claims["delivery_id"] = delivery_id
    signing_input = _HEADER + b"." + _base64url(_encode(claims))
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _base64url(signature)).decode("ascii")
