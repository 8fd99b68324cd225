"""Sealing channel credentials at rest: Fernet (AES-128-CBC with HMAC-SHA256) under keys from
the settings.

``CASCADE_CHANNEL_KEY`` is a comma-separated list of Fernet keys. The first seals; every one
opens, so a key is rotated by putting the new one first and keeping the old one after it until
every link has been sealed again. What is sealed names the link it belongs to (its context), so
a sealed value copied onto another link's row does not open there: one account's credentials
can never be made to serve another's link by editing the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from cascade.errors import ConfigError, SealError

#: the setting that holds the keys, as an operator sets it
KEY_SETTING = "CASCADE_CHANNEL_KEY"


class Sealer:
    """Seals and opens credentials with the keys of ``CASCADE_CHANNEL_KEY``: the first key
    seals, any of them opens."""

    __slots__ = ("_fernet", "key_count")

    def __init__(self, keys: str) -> None:
        names = [key.strip() for key in keys.split(",") if key.strip()]
        if not names:
            raise ConfigError(f"{KEY_SETTING} is empty: `cascade channel key` makes a key")
        fernets = []
        for position, key in enumerate(names, 1):
            try:
                fernets.append(Fernet(key))
            except ValueError as exc:  # binascii.Error is one; the message names no key
                raise ConfigError(
                    f"{KEY_SETTING}: key {position} of {len(names)} is not a Fernet key (32 "
                    "url-safe base64-encoded bytes); `cascade channel key` makes one"
                ) from exc
        self._fernet = MultiFernet(fernets)
        #: how many keys open (the first of them seals)
        self.key_count = len(fernets)

    @staticmethod
    def generate_key() -> str:
        """A new random key, as ``CASCADE_CHANNEL_KEY`` takes it."""
        return Fernet.generate_key().decode("ascii")

    def seal(self, credentials: Mapping[str, str], *, context: str = "") -> bytes:
        """The credentials encrypted and authenticated with the first key, bound to
        ``context`` (what they belong to; :meth:`open` must be given the same)."""
        payload = {"for": context, "credentials": dict(credentials)}
        return self._fernet.encrypt(json.dumps(payload, separators=(",", ":")).encode())

    def open(self, sealed: bytes, *, context: str = "") -> dict[str, str]:
        """The credentials of a sealed value (SealError when no key opens it, or it was sealed
        for another context)."""
        try:
            plain = self._fernet.decrypt(bytes(sealed))
        except InvalidToken as exc:
            raise SealError(
                f"sealed channel credentials do not open with any of the {self.key_count} "
                f"key(s) in {KEY_SETTING}: was the key changed? Put the key they were sealed "
                "with back, after the new one (new,old)"
            ) from exc
        try:
            payload = json.loads(plain)
            credentials = payload["credentials"]
            belongs_to = payload["for"]
        except (ValueError, TypeError, KeyError) as exc:
            raise SealError("sealed channel credentials opened, but are not credentials") from exc
        if belongs_to != context:
            raise SealError(
                "sealed channel credentials belong to another link: the stored value was "
                "copied from another row"
            )
        if not isinstance(credentials, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in credentials.items()
        ):
            raise SealError("sealed channel credentials opened, but are not names and texts")
        return credentials

    def __repr__(self) -> str:
        return f"Sealer({self.key_count} key(s))"
