"""One SMPP session: bind, keep alive, submit under the window, answer every deliver_sm.

:class:`SmppConnection` is one configured SMSC bind and the loop around it (see the package
doc, :mod:`cascade.channels.smpp`, for why the loop is this package's and not aiosmpplib's):
it binds and rebinds with backoff, reads and dispatches PDUs, sends ``enquire_link``, submits
a message's parts as its :class:`~cascade.channels.smpp.flow.SubmitFlow` allows, and answers
each ``deliver_sm`` with what :class:`~cascade.channels.smpp.delivery.DeliverSmHandler` made of
it. The provider (:mod:`cascade.channels.smpp.provider`) routes messages over several of these.
"""

from __future__ import annotations

import asyncio
import random
import time

import structlog
from aiosmpplib import (
    BindTransceiver,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    SmppCommand,
    SmppCommandStatus,
    Unbind,
    UnbindResp,
)

from cascade.channels.base import ReceiptSink
from cascade.channels.receipts import normalise_message_id
from cascade.channels.smpp.config import SmppConnectionSettings
from cascade.channels.smpp.delivery import DeliverSmHandler
from cascade.channels.smpp.errors import (
    CODE_COMMUNICATION_FAILED,
    CODE_PROVIDER_ERROR,
    CODE_THROTTLED,
    SUBMIT_STATUS_CODES,
    SmppSubmitUnconfirmed,
)
from cascade.channels.smpp.flow import Backoff, SubmitFlow
from cascade.channels.smpp.framing import (
    MAX_SEQUENCE,
    RESPONSE_BIT,
    SYSTEM_ERROR_STATUS,
    THROTTLE_STATUSES,
    BindRefused,
    Pdu,
    ProtocolError,
    SubmitPart,
    cstring,
    deliver_sm_resp,
    read_pdu,
    status_name,
)
from cascade.channels.smpp.link import Link, LinkClosed
from cascade.channels.smpp.metrics import BINDS, submits
from cascade.clock import Clock
from cascade.errors import ChannelRejected, ChannelUnavailable

log = structlog.get_logger(__name__)

#: times a throttled later part of a partly sent message is tried again before giving up
PART_RETRIES = 5
_UNBIND_WAIT = 1.0  # seconds to wait for unbind_resp on stop


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; returns whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


class SmppConnection:
    """One configured SMSC bind: keeps it up, submits parts, hands deliver_sm to the sink."""

    def __init__(self, settings: SmppConnectionSettings, *, clock: Clock, part_ttl: float) -> None:
        self.settings = settings
        self.name = settings.name
        self.last_error: str | None = None
        self.in_flight = 0
        self._link: Link | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._handler_slots = asyncio.Semaphore(settings.window_size)
        self._flow = SubmitFlow(settings)
        self._reconnect = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        self._next_attempt_at = 0.0
        self._sequence = 0
        self._reference = random.randrange(256)
        self._deliveries = DeliverSmHandler(settings, clock=clock, part_ttl=part_ttl)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """Whether a bound session is up right now."""
        return self._link is not None and self._link.closed is None

    def start(self, sink: ReceiptSink) -> None:
        """Start connecting in the background; receipts and MO messages go to ``sink``."""
        self._deliveries.sink = sink
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
            # the counterpart of "smpp bound" (a session lost is "smpp reconnecting")
            log.info("smpp unbound", connection=self.name, host=self.settings.host)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)
        for task in set(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _unbind(self, link: Link) -> None:
        """Say goodbye; some SMSCs never answer unbind, so wait only briefly."""
        sequence = self._next_sequence()
        future = link.expect(sequence)
        try:
            link.write(Unbind(sequence_num=sequence).pdu())
            await link.flush()
            async with asyncio.timeout(min(_UNBIND_WAIT, self.settings.response_timeout)):
                await future
        except (TimeoutError, LinkClosed, OSError) as exc:
            log.info("smpp unbind not answered", connection=self.name, error=repr(exc))
        finally:
            link.pending.pop(sequence, None)

    async def _run(self) -> None:
        """Connect, bind and serve until stopped; after a failure wait the backoff and retry."""
        while not self._stopping:
            try:
                link = await self._open()
            except (OSError, EOFError, TimeoutError, BindRefused, ProtocolError) as exc:
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

    async def _open(self) -> Link:
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
                answer = await read_pdu(reader)
                if answer.command_id not in (
                    SmppCommand.BIND_TRANSCEIVER_RESP,
                    SmppCommand.GENERIC_NACK,
                ):
                    raise ProtocolError(f"bind answered with command {answer.command_id:#010x}")
                if answer.status != 0 or answer.command_id == SmppCommand.GENERIC_NACK:
                    raise BindRefused(answer.status)
            except BaseException:
                writer.close()
                raise
        return Link(reader, writer)

    async def _serve(self, link: Link) -> None:
        """Read PDUs and keep the link alive until it ends."""
        keeper = asyncio.create_task(self._keep_alive(link), name=f"smpp:{self.name}:keepalive")
        try:
            await self._read_loop(link)
        except (OSError, EOFError, ProtocolError, LinkClosed) as exc:
            link.close(str(exc) or repr(exc))
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _read_loop(self, link: Link) -> None:
        """Dispatch every PDU the SMSC sends."""
        while True:
            pdu = await read_pdu(link.reader)
            if pdu.command_id & RESPONSE_BIT:
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

    async def _keep_alive(self, link: Link) -> None:
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
            except (LinkClosed, OSError):
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
        self._sequence = self._sequence % MAX_SEQUENCE + 1
        return self._sequence

    def await_share(self) -> None:
        """Hold submits until :meth:`share` gives this node's part of the throughput."""
        self._flow.await_share()

    def share(self, nodes: int, hold: float = 0.0) -> None:
        """Send at ``1 / nodes`` of the throughput, after ``hold`` seconds (see
        :meth:`SubmitFlow.share`)."""
        self._flow.share(nodes, hold)

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

    def _current_link(self) -> Link:
        link = self._link
        if self._stopping or link is None or link.closed is not None:
            raise self.unavailable()
        return link

    async def submit(self, parts: list[SubmitPart]) -> list[str]:
        """Submit a message's parts in order; returns their SMSC ids (normalised)."""
        ids: list[str] = []
        for index, part in enumerate(parts):
            ids.append(await self._submit_part(part, index, len(parts), accepted=len(ids)))
        return ids

    async def _submit_part(self, part: SubmitPart, index: int, total: int, accepted: int) -> str:
        """Submit one part; later parts are retried here when throttled (see the package doc)."""
        label = f"part {index + 1}/{total}" if total > 1 else "message"
        retries = 0
        while True:
            await self._flow.wait_throttle(first=accepted == 0)
            async with self._flow.window_slot():
                await self._flow.take_token(first=accepted == 0)
                written_at = time.monotonic()
                answer = await self._exchange(part, label)
            status = answer.status
            if answer.command_id == SmppCommand.SUBMIT_SM_RESP and status == 0:
                self._flow.accepted(written_at)
                submits(self.name, "accepted").inc()
                message_id = normalise_message_id(
                    cstring(answer.body), self.settings.submit_id_format
                )
                if not message_id:
                    log.warning("smpp submit accepted without an id", connection=self.name)
                return message_id
            if status in THROTTLE_STATUSES:
                submits(self.name, "throttled").inc()
                remaining = self._flow.throttled(written_at)
                retries += 1
                if accepted == 0 or retries > PART_RETRIES:
                    raise ChannelUnavailable(
                        f"SMSC {self.name} throttled the {label}: {status_name(status)}",
                        retry_after=self._flow.resume_after(remaining),
                        code=CODE_THROTTLED,
                    )
                continue
            submits(self.name, "rejected").inc()
            reason = f"SMSC {self.name} refused the {label}: {status_name(status)}"
            if accepted:
                reason += f" ({accepted} earlier part(s) were accepted)"
            if status == SYSTEM_ERROR_STATUS:
                raise ChannelUnavailable(
                    reason, retry_after=self.settings.throttle_min_delay, code=CODE_PROVIDER_ERROR
                )
            raise ChannelRejected(SUBMIT_STATUS_CODES.get(status, CODE_PROVIDER_ERROR), reason)

    async def _exchange(self, part: SubmitPart, label: str) -> Pdu:
        """Write one submit_sm and wait for its answer."""
        link = self._current_link()
        sequence = self._next_sequence()
        pdu = part.pdu(sequence)
        future = link.expect(sequence)
        try:
            link.write(pdu)
        except LinkClosed as exc:
            link.pending.pop(sequence, None)
            raise self.unavailable() from exc
        self.in_flight += 1
        self._idle.clear()
        try:
            async with asyncio.timeout(self.settings.response_timeout):
                await link.flush()
                return await future
        except TimeoutError as exc:
            submits(self.name, "unconfirmed").inc()
            raise SmppSubmitUnconfirmed(
                f"SMSC {self.name} did not answer the {label} within "
                f"{self.settings.response_timeout}s; it may have been accepted",
                retry_after=self.settings.reconnect_min_delay,
                code=CODE_COMMUNICATION_FAILED,
            ) from exc
        except (LinkClosed, OSError) as exc:
            submits(self.name, "unconfirmed").inc()
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

    # -- receiving -------------------------------------------------------------------------

    async def _deliver(self, link: Link, pdu: Pdu) -> None:
        """Handle one deliver_sm and answer it on the link it came on."""
        status = await self._deliveries.handle(pdu.body)
        if link.closed is not None:
            log.info(
                "smpp deliver_sm not answered: its connection is gone; the SMSC will resend it",
                connection=self.name,
                sequence=pdu.sequence,
            )
            return
        try:
            link.write(deliver_sm_resp(pdu.sequence, status))
            await link.flush()
        except (LinkClosed, OSError) as exc:
            log.info(
                "smpp deliver_sm_resp not sent; the SMSC will resend",
                connection=self.name,
                error=repr(exc),
            )
