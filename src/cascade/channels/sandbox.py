"""The built-in sandbox: a provider for every channel whose recipients behave as scripted.

Like test card numbers, the last four digits of ``to.number`` (or ``to.id``) choose what
happens, the same in every release:

=======================  ====================================================================
recipient ends with      behaviour
=======================  ====================================================================
anything else            ``submitted`` at once, ``delivered`` after 1 s, ``read`` after 2 s
                         (``read`` only on messenger, whatsapp and viber_service_msg)
``0001``                 ``rejected`` at once: error 1300 "Not part of the provider network"
``0002``                 ``delivered`` after 1 s, never read
``0003``                 ``submitted``, then no receipt ever
``0004``                 ``undeliverable`` at once: error 1100 "Communication failed"
``0005``                 ``delivered`` after 30 s and ``read`` after 31 s (a late receipt)
``0006``                 throttled twice (a transient error, retried), then as the default
=======================  ====================================================================

``speed`` divides every delay (``speed=10`` delivers after 0.1 s). Every message received is
journaled in the store, with the receipts still owed, so a restart neither loses a receipt nor
counts a message twice: a resend of the same message id is recognised and answered with the
first result. Tests read the journal to count what the sandbox received.
"""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections.abc import Sequence
from typing import Protocol

from cascade.channels.base import ChannelProvider, OutboundMessage, ReceiptSink, SendResult
from cascade.clock import Clock
from cascade.domain.records import Receipt, SandboxMessage
from cascade.domain.status import Status
from cascade.errors import ChannelRejected, ChannelUnavailable, ChannelUndeliverable
from cascade.supervision import Setbacks

READ_CHANNELS = frozenset({"messenger", "whatsapp", "viber_service_msg"})
REJECTED = (1300, "Not part of the provider network")
UNREACHABLE = (1100, "Communication failed")
THROTTLED = (1000, "Throttled")
THROTTLED_ATTEMPTS = 2

#: the sandbox's prices per message, so usage and cost show something real
PRICES = {
    "sms": "0.0333",
    "mms": "0.0400",
    "whatsapp": "0.0050",
    "messenger": "0.0000",
    "viber_service_msg": "0.0100",
}


class SandboxJournal(Protocol):
    """Where the sandbox keeps what it received (the Store implements it)."""

    async def sandbox_receive(self, message: SandboxMessage) -> SandboxMessage:
        """Record a send; for a known message id, count the attempt and return the record."""

    async def sandbox_set_receipts(
        self,
        provider_message_id: str,
        receipts_due: Sequence[tuple[float, str]],
        received: float | None,
    ) -> None:
        """Replace the receipts still owed for a message."""

    async def sandbox_messages(self) -> list[SandboxMessage]:
        """Every message received, oldest first."""

    async def sandbox_owed(self) -> list[SandboxMessage]:
        """The messages that still owe receipts, oldest first."""


def behaviour(recipient: str) -> str:
    """The script a recipient follows: its last four characters, or "default"."""
    suffix = recipient[-4:]
    return suffix if suffix in {"0001", "0002", "0003", "0004", "0005", "0006"} else "default"


def scripted_receipts(
    script: str, channel: str, accepted_at: float, speed: float
) -> list[tuple[float, str]]:
    """The receipts a recipient following ``script`` sends after the message was accepted."""
    if script == "0003":
        return []
    if script == "0005":
        plan = [(30.0, Status.DELIVERED), (31.0, Status.READ)]
    else:
        plan = [(1.0, Status.DELIVERED), (2.0, Status.READ)]
    if script == "0002" or channel not in READ_CHANNELS:
        plan = plan[:1]
    return [(accepted_at + delay / speed, status.value) for delay, status in plan]


class SandboxProvider(ChannelProvider):
    """A simulated provider with scripted, durable receipts."""

    name = "sandbox"
    #: a resend of the same message id is recognised, so a crash mid-send may simply resend
    deduplicates = True
    ids_can_repeat = False  # uuid4 ids

    def __init__(
        self,
        journal: SandboxJournal,
        clock: Clock,
        *,
        speed: float = 1.0,
        takeover_after: float | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._speed = speed
        #: receipts the journal owes this long past their time belong to a process that is
        #: gone (a killed worker beside others that keep running): this one emits them
        #: (None: only what this process sent, and what the journal owes at start)
        self.takeover_after = takeover_after
        self._sweep_task: asyncio.Task[None] | None = None
        self._sink: ReceiptSink | None = None
        self._due: list[tuple[float, str, str]] = []  # (at, status, provider_message_id)
        self._owed: dict[str, list[tuple[float, str]]] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, sink: ReceiptSink, *, run_timer: bool = True) -> None:
        """Re-arm the receipts owed from the journal; with ``run_timer``, emit them on time."""
        self._sink = sink
        for message in await self._journal.sandbox_owed():
            self._owe(message.provider_message_id, list(message.receipts_due))
        if run_timer:
            self._loop_task = asyncio.create_task(self._run(), name="sandbox-receipts")
            if self.takeover_after is not None:
                self._sweep_task = asyncio.create_task(
                    self._sweep(self.takeover_after), name="sandbox-takeover"
                )

    async def stop(self) -> None:
        for task in (self._loop_task, self._sweep_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._loop_task = self._sweep_task = None

    async def take_over_overdue(self, after: float) -> int:
        """Owe here the receipts of every message whose first owed receipt is more than
        ``after`` seconds overdue and that this process does not hold; how many messages.

        Each process emits the receipts of what it sent, and a restart re-arms what the
        journal owes; a worker killed while others run is never restarted, so its receipts
        would wait for ever. One owed past ``after`` is taken for one whose process is gone.
        Should that process only be slow, the receipt goes twice, which changes nothing
        (docs/design.md §1.8)."""
        limit = self._clock.now() - after
        taken = 0
        for message in await self._journal.sandbox_owed():
            due = message.receipts_due
            if message.provider_message_id in self._owed or not due:
                continue
            if min(at for at, _ in due) <= limit:
                self._owe(message.provider_message_id, list(due))
                taken += 1
        return taken

    async def _sweep(self, after: float) -> None:
        """Take over overdue receipts every ``after / 2`` seconds, until stopped."""
        setbacks = Setbacks("sandbox-takeover")
        while True:
            try:
                await self.take_over_overdue(after)
            except Exception as exc:  # Setbacks logs it; the journal keeps what is owed
                await self._clock.sleep(setbacks.failed(exc))
            else:
                setbacks.succeeded()
                await self._clock.sleep(after / 2)

    async def send(self, message: OutboundMessage) -> SendResult:
        script = behaviour(message.recipient)
        now = self._clock.now()
        accepts_now = script not in ("0001", "0004", "0006")
        receipts = scripted_receipts(script, message.channel, now, self._speed)
        provider_message_id = f"sandbox-{uuid.uuid4()}"
        record = await self._journal.sandbox_receive(
            SandboxMessage(
                message_id=message.message_id,
                provider_message_id=provider_message_id,
                channel=message.channel,
                recipient=message.recipient,
                text=message.text,
                attempts=1,
                received_at=now if accepts_now else None,
                receipts_due=tuple(receipts) if accepts_now else (),
            )
        )
        price = PRICES.get(message.channel, "0.0000")
        if script == "0001":
            raise ChannelRejected(*REJECTED)
        if script == "0004":
            raise ChannelUndeliverable(*UNREACHABLE)
        if script == "0006" and record.attempts <= THROTTLED_ATTEMPTS:
            raise ChannelUnavailable(THROTTLED[1], retry_after=1.0 / self._speed, code=THROTTLED[0])
        if record.received_at is None:
            # accepted only now, after earlier throttled attempts
            await self._journal.sandbox_set_receipts(record.provider_message_id, receipts, now)
            self._owe(record.provider_message_id, receipts)
        elif record.provider_message_id == provider_message_id:
            self._owe(record.provider_message_id, receipts)  # a new message
        elif record.provider_message_id not in self._owed:
            # a resend of an accepted message whose receipts this process does not hold: the
            # first attempt's journal write committed but its answer never came (the database
            # connection dropped), or a worker that died since accepted it. Same answer as the
            # first time, and the receipts the journal still owes are owed here: nothing else
            # would emit them until a restart re-arms them
            self._owe(record.provider_message_id, list(record.receipts_due))
        # else: a resend of an accepted message whose receipts are owed here already
        return SendResult(record.provider_message_id, price=price, currency="EUR")

    def _owe(self, provider_message_id: str, receipts: list[tuple[float, str]]) -> None:
        if not receipts:
            # nothing owed (a recipient that never answers): no entry, which would never be
            # removed (one per message sent, for ever)
            self._owed.pop(provider_message_id, None)
            return
        self._owed[provider_message_id] = list(receipts)
        for at, status in receipts:
            heapq.heappush(self._due, (at, status, provider_message_id))
        self._wakeup.set()

    def next_due(self) -> float | None:
        """When the next owed receipt is due."""
        return self._due[0][0] if self._due else None

    async def emit_due(self) -> int:
        """Send every receipt that is due now to the sink; returns how many.

        Receipts of different messages go concurrently, so that their store writes share
        commits; those of one message go in order. A receipt that could not be stored is due
        again (and the error raised once the others are through)."""
        assert self._sink is not None, "sandbox not started"
        now = self._clock.now()
        by_message: dict[str, list[tuple[float, str]]] = {}
        while self._due and self._due[0][0] <= now:
            at, status, provider_message_id = heapq.heappop(self._due)
            by_message.setdefault(provider_message_id, []).append((at, status))
        if not by_message:
            return 0
        results = await asyncio.gather(
            *(self._emit(pmid, receipts, now) for pmid, receipts in by_message.items()),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise failures[0]
        return sum(len(receipts) for receipts in by_message.values())

    async def _emit(
        self, provider_message_id: str, receipts: list[tuple[float, str]], now: float
    ) -> None:
        """Send one message's due receipts in order."""
        assert self._sink is not None
        for index, (at, status) in enumerate(receipts):
            try:
                # stamped when sent: after a restart, receipts that fell due meanwhile arrive now
                await self._sink.receipt(
                    Receipt(self.name, provider_message_id, Status(status), max(at, now))
                )
                owed = self._owed.get(provider_message_id, [])
                if (at, status) in owed:
                    owed.remove((at, status))
                await self._journal.sandbox_set_receipts(provider_message_id, owed, None)
            except BaseException:
                for later in receipts[index:]:
                    heapq.heappush(self._due, (*later, provider_message_id))
                raise
            if not owed:
                self._owed.pop(provider_message_id, None)

    async def _run(self) -> None:
        """Emit each receipt when it is due, until stopped; a receipt that cannot be stored
        stays owed and is tried again after a backoff."""
        setbacks = Setbacks("sandbox-receipts")
        while True:
            self._wakeup.clear()
            due = self.next_due()
            if due is None:
                await self._wakeup.wait()
                continue
            delay = due - self._clock.now()
            if delay > 0:
                sleeper = asyncio.ensure_future(self._clock.sleep(delay))
                waker = asyncio.ensure_future(self._wakeup.wait())
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                for task in (sleeper, waker):
                    task.cancel()
                continue
            try:
                await self.emit_due()
            except Exception as exc:
                # a receipt that could not be stored stays owed in the journal; try again soon
                await self._clock.sleep(setbacks.failed(exc))
            else:
                setbacks.succeeded()
