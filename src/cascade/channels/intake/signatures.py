"""Callback signatures and the webhook handshake token, checked in constant time.

- Meta (Messenger and WhatsApp) signs each callback with the app secret:
  ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``.
- Viber signs with the bot's auth token, bare hex and no prefix:
  ``X-Viber-Content-Signature: <hex HMAC-SHA256(auth token, raw body)>``.
- Meta's subscription handshake sends back the ``hub.verify_token`` the operator chose.

Each check is over the raw bytes received (never a re-serialised body: Meta signs its own
escaping of the payload) and compares with :func:`hmac.compare_digest`, so how long a refusal
takes says nothing about how close a forgery came. A header with characters that cannot be
hex is simply not equal.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

#: the scheme Meta names in X-Hub-Signature-256
_HUB_SCHEME = "sha256="


def _digest(key: str, body: bytes) -> bytes:
    """The lowercase hex HMAC-SHA256 of ``body`` under ``key``, as ASCII bytes."""
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest().encode()


def _given(text: str) -> bytes:
    """A header value as bytes to compare (Starlette decodes headers as Latin-1, so every
    value encodes back), hex digits in lowercase."""
    return text.strip().lower().encode("latin-1", "replace")


def hub_signature_valid(body: bytes, header: str | None, app_secret: str) -> bool:
    """Whether ``header`` (X-Hub-Signature-256) signs ``body`` with ``app_secret``."""
    if not header or not app_secret:
        return False
    value = header.strip()
    if value[: len(_HUB_SCHEME)].lower() != _HUB_SCHEME:
        return False
    return hmac.compare_digest(_digest(app_secret, body), _given(value[len(_HUB_SCHEME) :]))


def viber_signature_valid(body: bytes, header: str | None, auth_token: str) -> bool:
    """Whether ``header`` (X-Viber-Content-Signature) signs ``body`` with ``auth_token``."""
    if not header or not auth_token:
        return False
    return hmac.compare_digest(_digest(auth_token, body), _given(header))


def verify_token_matches(given: str | None, tokens: Iterable[str]) -> bool:
    """Whether the handshake's ``hub.verify_token`` equals one of ``tokens``; every token is
    compared (no early exit), each in constant time."""
    if not given:
        return False
    wanted = given.encode("utf-8", "surrogateescape")
    matched = False
    for token in tokens:
        if token:
            matched |= hmac.compare_digest(token.encode("utf-8", "surrogateescape"), wanted)
    return matched
