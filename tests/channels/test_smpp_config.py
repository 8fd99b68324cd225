"""SMPP settings: the TOML format and the checks on it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from cascade.channels.smpp.config import SmppSettings
from cascade.errors import ConfigError

EXAMPLE = """
[smpp]
inbound_part_ttl = 120

[[smpp.connections]]
name = "primary"
host = "smsc.example.net"
system_id = "cascade"
password = "secret"
throughput = 50
senders = ["+447700900000", "Cascade"]
price_per_segment = "0.0333"
currency = "EUR"
submit_id_format = "hex"

[[smpp.connections]]
name = "fallback"
host = "127.0.0.1"
port = 2776
system_id = "other"
"""


def test_loads_the_documented_format(tmp_path: Path) -> None:
    """The module docstring's format loads, with defaults for what is left out."""
    path = tmp_path / "cascade.toml"
    path.write_text(EXAMPLE)
    settings = SmppSettings.from_toml(path)
    primary, fallback = settings.connections
    assert settings.inbound_part_ttl == 120
    assert primary.password.get_secret_value() == "secret"
    assert primary.sender_set == frozenset({"447700900000", "Cascade"})
    assert primary.price_per_segment == Decimal("0.0333")
    assert primary.submit_id_format == "hex"
    assert (fallback.port, fallback.window_size, fallback.senders) == (2776, 10, ())
    assert "secret" not in repr(primary)


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        ({"system_id": "a-system-id-too-long"}, "smpp.connections.0.system_id"),
        ({"password": "ninechars"}, "smpp.connections.0.password"),
        ({"window_size": 0}, "window_size"),
        ({"dest_addr_ton": 9}, "dest_addr_ton must be one of"),
        ({"price_per_segment": "0.05"}, "go together"),
        ({"reconnect_min_delay": 5, "reconnect_max_delay": 1}, "reconnect_max_delay"),
        ({"bogus": 1}, "bogus"),
        ({"password": "pässwd"}, "password must be printable ASCII"),
    ],
)
def test_bad_settings_name_the_field(connection: dict[str, object], problem: str) -> None:
    """Every invalid value fails at load time with its path."""
    data = {"connections": [{"name": "a", "host": "h", "system_id": "s", **connection}]}
    with pytest.raises(ConfigError, match=problem):
        SmppSettings.from_mapping(data)


def test_connection_names_are_unique() -> None:
    """Two connections with one name are refused."""
    one = {"name": "a", "host": "h", "system_id": "s"}
    with pytest.raises(ConfigError, match="unique: a"):
        SmppSettings.from_mapping({"connections": [one, one]})


def test_at_least_one_connection() -> None:
    """An [smpp] table without connections is refused."""
    with pytest.raises(ConfigError, match="connections"):
        SmppSettings.from_mapping({"connections": []})


def test_missing_table_and_file(tmp_path: Path) -> None:
    """A file without [smpp], or no file, is a ConfigError."""
    path = tmp_path / "other.toml"
    path.write_text("[server]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"no \[smpp\] table"):
        SmppSettings.from_toml(path)
    with pytest.raises(ConfigError, match="cannot read"):
        SmppSettings.from_toml(tmp_path / "missing.toml")
