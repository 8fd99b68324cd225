"""Sealing channel credentials: Fernet keys from the settings, rotation, and clear refusals."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cascade.config import Settings
from cascade.errors import ConfigError, SealError
from cascade.sealing import Sealer
from cascade.service import channel_sealer

CREDENTIALS = {"auth_token": "viber-token-1", "sender_name": "Acme"}


def test_sealed_credentials_open_with_the_same_key_and_context() -> None:
    """What is sealed opens back to the same names and values, and is not the plain text."""
    sealer = Sealer(Sealer.generate_key())
    sealed = sealer.seal(CREDENTIALS, context="link-1")
    assert b"viber-token-1" not in sealed
    assert sealer.open(sealed, context="link-1") == CREDENTIALS


def test_sealing_twice_gives_different_values() -> None:
    """Each seal has its own IV: equal credentials do not give equal stored values."""
    sealer = Sealer(Sealer.generate_key())
    assert sealer.seal(CREDENTIALS) != sealer.seal(CREDENTIALS)


def test_the_first_key_seals_and_every_key_opens() -> None:
    """With "new,old", values sealed under old open, and new seals open under new alone."""
    old, new = Sealer.generate_key(), Sealer.generate_key()
    sealed_before = Sealer(old).seal(CREDENTIALS)
    rotated = Sealer(f"{new},{old}")
    assert rotated.key_count == 2
    assert rotated.open(sealed_before) == CREDENTIALS
    assert Sealer(new).open(rotated.seal(CREDENTIALS)) == CREDENTIALS
    with pytest.raises(SealError):
        Sealer(old).open(rotated.seal(CREDENTIALS))


def test_a_value_no_key_opens_is_a_seal_error_naming_the_setting() -> None:
    """Another key, or an altered value, is a SealError (a ConfigError) saying what to do."""
    sealer = Sealer(Sealer.generate_key())
    sealed = sealer.seal(CREDENTIALS)
    other = Sealer(Sealer.generate_key())
    with pytest.raises(SealError, match="CASCADE_CHANNEL_KEY") as raised:
        other.open(sealed)
    assert isinstance(raised.value, ConfigError)
    middle = len(sealed) // 2
    tampered = sealed[:middle] + (b"A" if sealed[middle : middle + 1] != b"A" else b"B")
    tampered += sealed[middle + 1 :]
    with pytest.raises(SealError):
        sealer.open(tampered)


def test_a_value_sealed_for_another_context_is_refused() -> None:
    """Credentials sealed for one link do not open as another's."""
    sealer = Sealer(Sealer.generate_key())
    with pytest.raises(SealError, match="another link"):
        sealer.open(sealer.seal(CREDENTIALS, context="link-1"), context="link-2")


@pytest.mark.parametrize("keys", ["", " , ", "not-a-key", f"{Sealer.generate_key()},short"])
def test_a_bad_key_setting_is_a_config_error_that_does_not_echo_it(keys: str) -> None:
    """An empty list or a string that is not a Fernet key fails at once, naming the setting
    and the key's position but never the key's text."""
    with pytest.raises(ConfigError, match="CASCADE_CHANNEL_KEY") as raised:
        Sealer(keys)
    for given in keys.split(","):
        if given.strip():
            assert given.strip() not in str(raised.value)


def test_the_sealer_shows_no_key() -> None:
    """Neither the sealer's repr nor the setting's shows the key."""
    key = Sealer.generate_key()
    assert key not in repr(Sealer(key))
    settings = Settings(channel_key=SecretStr(key))
    assert key not in repr(settings)
    assert key not in str(settings.model_dump())


def test_the_store_gets_a_sealer_only_when_a_key_is_set() -> None:
    """No key (or an empty one) gives no sealer; a key gives one."""
    assert channel_sealer(Settings(channel_key=None)) is None
    assert channel_sealer(Settings(channel_key=SecretStr(" "))) is None
    sealer = channel_sealer(Settings(channel_key=SecretStr(Sealer.generate_key())))
    assert sealer is not None
    assert sealer.key_count == 1
