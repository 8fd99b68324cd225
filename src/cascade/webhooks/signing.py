"""Signed webhooks, as Nexmo signs them: ``Authorization: Bearer <JWT>``, HS256 with the
account's signature secret, claims ``iat, jti, iss, payload_hash, api_key, application_id``.

``payload_hash`` is the SHA-256 hex digest of the exact body bytes sent, so a receiver can
check the body was not altered; ``iat`` is whole seconds and never ahead of our clock (a
receiver that rejects tokens "issued in the future" must never see one).
"""

from __future__ import annotations

import hashlib
import math
import uuid

import jwt

ISSUER = "Vonage"


def sign(
    body: bytes,
    *,
    secret: str,
    api_key: str,
    application_id: str | None,
    now: float,
) -> str:
    """The bearer token for one webhook body."""
    claims: dict[str, object] = {
        "iat": math.floor(now),
        "jti": str(uuid.uuid4()),
        "iss": ISSUER,
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": api_key,
    }
    if application_id is not None:
        claims["application_id"] = application_id
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})
