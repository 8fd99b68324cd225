"""Callback signatures (Meta's X-Hub-Signature-256, Viber's X-Viber-Content-Signature) and the
handshake's verify token."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from cascade.channels.intake.signatures import (
    hub_signature_valid,
    verify_token_matches,
    viber_signature_valid,
)

BODY = b'{"object":"page","entry":[{"id":"1","messaging":[]}]}'
SECRET = "app-secret"


def hex_mac(key: str, body: bytes = BODY) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``key``."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


class TestHubSignature:
    """Meta's ``sha256=<hex>`` over the raw body with the app secret."""

    def test_the_platforms_signature_verifies(self) -> None:
        """The signature Meta sends, in lower or upper case hex, verifies."""
        assert hub_signature_valid(BODY, f"sha256={hex_mac(SECRET)}", SECRET)
        assert hub_signature_valid(BODY, f"SHA256={hex_mac(SECRET).upper()}", SECRET)

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "sha256=",
            hex_mac(SECRET),  # no scheme
            f"sha1={hex_mac(SECRET)}",
            f"sha256={hex_mac('another-secret')}",
            f"sha256={hex_mac(SECRET, BODY + b' ')}",
            f"sha256={hex_mac(SECRET)[:-1]}",
            "sha256=\u00e9\u00e9",
        ],
        ids=[
            "none",
            "empty",
            "no-digest",
            "no-scheme",
            "sha1",
            "wrong-key",
            "other-body",
            "short",
            "latin-1",
        ],
    )
    def test_anything_else_is_refused(self, header: str | None) -> None:
        """A missing, malformed or forged header, or one for other bytes, does not verify."""
        assert not hub_signature_valid(BODY, header, SECRET)

    def test_the_raw_bytes_are_signed_not_the_json(self) -> None:
        """The same JSON written differently is other bytes: its signature does not verify
        the body."""
        spaced = b'{"object": "page", "entry": [{"id": "1", "messaging": []}]}'
        assert not hub_signature_valid(BODY, f"sha256={hex_mac(SECRET, spaced)}", SECRET)

    def test_an_empty_secret_verifies_nothing(self) -> None:
        """A link without an app secret cannot vouch for a body, even one signed with ''."""
        assert not hub_signature_valid(BODY, f"sha256={hex_mac('')}", "")


class TestViberSignature:
    """Viber's bare hex HMAC keyed with the bot's auth token."""

    def test_the_platforms_signature_verifies(self) -> None:
        """The bare hex digest under the auth token verifies."""
        assert viber_signature_valid(BODY, hex_mac("token"), "token")

    @pytest.mark.parametrize(
        "header", [None, "", f"sha256={hex_mac('token')}", hex_mac("other-token")]
    )
    def test_anything_else_is_refused(self, header: str | None) -> None:
        """Missing, prefixed or keyed with another token, it does not verify."""
        assert not viber_signature_valid(BODY, header, "token")


class TestVerifyToken:
    """The handshake's ``hub.verify_token``."""

    def test_matches_any_of_the_tokens(self) -> None:
        """The token given matches when it equals one of the links' tokens."""
        assert verify_token_matches("second", ["first", "second"])

    @pytest.mark.parametrize("given", [None, "", "secon", "second ", "SECOND"])
    def test_anything_else_does_not(self, given: str | None) -> None:
        """No token, a prefix, extra blanks or another case do not match."""
        assert not verify_token_matches(given, ["first", "second"])

    def test_empty_tokens_match_nothing(self) -> None:
        """A link without a verify token is not matched by an empty one."""
        assert not verify_token_matches("", ["", ""])
        assert not verify_token_matches("x", [])
