"""Settings of the SMPP provider: the SMSC connections and how SMS are routed to them.

They are read and checked when the configuration is loaded, before any connection exists, so
they hold no behaviour of the session; every other module of the package reads them.

Written as a ``[smpp]`` table in a TOML file, one ``[[smpp.connections]]`` per bind::

    [smpp]
    inbound_part_ttl = 600          # seconds to keep parts of an incomplete inbound message

    [[smpp.connections]]
    name = "primary"                # label in logs, metrics and errors; unique
    host = "smsc.example.net"
    port = 2775
    system_id = "cascade"           # at most 15 characters
    password = "secret"             # at most 8 characters
    system_type = ""                # at most 12 characters
    window_size = 10                # submit_sm awaiting their response at once
    throughput = 50                 # submit_sm per second, evenly spaced (one every 20 ms);
                                    # 0 = no limit
    throughput_burst = 1            # submits that may go back to back after a pause; 1 = a
                                    # minimum gap of 1/throughput (gateways like Jasmin refuse
                                    # closer ones); raise it for an SMSC counting per second
    enquire_link_interval = 30      # seconds between keep-alives
    connect_timeout = 10            # seconds to connect and bind
    response_timeout = 10           # seconds to wait for any response
    reconnect_min_delay = 1         # seconds; doubles after each failed attempt ...
    reconnect_max_delay = 60        # ... up to this
    throttle_min_delay = 1          # seconds to hold back after ESME_RTHROTTLED; doubles when
    throttle_max_delay = 30         # submits after the hold are throttled again, up to this;
                                    # reset by the next accepted submit
    max_segments = 10               # longer texts are refused (Nexmo 1090, message too long)
    senders = ["447700900000", "Cascade"]   # `from` values routed here; [] = any sender
    price_per_segment = "0.0333"    # decimal string; reported as usage.price x segments
    currency = "EUR"
    submit_id_format = "opaque"     # how submit_sm_resp writes ids: opaque | hex | decimal
    receipt_id_format = "opaque"    # how receipt texts write ids (id:): opaque | hex | decimal
    # source_addr_ton / source_addr_npi: force the sender's TON/NPI (default: derived)
    # dest_addr_ton = 1, dest_addr_npi = 1: the recipient's (international, ISDN)

Routing: a message goes to a bound connection that lists its ``from`` number in ``senders``
(compared without a leading ``+``); when none lists it, to a bound connection with an empty
``senders`` list. Among several candidates, the one with the fewest submits in flight wins, so
two binds to one SMSC share the load. ``receipt_id_format`` and ``submit_id_format`` exist for
SMSCs that answer ``submit_sm`` with hex ids and write receipts in decimal (see
``cascade.channels.receipts``).
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from cascade.errors import ConfigError

#: TON and NPI values aiosmpplib can encode (SMPP 3.4 sections 5.2.5 and 5.2.6)
TON_VALUES = frozenset({0, 1, 2, 3, 4, 5, 6})
NPI_VALUES = frozenset({0, 1, 3, 4, 6, 8, 9, 10, 14, 18})


class SmppConnectionSettings(BaseModel):
    """One bind_transceiver session to an SMSC."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    host: str = Field(min_length=1)
    port: int = Field(2775, ge=1, le=65535)
    system_id: str = Field(max_length=15)
    password: SecretStr = Field(SecretStr(""), max_length=8)
    system_type: str = Field("", max_length=12)
    window_size: int = Field(10, ge=1, le=1000)
    throughput: float = Field(0.0, ge=0.0)
    throughput_burst: int = Field(1, ge=1)
    enquire_link_interval: float = Field(30.0, gt=0.0)
    connect_timeout: float = Field(10.0, gt=0.0)
    response_timeout: float = Field(10.0, gt=0.0)
    reconnect_min_delay: float = Field(1.0, gt=0.0)
    reconnect_max_delay: float = Field(60.0, gt=0.0)
    throttle_min_delay: float = Field(1.0, gt=0.0)
    throttle_max_delay: float = Field(30.0, gt=0.0)
    max_segments: int = Field(10, ge=1, le=255)
    senders: tuple[str, ...] = ()
    price_per_segment: Decimal | None = Field(None, ge=0)
    currency: str | None = Field(None, min_length=3, max_length=3)
    submit_id_format: Literal["opaque", "hex", "decimal"] = "opaque"
    receipt_id_format: Literal["opaque", "hex", "decimal"] = "opaque"
    source_addr_ton: int | None = None
    source_addr_npi: int | None = None
    dest_addr_ton: int = 1
    dest_addr_npi: int = 1

    @model_validator(mode="after")
    def _check(self) -> SmppConnectionSettings:
        """Reject values SMPP cannot carry and delays that contradict each other."""
        for field_name, allowed in (
            ("source_addr_ton", TON_VALUES),
            ("dest_addr_ton", TON_VALUES),
            ("source_addr_npi", NPI_VALUES),
            ("dest_addr_npi", NPI_VALUES),
        ):
            value = getattr(self, field_name)
            if value is not None and value not in allowed:
                raise ValueError(f"{field_name} must be one of {sorted(allowed)}")
        for field_name, value in (
            ("system_id", self.system_id),
            ("password", self.password.get_secret_value()),
            ("system_type", self.system_type),
        ):
            if not (value.isascii() and value.isprintable()):
                raise ValueError(f"{field_name} must be printable ASCII (SMPP C-octet string)")
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ValueError("reconnect_max_delay must not be below reconnect_min_delay")
        if self.throttle_max_delay < self.throttle_min_delay:
            raise ValueError("throttle_max_delay must not be below throttle_min_delay")
        if (self.price_per_segment is None) != (self.currency is None):
            raise ValueError("price_per_segment and currency go together")
        return self

    @property
    def id_space(self) -> str:
        """The provider name messages sent here are stored under, e.g.
        ``smpp:cascade@smsc.example.net:2775``: one per SMSC account, because the SMSC numbers
        its ids per account and sends a receipt on any of the account's binds."""
        return f"smpp:{self.system_id}@{self.host}:{self.port}"

    @cached_property
    def sender_set(self) -> frozenset[str]:
        """The ``from`` values routed here, without a leading ``+`` (made once: every send
        asks each connection)."""
        return frozenset(sender.lstrip("+") for sender in self.senders)


class SmppSettings(BaseModel):
    """The SMPP provider's settings: its connections and inbound reassembly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connections: tuple[SmppConnectionSettings, ...] = Field(min_length=1)
    inbound_part_ttl: float = Field(600.0, gt=0.0)

    @model_validator(mode="after")
    def _unique_names(self) -> SmppSettings:
        """Connection names label metrics and logs, so they must be unique."""
        names = [connection.name for connection in self.connections]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"connection names must be unique: {', '.join(duplicates)}")
        return self

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SmppSettings:
        """Settings from the ``[smpp]`` table; raises ConfigError naming every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"smpp.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                if error["loc"]
                else f"smpp: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigError(f"invalid SMPP settings: {problems}") from exc

    @classmethod
    def from_toml(cls, path: str | Path) -> SmppSettings:
        """Settings from the ``[smpp]`` table of a TOML file; raises ConfigError."""
        try:
            with Path(path).open("rb") as file:
                document = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read SMPP settings from {path}: {exc}") from exc
        table = document.get("smpp")
        if not isinstance(table, dict):
            raise ConfigError(f"{path} has no [smpp] table")
        return cls.from_mapping(table)
