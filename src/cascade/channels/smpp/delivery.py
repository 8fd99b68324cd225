"""deliver_sm handling: delivery receipts and MO messages, decoded and handed to the sink.

Everything between a ``deliver_sm`` body and the ``command_status`` to answer it with: decode
it, parse a receipt (:mod:`cascade.channels.receipts`) or reassemble an MO message
(:mod:`cascade.channels.smpp.reassembly`), give it to the engine's sink, and turn a sink failure
into ``ESME_RX_T_APPN`` so the SMSC delivers it again (see the package doc,
:mod:`cascade.channels.smpp`). The session reads the PDU and writes the answer; this module
never touches the link.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

import structlog

from cascade.channels import gsm
from cascade.channels.base import InboundMessage, Receipt, ReceiptSink
from cascade.channels.receipts import (
    DeliverSm,
    MalformedPdu,
    MalformedReceipt,
    decode_deliver_sm,
    outcome_of,
    parse_receipt,
    receipt_text,
)
from cascade.channels.smpp.config import SmppConnectionSettings
from cascade.channels.smpp.framing import ESME_ROK, ESME_RX_T_APPN
from cascade.channels.smpp.metrics import deliveries
from cascade.channels.smpp.reassembly import InboundParts, PartsKey, sar_concat
from cascade.clock import Clock

log = structlog.get_logger(__name__)

#: the provider name that inbound messages carry (the :class:`SmppProvider` name)
PROVIDER_NAME = "smpp"


class DeliverSmHandler:
    """One connection's deliver_sm handling: a body in, the status to answer with out.

    ``sink`` is set when the connection starts; the inbound parts held for reassembly live as
    long as the connection does.
    """

    def __init__(self, settings: SmppConnectionSettings, *, clock: Clock, part_ttl: float) -> None:
        self.settings = settings
        self.name = settings.name
        self.sink: ReceiptSink | None = None
        self._clock = clock
        self._parts = InboundParts(part_ttl)

    async def handle(self, body: bytes) -> int:
        """Decode, store and return the command_status to answer with."""
        try:
            pdu = decode_deliver_sm(body)
        except MalformedPdu as exc:
            deliveries(self.name, "unknown", "malformed").inc()
            log.warning(
                "smpp deliver_sm malformed", connection=self.name, error=str(exc), body=body.hex()
            )
            return ESME_ROK
        if pdu.is_receipt:
            return await self._receipt(pdu)
        return await self._inbound(pdu)

    async def _receipt(self, pdu: DeliverSm) -> int:
        """A delivery receipt: parse, map, store."""
        text = receipt_text(pdu.message, pdu.data_coding)
        try:
            parsed = parse_receipt(
                text,
                pdu.tlvs,
                submit_id_format=self.settings.submit_id_format,
                receipt_id_format=self.settings.receipt_id_format,
            )
        except MalformedReceipt as exc:
            deliveries(self.name, "receipt", "malformed").inc()
            log.warning(
                "smpp receipt malformed",
                connection=self.name,
                error=str(exc),
                text=text,
                tlvs={f"{tag:#06x}": value.hex() for tag, value in pdu.tlvs.items()},
            )
            return ESME_ROK
        if parsed.ids_disagree:
            log.warning(
                "smpp receipt ids disagree; using receipted_message_id",
                connection=self.name,
                tlv_id=parsed.tlv_id,
                text_id=parsed.text_id,
            )
        outcome = outcome_of(parsed)
        if outcome is None:
            deliveries(self.name, "receipt", "no_change").inc()
            return ESME_ROK
        receipt = Receipt(
            provider=self.settings.id_space,
            provider_message_id=parsed.message_id,
            status=outcome.status,
            at=self._clock.now(),
            code=outcome.code,
            reason=outcome.reason,
        )
        sink = self._require_sink()
        return await self._store(sink.receipt(receipt), "receipt", parsed.message_id)

    async def _inbound(self, pdu: DeliverSm) -> int:
        """An MO message: reassemble when concatenated, decode, store."""
        now = time.monotonic()
        for expired in self._parts.expire(now):
            deliveries(self.name, "inbound", "expired").inc()
            log.warning("smpp inbound parts expired", connection=self.name, key=expired)
        try:
            if pdu.udhi:
                concat, body = gsm.split_udh(pdu.message)
            else:
                concat, body = sar_concat(pdu.tlvs), pdu.message
            if concat is not None and not 1 <= concat.seq <= concat.total:
                raise ValueError(f"part {concat.seq} of {concat.total}")
        except ValueError as exc:
            deliveries(self.name, "inbound", "malformed").inc()
            log.warning(
                "smpp inbound message malformed",
                connection=self.name,
                error=str(exc),
                message=pdu.message.hex(),
            )
            return ESME_ROK
        bodies = [body]
        key: PartsKey | None = None
        if concat is not None and concat.total > 1:
            key = (pdu.source_addr, pdu.destination_addr, concat.ref, concat.total)
            complete = self._parts.add(key, concat.seq, body, now)
            if complete is None:
                deliveries(self.name, "inbound", "part").inc()
                return ESME_ROK
            bodies = complete
        message = InboundMessage(
            provider=PROVIDER_NAME,
            channel="sms",
            to={"type": "sms", "number": pdu.destination_addr},
            from_={"type": "sms", "number": pdu.source_addr},
            content={"type": "text", "text": gsm.decode(b"".join(bodies), pdu.data_coding)},
            at=self._clock.now(),
            extra={"num_messages": len(bodies)},
        )
        sink = self._require_sink()
        status = await self._store(sink.inbound(message), "inbound", pdu.source_addr)
        if status != ESME_ROK and key is not None:
            self._parts.restore(key, bodies, now)
        return status

    def _require_sink(self) -> ReceiptSink:
        if self.sink is None:
            raise RuntimeError("SmppConnection.start() was not called with a sink")
        return self.sink

    async def _store(self, stored: Awaitable[None], kind: str, subject: str) -> int:
        """Await the sink; a failure is logged and answered so that the SMSC resends."""
        try:
            await stored
        except Exception:
            deliveries(self.name, kind, "sink_error").inc()
            log.exception(
                "smpp sink failed; answering ESME_RX_T_APPN so the SMSC resends",
                connection=self.name,
                kind=kind,
                subject=subject,
            )
            return ESME_RX_T_APPN
        deliveries(self.name, kind, "stored").inc()
        return ESME_ROK
