"""A lean SMPP v3.4 sink for the SMS benchmark: one asyncio protocol, PDUs packed with ``struct``.

It does what the benchmark's SMSC must and nothing else: answers binds (any system_id and
password), ``enquire_link`` and ``unbind``; accepts every ``submit_sm`` with a new message id;
and ``receipt_delay`` seconds later sends a ``DELIVRD`` delivery receipt (Appendix B text plus the
``receipted_message_id`` and ``message_state`` TLVs) on the session the submit came on, again
after 0.5 s while the ESME answers it with an error. Anything else gets ``generic_nack``.

Why not the ``smpp34`` server the tests use: on this 2-core machine the SMSC shares the CPU
with Cascade, and smpp34's Python event layer costs about 220 µs per message against about
60 µs here. A production SMSC runs elsewhere; the benchmark measures Cascade.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
ENQUIRE_LINK = 0x00000015
GENERIC_NACK = 0x80000000
RESPONSE = 0x80000000
ESME_RINVCMDID = 0x00000003

TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_STATE = 0x0427
DELIVERED = 2

_HEADER = struct.Struct(">IIII")


@dataclass
class Stats:
    """What the control port reports: when each submit and accepted receipt happened."""

    submits: list[float] = field(default_factory=list)
    receipts: list[float] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def _cstring(body: bytes, at: int) -> tuple[bytes, int]:
    end = body.index(b"\0", at)
    return body[at:end], end + 1


def _addresses(body: bytes) -> tuple[bytes, bytes]:
    """source_addr and destination_addr of a submit_sm body."""
    _, at = _cstring(body, 0)  # service_type
    source, at = _cstring(body, at + 2)  # after source_addr_ton, source_addr_npi
    destination, _ = _cstring(body, at + 2)
    return source, destination


def _pdu(command: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(16 + len(body), command, status, sequence) + body


def _receipt_body(message_id: bytes, handset: bytes, sender: bytes, stamp: bytes) -> bytes:
    """A deliver_sm body carrying a DELIVRD receipt from ``handset`` to ``sender``."""
    text = (
        b"id:" + message_id + b" sub:001 dlvrd:001 submit date:" + stamp + b" done date:"
        + stamp + b" stat:DELIVRD err:000 text:"
    )  # fmt: skip
    tlvs = struct.pack(">HH", TLV_RECEIPTED_MESSAGE_ID, len(message_id) + 1) + message_id + b"\0"
    tlvs += struct.pack(">HHB", TLV_MESSAGE_STATE, 1, DELIVERED)
    return (
        b"\0"  # service_type
        + b"\x01\x01" + handset + b"\0"  # the handset that received it is the source
        + b"\x01\x01" + sender + b"\0"
        + bytes((0x04, 0, 0))  # esm_class: a delivery receipt; protocol_id; priority_flag
        + b"\0\0"  # schedule_delivery_time, validity_period
        + bytes((0, 0, 0, 0, len(text)))  # registered_delivery ... sm_length
        + text + tlvs
    )  # fmt: skip


class _Session(asyncio.Protocol):
    """One ESME's connection."""

    def __init__(self, sink: RawSmsc) -> None:
        self._sink = sink
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._sequence = itertools.count(1)
        #: receipts sent and not yet answered: sequence -> (body, attempt)
        self._unanswered: dict[int, tuple[bytes, int]] = {}
        self.bound = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.bound:
            self._sink.stats.counts["unbinds"] += 1
        self.bound = False
        self._sink.sessions.discard(self)
        for body, attempt in self._unanswered.values():
            self._sink.resend_later(body, attempt)
        self._unanswered.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 16:
            length, command, status, sequence = _HEADER.unpack_from(buffer)
            if len(buffer) < length:
                return
            body = bytes(buffer[16:length])
            del buffer[:length]
            self._pdu(command, status, sequence, body)

    def _pdu(self, command: int, status: int, sequence: int, body: bytes) -> None:
        assert self._transport is not None
        write = self._transport.write
        if command == SUBMIT_SM:
            sink = self._sink
            sink.stats.submits.append(time.time())
            message_id = str(next(sink.ids)).encode()
            write(_pdu(SUBMIT_SM | RESPONSE, 0, sequence, message_id + b"\0"))
            source, destination = _addresses(body)
            receipt = _receipt_body(message_id, destination, source, sink.stamp())
            sink.loop.call_later(sink.receipt_delay, self.deliver, receipt, 0)
        elif command == DELIVER_SM | RESPONSE:
            sent = self._unanswered.pop(sequence, None)
            if sent is None:
                return
            if status == 0:
                self._sink.stats.receipts.append(time.time())
            else:
                self._sink.stats.counts[f"receipt answered {status:#x}"] += 1
                self._sink.resend_later(*sent)
        elif command in (BIND_TRANSCEIVER, BIND_TRANSMITTER, BIND_RECEIVER):
            self.bound = True
            self._sink.sessions.add(self)
            self._sink.stats.counts["binds"] += 1
            write(_pdu(command | RESPONSE, 0, sequence, b"sink\0"))
        elif command == ENQUIRE_LINK:
            write(_pdu(ENQUIRE_LINK | RESPONSE, 0, sequence))
        elif command == UNBIND:
            write(_pdu(UNBIND | RESPONSE, 0, sequence))
            self._transport.close()
        elif not command & RESPONSE:
            write(_pdu(GENERIC_NACK, ESME_RINVCMDID, sequence))

    def deliver(self, body: bytes, attempt: int) -> None:
        """Send a receipt on this session, or another bound one if this one is gone."""
        session = self if self.bound else self._sink.any_session()
        if session is None or session._transport is None:
            self._sink.resend_later(body, attempt)
            return
        sequence = next(session._sequence)
        session._unanswered[sequence] = (body, attempt)
        session._transport.write(_pdu(DELIVER_SM, 0, sequence, body))


class RawSmsc:
    """The sink: its sessions, ids and statistics."""

    def __init__(self, receipt_delay: float, stats: Stats) -> None:
        self.receipt_delay = receipt_delay
        self.stats = stats
        self.sessions: set[_Session] = set()
        self.ids = itertools.count(1)
        self.loop = asyncio.get_running_loop()
        self._stamp = (0, b"")

    def stamp(self) -> bytes:
        """The receipt's date (YYMMDDhhmm), made once a second."""
        second = int(time.time())
        if second != self._stamp[0]:
            self._stamp = (second, time.strftime("%y%m%d%H%M", time.localtime(second)).encode())
        return self._stamp[1]

    def any_session(self) -> _Session | None:
        return next(iter(self.sessions), None)

    def resend_later(self, body: bytes, attempt: int) -> None:
        if attempt >= 20:
            self.stats.counts["receipt given up"] += 1
            return
        self.loop.call_later(0.5, self._resend, body, attempt + 1)

    def _resend(self, body: bytes, attempt: int) -> None:
        session = self.any_session()
        if session is None:
            self.resend_later(body, attempt)
        else:
            session.deliver(body, attempt)


async def start(port: int, receipt_delay: float, stats: Stats) -> asyncio.Server:
    """Listen on 127.0.0.1:``port``."""
    sink = RawSmsc(receipt_delay, stats)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Session(sink), "127.0.0.1", port)
