"""The ``smpp`` channel provider: SMS through one or more SMSC sessions.

:class:`SmppProvider` is what the engine holds: it checks and encodes an outbound SMS, routes
it to a bound connection for its sender (the least busy one), builds one ``submit_sm`` per part
and turns the parts' ids into a :class:`~cascade.channels.base.SendResult`. The sessions
themselves are :class:`~cascade.channels.smpp.session.SmppConnection`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiosmpplib import NPI, TON

from cascade.channels import gsm
from cascade.channels.base import ChannelProvider, OutboundMessage, ReceiptSink, SendResult
from cascade.channels.smpp.config import SmppConnectionSettings, SmppSettings
from cascade.channels.smpp.delivery import PROVIDER_NAME
from cascade.channels.smpp.framing import SubmitPart, submit_sm
from cascade.channels.smpp.session import SmppConnection
from cascade.clock import Clock, SystemClock
from cascade.errors import ChannelRejected
from cascade.log import HotLogger

#: a line per SMS: structlog's chain would run to its level filter on each (issue 15)
log = HotLogger(__name__)


class SmppProvider(ChannelProvider):
    """SMS through one or more SMSCs over SMPP v3.4 (see the package doc)."""

    name = PROVIDER_NAME

    def __init__(self, settings: SmppSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self.connections = [
            SmppConnection(connection, clock=self._clock, part_ttl=settings.inbound_part_ttl)
            for connection in settings.connections
        ]

    async def start(self, sink: ReceiptSink) -> None:
        """Start every connection; returns once each has bound or failed its first attempt.

        An SMSC that cannot be reached does not fail the start: its connection keeps retrying
        and sends through it raise ChannelUnavailable until it binds.
        """
        for connection in self.connections:
            connection.start(sink)
        timeout = max(connection.settings.connect_timeout for connection in self.connections)
        await asyncio.gather(
            *(connection.first_attempt(timeout + 1.0) for connection in self.connections)
        )

    async def stop(self) -> None:
        """Stop every connection (submits in flight finish first)."""
        await asyncio.gather(*(connection.stop() for connection in self.connections))

    def status(self) -> dict[str, dict[str, Any]]:
        """Each connection's state, for health checks: bound, last error, submits in flight."""
        return {
            connection.name: {
                "bound": connection.bound,
                "last_error": connection.last_error,
                "in_flight": connection.in_flight,
            }
            for connection in self.connections
        }

    async def ready(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every connection to be bound; returns whether they are."""
        deadline = time.monotonic() + seconds
        while not all(connection.bound for connection in self.connections):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def send(self, message: OutboundMessage) -> SendResult:
        """Submit an SMS; see the package doc for ids, price and errors."""
        text = message.text
        if not text:
            raise ChannelRejected(1040, "an SMS over SMPP needs a non-empty text")
        destination = message.recipient.lstrip("+")
        if not (destination.isdigit() and destination.isascii() and len(destination) <= 20):
            raise ChannelRejected(1170, f"invalid recipient number {message.recipient!r}")
        source = str(message.from_.get("number") or message.from_.get("id") or "")
        if source.lstrip("+").isdigit():
            source = source.lstrip("+")
        if not (source and source.isascii() and source.isprintable() and len(source) <= 20):
            raise ChannelRejected(1120, f"illegal sender address {source!r}")
        connection = self._route(source)
        try:
            encoded = gsm.encode(text, ref=connection.next_reference())
        except ValueError as exc:
            raise ChannelRejected(1090, str(exc)) from exc
        settings = connection.settings
        if encoded.segments > settings.max_segments:
            raise ChannelRejected(
                1090,
                f"text needs {encoded.segments} SMS; connection {settings.name} allows "
                f"{settings.max_segments}",
            )
        ids = await connection.submit(self._submit_sms(settings, encoded, source, destination))
        # debug: a line per SMS at info costs ~50 µs and floods the log at 1,000s a second;
        # the ids are stored with the message anyway (provider_message_id and its parts)
        log.debug(
            "smpp message submitted",
            connection=connection.name,
            message_id=message.message_id,
            segment_ids=ids,
            data_coding=encoded.data_coding,
        )
        price: str | None = None
        if settings.price_per_segment is not None:
            price = str(settings.price_per_segment * len(ids))
        return SendResult(
            provider_message_id=ids[0],
            price=price,
            currency=settings.currency,
            segments=len(ids),
            segment_ids=tuple(ids),
            provider=settings.id_space,
        )

    def _route(self, source: str) -> SmppConnection:
        """The connection for a sender: listed there, else a catch-all; least busy first."""
        candidates = [c for c in self.connections if source in c.settings.sender_set]
        if not candidates:
            candidates = [c for c in self.connections if not c.settings.senders]
        if not candidates:
            raise ChannelRejected(1120, f"no SMPP connection is configured for sender {source!r}")
        bound = [c for c in candidates if c.bound]
        if not bound:
            raise candidates[0].unavailable()
        return min(bound, key=lambda connection: connection.in_flight)

    @staticmethod
    def _submit_sms(
        settings: SmppConnectionSettings, encoded: gsm.EncodedText, source: str, destination: str
    ) -> list[SubmitPart]:
        """One submit_sm per part, payload already encoded (UDH included when concatenated)."""
        if settings.source_addr_ton is not None:
            source_ton = settings.source_addr_ton
        else:
            source_ton = TON.INTERNATIONAL if source.isdigit() else TON.ALPHANUMERIC
        if settings.source_addr_npi is not None:
            source_npi = settings.source_addr_npi
        else:
            source_npi = NPI.ISDN if source.isdigit() else NPI.UNKNOWN
        return [
            submit_sm(
                source=source,
                source_ton=source_ton,
                source_npi=source_npi,
                destination=destination,
                dest_ton=settings.dest_addr_ton,
                dest_npi=settings.dest_addr_npi,
                esm_class=0x40 if encoded.udhi else 0x00,
                data_coding=encoded.data_coding,
                short_message=part.payload,
            )
            for part in encoded.parts
        ]
