"""SMS over SMPP v3.4: the ``smpp`` channel provider.

:class:`SmppProvider` keeps one ``bind_transceiver`` session per configured SMSC connection
(:mod:`cascade.channels.smpp_config`), submits each SMS as one ``submit_sm`` per part, and turns
every ``deliver_sm`` into a :class:`~cascade.channels.base.Receipt` or an
:class:`~cascade.channels.base.InboundMessage` for the engine's sink.

The session. PDUs are built with aiosmpplib's protocol classes and texts encoded with its
``gsm0338`` codec (through :mod:`cascade.channels.gsm`); the session loop around them is this
module's, not ``aiosmpplib.ESME``, because the ESME does not fit the seam: it reports submit
results through hooks instead of to the caller, answers every ``deliver_sm`` with ``ESME_ROK``
on its own, and drops the whole session on input that real SMSCs send (a receipt with 12-digit
dates fails its ``parse_receipt``; a vendor ``command_status`` of 0x400 and above fails its
header parser). Here: ``submit_sm`` responses are matched to their caller by sequence number;
at most ``window_size`` submits await a response; a token bucket holds submits to
``throughput`` per second, evenly spaced unless ``throughput_burst`` allows bursts;
``enquire_link`` runs every ``enquire_link_interval`` and an unanswered one drops the link; a
lost or refused bind is retried with exponential backoff.

Throttling. An ``ESME_RTHROTTLED`` starts an episode: submits hold back for the throttle
backoff; the other answers of the window (submits written before the hold began) belong to the
same episode and do not lengthen it; only a submit written after the hold and throttled again
doubles it. New messages turned away during a hold are told to come back one ``1/throughput``
after another (jittered over the hold without a throughput), not all at the hold's end.

Ids. The SMSC numbers its message ids per account and may count from the start again after a
restart, so the result names the id space, ``smpp:<system_id>@<host>:<port>``
(:attr:`SmppConnectionSettings.id_space`), which receipts carry too: binds to different SMSCs
never share ids, binds to one SMSC account do (a receipt may come on any of them), and the
engine re-points an id that an older message still holds to the new one.

Sending. The text goes as GSM-7 when every character allows it, else UCS-2; a long text is
split into UDH-concatenated parts (:mod:`cascade.channels.gsm`), submitted in order, each with
``registered_delivery`` 1 (a receipt on success and on failure). The result's
``provider_message_id`` is the first part's SMSC id and ``segment_ids`` holds every part's id
in order (the first included), because every part gets its own receipt: the engine maps each
of those ids to the message and applies :func:`cascade.domain.status.combine_parts`
(rejected as soon as any part fails, delivered once every part is). ``price`` is
``segments x price_per_segment`` of the connection. Ids are normalised with
:func:`cascade.channels.receipts.normalise_message_id`, the same function receipts go through.

Errors, as the engine sees them:

=====================================  ====================================  ===============
what happened                          raised                                Nexmo code
=====================================  ====================================  ===============
``ESME_RTHROTTLED`` 0x58,              ChannelUnavailable, ``retry_after``   1000 Throttled
``ESME_RMSGQFUL`` 0x14                 = the rest of the hold, spread
window full, throughput limit          ChannelUnavailable                    1000
``ESME_RSYSERR`` 0x08                  ChannelUnavailable (the SMSC's own    1331
                                       failure; retrying can help)
not bound (connecting, bind refused,   ChannelUnavailable, ``retry_after``   1100
connection lost before the write)      = time to the next bind attempt       Communication
                                                                             failed
no response within                     :class:`SmppSubmitUnconfirmed`        1100
``response_timeout``, or connection    (a ChannelUnavailable: the SMSC may
lost after the ``submit_sm`` was       have accepted it, so a retry may
written                                send it twice)
any other ``command_status``           ChannelRejected                       see below
=====================================  ====================================  ===============

``command_status`` to Nexmo code (:data:`SUBMIT_STATUS_CODES`): 0x01 invalid length -> 1090
message too long; 0x0A, 0x48, 0x49 source address/TON/NPI -> 1120 illegal sender address; 0x0B,
0x50, 0x51 destination -> 1170 invalid or missing MSISDN; 0x62 validity -> 1130 invalid TTL;
0x44 distribution list -> 1140 facility not allowed; 0xC3 missing TLV -> 1010 missing params;
other parameter errors (0x06, 0x07, 0x0C, 0x15, 0x33, 0x34, 0x40, 0x42, 0x43, 0x54, 0x55,
0x61, 0x63, 0xC0-0xC2, 0xC4) -> 1020 invalid params; PDU or bind-state errors of ours (0x02-0x05,
0x53) -> 1030 internal error; 0xFE delivery failure -> 1230 network error; 0xFF -> 1330
unknown; 0x45 submit failed, 0x66, vendor codes (0x400-0x4FF) and anything else -> 1331 provider
error. A later part refused after earlier parts were accepted is still a ChannelRejected; a
later part throttled is retried here (up to :data:`PART_RETRIES` times) rather than failing a
message that is partly out.

Receipts and inbound messages. Each ``deliver_sm`` is handled in its own task (at most
``window_size`` at once) and answered with ``deliver_sm_resp`` only after the sink returned,
so a receipt that was not stored is sent again by the SMSC:

* a receipt becomes ``sink.receipt(...)`` with the part's id, whether or not ``send`` has
  returned yet (the engine stores receipts for ids it does not know yet; nothing is held back
  here); ``ENROUTE``/``ACCEPTD`` change nothing and are only answered;
* an MO message becomes ``sink.inbound(...)``; the parts of a concatenated one (UDH or SAR TLVs)
  are kept in memory until the last arrives (at most ``inbound_part_ttl`` seconds), and only
  that last part's answer waits for the sink; ``extra["num_messages"]`` is the part count;
* when the sink raises, the error is logged and the ``deliver_sm`` answered with
  ``ESME_RX_T_APPN`` (0x64, temporary application error), so the SMSC delivers it again;
* a receipt without an id or a readable state, or a PDU that cannot be decoded, is logged with
  its content, counted (``cascade_smpp_deliver_sm_total{outcome="malformed"}``) and answered
  with ``ESME_ROK``: sending it again would not make it readable.

``Receipt.at`` and ``InboundMessage.at`` are the time of arrival on the injected clock (the
SMSC's own dates carry no time zone).
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiosmpplib import (
    NPI,
    TON,
    BindTransceiver,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    PhoneNumber,
    SmppCommand,
    SmppCommandStatus,
    SubmitSm,
    Unbind,
    UnbindResp,
)
from prometheus_client import Counter

from cascade.channels import gsm
from cascade.channels.base import (
    ChannelProvider,
    InboundMessage,
    OutboundMessage,
    Receipt,
    ReceiptSink,
    SendResult,
)
from cascade.channels.receipts import (
    TLV_SAR_MSG_REF_NUM,
    TLV_SAR_SEGMENT_SEQNUM,
    TLV_SAR_TOTAL_SEGMENTS,
    DeliverSm,
    MalformedPdu,
    MalformedReceipt,
    decode_deliver_sm,
    normalise_message_id,
    outcome_of,
    parse_receipt,
    receipt_text,
)
from cascade.channels.smpp_config import SmppConnectionSettings, SmppSettings
from cascade.clock import Clock, SystemClock
from cascade.errors import ChannelOutcomeUnknown, ChannelRejected, ChannelUnavailable

log = structlog.get_logger(__name__)

SUBMITS = Counter(
    "cascade_smpp_submits",
    "submit_sm PDUs by connection and result (accepted, throttled, rejected, unconfirmed)",
    ["connection", "result"],
)
DELIVERIES = Counter(
    "cascade_smpp_deliver_sm",
    "deliver_sm PDUs by connection, kind (receipt, inbound, unknown) and outcome "
    "(stored, no_change, part, malformed, sink_error, expired)",
    ["connection", "kind", "outcome"],
)
BINDS = Counter(
    "cascade_smpp_binds",
    "Bind attempts and lost sessions by connection and result (bound, failed, lost)",
    ["connection", "result"],
)

#: Nexmo asynchronous error codes used here
CODE_THROTTLED = 1000
CODE_COMMUNICATION_FAILED = 1100
CODE_PROVIDER_ERROR = 1331

#: command_status values that mean "not now": the message was not taken, send it later
THROTTLE_STATUSES = frozenset({SmppCommandStatus.ESME_RTHROTTLED, SmppCommandStatus.ESME_RMSGQFUL})
SYSTEM_ERROR_STATUS = int(SmppCommandStatus.ESME_RSYSERR)
#: deliver_sm_resp statuses: taken, and "temporary application error, send it again"
ESME_ROK = int(SmppCommandStatus.ESME_ROK)
ESME_RX_T_APPN = int(SmppCommandStatus.ESME_RX_T_APPN)

#: submit_sm_resp command_status -> Nexmo asynchronous error code (default 1331)
SUBMIT_STATUS_CODES: dict[int, int] = {
    0x01: 1090,
    **dict.fromkeys((0x02, 0x03, 0x04, 0x05, 0x53), 1030),
    **dict.fromkeys(
        (0x06, 0x07, 0x0C, 0x15, 0x33, 0x34, 0x40, 0x42, 0x43, 0x54, 0x55, 0x61, 0x63),
        1020,
    ),
    **dict.fromkeys((0xC0, 0xC1, 0xC2, 0xC4), 1020),
    0xC3: 1010,
    **dict.fromkeys((0x0A, 0x48, 0x49), 1120),
    **dict.fromkeys((0x0B, 0x50, 0x51), 1170),
    0x44: 1140,
    0x62: 1130,
    0xFE: 1230,
    0xFF: 1330,
}

#: times a throttled later part of a partly sent message is tried again before giving up
PART_RETRIES = 5

_HEADER = struct.Struct("!IIII")
_MAX_PDU_LENGTH = 70_000  # a 64 KiB message_payload plus every mandatory field
_MAX_SEQUENCE = 0x7FFFFFFF
_RESPONSE_BIT = 0x80000000
_UNBIND_WAIT = 1.0  # seconds to wait for unbind_resp on stop


def status_name(status: int) -> str:
    """The SMPP name of a command_status, e.g. ``ESME_RTHROTTLED (0x00000058)``."""
    try:
        name = SmppCommandStatus(status).name
    except ValueError:
        name = "vendor status" if 0x400 <= status <= 0x4FF else "unknown status"
    return f"{name} ({status:#010x})"


class SmppSubmitUnconfirmed(ChannelOutcomeUnknown):
    """The submit_sm was written but not answered: the SMSC may have accepted the message."""


class _LinkClosed(Exception):
    """The TCP connection to the SMSC ended; the message says why."""


class _BindRefused(Exception):
    """The SMSC answered the bind with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {status_name(status)}")
        self.status = status


class _ProtocolError(Exception):
    """The SMSC sent something that is not SMPP."""


@dataclass(frozen=True, slots=True)
class _Pdu:
    """A PDU as read off the wire."""

    command_id: int
    status: int
    sequence: int
    body: bytes


async def _read_pdu(reader: asyncio.StreamReader) -> _Pdu:
    """Read one whole PDU; raises EOFError subclasses on a closed stream."""
    header = await reader.readexactly(_HEADER.size)
    length, command_id, status, sequence = _HEADER.unpack(header)
    if not _HEADER.size <= length <= _MAX_PDU_LENGTH:
        raise _ProtocolError(f"PDU length {length} is out of range")
    body = await reader.readexactly(length - _HEADER.size)
    return _Pdu(command_id, status, sequence, body)


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; returns whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


def _cstring(body: bytes) -> str:
    """The first C-octet string of a body (a response's ``message_id``/``system_id``)."""
    return body.split(b"\x00", 1)[0].decode("latin-1")


class Backoff:
    """Truncated exponential backoff: ``minimum``, then doubling up to ``maximum``."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.current = 0.0

    def next(self) -> float:
        """The next delay, one step longer than the last."""
        self.current = self.minimum if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        """Start again from ``minimum``."""
        self.current = 0.0


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` of them back to back after a pause.

    With ``burst`` 1 it is a minimum gap of ``1 / rate`` between tokens: what a gateway that
    enforces its quota as a gap between submits (Jasmin) accepts. :meth:`take` always succeeds
    and says how long to wait before using the token, so waiting callers are served in the
    order they took their tokens, each ``1 / rate`` after the one before.
    """

    def __init__(
        self, rate: float, burst: int = 1, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self._now = now
        self._updated = now()

    def _refill(self) -> None:
        now = self._now()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self) -> float:
        """Seconds until a token taken now could be used."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> float:
        """Take a token; returns the seconds to wait before using it."""
        self._refill()
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _Link:
    """One bound TCP connection: writes PDUs and matches responses to requests.

    PDUs are queued and handed to the socket together, in the order they were written, by a
    callback that runs once the event loop has run the callbacks already due: a batch of
    submits (or of ``deliver_sm_resp`` answering a batch of receipts) costs one ``send``
    system call instead of one each, on this side and at the SMSC.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[_Pdu]] = {}
        self.closed: str | None = None
        self._drain = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._queued: list[bytes] = []

    def write(self, pdu: bytes) -> None:
        """Queue a PDU for the socket; raises _LinkClosed if the link has ended."""
        if self.closed is not None:
            raise _LinkClosed(self.closed)
        if not self._queued:
            self._loop.call_soon(self._send_queued)
        self._queued.append(pdu)

    def _send_queued(self) -> None:
        """Hand every queued PDU to the transport in one write."""
        if not self._queued:
            return
        data = b"".join(self._queued)
        self._queued.clear()
        try:
            self.writer.write(data)
        except Exception as exc:  # the transport refused it: the link is no use any more
            self.close(f"write failed: {exc!r}")

    async def flush(self) -> None:
        """Wait while the socket is behind (flow control). PDUs still queued go out a moment
        later; if they fill the socket, the next flush waits for it."""
        async with self._drain:
            await self.writer.drain()

    def expect(self, sequence: int) -> asyncio.Future[_Pdu]:
        """A future for the response to request ``sequence``."""
        future: asyncio.Future[_Pdu] = asyncio.get_running_loop().create_future()
        self.pending[sequence] = future
        return future

    def resolve(self, pdu: _Pdu) -> bool:
        """Hand a response to its waiting request; False when nobody waits for it."""
        future = self.pending.pop(pdu.sequence, None)
        if future is None or future.done():
            return False
        future.set_result(pdu)
        return True

    def close(self, reason: str) -> None:
        """End the link; requests still waiting fail with _LinkClosed."""
        if self.closed is not None:
            return
        self.closed = reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_LinkClosed(reason))
        self.pending.clear()
        self._send_queued()  # queued before the close: out before the connection closes
        self.writer.close()


@dataclass
class _Parts:
    """The parts of one inbound concatenated message received so far."""

    created: float
    bodies: dict[int, bytes] = field(default_factory=dict)


_PartsKey = tuple[str, str, int, int]  # source, destination, reference, total


class InboundParts:
    """Parts of concatenated inbound messages, kept in memory until the last one arrives.

    Parts are answered as they arrive, so parts held here when the process stops are lost; the
    SMSC will not send them again. Incomplete messages are dropped after ``ttl`` seconds.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[_PartsKey, _Parts] = {}

    def add(self, key: _PartsKey, seq: int, body: bytes, now: float) -> list[bytes] | None:
        """Keep one part; returns every part's body in order once all have arrived."""
        entry = self._entries.setdefault(key, _Parts(created=now))
        entry.bodies[seq] = body
        total = key[3]
        if len(entry.bodies) < total:
            return None
        del self._entries[key]
        return [entry.bodies[number] for number in range(1, total + 1)]

    def restore(self, key: _PartsKey, bodies: list[bytes], now: float) -> None:
        """Put a completed message's parts back (its last part will be delivered again)."""
        self._entries[key] = _Parts(created=now, bodies=dict(enumerate(bodies, start=1)))

    def expire(self, now: float) -> list[_PartsKey]:
        """Drop messages whose first part is older than ``ttl``; returns their keys."""
        expired = [key for key, entry in self._entries.items() if now - entry.created > self.ttl]
        for key in expired:
            del self._entries[key]
        return expired

    def __len__(self) -> int:
        return len(self._entries)


def _sar(tlvs: Mapping[int, bytes]) -> gsm.Concat | None:
    """Concatenation from the SAR TLVs (0x020C/0x020E/0x020F), when all three are present."""
    ref, total, seq = (
        tlvs.get(TLV_SAR_MSG_REF_NUM),
        tlvs.get(TLV_SAR_TOTAL_SEGMENTS),
        tlvs.get(TLV_SAR_SEGMENT_SEQNUM),
    )
    if ref is None or total is None or seq is None:
        return None
    if not ref or len(total) != 1 or len(seq) != 1:
        raise ValueError("SAR TLVs have the wrong length")
    return gsm.Concat(ref=int.from_bytes(ref, "big"), total=total[0], seq=seq[0])


class SmppConnection:
    """One configured SMSC bind: keeps it up, submits parts, hands deliver_sm to the sink."""

    def __init__(self, settings: SmppConnectionSettings, *, clock: Clock, part_ttl: float) -> None:
        self.settings = settings
        self.name = settings.name
        self.last_error: str | None = None
        self.in_flight = 0
        self._clock = clock
        self._sink: ReceiptSink | None = None
        self._link: _Link | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._handler_slots = asyncio.Semaphore(settings.window_size)
        self._window = asyncio.Semaphore(settings.window_size)
        self._bucket = (
            TokenBucket(settings.throughput, settings.throughput_burst)
            if settings.throughput > 0
            else None
        )
        self._reconnect = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        self._throttle = Backoff(settings.throttle_min_delay, settings.throttle_max_delay)
        #: the current throttle episode: when its hold began and ends, and how many new
        #: messages it has turned away (each is told a later time, so they resume spread out)
        self._hold_started = 0.0
        self._throttled_until = 0.0
        self._held = 0
        self._next_attempt_at = 0.0
        self._sequence = 0
        self._reference = random.randrange(256)
        self._parts = InboundParts(part_ttl)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """Whether a bound session is up right now."""
        return self._link is not None and self._link.closed is None

    def start(self, sink: ReceiptSink) -> None:
        """Start connecting in the background; receipts and MO messages go to ``sink``."""
        self._sink = sink
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"smpp:{self.name}")
        self._task.add_done_callback(self._run_done)

    def _run_done(self, task: asyncio.Task[None]) -> None:
        """Report a connection loop that ended on an error it did not expect."""
        if not task.cancelled() and task.exception() is not None:
            self.last_error = f"connection loop failed: {task.exception()!r}"
            log.error(
                "smpp connection loop failed", connection=self.name, exc_info=task.exception()
            )

    async def first_attempt(self, seconds: float) -> bool:
        """Wait until the first connection attempt has bound or failed; False on timeout."""
        return await _wait_event(self._attempted, seconds)

    async def stop(self) -> None:
        """Let submits in flight finish, unbind, close, and finish receipts being stored."""
        self._stopping = True
        self._wake.set()
        timeout = self.settings.response_timeout
        if not await _wait_event(self._idle, timeout):
            log.warning(
                "smpp stopping with submits unanswered", connection=self.name, count=self.in_flight
            )
        link = self._link
        if link is not None and link.closed is None:
            await self._unbind(link)
            link.close("stopped")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)
        for task in set(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _unbind(self, link: _Link) -> None:
        """Say goodbye; some SMSCs never answer unbind, so wait only briefly."""
        sequence = self._next_sequence()
        future = link.expect(sequence)
        try:
            link.write(Unbind(sequence_num=sequence).pdu())
            await link.flush()
            async with asyncio.timeout(min(_UNBIND_WAIT, self.settings.response_timeout)):
                await future
        except (TimeoutError, _LinkClosed, OSError) as exc:
            log.info("smpp unbind not answered", connection=self.name, error=repr(exc))
        finally:
            link.pending.pop(sequence, None)

    async def _run(self) -> None:
        """Connect, bind and serve until stopped; after a failure wait the backoff and retry."""
        while not self._stopping:
            try:
                link = await self._open()
            except (OSError, EOFError, TimeoutError, _BindRefused, _ProtocolError) as exc:
                BINDS.labels(self.name, "failed").inc()
                self.last_error = str(exc) or repr(exc)
                self._attempted.set()
                await self._pause(f"bind failed: {self.last_error}")
                continue
            BINDS.labels(self.name, "bound").inc()
            self._reconnect.reset()
            self.last_error = None
            self._link = link
            self._attempted.set()
            log.info("smpp bound", connection=self.name, host=self.settings.host)
            try:
                await self._serve(link)
            finally:
                self._link = None
                link.close("session ended")
            if not self._stopping:
                BINDS.labels(self.name, "lost").inc()
                self.last_error = f"connection lost: {link.closed}"
                await self._pause(self.last_error)

    async def _pause(self, why: str) -> None:
        """Wait the next reconnect delay (cut short by stop)."""
        if self._stopping:
            return
        delay = self._reconnect.next()
        self._next_attempt_at = time.monotonic() + delay
        log.warning("smpp reconnecting", connection=self.name, reason=why, retry_in=delay)
        self._wake.clear()
        await _wait_event(self._wake, delay)

    async def _open(self) -> _Link:
        """Open the TCP connection and bind as a transceiver."""
        settings = self.settings
        async with asyncio.timeout(settings.connect_timeout):
            reader, writer = await asyncio.open_connection(settings.host, settings.port)
            try:
                sequence = self._next_sequence()
                bind = BindTransceiver(
                    sequence_num=sequence,
                    system_id=settings.system_id,
                    password=settings.password.get_secret_value(),
                    system_type=settings.system_type,
                )
                writer.write(bind.pdu())
                await writer.drain()
                answer = await _read_pdu(reader)
                if answer.command_id not in (
                    SmppCommand.BIND_TRANSCEIVER_RESP,
                    SmppCommand.GENERIC_NACK,
                ):
                    raise _ProtocolError(f"bind answered with command {answer.command_id:#010x}")
                if answer.status != 0 or answer.command_id == SmppCommand.GENERIC_NACK:
                    raise _BindRefused(answer.status)
            except BaseException:
                writer.close()
                raise
        return _Link(reader, writer)

    async def _serve(self, link: _Link) -> None:
        """Read PDUs and keep the link alive until it ends."""
        keeper = asyncio.create_task(self._keep_alive(link), name=f"smpp:{self.name}:keepalive")
        try:
            await self._read_loop(link)
        except (OSError, EOFError, _ProtocolError, _LinkClosed) as exc:
            link.close(str(exc) or repr(exc))
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _read_loop(self, link: _Link) -> None:
        """Dispatch every PDU the SMSC sends."""
        while True:
            pdu = await _read_pdu(link.reader)
            if pdu.command_id & _RESPONSE_BIT:
                if not link.resolve(pdu):
                    log.info(
                        "smpp response matches no request",
                        connection=self.name,
                        command_id=hex(pdu.command_id),
                        sequence=pdu.sequence,
                    )
            elif pdu.command_id == SmppCommand.DELIVER_SM:
                await self._handler_slots.acquire()
                task = asyncio.create_task(self._deliver(link, pdu))
                self._handlers.add(task)
                task.add_done_callback(self._handler_done)
            elif pdu.command_id == SmppCommand.ENQUIRE_LINK:
                link.write(EnquireLinkResp(sequence_num=pdu.sequence).pdu())
            elif pdu.command_id == SmppCommand.UNBIND:
                link.write(UnbindResp(sequence_num=pdu.sequence).pdu())
                await link.flush()
                link.close("unbound by the SMSC")
                return
            else:
                link.write(
                    GenericNack(
                        sequence_num=pdu.sequence,
                        command_status=SmppCommandStatus.ESME_RINVCMDID,
                    ).pdu()
                )

    async def _keep_alive(self, link: _Link) -> None:
        """Send enquire_link every interval; an unanswered one ends the link."""
        while link.closed is None:
            await asyncio.sleep(self.settings.enquire_link_interval)
            sequence = self._next_sequence()
            future = link.expect(sequence)
            try:
                link.write(EnquireLink(sequence_num=sequence).pdu())
                await link.flush()
                async with asyncio.timeout(self.settings.response_timeout):
                    await future
            except TimeoutError:
                link.close("enquire_link not answered")
            except (_LinkClosed, OSError):
                return
            finally:
                link.pending.pop(sequence, None)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        """Free a handler slot; report a handler that failed in a way it did not expect."""
        self._handlers.discard(task)
        self._handler_slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "smpp deliver_sm handler failed", connection=self.name, exc_info=task.exception()
            )

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % _MAX_SEQUENCE + 1
        return self._sequence

    def next_reference(self) -> int:
        """A concatenation reference for the next multi-part message (8 bits, rotating)."""
        self._reference = (self._reference + 1) % 256
        return self._reference

    # -- submitting ------------------------------------------------------------------------

    def unavailable(self) -> ChannelUnavailable:
        """The error for a send while this connection is not bound."""
        if self._stopping:
            return ChannelUnavailable(
                f"SMPP connection {self.name} is stopping", code=CODE_COMMUNICATION_FAILED
            )
        wait = self._next_attempt_at - time.monotonic()
        return ChannelUnavailable(
            f"SMPP connection {self.name} is not bound: {self.last_error or 'connecting'}",
            retry_after=wait if wait > 0 else self.settings.reconnect_min_delay,
            code=CODE_COMMUNICATION_FAILED,
        )

    def _current_link(self) -> _Link:
        link = self._link
        if self._stopping or link is None or link.closed is not None:
            raise self.unavailable()
        return link

    async def submit(self, parts: list[SubmitSm]) -> list[str]:
        """Submit a message's parts in order; returns their SMSC ids (normalised)."""
        ids: list[str] = []
        for index, part in enumerate(parts):
            ids.append(await self._submit_part(part, index, len(parts), accepted=len(ids)))
        return ids

    async def _submit_part(self, part: SubmitSm, index: int, total: int, accepted: int) -> str:
        """Submit one part; later parts are retried here when throttled (see module doc)."""
        label = f"part {index + 1}/{total}" if total > 1 else "message"
        retries = 0
        while True:
            await self._wait_throttle(first=accepted == 0)
            async with self._window_slot():
                await self._take_token(first=accepted == 0)
                written_at = time.monotonic()
                answer = await self._exchange(part, label)
            status = answer.status
            if answer.command_id == SmppCommand.SUBMIT_SM_RESP and status == 0:
                if written_at >= self._hold_started:
                    self._throttle.reset()  # taken after the last hold: the episode is over
                SUBMITS.labels(self.name, "accepted").inc()
                message_id = normalise_message_id(
                    _cstring(answer.body), self.settings.submit_id_format
                )
                if not message_id:
                    log.warning("smpp submit accepted without an id", connection=self.name)
                return message_id
            if status in THROTTLE_STATUSES:
                SUBMITS.labels(self.name, "throttled").inc()
                remaining = self._throttled(written_at)
                retries += 1
                if accepted == 0 or retries > PART_RETRIES:
                    raise ChannelUnavailable(
                        f"SMSC {self.name} throttled the {label}: {status_name(status)}",
                        retry_after=self._resume_after(remaining),
                        code=CODE_THROTTLED,
                    )
                continue
            SUBMITS.labels(self.name, "rejected").inc()
            reason = f"SMSC {self.name} refused the {label}: {status_name(status)}"
            if accepted:
                reason += f" ({accepted} earlier part(s) were accepted)"
            if status == SYSTEM_ERROR_STATUS:
                raise ChannelUnavailable(
                    reason, retry_after=self.settings.throttle_min_delay, code=CODE_PROVIDER_ERROR
                )
            raise ChannelRejected(SUBMIT_STATUS_CODES.get(status, CODE_PROVIDER_ERROR), reason)

    async def _exchange(self, part: SubmitSm, label: str) -> _Pdu:
        """Write one submit_sm and wait for its answer."""
        link = self._current_link()
        sequence = self._next_sequence()
        part.sequence_num = sequence
        pdu = part.pdu()
        future = link.expect(sequence)
        try:
            link.write(pdu)
        except _LinkClosed as exc:
            link.pending.pop(sequence, None)
            raise self.unavailable() from exc
        self.in_flight += 1
        self._idle.clear()
        try:
            async with asyncio.timeout(self.settings.response_timeout):
                await link.flush()
                return await future
        except TimeoutError as exc:
            SUBMITS.labels(self.name, "unconfirmed").inc()
            raise SmppSubmitUnconfirmed(
                f"SMSC {self.name} did not answer the {label} within "
                f"{self.settings.response_timeout}s; it may have been accepted",
                retry_after=self.settings.reconnect_min_delay,
                code=CODE_COMMUNICATION_FAILED,
            ) from exc
        except (_LinkClosed, OSError) as exc:
            SUBMITS.labels(self.name, "unconfirmed").inc()
            raise SmppSubmitUnconfirmed(
                f"connection to SMSC {self.name} was lost after the {label} was written "
                f"({exc}); it may have been accepted",
                retry_after=self.settings.reconnect_min_delay,
                code=CODE_COMMUNICATION_FAILED,
            ) from exc
        finally:
            link.pending.pop(sequence, None)
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    def _throttled(self, written_at: float) -> float:
        """Note a throttled submit; returns the seconds left of the hold.

        One backoff step per episode: the answers to submits written before the current hold
        began (the rest of the window) belong to it and leave it as it is; a submit written
        after the hold and throttled again starts the next, longer one.
        """
        now = time.monotonic()
        if written_at < self._hold_started:
            return max(self._throttled_until - now, 0.0)
        delay = self._throttle.next()
        self._hold_started = now
        self._throttled_until = now + delay
        self._held = 0
        log.info("smpp throttled; holding submits", connection=self.name, hold=delay)
        return delay

    def _resume_after(self, remaining: float) -> float:
        """When a message turned away during a hold should come back: after the hold, each
        one ``1 / throughput`` after the one before (jittered over the hold without a
        throughput), so the messages held do not all resume in the same instant."""
        self._held += 1
        if self._bucket is not None:
            return remaining + self._held / self._bucket.rate
        return remaining + random.uniform(0.0, self._throttle.current)

    async def _wait_throttle(self, first: bool) -> None:
        """Hold back after a throttle: refuse a new message, delay a message already started."""
        remaining = self._throttled_until - time.monotonic()
        if remaining <= 0:
            return
        if first:
            retry_after = self._resume_after(remaining)
            raise ChannelUnavailable(
                f"SMSC {self.name} is throttling; try again in {retry_after:.2f}s",
                retry_after=retry_after,
                code=CODE_THROTTLED,
            )
        await asyncio.sleep(remaining)

    @asynccontextmanager
    async def _window_slot(self) -> AsyncIterator[None]:
        """One of ``window_size`` outstanding submits; waits up to ``response_timeout``."""
        timeout = self.settings.response_timeout
        try:
            if not self._window.locked():
                await self._window.acquire()  # a free slot: taken at once, no timer needed
            else:
                async with asyncio.timeout(timeout):
                    await self._window.acquire()
        except TimeoutError as exc:
            raise ChannelUnavailable(
                f"SMSC {self.name}: all {self.settings.window_size} window slots stayed busy "
                f"for {timeout}s",
                retry_after=timeout,
                code=CODE_THROTTLED,
            ) from exc
        try:
            yield
        finally:
            self._window.release()

    async def _take_token(self, first: bool) -> None:
        """Keep to ``throughput``; a new message that would wait too long is refused instead."""
        if self._bucket is None:
            return
        wait = self._bucket.wait_time()
        if first and wait > self.settings.response_timeout:
            raise ChannelUnavailable(
                f"SMSC {self.name}: throughput limit of {self.settings.throughput}/s reached",
                retry_after=wait,
                code=CODE_THROTTLED,
            )
        delay = self._bucket.take()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- receiving -------------------------------------------------------------------------

    async def _deliver(self, link: _Link, pdu: _Pdu) -> None:
        """Handle one deliver_sm and answer it on the link it came on."""
        status = await self._handle_deliver_sm(pdu.body)
        if link.closed is not None:
            log.info(
                "smpp deliver_sm not answered: its connection is gone; the SMSC will resend it",
                connection=self.name,
                sequence=pdu.sequence,
            )
            return
        try:
            link.write(
                DeliverSmResp(
                    sequence_num=pdu.sequence, command_status=SmppCommandStatus(status)
                ).pdu()
            )
            await link.flush()
        except (_LinkClosed, OSError) as exc:
            log.info(
                "smpp deliver_sm_resp not sent; the SMSC will resend",
                connection=self.name,
                error=repr(exc),
            )

    async def _handle_deliver_sm(self, body: bytes) -> int:
        """Decode, store and return the command_status to answer with."""
        try:
            pdu = decode_deliver_sm(body)
        except MalformedPdu as exc:
            DELIVERIES.labels(self.name, "unknown", "malformed").inc()
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
            DELIVERIES.labels(self.name, "receipt", "malformed").inc()
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
            DELIVERIES.labels(self.name, "receipt", "no_change").inc()
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
            DELIVERIES.labels(self.name, "inbound", "expired").inc()
            log.warning("smpp inbound parts expired", connection=self.name, key=expired)
        try:
            if pdu.udhi:
                concat, body = gsm.split_udh(pdu.message)
            else:
                concat, body = _sar(pdu.tlvs), pdu.message
            if concat is not None and not 1 <= concat.seq <= concat.total:
                raise ValueError(f"part {concat.seq} of {concat.total}")
        except ValueError as exc:
            DELIVERIES.labels(self.name, "inbound", "malformed").inc()
            log.warning(
                "smpp inbound message malformed",
                connection=self.name,
                error=str(exc),
                message=pdu.message.hex(),
            )
            return ESME_ROK
        bodies = [body]
        key: _PartsKey | None = None
        if concat is not None and concat.total > 1:
            key = (pdu.source_addr, pdu.destination_addr, concat.ref, concat.total)
            complete = self._parts.add(key, concat.seq, body, now)
            if complete is None:
                DELIVERIES.labels(self.name, "inbound", "part").inc()
                return ESME_ROK
            bodies = complete
        message = InboundMessage(
            provider=SmppProvider.name,
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
        if self._sink is None:
            raise RuntimeError("SmppConnection.start() was not called with a sink")
        return self._sink

    async def _store(self, stored: Awaitable[None], kind: str, subject: str) -> int:
        """Await the sink; a failure is logged and answered so that the SMSC resends."""
        try:
            await stored
        except Exception:
            DELIVERIES.labels(self.name, kind, "sink_error").inc()
            log.exception(
                "smpp sink failed; answering ESME_RX_T_APPN so the SMSC resends",
                connection=self.name,
                kind=kind,
                subject=subject,
            )
            return ESME_RX_T_APPN
        DELIVERIES.labels(self.name, kind, "stored").inc()
        return ESME_ROK


class SmppProvider(ChannelProvider):
    """SMS through one or more SMSCs over SMPP v3.4 (see the module doc)."""

    name = "smpp"

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
        """Submit an SMS; see the module doc for ids, price and errors."""
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
    ) -> list[SubmitSm]:
        """One submit_sm per part, payload already encoded (UDH included when concatenated)."""
        if settings.source_addr_ton is not None:
            source_ton = settings.source_addr_ton
        else:
            source_ton = TON.INTERNATIONAL if source.isdigit() else TON.ALPHANUMERIC
        if settings.source_addr_npi is not None:
            source_npi = settings.source_addr_npi
        else:
            source_npi = NPI.ISDN if source.isdigit() else NPI.UNKNOWN
        submits: list[SubmitSm] = []
        for part in encoded.parts:
            submit = SubmitSm(
                short_message=part.text,
                source=PhoneNumber(source, TON(source_ton), NPI(source_npi)),
                destination=PhoneNumber(
                    destination, TON(settings.dest_addr_ton), NPI(settings.dest_addr_npi)
                ),
                esm_class=0x40 if encoded.udhi else 0x00,
                registered_delivery=0x01,
                encoding="ucs2" if encoded.data_coding == gsm.DATA_CODING_UCS2 else None,
            )
            submit.set_encoded_message(part.payload)
            submits.append(submit)
        return submits
