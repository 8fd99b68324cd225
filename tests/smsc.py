"""The project's test SMSC: the ``smpp34`` SMPP server on loopback, scripted per destination.

:class:`LoopbackSmsc` runs an ``smpp34.Server`` on a private loopback port and, in front of it,
a small TCP relay on the public port the provider connects to. The SMSC logic (binds, PDUs,
windowing) is smpp34's; the relay only adds what smpp34's Python API lacks:

* a bind check: smpp34 has no bind hook and accepts any password, so the relay reads the first
  PDU and answers a bind with the wrong system_id or password itself (``ESME_RINVSYSID`` /
  ``ESME_RINVPASWD``), as a real SMSC would;
* faults: :meth:`LoopbackSmsc.sever` drops every connection at once (a crash, no unbind),
  :meth:`LoopbackSmsc.restart` also stops listening for a while and starts a fresh smpp34
  server (``smpp34.Server.stop`` alone keeps bound sessions alive), with ``reset_ids`` counting
  message ids from 1000 again as SMSCs that keep no state do, and clearing
  :attr:`LoopbackSmsc.flowing` makes the SMSC hang (connections stay open, nothing answers);
* vendor statuses: smpp34 answers a status it does not know (the vendor range 0x400-0x4FF) as
  ``ESME_RSYSERR``, so such a reject goes out as ``ESME_RUNKNOWNERR`` and the relay writes the
  vendor status into that ``submit_sm_resp``.

What each ``submit_sm`` gets is a :class:`Behaviour`, chosen by destination number (or
:attr:`LoopbackSmsc.default`): accept and send a receipt with a given state after a delay,
the receipt first and the response after, a receipt without the optional fields, a reject
with any status, throttling the first N submits, no answer at all, or a dropped connection.
Setting :attr:`LoopbackSmsc.min_gap` makes it a gateway enforcing its quota as a minimum gap
between submits (Jasmin): a submit closer than that to the last accepted one is answered
``ESME_RTHROTTLED``.
Every submit is recorded (:attr:`LoopbackSmsc.submits`), and so is every ``deliver_sm`` the
SMSC sends with the status the ESME answered (:attr:`LoopbackSmsc.deliveries`). Receipts go to
whichever session is bound when they are due, so a receipt scheduled before a restart arrives
on the new session, like an SMSC's stored receipts. MO messages, single or in parts (UDH or SAR
TLVs), are sent with :meth:`LoopbackSmsc.deliver_mo`.

smpp34 caveats kept in mind: its server does not drop sessions on ``stop()`` and its
``next()`` never returns after it, so the event loop task is cancelled; ``stop()`` is awaited
with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import smpp34
from aiosmpplib.codec import GSM7BitCodec

HOST = "127.0.0.1"
_HEADER = struct.Struct("!IIII")
_BINDS = {0x00000001, 0x00000002, 0x00000009}
#: SMPP 3.4 constants (smpp34 exports them too, but only at run time)
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RTHROTTLED = 0x58
ESME_RUNKNOWNERR = 0xFF
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F
TLV_MESSAGE_STATE = 0x0427
#: receipt states as the message_state TLV numbers them
MESSAGE_STATES = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Behaviour:
    """What the SMSC does with a submit_sm to one destination."""

    receipt: str | None = "DELIVRD"  # the receipt's stat; None sends no receipt
    receipt_delay: float = 0.02
    receipt_first: bool = False  # send the receipt before the submit_sm_resp
    minimal_receipt: bool = False  # Jasmin style: no sub, dlvrd or text, and no TLVs
    err: str = "000"
    reject: int | None = None  # answer with this command_status
    throttle: int = 0  # answer N submits with ESME_RTHROTTLED ...
    throttle_after: int = 0  # ... after accepting this many
    silent: bool = False  # hold the submit unanswered (see LoopbackSmsc.answer_held)
    drop_connection: bool = False  # sever every connection instead of answering


@dataclass
class Submitted:
    """One submit_sm as the SMSC received it, and how it was answered."""

    system_id: str
    source_addr: str
    source_addr_ton: int
    destination_addr: str
    dest_addr_ton: int
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    tlvs: dict[int, bytes]
    status: int | None = None  # None: not answered
    message_id: str | None = None


@dataclass
class Delivered:
    """One deliver_sm the SMSC sent, and the status the ESME answered it with."""

    kind: Literal["receipt", "mo"]
    short_message: bytes
    message_id: str | None = None
    status: int | None = None  # None until answered
    error: str | None = None  # why no answer came, when none did
    answered_at: float | None = None


@dataclass(eq=False)
class _Relay:
    """One client connection relayed to the smpp34 server."""

    client: asyncio.StreamWriter
    backend: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class LoopbackSmsc:
    """A scripted SMSC on 127.0.0.1 (see the module doc)."""

    def __init__(
        self,
        *,
        credentials: dict[str, str] | None = None,
        hex_ids: bool = False,
        receipt_tlvs: bool = True,
    ) -> None:
        self.host = HOST
        self.port = free_port()
        #: system_id -> password accepted at bind
        self.credentials = credentials or {"cascade": "secret"}
        #: answer submit_sm with hex ids, write receipt texts in decimal (the TLV stays hex)
        self.hex_ids = hex_ids
        self.receipt_tlvs = receipt_tlvs
        self.default = Behaviour()
        self.behaviours: dict[str, Behaviour] = {}
        self.submits: list[Submitted] = []
        self.deliveries: list[Delivered] = []
        self.binds = 0
        self.bind_refusals = 0
        self._ids = itertools.count(1000)
        self._seen: dict[str, int] = {}
        #: seconds a submit must come after the last accepted one (0: any spacing)
        self.min_gap = 0.0
        self._last_accepted = -float("inf")
        #: while cleared, the relay holds what clients send (a hung SMSC); set by default
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._sessions: dict[str, smpp34.Esme] = {}
        self._held: list[smpp34.SubmitSmEvent] = []
        self._vendor_statuses: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: set[_Relay] = set()
        self._backend: smpp34.Server | None = None
        self._backend_port = 0
        self._events: asyncio.Task[None] | None = None
        self._front: asyncio.Server | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the smpp34 server and the relay in front of it."""
        self._backend_port = free_port()
        self._backend = smpp34.Server(HOST, self._backend_port, system_id="loopback")
        await self._backend.start()
        self._events = asyncio.create_task(self._event_loop(self._backend))
        self._front = await asyncio.start_server(self._relay, HOST, self.port)

    async def stop(self, within: float = 2.0) -> None:
        """Drop every connection and stop, waiting at most ``within`` seconds for smpp34."""
        await self._stop_front()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_backend(within)

    async def restart(self, down_for: float = 0.2, *, reset_ids: bool = False) -> None:
        """Crash (no unbind), refuse connections for ``down_for`` seconds, come back fresh;
        with ``reset_ids`` the message ids start from 1000 again."""
        await self._stop_front()
        await self._stop_backend(2.0)
        self._sessions.clear()
        self._held.clear()
        if reset_ids:
            self._ids = itertools.count(1000)
        await asyncio.sleep(down_for)
        await self.start()

    def answer_held(self) -> None:
        """Accept the submits held by ``silent`` behaviours, in the order they came."""
        held, self._held = self._held, []
        for event in held:
            for submit in self.submits:
                if submit.status is None and submit.destination_addr == event.destination_addr:
                    submit.message_id, _ = self._next_id()
                    submit.status = 0
                    event.accept(submit.message_id)
                    break

    def sever(self) -> None:
        """Drop every open connection at once, as a crash would."""
        for relay in list(self._relays):
            relay.client.transport.abort()
            if relay.backend is not None:
                relay.backend.transport.abort()

    async def _stop_front(self) -> None:
        if self._front is not None:
            self._front.close()
            self._front = None
        self.sever()
        for relay in list(self._relays):
            for task in relay.tasks:
                task.cancel()
            await asyncio.gather(*relay.tasks, return_exceptions=True)

    async def _stop_backend(self, within: float) -> None:
        if self._events is not None:
            self._events.cancel()
            await asyncio.gather(self._events, return_exceptions=True)
            self._events = None
        if self._backend is not None:
            await asyncio.wait_for(self._backend.stop(), within)
            self._backend = None

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``condition()`` holds; fails the test after ``within`` seconds."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {within}s")
            await asyncio.sleep(0.005)

    def answered(self, status: int | None = 0) -> list[Submitted]:
        """Submits answered with ``status`` (None: not answered)."""
        return [submit for submit in self.submits if submit.status == status]

    # -- the relay -------------------------------------------------------------------------

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Check the bind, then copy bytes both ways until either side closes."""
        relay = _Relay(client=writer)
        self._relays.add(relay)
        try:
            header = await reader.readexactly(_HEADER.size)
            length, command_id, _, sequence = _HEADER.unpack(header)
            body = await reader.readexactly(length - _HEADER.size)
            if command_id in _BINDS:
                system_id, password = (part.decode() for part in body.split(b"\x00", 2)[:2])
                refusal = self._check_bind(system_id, password)
                if refusal is not None:
                    self.bind_refusals += 1
                    answer = b"loopback\x00"
                    writer.write(
                        _HEADER.pack(16 + len(answer), command_id | 0x80000000, refusal, sequence)
                        + answer
                    )
                    await writer.drain()
                    return
            await self.flowing.wait()
            backend_reader, relay.backend = await asyncio.open_connection(HOST, self._backend_port)
            relay.backend.write(header + body)
            relay.tasks = [
                asyncio.create_task(self._copy_requests(reader, relay.backend)),
                asyncio.create_task(self._copy_responses(backend_reader, writer)),
            ]
            await asyncio.wait(relay.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, EOFError):
            pass  # the client went away during the bind; nothing to relay
        finally:
            for task in relay.tasks:
                task.cancel()
            writer.transport.abort()
            if relay.backend is not None:
                relay.backend.transport.abort()
            self._relays.discard(relay)

    async def _copy_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy bytes from the client to smpp34, holding them while the SMSC is frozen."""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()

    async def _copy_responses(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy PDUs from smpp34 to the client, writing in vendor statuses (see module doc)."""
        with contextlib.suppress(OSError, EOFError):
            while True:
                header = await reader.readexactly(_HEADER.size)
                length, command_id, status, sequence = _HEADER.unpack(header)
                body = await reader.readexactly(length - _HEADER.size)
                if command_id == 0x80000004 and status == 0xFF and self._vendor_statuses:
                    header = _HEADER.pack(
                        length, command_id, self._vendor_statuses.pop(0), sequence
                    )
                writer.write(header + body)
                await writer.drain()

    def _check_bind(self, system_id: str, password: str) -> int | None:
        """The status refusing this bind, or None to accept it."""
        if system_id not in self.credentials:
            return ESME_RINVSYSID
        if self.credentials[system_id] != password:
            return ESME_RINVPASWD
        return None

    # -- the SMSC --------------------------------------------------------------------------

    async def _event_loop(self, server: smpp34.Server) -> None:
        """Track sessions and answer submits."""
        while True:
            event = await server.next()
            if isinstance(event, smpp34.Esme):
                self.binds += 1
                self._sessions[event.session_id] = event
            elif isinstance(event, smpp34.SubmitSmEvent):
                self._spawn(self._on_submit(event))
            elif isinstance(event, smpp34.Unbound):
                self._sessions.pop(event.session_id, None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_id(self) -> tuple[str, str]:
        """A new message id: as submit_sm_resp and the TLV write it, and as the text does."""
        number = next(self._ids)
        return (f"{number:X}" if self.hex_ids else str(number)), str(number)

    async def _on_submit(self, event: smpp34.SubmitSmEvent) -> None:
        behaviour = self.behaviours.get(event.destination_addr, self.default)
        session = self._sessions.get(event.session_id)
        submit = Submitted(
            system_id=session.system_id if session is not None else "",
            source_addr=event.source_addr,
            source_addr_ton=event.source_addr_ton,
            destination_addr=event.destination_addr,
            dest_addr_ton=event.dest_addr_ton,
            esm_class=event.esm_class,
            data_coding=event.data_coding,
            registered_delivery=event.registered_delivery,
            short_message=event.short_message,
            tlvs={tlv.tag: tlv.value for tlv in event.tlvs},
        )
        self.submits.append(submit)
        if behaviour.drop_connection:
            self._held.append(event)
            self.sever()
            return
        if behaviour.silent:
            self._held.append(event)
            return
        seen = self._seen.get(event.destination_addr, 0)
        self._seen[event.destination_addr] = seen + 1
        arrived = time.monotonic()
        too_close = arrived - self._last_accepted < self.min_gap
        if too_close or (
            behaviour.throttle_after <= seen < behaviour.throttle_after + behaviour.throttle
        ):
            submit.status = ESME_RTHROTTLED
            event.reject(ESME_RTHROTTLED)
            return
        if behaviour.reject is not None:
            submit.status = behaviour.reject
            if behaviour.reject > 0xFF:
                self._vendor_statuses.append(behaviour.reject)
                event.reject(ESME_RUNKNOWNERR)
            else:
                event.reject(behaviour.reject)
            return
        self._last_accepted = arrived
        message_id, text_id = self._next_id()
        submit.message_id = message_id
        if behaviour.receipt is not None and behaviour.receipt_first:
            await self._send_receipt(submit, text_id, behaviour)
        submit.status = 0
        event.accept(message_id)
        if behaviour.receipt is not None and not behaviour.receipt_first:
            self._spawn(self._later_receipt(submit, text_id, behaviour))

    async def _later_receipt(self, submit: Submitted, text_id: str, behaviour: Behaviour) -> None:
        await asyncio.sleep(behaviour.receipt_delay)
        await self._send_receipt(submit, text_id, behaviour)

    async def _send_receipt(self, submit: Submitted, text_id: str, behaviour: Behaviour) -> None:
        """Send the receipt for ``submit`` in the Appendix B format (or the minimal one)."""
        assert submit.message_id is not None
        stat = behaviour.receipt or "DELIVRD"
        date = time.strftime("%y%m%d%H%M")
        if behaviour.minimal_receipt:
            text = (
                f"id:{text_id} submit date:{date} done date:{date} stat:{stat} err:{behaviour.err}"
            )
        else:
            delivered = "001" if stat == "DELIVRD" else "000"
            sample = submit.short_message[-20:].decode("latin-1")
            text = (
                f"id:{text_id} sub:001 dlvrd:{delivered} submit date:{date} done date:{date} "
                f"stat:{stat} err:{behaviour.err} text:{sample}"
            )
        tlvs = []
        if self.receipt_tlvs and not behaviour.minimal_receipt:
            tlvs = [
                smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, submit.message_id.encode() + b"\x00"),
                smpp34.Tlv(TLV_MESSAGE_STATE, bytes([MESSAGE_STATES.get(stat, 7)])),
            ]
        await self.send_receipt(
            text.encode("latin-1"),
            source=submit.destination_addr,
            destination=submit.source_addr,
            tlvs=tlvs,
            message_id=submit.message_id,
        )

    async def send_receipt(
        self,
        text: bytes,
        *,
        source: str = "447700900001",
        destination: str = "Cascade",
        tlvs: list[smpp34.Tlv] | None = None,
        message_id: str | None = None,
    ) -> Delivered:
        """Send any receipt text (and TLVs) to the bound ESME; returns what it answered."""
        record = Delivered(kind="receipt", short_message=text, message_id=message_id)
        await self._deliver(
            record,
            source_addr=source,
            destination_addr=destination,
            esm_class=0x04,
            data_coding=0,
            tlvs=tlvs or [],
        )
        return record

    async def deliver_mo(
        self,
        source: str,
        destination: str,
        text: str,
        *,
        split: Literal["udh", "sar"] | None = None,
        chars_per_part: int = 10,
        reference: int = 0x2A,
    ) -> list[Delivered]:
        """Send an MO message, in parts of ``chars_per_part`` characters when ``split``."""
        gsm = GSM7BitCodec.is_gsm_text(text)
        data_coding = 0 if gsm else 8

        def encode(chunk: str) -> bytes:
            return bytes(GSM7BitCodec().encode(chunk)[0]) if gsm else chunk.encode("utf-16-be")

        chunks = [text] if split is None else _chunks(text, chars_per_part)
        records = []
        for seq, chunk in enumerate(chunks, start=1):
            payload = encode(chunk)
            esm_class = 0
            tlvs: list[smpp34.Tlv] = []
            if split == "udh":
                payload = bytes([5, 0, 3, reference, len(chunks), seq]) + payload
                esm_class = 0x40
            elif split == "sar":
                tlvs = [
                    smpp34.Tlv(TLV_SAR_MSG_REF_NUM, reference.to_bytes(2, "big")),
                    smpp34.Tlv(TLV_SAR_TOTAL_SEGMENTS, bytes([len(chunks)])),
                    smpp34.Tlv(TLV_SAR_SEGMENT_SEQNUM, bytes([seq])),
                ]
            record = Delivered(kind="mo", short_message=payload)
            await self._deliver(
                record,
                source_addr=source,
                destination_addr=destination,
                esm_class=esm_class,
                data_coding=data_coding,
                tlvs=tlvs,
            )
            records.append(record)
        return records

    async def _deliver(
        self,
        record: Delivered,
        *,
        source_addr: str,
        destination_addr: str,
        esm_class: int,
        data_coding: int,
        tlvs: list[smpp34.Tlv],
    ) -> None:
        """Send one deliver_sm on the current session and record the answer."""
        self.deliveries.append(record)
        session = await self._session()
        try:
            response = await asyncio.wait_for(
                session.deliver_sm(
                    destination_addr,
                    record.short_message,
                    source_addr=source_addr,
                    source_addr_ton=1,
                    source_addr_npi=1,
                    esm_class=esm_class,
                    data_coding=data_coding,
                    tlvs=tlvs,
                ),
                5.0,
            )
        except (smpp34.SmppError, TimeoutError, OSError) as exc:
            record.error = repr(exc)
            return
        record.status = response.command_status
        record.answered_at = time.monotonic()

    async def _session(self, within: float = 5.0) -> smpp34.Esme:
        """The newest bound session that can receive, waiting for one if none is bound."""
        deadline = time.monotonic() + within
        while True:
            sessions = [s for s in self._sessions.values() if s.can_receive]
            if sessions:
                return sessions[-1]
            if time.monotonic() > deadline:
                raise AssertionError("no ESME bound to deliver to")
            await asyncio.sleep(0.005)


def _chunks(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]
