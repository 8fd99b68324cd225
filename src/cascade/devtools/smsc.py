"""A local SMSC: the ``smpp34`` SMPP server on loopback, with delivery receipts, for trying
SMS over SMPP without a provider (``cascade dev smsc``) and for the test suite's SMSC.

:class:`Smsc` runs an ``smpp34.Server`` on a private loopback port and, in front of it, a
small TCP relay on the port clients connect to. The SMSC logic (binds, PDUs, windowing) is
smpp34's; the relay adds the bind check smpp34 lacks: it has no bind hook and accepts any
password, so the relay reads the first PDU and answers a bind with the wrong system_id or
password itself (``ESME_RINVSYSID`` / ``ESME_RINVPASWD``), as a real SMSC would.

Every ``submit_sm`` is accepted with a new message id (counting from 1000) and, as its
:class:`Behaviour` says, followed by a delivery receipt in the SMPP 3.4 Appendix B text format
with the ``receipted_message_id`` and ``message_state`` TLVs. Receipts go to whichever session
is bound when they are due, like an SMSC's stored receipts. Subclasses (the tests' scripted
SMSC) change what a submit gets through :meth:`Smsc._on_submit`, hold traffic through
:meth:`Smsc._forwarding`, and rewrite response statuses through :meth:`Smsc._response_status`.

smpp34 caveats kept in mind: its server does not drop sessions on ``stop()`` and its
``next()`` never returns after it, so the event loop task is cancelled; ``stop()`` is awaited
with a timeout.

``smpp34`` is an optional dependency (``pip install 'cascade[smsc]'``): importing this module
without it raises ModuleNotFoundError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import smpp34

from cascade.errors import ConfigError

HOST = "127.0.0.1"
_HEADER = struct.Struct("!IIII")
_BINDS = {0x00000001, 0x00000002, 0x00000009}
#: SMPP 3.4 constants (smpp34 exports them too, but only at run time)
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
TLV_RECEIPTED_MESSAGE_ID = 0x001E
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
#: seconds stop() waits for smpp34's server to stop
STOP_WITHIN = 2.0


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Behaviour:
    """What the SMSC does after accepting a submit_sm: the receipt it sends, and when."""

    receipt: str | None = "DELIVRD"  # the receipt's stat; None sends no receipt
    receipt_delay: float = 1.0
    receipt_first: bool = False  # send the receipt before the submit_sm_resp
    minimal_receipt: bool = False  # Jasmin style: no sub, dlvrd or text, and no TLVs
    err: str = "000"


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


class Smsc:
    """An SMSC on ``host``:``port`` that accepts every submit and sends receipts (see the
    module doc). With ``record``, every submit and deliver_sm is kept in :attr:`submits` and
    :attr:`deliveries` (the tests read them; a long-running SMSC keeps nothing);
    ``on_event`` is told each bind, submit and receipt in a line of text."""

    def __init__(
        self,
        *,
        host: str = HOST,
        port: int | None = None,
        credentials: dict[str, str] | None = None,
        default: Behaviour | None = None,
        hex_ids: bool = False,
        receipt_tlvs: bool = True,
        record: bool = True,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        #: system_id -> password accepted at bind
        self.credentials = credentials or {"cascade": "secret"}
        #: answer submit_sm with hex ids, write receipt texts in decimal (the TLV stays hex)
        self.hex_ids = hex_ids
        self.receipt_tlvs = receipt_tlvs
        self.default = default or Behaviour()
        self.record = record
        self.on_event = on_event
        self.submits: list[Submitted] = []
        self.deliveries: list[Delivered] = []
        self.binds = 0
        self.bind_refusals = 0
        self._ids = itertools.count(1000)
        self._sessions: dict[str, smpp34.Esme] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: set[_Relay] = set()
        self._backend: smpp34.Server | None = None
        self._backend_port = 0
        self._events: asyncio.Task[None] | None = None
        self._front: asyncio.Server | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the smpp34 server and the relay in front of it (OSError when the port
        cannot be listened on; nothing is left running then)."""
        self._backend_port = free_port()
        self._backend = smpp34.Server(HOST, self._backend_port, system_id="cascade-dev")
        await self._backend.start()
        self._events = asyncio.create_task(self._event_loop(self._backend))
        try:
            self._front = await asyncio.start_server(self._relay, self.host, self.port)
        except BaseException:
            await self._stop_backend(STOP_WITHIN)
            raise
        if self.port == 0:  # the port the system chose, so that a restart keeps it
            self.port = self._front.sockets[0].getsockname()[1]

    async def stop(self, within: float = STOP_WITHIN) -> None:
        """Drop every connection and stop, waiting at most ``within`` seconds for smpp34."""
        await self._stop_front()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_backend(within)

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

    def _note(self, line: str) -> None:
        """Tell ``on_event`` what happened."""
        if self.on_event is not None:
            self.on_event(line)

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
                    self._note(f"bind refused: system_id {system_id!r} (status {refusal:#04x})")
                    answer = b"cascade-dev\x00"
                    writer.write(
                        _HEADER.pack(16 + len(answer), command_id | 0x80000000, refusal, sequence)
                        + answer
                    )
                    await writer.drain()
                    return
            await self._forwarding()
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

    async def _forwarding(self) -> None:
        """Wait until client bytes may go on to smpp34 (at once here; a subclass may hold
        them, as a hung SMSC would)."""

    def _response_status(self, command_id: int, status: int) -> int:
        """The command_status to send the client in a response smpp34 wrote (as written
        here; a subclass may rewrite it)."""
        return status

    async def _copy_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy bytes from the client to smpp34."""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._forwarding()
                writer.write(data)
                await writer.drain()

    async def _copy_responses(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy PDUs from smpp34 to the client, with the status :meth:`_response_status`
        gives each."""
        with contextlib.suppress(OSError, EOFError):
            while True:
                header = await reader.readexactly(_HEADER.size)
                length, command_id, status, sequence = _HEADER.unpack(header)
                body = await reader.readexactly(length - _HEADER.size)
                answered = self._response_status(command_id, status)
                if answered != status:
                    header = _HEADER.pack(length, command_id, answered, sequence)
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
                self._note(f"bound: system_id {event.system_id!r}")
            elif isinstance(event, smpp34.SubmitSmEvent):
                self._spawn(self._on_submit(event))
            elif isinstance(event, smpp34.Unbound):
                self._sessions.pop(event.session_id, None)
                self._note("unbound")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_id(self) -> tuple[str, str]:
        """A new message id: as submit_sm_resp and the TLV write it, and as the text does."""
        number = next(self._ids)
        return (f"{number:X}" if self.hex_ids else str(number)), str(number)

    async def _on_submit(self, event: smpp34.SubmitSmEvent) -> None:
        """Accept a submit_sm, with the receipt the default behaviour says."""
        await self._accept(event, self._submitted(event), self.default)

    def _submitted(self, event: smpp34.SubmitSmEvent) -> Submitted:
        """The record of a submit_sm (kept in :attr:`submits` when recording)."""
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
        if self.record:
            self.submits.append(submit)
        return submit

    async def _accept(
        self, event: smpp34.SubmitSmEvent, submit: Submitted, behaviour: Behaviour
    ) -> None:
        """Answer a submit_sm with a new message id, and send its receipt as ``behaviour``
        says (before the answer, or after its delay)."""
        message_id, text_id = self._next_id()
        submit.message_id = message_id
        if behaviour.receipt is not None and behaviour.receipt_first:
            await self._send_receipt(submit, text_id, behaviour)
        submit.status = 0
        event.accept(message_id)
        self._note(
            f"submit_sm {submit.source_addr} -> {submit.destination_addr}: "
            f"{_text(submit)!r} accepted as {message_id}"
        )
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
        record = await self.send_receipt(
            text.encode("latin-1"),
            source=submit.destination_addr,
            destination=submit.source_addr,
            tlvs=tlvs,
            message_id=submit.message_id,
        )
        answer = record.error or f"answered {record.status}"
        self._note(f"receipt for {submit.message_id}: {stat} ({answer})")

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
        if self.record:
            self.deliveries.append(record)
        try:
            session = await self._session()
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

    async def _session(self, within: float = 5.0) -> Any:
        """The newest bound session that can receive, waiting for one if none is bound
        (TimeoutError after ``within`` seconds)."""
        deadline = time.monotonic() + within
        while True:
            sessions = [s for s in self._sessions.values() if s.can_receive]
            if sessions:
                return sessions[-1]
            if time.monotonic() > deadline:
                raise TimeoutError("no ESME bound to deliver to")
            await asyncio.sleep(0.005)


def _text(submit: Submitted) -> str:
    """A submit's text as far as it can be read (UCS-2, else one byte a character)."""
    encoding = "utf-16-be" if submit.data_coding == 8 else "latin-1"
    return submit.short_message.decode(encoding, errors="replace")


async def run_smsc(smsc: Smsc, say: Callable[[str], None]) -> None:
    """Run ``smsc`` until SIGINT or SIGTERM, saying where it listens; ConfigError when it
    cannot listen there."""
    try:
        await smsc.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {smsc.host}:{smsc.port}: {exc.strerror}") from exc
    users = ", ".join(f"system_id {name!r}" for name in smsc.credentials)
    say(f"SMSC listening on {smsc.host}:{smsc.port} ({users}); Ctrl-C stops it")
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await smsc.stop()
    say("SMSC stopped")
