"""Background work never dies quietly: store failures injected at the store seam leave the
engine running (jobs run once the store answers again), a loop that ends anyway is reported as
fatal, and readiness says so."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import signal
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
import pytest
from structlog.testing import capture_logs

from cascade.api.app import create_app
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import SystemClock
from cascade.domain.records import NewJob
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.engine.jobs import JobKind
from cascade.errors import StoreUnavailable
from cascade.runtime import FatalExit
from cascade.store.base import Job, Store
from cascade.store.sqlite import SqliteStore
from cascade.supervision import Setbacks, Supervisor
from tests.contract.factories import sms_step, tenant, workflow
from tests.engine.harness import FunctionKind


class FlakyStore:
    """A store that delegates to a real one, except that the methods named in ``failing``
    raise StoreUnavailable while ``down`` is set (the database restarting, as the engine sees
    it)."""

    def __init__(self, store: Store, *failing: str) -> None:
        self._store = store
        self.failing = set(failing)
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in self.failing:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreUnavailable(f"{name}: connection refused")
            return await attribute(*args, **kwargs)

        return call


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait until ``check`` holds, polling; fail the test after ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within {seconds} s: {check.__doc__ or check}")


async def _queue(store: Store, *jobs: NewJob) -> None:
    """Store a workflow whose only jobs are ``jobs``."""
    owner = await tenant(store)
    await store.accept(dataclasses.replace(workflow(owner), jobs=jobs))


def _engine(store: Store, *job_kinds: JobKind, **settings: Any) -> Engine:
    clock = SystemClock()
    pacing = EngineSettings(poll_interval=0.02, claim_interval=0.05, lookahead=0.0, **settings)
    return Engine(
        store, Providers(SandboxProvider(store, clock)), clock, pacing, job_kinds=job_kinds
    )


def _sending_engine(store: Store, journal: Store, **settings: Any) -> Engine:
    """An engine on ``store`` whose sandbox keeps its journal in ``journal``; the webhooks its
    transitions queue are dropped (not what these tests look at)."""
    clock = SystemClock()
    pacing = EngineSettings(poll_interval=0.02, claim_interval=0.05, lookahead=0.0, **settings)

    async def drop(job: Job) -> None:
        await store.finish_job(job.id)

    webhooks = FunctionKind("webhook", drop)
    return Engine(
        store, Providers(SandboxProvider(journal, clock)), clock, pacing, job_kinds=[webhooks]
    )


async def test_jobs_run_after_the_store_was_down(sqlite_store: SqliteStore) -> None:
    """Every read and claim of the job loop failing for a while (the job loop once ended on
    the first ``next_job_at`` that raised) delays jobs but does not stop the engine: a job
    queued during the outage runs once the store answers, and the outage is logged once."""
    flaky = FlakyStore(sqlite_store, "next_job_at", "claim_jobs", "extend_lease")
    ran: list[str] = []
    done = asyncio.Event()

    async def record(job: Job) -> None:
        ran.append(job.ref)
        await sqlite_store.finish_job(job.id)
        done.set()

    engine = _engine(cast(Store, flaky), FunctionKind("ping", record))
    with capture_logs() as logs:
        await engine.start()
        try:
            await asyncio.sleep(0.1)
            flaky.down = True
            await _queue(sqlite_store, NewJob("ping", "during", 0.0))
            await asyncio.sleep(0.5)  # the loop keeps trying meanwhile (its backoff)
            assert flaky.refused >= 3
            assert engine.health()["tasks"] == {
                "engine-loop": True,
                "engine-heartbeat": True,
                "engine-orphans": True,
            }
            assert ran == []
            flaky.down = False
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await engine.stop()
    assert ran == ["during"]
    failing = [e for e in logs if e["event"] == "task.failing"]
    assert len(failing) == 1, failing
    assert failing[0]["task"] == "engine-loop"
    assert [e["task"] for e in logs if e["event"] == "task.recovered"] == ["engine-loop"]
    assert not [e for e in logs if e["event"] == "task.died"]


async def test_the_heartbeat_says_it_recovered_once_the_store_answers_with_nothing_held(
    sqlite_store: SqliteStore,
) -> None:
    """A lease the heartbeat failed to extend during an outage is logged as failing; when the
    job ends meanwhile, the heartbeat has nothing left to extend, and it still says when the
    store answers again (it once stayed silent until it next held a job)."""
    flaky = FlakyStore(sqlite_store, "extend_lease", "next_job_at", "claim_jobs")
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(job: Job) -> None:
        started.set()
        await release.wait()
        await sqlite_store.finish_job(job.id)

    engine = _engine(cast(Store, flaky), FunctionKind("hold", hold), lease=0.3)
    with capture_logs() as logs:
        await engine.start()
        try:
            await _queue(sqlite_store, NewJob("hold", "held", 0.0))
            await asyncio.wait_for(started.wait(), 10)
            flaky.down = True
            for _ in range(200):
                if "engine-heartbeat" in _failing(logs):
                    break
                await asyncio.sleep(0.02)
            assert "engine-heartbeat" in _failing(logs), "no lease extension was refused"
            release.set()
            await asyncio.sleep(0.3)  # the job is done; the store is still down
            assert "engine-heartbeat" not in _recovered(logs), "recovered while still down"
            flaky.down = False
            for _ in range(100):
                if "engine-heartbeat" in _recovered(logs):
                    break
                await asyncio.sleep(0.02)
        finally:
            await engine.stop()
    assert _failing(logs).count("engine-heartbeat") == 1
    assert _recovered(logs).count("engine-heartbeat") == 1


def _failing(logs: list[dict[str, Any]]) -> list[str]:
    """The tasks whose failure was logged."""
    return [e["task"] for e in logs if e["event"] == "task.failing"]


def _recovered(logs: list[dict[str, Any]]) -> list[str]:
    """The tasks whose recovery was logged."""
    return [e["task"] for e in logs if e["event"] == "task.recovered"]


async def test_readiness_follows_the_database_and_the_engine(sqlite_store: SqliteStore) -> None:
    """GET /ready answers 200 while the database and the engine work, and 503 naming the
    culprit when the database does not answer or a loop of the engine has ended."""
    flaky = FlakyStore(sqlite_store, "ping")
    engine = _engine(cast(Store, flaky))
    app = create_app(cast(Store, flaky), clock=engine.clock, engine_health=engine.health)
    transport = httpx.ASGITransport(app=app)
    await engine.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://c.test") as http:
            for _ in range(100):
                ready = await http.get("/ready")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.02)
            assert ready.status_code == 200, ready.text
            assert ready.json()["engine"]["status"] == "ok"
            assert (await http.get("/health")).status_code == 200

            flaky.down = True
            down = await http.get("/ready")
            assert down.status_code == 503
            assert down.json()["database"]["status"] == "unavailable"
            assert (await http.get("/health")).status_code == 200  # liveness stays
            flaky.down = False

            engine.supervisor._tasks["engine-orphans"].cancel()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            dead = await http.get("/ready")
            assert dead.status_code == 503
            assert dead.json()["engine"]["tasks"]["engine-orphans"] is False
    finally:
        await engine.stop()


async def test_ready_without_an_engine_reports_only_the_database(
    sqlite_store: SqliteStore,
) -> None:
    """An API process without an engine is ready when its database answers."""
    app = create_app(sqlite_store, clock=SystemClock())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://c.test") as http:
        ready = await http.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "database": {"status": "ok"},
        "engine": {"status": "off"},
    }


async def test_a_loop_that_ends_is_fatal() -> None:
    """A supervised loop that raises is reported once, at critical, to on_fatal; loops
    cancelled by stop() are not."""
    ended: list[tuple[str, str]] = []

    async def broken() -> None:
        raise RuntimeError("a bug")

    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor(lambda name, exc: ended.append((name, repr(exc))))
    with capture_logs() as logs:
        supervisor.start("broken", broken())
        supervisor.start("forever", forever())
        await asyncio.sleep(0.01)
        await supervisor.stop()
    assert ended == [("broken", "RuntimeError('a bug')")]
    assert supervisor.alive() == {"broken": False, "forever": False}
    assert [e["task"] for e in logs if e["event"] == "task.died"] == ["broken"]
    assert [e["log_level"] for e in logs if e["event"] == "task.died"] == ["critical"]


async def test_a_provider_meeting_a_store_outage_is_retried_without_a_traceback_per_message(
    sqlite_store: SqliteStore,
) -> None:
    """A send whose provider cannot reach the store (the sandbox's journal; a disk full did
    this to every message in flight, each logged with its traceback) is retried, is sent once
    the store answers, and logs no line of its own: an outage is logged once, not per message."""
    flaky = FlakyStore(sqlite_store, "sandbox_receive")
    clock = SystemClock()
    engine = _sending_engine(sqlite_store, cast(Store, flaky))
    owner = await tenant(sqlite_store)
    accepted = [workflow(owner, sms_step(), at=clock.now()) for _ in range(5)]
    flaky.down = True
    with capture_logs() as logs:
        for new in accepted:
            await sqlite_store.accept(new)
        await engine.start()
        try:

            async def all_refused() -> bool:
                return flaky.refused >= len(accepted)

            async def all_sent() -> bool:
                return len(await sqlite_store.sandbox_messages()) == len(accepted)

            await _eventually(all_refused)
            flaky.down = False
            await _eventually(all_sent)
        finally:
            await engine.stop()
    journal = await sqlite_store.sandbox_messages()
    assert sorted(m.message_id for m in journal) == sorted(w.steps[0].message_id for w in accepted)
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    record = await sqlite_store.get_workflow(owner.id, accepted[0].id)
    assert record is not None
    reasons = [event.reason for event in record.events if event.code == 1030]
    assert reasons
    assert all("store was unavailable" in (reason or "") for reason in reasons)


async def test_a_submit_the_store_could_not_record_is_logged_per_message_without_a_traceback(
    sqlite_store: SqliteStore,
) -> None:
    """A message the provider took while the store could not record it is one error line
    naming it and the outage (no traceback: an outage is not a bug), and is completed once the
    store answers (the sandbox knows it again, so it is not sent twice)."""
    flaky = FlakyStore(sqlite_store, "transition")
    clock = SystemClock()
    engine = _sending_engine(cast(Store, flaky), sqlite_store, lease=0.3)
    owner = await tenant(sqlite_store)
    new = workflow(owner, sms_step(), at=clock.now())
    flaky.down = True
    with capture_logs() as logs:
        await sqlite_store.accept(new)
        await engine.start()
        try:

            async def refused() -> bool:
                return flaky.refused >= 1

            async def recorded() -> bool:
                record = await sqlite_store.get_workflow(owner.id, new.id)
                return record is not None and record.messages[0].status is not None

            await _eventually(refused)
            flaky.down = False
            await _eventually(recorded)
        finally:
            await engine.stop()
    (line,) = [e for e in logs if e["event"] == "engine.submit_not_recorded"]
    assert line["message"] == new.steps[0].message_id
    assert "StoreUnavailable" in line["error"]
    assert not line["exc_info"]
    assert len(await sqlite_store.sandbox_messages()) == 1


def test_fatal_exit_stops_the_process_with_a_failure_status() -> None:
    """FatalExit raises SIGTERM once (the server's own shutdown) and then exits non-zero."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        fatal = FatalExit()
        fatal.exit_if_fatal()  # nothing ended: no exit
        fatal("engine-loop", RuntimeError("x"))
        fatal("engine-heartbeat", None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
    with pytest.raises(SystemExit, match="engine-loop") as exit_:
        fatal.exit_if_fatal()
    assert exit_.value.code != 0


def test_setbacks_back_off_and_log_once_per_streak() -> None:
    """Delays double up to the cap; a streak logs its first failure and a change of error,
    and its end once."""
    setbacks = Setbacks("t", first_delay=0.1, max_delay=1.0)
    with capture_logs() as logs:
        delays = [setbacks.failed(StoreUnavailable("down")) for _ in range(6)]
        setbacks.failed(TimeoutError())
        setbacks.succeeded()
        setbacks.succeeded()
    assert 0.075 <= delays[0] <= 0.1
    assert all(b >= a * 1.4 for a, b in itertools.pairwise(delays[:4]))
    assert max(delays) <= 1.0
    assert [e["event"] for e in logs] == ["task.failing", "task.failing", "task.recovered"]
    assert logs[-1]["failures"] == 7
