"""How the engine paces itself, on a real clock and a SQLite file: jobs claimed ahead of their
time run on time and never early, a stopping engine hands back the claims it has not started,
and the sandbox sends the due receipts of many messages together."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable

import pytest

from cascade.channels.base import OutboundMessage, ReceiptSink
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import FakeClock, SystemClock
from cascade.domain.records import JobKindName, NewJob, Receipt
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.errors import StoreUnavailable
from cascade.store.base import Job
from cascade.store.sqlite import SqliteStore
from tests.contract.factories import tenant, workflow
from tests.engine.harness import FunctionKind


async def _queue(store: SqliteStore, *jobs: NewJob) -> None:
    """Store a workflow whose only jobs are ``jobs``."""
    owner = await tenant(store)
    await store.accept(dataclasses.replace(workflow(owner), jobs=jobs))


def _engine(
    store: SqliteStore,
    clock: SystemClock,
    lookahead: float,
    ping: Callable[[Job], Awaitable[None]],
    **settings: int,
) -> Engine:
    """An engine that runs ``ping`` jobs with ``ping``."""
    pacing = EngineSettings(lookahead=lookahead, **settings)
    return Engine(
        store,
        Providers(SandboxProvider(store, clock)),
        clock,
        pacing,
        job_kinds=[FunctionKind("ping", ping)],
    )


def _locks(store: SqliteStore) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute("SELECT ref, locked_by FROM jobs ORDER BY ref").fetchall()
    finally:
        conn.close()


async def test_a_job_claimed_ahead_runs_at_its_time_not_before(sqlite_store: SqliteStore) -> None:
    """Jobs due within the lookahead are claimed at once and each runs when it is due."""
    clock = SystemClock()
    ran: dict[str, float] = {}
    all_ran = asyncio.Event()

    async def record(job: Job) -> None:
        ran[job.ref] = clock.now() - job.run_at
        await sqlite_store.finish_job(job.id)
        if len(ran) == 5:
            all_ran.set()

    engine = _engine(sqlite_store, clock, 1.0, record)
    await engine.start()
    try:
        now = clock.now()
        await _queue(
            sqlite_store, *(NewJob("ping", f"p{i}", now + 0.2 + 0.1 * i) for i in range(5))
        )
        engine.wake()
        await asyncio.sleep(0.1)
        # all five are claimed already, none has run
        assert ran == {}
        assert [(ref, by) for ref, by in _locks(sqlite_store)] == [
            (f"p{i}", engine.worker_id) for i in range(5)
        ]
        await asyncio.wait_for(all_ran.wait(), 5)
    finally:
        await engine.stop()
    assert sorted(ran) == [f"p{i}" for i in range(5)]
    assert all(0.0 <= late < 0.1 for late in ran.values()), ran


async def test_stopping_hands_back_the_jobs_claimed_ahead(sqlite_store: SqliteStore) -> None:
    """A job claimed ahead of its time and not yet run is unlocked when the engine stops, so
    another worker need not wait for its lease to end."""
    clock = SystemClock()
    ran: list[Job] = []

    async def record(job: Job) -> None:
        ran.append(job)

    engine = _engine(sqlite_store, clock, 5.0, record)
    await engine.start()
    await _queue(sqlite_store, NewJob("ping", "later", clock.now() + 3.0))
    engine.wake()
    await asyncio.sleep(0.2)
    await engine.stop()
    assert ran == []
    assert _locks(sqlite_store) == [("later", None)]


async def test_an_engine_with_enough_waiting_does_not_claim_in_a_loop(
    sqlite_store: SqliteStore,
) -> None:
    """With max_in_flight jobs claimed ahead and waiting, the engine sleeps until the next job
    is due instead of claiming (a transaction each time) again and again."""
    clock = SystemClock()

    async def finish(job: Job) -> None:
        await sqlite_store.finish_job(job.id)

    engine = _engine(sqlite_store, clock, 5.0, finish, max_in_flight=2, batch_size=2)
    now = clock.now()
    await _queue(sqlite_store, *(NewJob("ping", f"p{i}", now + 2.0 + 0.1 * i) for i in range(5)))
    await engine.start()
    try:
        await asyncio.sleep(0.3)
        commits = sqlite_store.commits
        await asyncio.sleep(0.5)
        assert sqlite_store.commits - commits < 5
    finally:
        await engine.stop()


class _Sink:
    """A receipt sink that fails the first receipt of one message."""

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.received: list[Receipt] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def receipt(self, receipt: Receipt) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if receipt.provider_message_id == self.failing:
                self.failing = ""
                raise StoreUnavailable("down for a moment")
            self.received.append(receipt)
        finally:
            self.in_flight -= 1

    async def inbound(self, message: object) -> None:  # pragma: no cover - not used
        raise AssertionError


async def test_the_sandbox_sends_due_receipts_together_and_keeps_a_failed_one(
    sqlite_store: SqliteStore,
) -> None:
    """Due receipts of different messages go concurrently, each message's in order; one that
    could not be stored is due again and goes on the next round."""
    clock = FakeClock(1_800_000_000.0)
    sandbox = SandboxProvider(sqlite_store, clock)
    sink = _Sink(failing="m3")
    await sandbox.start(sink, run_timer=False)
    at = clock.now()
    for i in range(10):
        sandbox._owe(f"m{i}", [(at + 1, "delivered"), (at + 2, "read")])
    clock.advance(2)
    with pytest.raises(StoreUnavailable):
        await sandbox.emit_due()
    assert sink.most_in_flight > 1
    by_message: dict[str, list[str]] = {}
    for receipt in sink.received:
        by_message.setdefault(receipt.provider_message_id, []).append(receipt.status.value)
    assert all(statuses == ["delivered", "read"] for statuses in by_message.values())
    assert "m3" not in by_message
    assert len(by_message) == 9
    assert await sandbox.emit_due() == 2  # m3's two receipts, again
    assert [r.status.value for r in sink.received if r.provider_message_id == "m3"] == [
        "delivered",
        "read",
    ]


async def test_the_sandbox_keeps_nothing_in_memory_for_a_silent_recipient(
    sqlite_store: SqliteStore,
) -> None:
    """A message to a recipient that never answers (...0003) owes no receipt and leaves no
    entry behind in the sandbox's memory."""
    clock = FakeClock(1_800_000_000.0)
    sandbox = SandboxProvider(sqlite_store, clock)
    await sandbox.start(_Sink(failing=""), run_timer=False)
    for i in range(3):
        await sandbox.send(
            OutboundMessage(
                message_id=f"m{i}",
                channel="sms",
                to={"type": "sms", "number": "447700900003"},
                from_={"type": "sms", "number": "447700900001"},
                message={"content": {"type": "text", "text": "hi"}},
                client_ref=None,
            )
        )
    assert sandbox._owed == {}
    assert sandbox.next_due() is None


async def test_a_killed_workers_overdue_receipts_are_taken_over_by_a_running_one(
    sqlite_store: SqliteStore,
) -> None:
    """A worker killed after the sandbox accepted a message owes its receipts in the journal
    only; another worker already running (not restarted, so it re-armed nothing) takes them
    over once they are overdue by ``after``, not before, and not those it holds itself."""
    clock = FakeClock(1_800_000_000.0)
    killed = SandboxProvider(sqlite_store, clock)
    survivor = SandboxProvider(sqlite_store, clock)
    sink = _Sink(failing="")
    await survivor.start(sink, run_timer=False)
    await killed.start(_Sink(failing=""), run_timer=False)

    def message(i: int) -> OutboundMessage:
        return OutboundMessage(
            message_id=f"m{i}",
            channel="whatsapp",
            to={"type": "whatsapp", "number": "447700900000"},
            from_={"type": "whatsapp", "number": "447700900001"},
            message={"content": {"type": "text", "text": "hi"}},
            client_ref=None,
        )

    lost = await killed.send(message(1))  # its receipts now live in the journal alone
    await survivor.send(message(2))
    clock.advance(1 + 5)  # delivered was due 5 s ago
    assert await survivor.take_over_overdue(10.0) == 0
    clock.advance(5)
    assert await survivor.take_over_overdue(10.0) == 1
    assert await survivor.take_over_overdue(10.0) == 0  # held now: taken once
    await survivor.emit_due()
    statuses = [
        r.status.value for r in sink.received if r.provider_message_id == lost.provider_message_id
    ]
    assert statuses == ["delivered", "read"]
    assert [m for m in await sqlite_store.sandbox_owed() if m.receipts_due] == []


async def test_an_engine_limited_to_some_kinds_runs_only_those(sqlite_store: SqliteStore) -> None:
    """An engine for webhook jobs alone leaves send jobs to others and opens no channel."""
    clock = SystemClock()
    started: list[object] = []

    class WatchedSandbox(SandboxProvider):
        async def start(self, sink: ReceiptSink, *, run_timer: bool = True) -> None:
            started.append(sink)

    ran: list[str] = []
    done = asyncio.Event()

    async def record(job: Job) -> None:
        ran.append(job.kind)
        await sqlite_store.finish_job(job.id)
        done.set()

    engine = Engine(
        sqlite_store,
        Providers(WatchedSandbox(sqlite_store, clock)),
        clock,
        EngineSettings(kinds=frozenset({JobKindName.WEBHOOK})),
        job_kinds=[FunctionKind(JobKindName.WEBHOOK, record)],
    )
    await engine.start()
    try:
        now = clock.now()
        await _queue(
            sqlite_store, NewJob(JobKindName.SEND, "m", now), NewJob(JobKindName.WEBHOOK, "1", now)
        )
        engine.wake()
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.1)
    finally:
        await engine.stop()
    assert ran == ["webhook"]
    assert started == []
    assert [ref for ref, _ in _locks(sqlite_store)] == ["m"]  # the send job is left for others


async def test_jobs_another_process_queues_run_within_the_poll_interval(
    sqlite_store: SqliteStore,
) -> None:
    """Jobs stored through another connection to the file (no wake-up reaches this engine)
    are seen by the next poll, a read, long before the next claim would find them."""
    clock = SystemClock()
    done = asyncio.Event()

    async def finish(job: Job) -> None:
        await sqlite_store.finish_job(job.id)
        done.set()

    engine = Engine(
        sqlite_store,
        Providers(SandboxProvider(sqlite_store, clock)),
        clock,
        EngineSettings(poll_interval=0.05, claim_interval=60.0),
        job_kinds=[FunctionKind("ping", finish)],
    )
    other = SqliteStore(sqlite_store.path, synchronous="NORMAL")
    await other.open()
    await engine.start()
    try:
        await asyncio.sleep(0.2)  # the loop finds nothing and settles into its sleep
        commits = sqlite_store.commits
        await asyncio.sleep(0.3)
        assert sqlite_store.commits == commits  # polls read; they claim nothing
        await _queue(other, NewJob("ping", "elsewhere", clock.now()))
        await asyncio.wait_for(done.wait(), 1.0)
    finally:
        await engine.stop()
        await other.close()


def _job_query_plans(store: SqliteStore, seen: list[str]) -> list[str]:
    """The query plans of the job queries traced into ``seen`` (a claim's row-picking SELECT)."""
    conn = sqlite3.connect(store.path)
    try:
        plans = []
        for sql in seen:
            if "FROM jobs" not in sql:
                continue
            if "RETURNING" in sql:  # the claim's subquery, which picks the rows
                sql = sql[sql.index("(SELECT") + 1 : sql.rindex(")")]
            plans.append(" ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)))
        return plans
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("kinds", "searched_as"),
    [
        # one kind: through its own index, in time order (not past every pending timer)
        ({"webhook"}, "SEARCH jobs USING INDEX jobs_kind_due (kind=?"),
        # several kinds (most jobs): in time order, stopping at the first that match, never
        # every due row of each kind read and sorted
        ({"send", "step_timeout", "report_horizon"}, "USING INDEX jobs_due"),
    ],
)
async def test_an_engine_of_some_kinds_finds_its_jobs_in_time_order(
    sqlite_store: SqliteStore, kinds: set[str], searched_as: str
) -> None:
    """next_job_at and claims for some kinds use the index that keeps them cheap."""
    seen: list[str] = []
    assert sqlite_store._reader is not None
    assert sqlite_store._writer._conn is not None
    sqlite_store._reader.set_trace_callback(seen.append)
    sqlite_store._writer._conn.set_trace_callback(seen.append)
    await sqlite_store.next_job_at(kinds)
    await sqlite_store.claim_jobs("w1", 0.0, 200, 30.0, kinds)
    sqlite_store._reader.set_trace_callback(None)
    sqlite_store._writer._conn.set_trace_callback(None)
    plans = _job_query_plans(sqlite_store, seen)
    assert len(plans) == 2
    for plan in plans:
        assert searched_as in plan
        assert "TEMP B-TREE" not in plan


def test_cancelling_a_messages_jobs_keeps_to_the_ref_index(sqlite_store: SqliteStore) -> None:
    """A transition's DELETE of a message's jobs by (kind, ref) searches jobs_ref on both
    columns, never every job of the kind through jobs_kind_due."""
    conn = sqlite3.connect(sqlite_store.path)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN DELETE FROM jobs WHERE kind = ? AND ref = ?", ("send", "m")
        ).fetchall()
    finally:
        conn.close()
    assert "USING INDEX jobs_ref (ref=? AND kind=?)" in plan[0][3]
