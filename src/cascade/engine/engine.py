"""The durable engine: claims due jobs in batches and runs them.

Jobs are rows (``send``, ``step_timeout``, ``report_horizon``, ``webhook``), claimed with a lease
that a heartbeat extends while they run; a worker that dies stops extending, and its jobs are
claimed again once the lease runs out. The engine is built with the kinds of job it runs
(:class:`~cascade.engine.jobs.JobKind`): its own three, and those it is given, such as the
webhook sender. Running one of its own jobs ends in one store transition that applies the
failover rules (``domain.failover``), writes what they decided — status changes, the next
step's jobs, the webhooks reporting them (``domain.reports``) — and deletes the job, all in one
transaction. The engine is also the :class:`ReceiptSink` of every provider: a receipt is stored
before the provider is told it was taken.

Sending is at least once: a provider that recognises a resent message id (the sandbox) is
simply called again after a crash; for one that cannot, a send that may have reached the
provider before a crash is recorded as ``undeliverable`` (error 1330) and never repeated.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import structlog
from prometheus_client import Counter, Histogram

from cascade.channels.base import ChannelProvider, InboundMessage, OutboundMessage, SendResult
from cascade.clock import Clock
from cascade.domain.failover import (
    Changes,
    Happening,
    HorizonReached,
    Observed,
    WindowClosed,
    apply,
)
from cascade.domain.records import (
    JobKindName,
    MessageRecord,
    NewWebhook,
    Receipt,
    StepState,
    Surface,
    WebhookKind,
    WorkflowRecord,
)
from cascade.domain.reports import reports_for
from cascade.domain.status import Status, combine_parts
from cascade.engine.jobs import JobKind
from cascade.errors import (
    ChannelOutcomeUnknown,
    ChannelRejected,
    ChannelUnavailable,
    ChannelUndeliverable,
    StoreUnavailable,
    TransientError,
)
from cascade.log import HotLogger
from cascade.metrics import Children
from cascade.store.base import (
    Decide,
    Decision,
    Intake,
    Job,
    JobQueue,
    Tenants,
    Transitions,
    Webhooks,
    WorkflowKey,
)
from cascade.supervision import OnFatal, Setbacks, Supervisor
from cascade.webhooks import payloads

log = structlog.get_logger(__name__)
#: the lines that tell what happened to each workflow (one or two per workflow, at info)
story = HotLogger(__name__)

JOBS_RUN = Counter("cascade_jobs_run", "Jobs the engine ran", ["kind"])
SENDS = Counter("cascade_sends", "Messages handed to providers", ["provider", "outcome"])
RECEIPTS = Counter("cascade_receipts", "Provider receipts received", ["provider", "matched"])
#: their children by label values, found once (cascade.metrics)
_jobs_run, _sends, _receipts = Children(JOBS_RUN), Children(SENDS), Children(RECEIPTS)
TIMER_LATENESS = Histogram(
    "cascade_timer_lateness_seconds",
    "How late a job ran after it was due",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

#: the error recorded when an attempt to send ended before its outcome was stored (a crash, or
#: storing the provider's answer failed), on a provider that cannot recognise a resend
UNKNOWN_OUTCOME = (
    1330,
    "Unknown: an earlier attempt to send was interrupted before its outcome was stored "
    "(the service stopped, or storing the provider's answer failed); not resent",
)


class _OwnJobs:
    """One of the engine's own job kinds: its jobs run (and prefetched) by engine methods,
    called directly (no wrapper between the engine's loop and the method, once per job)."""

    __slots__ = ("name", "prefetch", "run")

    def __init__(
        self,
        name: JobKindName,
        run: Callable[[Job], Coroutine[Any, Any, None]],
        prefetch: Callable[[Sequence[Job]], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.name = name
        #: runs one job
        self.run = run
        #: reads what a batch of due jobs needs (nothing, for a kind without a batch read)
        self.prefetch = prefetch or _read_nothing

    async def close(self) -> None:
        """Nothing to close: what these jobs use (the providers) stops with the engine."""


async def _read_nothing(jobs: Sequence[Job]) -> None:
    """The batch read of a kind whose jobs need none."""


class EngineStore(JobQueue, Transitions, Webhooks, Tenants, Intake, Protocol):
    """What the engine uses of the store: the job queue, transitions, the webhooks they
    queue, the accounts (an inbound message goes to the first one's inbound URL) and inbound
    messages recorded by their uuid, as intake records them."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the engine paces itself."""

    #: jobs claimed per round trip to the store
    batch_size: int = 200
    #: seconds a claim holds a job; a heartbeat renews it at a third of this
    lease: float = 30.0
    #: longest sleep between looks at the job table. Jobs queued in this process wake the
    #: engine at once, and on PostgreSQL so do other processes' (NOTIFY); on SQLite another
    #: process's jobs (e.g. webhooks for a webhook-only worker) are seen within this
    poll_interval: float = 0.1
    #: longest time between two claims (which also take over the jobs of a dead worker)
    claim_interval: float = 1.0
    #: jobs due within this many seconds are claimed now and each runs at its own time, so the
    #: claim's round trip to the store (a commit) is not part of a timer's lateness
    lookahead: float = 0.5
    #: seconds after the last step starts when the final report goes regardless
    report_horizon: float = 72 * 3600.0
    #: how long a step without a window (the last) keeps retrying a transient send error
    send_retry_window: float = 3600.0
    #: jobs running at once
    max_in_flight: int = 512
    #: transient retries back off from this many seconds, doubling, with jitter...
    backoff_base: float = 1.0
    #: ...up to this many
    backoff_cap: float = 60.0
    #: how often receipts that arrived before their submit are matched again
    orphan_sweep_interval: float = 5.0
    #: for how long after this engine kept such a receipt each send looks for one of its own
    #: at once (otherwise the sweep matches it: a read per send saved while none arrive)
    orphan_recheck: float = 60.0
    #: an engine that only takes receipts (an API process's, :meth:`Engine.recheck_kept`) looks
    #: for the send of each receipt it kept this long after keeping it, then twice as long
    #: after each miss...
    kept_recheck_first: float = 0.05
    #: ...until this long has passed; then the sweep of a running engine matches it
    kept_recheck_for: float = 3.0
    #: the base URL of this service, for links in webhooks
    public_url: str = ""
    #: the job kinds this engine claims (None: all). An engine that does not run ``send`` jobs
    #: starts no channel providers, so e.g. a process of its own can deliver only webhooks
    kinds: frozenset[str] | None = None

    @property
    def sends(self) -> bool:
        """Whether this engine sends messages (and so holds the channels' connections)."""
        return self.kinds is None or JobKindName.SEND in self.kinds


def backoff(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before retry number ``attempt`` (0-based): ``base * 2**attempt`` capped at
    ``cap``, then jittered into its upper half so retries spread out; never less than a
    ``retry_after`` the other side asked for."""
    delay = min(cap, base * float(2 ** min(attempt, 30)))
    delay *= random.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


class Providers:
    """Which provider sends each channel: the default, unless a channel has its own."""

    def __init__(
        self, default: ChannelProvider, by_channel: dict[str, ChannelProvider] | None = None
    ) -> None:
        self._default = default
        self._by_channel = dict(by_channel or {})

    def for_channel(self, channel: str) -> ChannelProvider:
        """The provider of ``channel``."""
        return self._by_channel.get(channel, self._default)

    def all(self) -> list[ChannelProvider]:
        """Every distinct provider."""
        unique: dict[int, ChannelProvider] = {id(self._default): self._default}
        for provider in self._by_channel.values():
            unique.setdefault(id(provider), provider)
        return list(unique.values())


class Engine:
    """Runs jobs and takes receipts; one per process, any number per database.

    It runs its own job kinds (``send``, ``step_timeout``, ``report_horizon``) and the
    ``job_kinds`` it is built with (the webhook sender's ``webhook``, in a running service).
    """

    #: seconds without a successful claim after which the engine reports itself not ready
    STALE_CLAIM = 30.0

    def __init__(
        self,
        store: EngineStore,
        providers: Providers,
        clock: Clock,
        settings: EngineSettings | None = None,
        *,
        job_kinds: Sequence[JobKind] = (),
        worker_id: str | None = None,
        on_fatal: OnFatal | None = None,
    ) -> None:
        """An engine over ``store`` that also runs ``job_kinds`` (ValueError when two kinds
        have one name)."""
        self.store = store
        self.providers = providers
        self.clock = clock
        self.settings = settings or EngineSettings()
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        own: list[JobKind] = [
            _OwnJobs(JobKindName.SEND, self._send, self._prefetch_messages),
            _OwnJobs(JobKindName.STEP_TIMEOUT, self._step_timeout),
            _OwnJobs(JobKindName.REPORT_HORIZON, self._report_horizon),
        ]
        #: every job kind this engine runs, by name
        self._kinds: dict[str, JobKind] = {}
        for kind in (*own, *job_kinds):
            if kind.name in self._kinds:
                raise ValueError(f"two job kinds are named {kind.name!r}")
            self._kinds[kind.name] = kind
        #: the messages of claimed send jobs, read with their batch (taken by the job)
        self._prefetched: dict[str, MessageRecord] = {}
        #: when this engine last kept a receipt for a provider id it did not know yet
        self._orphan_kept_at: float | None = None
        #: with :meth:`recheck_kept` running: the receipts this engine kept, by provider id,
        #: with when to look next and the wait after that; and the event that wakes the loop
        self._kept_here: dict[tuple[str, str], tuple[float, float]] | None = None
        self._kept_event = asyncio.Event()
        self._wakeup = asyncio.Event()
        #: jobs claimed and not yet finished (their leases are extended), and of them those
        #: claimed ahead of their time and still waiting for it
        self._in_flight: set[int] = set()
        self._waiting: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        #: the engine's own loops; one that ends while the engine runs is fatal (``on_fatal``)
        self.supervisor = Supervisor(on_fatal)
        self._stopping = False
        #: when the job loop last claimed from the store (None: not yet), for readiness
        self.last_claim_at: float | None = None
        #: jobs that failed on a transient error, logged once per streak rather than each
        self._job_setbacks = Setbacks("engine-jobs")
        self._loop_setbacks = Setbacks("engine-loop", worker=self.worker_id)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *, run_loop: bool = True) -> None:
        """Start the providers (with this engine as their receipt sink) and, with
        ``run_loop``, the job loop, the lease heartbeat and the orphan-receipt sweep."""
        if self.settings.sends:
            for provider in self.providers.all():
                await provider.start(self)
        if run_loop:
            # work queued by other processes wakes the loop too (where the store can signal it)
            await self.store.listen_for_jobs(self.wake)
            self.supervisor.start("engine-loop", self._loop())
            self.supervisor.start("engine-heartbeat", self._heartbeat())
            self.supervisor.start("engine-orphans", self._sweep_orphans())
        log.info("engine.started", worker=self.worker_id)

    def health(self) -> dict[str, object]:
        """Whether the engine works, for readiness: its loops alive, and its job loop claiming
        from the store (at least every ``claim_interval`` while it runs, so a claim older than
        :attr:`STALE_CLAIM` means the loop is stuck or the store keeps failing)."""
        alive = self.supervisor.alive()
        age = None if self.last_claim_at is None else self.clock.now() - self.last_claim_at
        stale = max(self.STALE_CLAIM, 10 * self.settings.claim_interval)
        ok = bool(alive) and all(alive.values()) and age is not None and age <= stale
        return {
            "status": "ok" if ok else "unavailable",
            "worker": self.worker_id,
            "last_claim_age": None if age is None else round(age, 3),
            "tasks": alive,
        }

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish, stop the providers."""
        self._stopping = True
        self._wakeup.set()
        await self.supervisor.stop()
        await self._release_waiting()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.sends:
            for provider in self.providers.all():
                await provider.stop()
        for kind in self._kinds.values():
            await kind.close()
        log.info("engine.stopped", worker=self.worker_id)

    def job_kind(self, name: str) -> JobKind | None:
        """The job kind that runs jobs named ``name`` (None: this engine runs none)."""
        return self._kinds.get(name)

    def wake(self) -> None:
        """Look at the job table now (new work was just stored in this process)."""
        self._wakeup.set()

    async def drain(self) -> int:
        """Run every job that is due now, including those that running them makes due;
        returns how many ran (tests drive the engine with this and a fake clock)."""
        total = 0
        while True:
            jobs = await self.store.claim_jobs(
                self.worker_id,
                self.clock.now(),
                self.settings.batch_size,
                self.settings.lease,
                self.settings.kinds,
            )
            if not jobs:
                return total
            await self._prefetch(jobs, self.clock.now())
            await asyncio.gather(*(self._run(job) for job in jobs))
            total += len(jobs)

    async def _loop(self) -> None:
        """Claim and start jobs until stopped. A round that fails (the store is down) is
        logged once per streak and tried again after a backoff: nothing the store raises ends
        the loop."""
        while not self._stopping:
            try:
                await self._round()
            except Exception as exc:
                await self.clock.sleep(self._loop_setbacks.failed(exc))

    async def _round(self) -> None:
        """Claim a batch, start its jobs, and (unless the batch was full) wait for more."""
        settings = self.settings
        # what is due now and (unless plenty is waiting already) what falls due within the
        # lookahead: the claim, a commit, is made before a timer's time, and the timer runs on
        # the dot
        ahead = settings.lookahead if len(self._waiting) < settings.max_in_flight else 0.0
        jobs = await self.store.claim_jobs(
            self.worker_id,
            self.clock.now() + ahead,
            settings.batch_size,
            settings.lease,
            settings.kinds,
        )
        now = self.clock.now()
        self.last_claim_at = now
        self._loop_setbacks.succeeded()
        await self._prefetch(jobs, now)
        for job in jobs:
            self._in_flight.add(job.id)
            if job.run_at > now:
                # waits for its time without holding a slot, then takes one like any job
                task = asyncio.create_task(self._run_when_due(job))
                self._waiting[job.id] = (job, task)
            else:
                await self._slots.acquire()
                task = asyncio.create_task(self._run_released(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(jobs) == settings.batch_size:
            await asyncio.sleep(0)
            return
        await self._idle(ahead > 0)

    async def _prefetch(self, jobs: Sequence[Job], now: float) -> None:
        """Let each kind read what the batch's due jobs of that kind need, at once. A failed
        read is only logged: each job then reads for itself."""
        by_kind: dict[str, list[Job]] = {}
        for job in jobs:
            if job.run_at <= now and job.kind in self._kinds:
                by_kind.setdefault(job.kind, []).append(job)
        for name, due in by_kind.items():
            try:
                await self._kinds[name].prefetch(due)
            except Exception:
                log.exception("engine.prefetch_failed", kind=name, jobs=len(due))

    async def _prefetch_messages(self, jobs: Sequence[Job]) -> None:
        self._prefetched.update(await self.store.find_messages([job.ref for job in jobs]))

    async def _idle(self, ahead: bool) -> None:
        """Sleep until the next job is due within half the lookahead (so that one claim takes
        the jobs of half a lookahead, not one job each), or is due at all when nothing more may
        be claimed ahead; or until new work arrives. Meanwhile the job table is read every poll
        interval (a read: it sees jobs other processes queue) and claimed from at least every
        claim interval (a write: it takes over the jobs of a worker that died)."""
        self._wakeup.clear()
        settings = self.settings
        margin = settings.lookahead / 2 if ahead else 0.0
        claim_by = self.clock.now() + settings.claim_interval
        while not self._stopping:
            next_at = await self.store.next_job_at(settings.kinds)
            due = claim_by if next_at is None else min(claim_by, next_at - margin)
            delay = min(settings.poll_interval, due - self.clock.now())
            if delay <= 0:
                return
            sleeper = asyncio.ensure_future(self.clock.sleep(delay))
            waker = asyncio.ensure_future(self._wakeup.wait())
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            waker.cancel()
            if self._wakeup.is_set():
                return

    async def _run_when_due(self, job: Job) -> None:
        try:
            await self.clock.sleep(job.run_at - self.clock.now())
        except BaseException:
            self._in_flight.discard(job.id)  # cancelled by stop(): its claim is handed back
            raise
        finally:
            self._waiting.pop(job.id, None)
        await self._slots.acquire()
        await self._run_released(job)

    async def _run_released(self, job: Job) -> None:
        try:
            await self._run(job)
        finally:
            self._in_flight.discard(job.id)
            self._slots.release()

    async def _release_waiting(self) -> None:
        """On the way out: cancel the jobs claimed ahead of their time and hand their claims
        back, so that another worker runs them on time instead of after the lease."""
        waiting = list(self._waiting.values())
        for job, task in waiting:
            task.cancel()  # at its sleep: none of its handler has run
            self._waiting.pop(job.id, None)
            self._in_flight.discard(job.id)
        for job, _ in waiting:
            try:
                await self.store.defer_job(job.id, job.run_at)
            except Exception:
                log.exception("engine.release_failed", job=job.id)

    async def _run(self, job: Job) -> None:
        self._in_flight.add(job.id)
        TIMER_LATENESS.observe(max(0.0, self.clock.now() - job.run_at))
        try:
            kind = self._kinds.get(job.kind)
            if kind is None:
                log.error("engine.unknown_job_kind", kind=job.kind, job=job.id)
                return  # left locked: its lease ends and it waits for a worker that knows it
            await kind.run(job)
            _jobs_run(job.kind).inc()
        except TransientError as exc:
            # the job stays in the table; its lease runs out and it is claimed again. While the
            # store is down every job fails this way: one line per streak, not one per job
            self._job_setbacks.failed(exc, kind=job.kind, job=job.id, ref=job.ref)
        except Exception:
            # the job stays in the table; its lease runs out and it is claimed again
            log.exception("engine.job_failed", kind=job.kind, job=job.id, ref=job.ref)
        else:
            self._job_setbacks.succeeded()
        finally:
            self._in_flight.discard(job.id)

    async def _heartbeat(self) -> None:
        """Extend the leases of the jobs this engine holds, every third of a lease. After a
        failed extension with nothing held any more, it asks the queue when its next job is
        due (a read that answers only when the database does), so that the streak of failures
        ends in the log once the store is back."""
        interval = self.settings.lease / 3
        setbacks = Setbacks("engine-heartbeat", worker=self.worker_id)
        while True:
            await self.clock.sleep(interval)
            if not self._in_flight and not setbacks.streak:
                continue
            try:
                if self._in_flight:
                    await self.store.extend_lease(
                        self.worker_id,
                        list(self._in_flight),
                        self.clock.now() + self.settings.lease,
                    )
                else:
                    await self.store.next_job_at()
            except Exception as exc:
                setbacks.failed(exc, jobs=len(self._in_flight))
            else:
                setbacks.succeeded()

    async def _sweep_orphans(self) -> None:
        """Match kept receipts to their messages, every ``orphan_sweep_interval``."""
        setbacks = Setbacks("engine-orphans", worker=self.worker_id)
        while True:
            await self.clock.sleep(self.settings.orphan_sweep_interval)
            try:
                await self.match_orphans()
            except Exception as exc:
                setbacks.failed(exc)
            else:
                setbacks.succeeded()

    # --- transitions -----------------------------------------------------------------------

    async def _transition(
        self,
        key: WorkflowKey,
        happening: Happening | Callable[[WorkflowRecord], Happening],
        *,
        done_job: int | None = None,
    ) -> Decision | None:
        decided: list[tuple[WorkflowRecord, Changes]] = []
        result = await self.store.transition(
            key, self._decider(happening, decided), done_job=done_job
        )
        if result is not None:
            changes = result[0]
            if changes.jobs or result[1]:
                self.wake()
            if changes.events:
                # told once it is stored, from the workflow it was decided from (a store may
                # decide twice: the decision it stored is the one returned)
                for workflow, made in decided:
                    if made is changes:
                        tell(workflow, changes)
                        break
        return result

    def _decider(
        self,
        happening: Happening | Callable[[WorkflowRecord], Happening],
        decided: list[tuple[WorkflowRecord, Changes]],
    ) -> Decide:
        """The pure decision of a transition: the failover rules, then the reports they call
        for, written as webhooks; each decision is noted in ``decided`` with the workflow it
        was made from."""
        horizon = self.settings.report_horizon
        base = self.settings.public_url

        def decide(workflow: WorkflowRecord) -> Decision:
            seen = happening(workflow) if callable(happening) else happening
            changes = apply(workflow, seen, horizon=horizon)
            decided.append((workflow, changes))
            return changes, payloads.webhooks(reports_for(workflow, changes), base)

        return decide

    # --- the engine's own job kinds --------------------------------------------------------

    async def _send(self, job: Job) -> None:
        message = self._prefetched.pop(job.ref, None) or await self.store.find_message(job.ref)
        if message is None or message.state != StepState.ACTIVE or message.status is not None:
            await self.store.finish_job(job.id)  # nothing left to send
            return
        provider = self.providers.for_channel(message.channel)
        now = self.clock.now()
        outbound = OutboundMessage(
            message_id=message.id,
            channel=message.channel,
            to=msgspec.json.decode(message.to),
            from_=msgspec.json.decode(message.from_),
            message=msgspec.json.decode(message.body),
            client_ref=message.client_ref,
            account_id=message.account_id,
        )
        if not await provider.deduplicates_send(outbound):
            attempt = await self.store.begin_send(message.id, now)
            if attempt.attempts > job.attempts:
                _sends(provider.name, "unknown").inc()
                await self._fail(job, message, Status.UNDELIVERABLE, *UNKNOWN_OUTCOME)
                return
        try:
            result = await provider.send(outbound)
        except ChannelUndeliverable as exc:
            _sends(provider.name, "undeliverable").inc()
            await self._fail(job, message, Status.UNDELIVERABLE, exc.code, exc.reason)
            return
        except ChannelRejected as exc:
            _sends(provider.name, "rejected").inc()
            await self._fail(job, message, Status.REJECTED, exc.code, exc.reason)
            return
        except ChannelOutcomeUnknown as exc:
            # it may have gone out: resending could duplicate it, so the step fails over
            _sends(provider.name, "unknown").inc()
            log.warning("engine.send_outcome_unknown", provider=provider.name, error=exc.message)
            reason = f"Unknown: {exc.message}; not resent"
            await self._fail(job, message, Status.UNDELIVERABLE, UNKNOWN_OUTCOME[0], reason)
            return
        except ChannelUnavailable as exc:
            _sends(provider.name, "retry").inc()
            await self._retry(job, message, exc.code, exc.message, exc.retry_after, provider.name)
            return
        except Exception as exc:
            reason = f"Internal error: {type(exc).__name__}"
            if isinstance(exc, StoreUnavailable):
                # the provider's own reads and writes of the store (the sandbox's journal, a
                # channel's link): an outage, not a bug. No line per message: if it lasts, the
                # retry's write fails too and the job's failure streak logs it once
                reason = "Internal error: the store was unavailable"
            else:
                log.exception("engine.provider_failed", provider=provider.name, message=message.id)
            _sends(provider.name, "error").inc()
            await self._retry(job, message, 1030, reason, None, provider.name)
            return
        _sends(provider.name, "submitted").inc()
        id_space = result.provider or provider.name
        parts = result.segment_ids
        provider_id = ",".join(parts) if len(parts) > 1 else result.provider_message_id
        try:
            claim_since = now if provider.ids_can_repeat else None
            await self._record_submit(job, message, result, id_space, provider_id, claim_since)
        except Exception as exc:
            # the provider took it; the job's next run, finding the attempt begun, fails the
            # step with 1330 rather than send it twice (a deduplicating provider is called again).
            # A line per message, since each is a message whose fate is not recorded; the
            # traceback only for what is not an outage of the store
            log.error(
                "engine.submit_not_recorded",
                provider=id_space,
                provider_message_id=provider_id,
                message=message.id,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=not isinstance(exc, StoreUnavailable),
            )
            raise
        kept_at = self._orphan_kept_at
        if kept_at is not None and self.clock.now() - kept_at < self.settings.orphan_recheck:
            # a receipt that beat this submit's answer (SMPP allows it) is applied now
            for part in parts or (provider_id,):
                for receipt in await self.store.matched_orphan_receipts(id_space, part):
                    await self.apply_kept(receipt)

    async def _record_submit(
        self,
        job: Job,
        message: MessageRecord,
        result: SendResult,
        id_space: str,
        provider_id: str,
        claim_since: float | None,
    ) -> None:
        """Store a submit the provider accepted: its ids, its parts, and the ``submitted``
        transition that ends the job. With ``claim_since`` (the send's start, for a provider
        whose ids can repeat) ids an older message holds are taken from it first."""
        parts = result.segment_ids
        if claim_since is not None:
            # an id an older message holds (an SMSC restarted and counts again) is this
            # message's now: recording it must not fail a message the provider accepted
            claimed = await self.store.claim_provider_ids(
                id_space, message.id, (*parts, provider_id), claim_since
            )
            if claimed.taken_from or claimed.stale_receipts:
                log.warning(
                    "engine.provider_id_reused",
                    provider=id_space,
                    provider_message_id=provider_id,
                    message=message.id,
                    taken_from=claimed.taken_from,
                    stale_receipts_dropped=claimed.stale_receipts,
                )
        if len(parts) > 1:
            # receipts come per part: they are matched through the parts, never the message
            await self.store.add_message_parts(id_space, message.id, parts)
        await self._transition(
            WorkflowKey(message_id=message.id),
            Observed(
                message.id,
                Status.SUBMITTED,
                self.clock.now(),
                source=id_space,
                provider=id_space,
                provider_message_id=provider_id,
                price=result.price,
                currency=result.currency,
                segments=result.segments,
            ),
            done_job=job.id,
        )

    async def _fail(
        self, job: Job, message: MessageRecord, status: Status, code: int, reason: str
    ) -> None:
        await self._transition(
            WorkflowKey(message_id=message.id),
            Observed(message.id, status, self.clock.now(), "engine", code, reason),
            done_job=job.id,
        )

    async def _retry(
        self,
        job: Job,
        message: MessageRecord,
        code: int,
        reason: str,
        retry_after: float | None,
        provider: str,
    ) -> None:
        """Try a transient failure again later, inside the step's window; a step without a
        window (the last) gives up after ``send_retry_window``. The retry is in the timeline
        (stored with the job's release) and, at debug, in the log."""
        now = self.clock.now()
        delay = backoff(
            job.attempts,
            base=self.settings.backoff_base,
            cap=self.settings.backoff_cap,
            retry_after=retry_after,
        )
        if message.expiry_time is None:
            started = message.started_at if message.started_at is not None else now
            if now + delay > started + self.settings.send_retry_window:
                await self._fail(job, message, Status.UNDELIVERABLE, code, reason)
                return
        # a step with a window keeps trying: its step_timeout abandons the send when it closes
        await self.store.retry_job(
            job.id,
            now + delay,
            message_id=message.id,
            error=(code, reason),
            at=now,
            source=provider,
        )
        story.debug(
            "engine.send_retry",
            message=message.id,
            workflow=message.workflow_id,
            provider=provider,
            attempt=job.attempts + 1,
            code=code,
            reason=reason,
            next_attempt_in=round(delay, 3),
        )

    async def _step_timeout(self, job: Job) -> None:
        now = self.clock.now()

        def closed(workflow: WorkflowRecord) -> Happening:
            # the step's last transient send error, from the transaction that applies the rules
            # (no read of its own before it)
            last_error = None
            for message in workflow.messages:
                if message.id == job.ref and message.last_error_code is not None:
                    last_error = (message.last_error_code, message.last_error_reason or "")
            return WindowClosed(job.ref, now, last_error)

        await self._transition(WorkflowKey(message_id=job.ref), closed, done_job=job.id)

    async def _report_horizon(self, job: Job) -> None:
        await self._transition(
            WorkflowKey(workflow_id=job.ref), HorizonReached(self.clock.now()), done_job=job.id
        )

    # --- receipts (the ReceiptSink of every provider) --------------------------------------

    async def receipt(self, receipt: Receipt) -> None:
        """Apply a provider's receipt; one for an unknown id is kept until its send is
        recorded (an SMPP DLR can arrive before the submit response)."""
        if receipt.message_id is not None:
            await self._receipt_for_unsent(receipt, receipt.message_id)
            return

        def observed(workflow: WorkflowRecord) -> Happening:
            # the message is known only inside the transaction that found its workflow
            message_id = next(
                m.id
                for m in workflow.messages
                if m.provider == receipt.provider
                and m.provider_message_id == receipt.provider_message_id
            )
            return Observed(
                message_id,
                receipt.status,
                receipt.at,
                receipt.provider,
                receipt.code,
                receipt.reason,
            )

        result = await self._transition(
            WorkflowKey(provider=receipt.provider, provider_message_id=receipt.provider_message_id),
            observed,
        )
        matched = result is not None or await self._part_receipt(receipt)
        _receipts(receipt.provider, "yes" if matched else "no").inc()
        if not matched:
            now = self.clock.now()
            self._orphan_kept_at = now
            await self.store.add_orphan_receipt(receipt, now)
            if self._kept_here is not None:
                first = self.settings.kept_recheck_first
                self._kept_here[(receipt.provider, receipt.provider_message_id)] = (
                    now + first,
                    first,
                )
                self._kept_event.set()

    async def _receipt_for_unsent(self, receipt: Receipt, message_id: str) -> None:
        """Apply a receipt that names the message by Cascade's id because it beat the send's
        answer: the send's result, when it comes, adds the provider's id without moving the
        status back (docs/design.md §1.8)."""
        seen = Observed(
            message_id, receipt.status, receipt.at, receipt.provider, receipt.code, receipt.reason
        )
        result = await self._transition(WorkflowKey(message_id=message_id), seen)
        _receipts(receipt.provider, "yes" if result is not None else "no").inc()
        if result is None:
            # the message is gone (retention) or never was: nothing to keep it for
            log.warning("engine.receipt_unmatched", provider=receipt.provider, message=message_id)

    async def _part_receipt(self, receipt: Receipt) -> bool:
        """Apply a receipt for one part of a multi-part message: the message is delivered when
        every part is, and failed as soon as one part fails. False when no part matches."""
        part = await self.store.record_part_receipt(receipt)
        if part is None:
            return False
        message_id, statuses = part
        status = combine_parts(statuses)
        if status is not None:
            await self._transition(
                WorkflowKey(message_id=message_id),
                Observed(
                    message_id,
                    status,
                    receipt.at,
                    receipt.provider,
                    receipt.code if status.is_failure else None,
                    receipt.reason if status.is_failure else None,
                ),
            )
        return True

    async def inbound(self, message: InboundMessage) -> None:
        """Store an inbound message as an inbound webhook to its account: the linked channel's
        owner, or (SMS, whose numbers are not linked) the first account."""
        account_id = message.account_id
        if account_id is None:
            accounts = await self.store.list_accounts()
            if not accounts:
                log.warning("engine.inbound_without_account", channel=message.channel)
                return
            account_id = accounts[0].id
        version = await self.inbound_webhook_version(account_id)
        keys = message.keys(str(uuid.uuid4()))
        webhook = NewWebhook(
            kind=WebhookKind.INBOUND,
            account_id=account_id,
            application_id=None,
            workflow_id=None,
            message_id=None,
            url=None,
            body=payloads.inbound_body(message, keys.message_uuid, version),
        )
        # recorded with its uuid, as intake's are, so a request naming it finds what it is
        await self.store.add_inbound_webhook(webhook, None, self.clock.now(), keys)
        self.wake()

    async def inbound_webhook_version(self, account_id: str) -> str:
        """The shape of an account's inbound webhooks (``payloads.inbound_version``)."""
        return payloads.inbound_version(await self.store.list_applications(account_id))

    def start_rechecks(self) -> None:
        """Run :meth:`recheck_kept` under this engine's supervisor: for the engine of a process
        that only takes receipts (an API process), never started."""
        self._kept_here = {}
        self.supervisor.start("engine-kept", self.recheck_kept())

    async def recheck_kept(self) -> None:
        """Apply the receipts this engine kept once their sends are recorded, looking for each
        soon after keeping it and less often after each miss (``kept_recheck_first``, doubling,
        for ``kept_recheck_for``).

        With ``serve`` on several processes a delivery callback often reaches an API process
        before the engine process has recorded the send's answer. Applied here, such a receipt
        costs the API process a read or two; the engine process (the busier one) no longer
        looks for kept receipts after every send. A receipt given up on, or kept by a process
        killed before it looked, stays stored for a running engine's sweep."""
        kept = self._kept_here
        if kept is None:
            raise RuntimeError("recheck_kept runs through start_rechecks")
        setbacks = Setbacks("engine-kept", worker=self.worker_id)
        while True:
            if not kept:
                self._kept_event.clear()
                await self._kept_event.wait()
            now = self.clock.now()
            due = [(key, wait) for key, (at, wait) in kept.items() if at <= now]
            if not due:
                # no longer than the first wait: one kept meanwhile is looked for on time
                soonest = min(at for at, _ in kept.values())
                await self.clock.sleep(min(soonest - now, self.settings.kept_recheck_first))
                continue
            for key, wait in due:
                if wait * 2 >= self.settings.kept_recheck_for:
                    del kept[key]
                else:
                    kept[key] = (now + wait * 2, wait * 2)
            # together, so that their reads and writes share commits
            found = await asyncio.gather(
                *(self._apply_kept_of(*key) for key, _ in due), return_exceptions=True
            )
            for (key, _), result in zip(due, found, strict=True):
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result
                if isinstance(result, BaseException):
                    # still stored: looked for again, or left to a running engine's sweep
                    setbacks.failed(result)
                elif result:
                    kept.pop(key, None)
            if not any(isinstance(result, BaseException) for result in found):
                setbacks.succeeded()

    async def _apply_kept_of(self, provider: str, provider_message_id: str) -> bool:
        """Apply the kept receipts of one provider id whose send is now recorded; False when
        there are none (not recorded yet, or another engine applied them)."""
        receipts = await self.store.matched_orphan_receipts(provider, provider_message_id)
        for receipt in receipts:
            await self.apply_kept(receipt)
        return bool(receipts)

    async def match_orphans(self) -> int:
        """Apply kept receipts whose message is now known; returns how many."""
        receipts = await self.store.matched_orphan_receipts()
        for receipt in receipts:
            await self.apply_kept(receipt)
        return len(receipts)

    async def apply_kept(self, receipt: Receipt) -> None:
        """Apply a kept receipt, then drop it: killed in between, it is applied again by
        another engine, which changes nothing twice (docs/design.md §1.8), where dropping it
        first would lose it."""
        await self.receipt(receipt)
        if receipt.kept_id is not None:
            await self.store.drop_orphan_receipt(receipt.kept_id)


def tell(workflow: WorkflowRecord, changes: Changes) -> None:
    """Log what a stored transition did that an operator follows, at info: a failover (from
    which step to which, and why), the workflow completed or failed (a plain message: the
    message). Each status is a debug line. No content, address or secret: ids, steps,
    channels and reasons."""
    plain = workflow.surface is Surface.MESSAGES
    events = changes.events
    for index, event in enumerate(events):
        kind = event.kind
        if kind == "failover":
            following = events[index + 1] if index + 1 < len(events) else None
            if following is None or following.kind != "step_started":
                continue  # nothing left to fail over to: the workflow's end says why
            steps = {message.id: (n, message) for n, message in enumerate(workflow.messages)}
            from_step, _ = steps[event.message_id or ""]
            to_step, to = steps[following.message_id or ""]
            story.info(
                "workflow.failover",
                workflow=workflow.id,
                account=workflow.account_id,
                from_step=from_step + 1,
                to_step=to_step + 1,
                from_message=event.message_id,
                to_message=to.id,
                to_channel=to.channel,
                reason=event.reason,
            )
        elif kind in ("completed", "error"):
            outcome = "completed" if kind == "completed" else "failed"
            if plain:
                story.info(
                    f"message.{outcome}",
                    message=workflow.messages[0].id,
                    workflow=workflow.id,
                    account=workflow.account_id,
                    reason=event.reason,
                )
            else:
                story.info(
                    f"workflow.{outcome}",
                    workflow=workflow.id,
                    account=workflow.account_id,
                    reason=event.reason,
                )
        elif kind == "status" and story.is_debug():
            story.debug(
                "message.status",
                message=event.message_id,
                workflow=workflow.id,
                status=event.status,
                code=event.code,
                source=event.source,
            )
