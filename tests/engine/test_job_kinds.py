"""The engine is built with its job kinds: it claims only the kinds it is told to run, gives each
kind its due jobs to prefetch a batch at a time, runs them, and closes every kind when it
stops; the running service builds it with the webhook sender."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from structlog.testing import capture_logs

from cascade.channels.sandbox import SandboxProvider
from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.domain.records import JobKindName, NewJob
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.runtime import build_engine
from cascade.store.base import Job
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import WebhookSender
from tests.contract.factories import tenant, workflow
from tests.engine.harness import FunctionKind


async def _queue(store: SqliteStore, *jobs: NewJob) -> None:
    """Store a workflow whose only jobs are ``jobs``."""
    owner = await tenant(store)
    await store.accept(dataclasses.replace(workflow(owner), jobs=jobs))


def _locked(store: SqliteStore) -> dict[str, str | None]:
    """Each job's ref, and the worker that holds it (None: not claimed)."""
    conn = sqlite3.connect(store.path)
    try:
        return dict(conn.execute("SELECT ref, locked_by FROM jobs").fetchall())
    finally:
        conn.close()


async def test_an_engine_runs_a_job_kind_it_is_built_with(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A custom kind's due jobs are prefetched together, then each runs; a job due later runs
    when it is due; jobs of kinds the engine is not told to run are never claimed; stopping
    closes the kind once."""
    ran: list[str] = []

    async def finish(job: Job) -> None:
        ran.append(job.ref)
        await sqlite_store.finish_job(job.id)

    ping = FunctionKind("ping", finish)
    engine = Engine(
        sqlite_store,
        Providers(SandboxProvider(sqlite_store, clock)),
        clock,
        EngineSettings(kinds=frozenset({"ping"})),
        job_kinds=[ping],
    )
    now = clock.now()
    await _queue(
        sqlite_store,
        NewJob("ping", "p1", now),
        NewJob("ping", "p2", now),
        NewJob("ping", "later", now + 10),
        NewJob(JobKindName.SEND, "m", now),
        NewJob(JobKindName.WEBHOOK, "1", now),
    )
    await engine.start(run_loop=False)
    assert engine.job_kind("ping") is ping
    assert await engine.drain() == 2
    assert sorted(ran) == ["p1", "p2"]
    assert [sorted(batch) for batch in ping.prefetched] == [["p1", "p2"]]
    clock.advance(10)
    assert await engine.drain() == 1
    assert ran[2:] == ["later"]
    assert ping.prefetched[1:] == [["later"]]
    assert ping.closed == 0
    await engine.stop()
    assert ping.closed == 1
    # the send and webhook jobs are left, unclaimed, for engines that run those kinds
    assert _locked(sqlite_store) == {"m": None, "1": None}


async def test_a_failed_prefetch_is_logged_and_the_jobs_run_anyway(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A kind whose batch read fails still runs its jobs (each reads for itself)."""
    ran: list[str] = []

    async def finish(job: Job) -> None:
        ran.append(job.ref)
        await sqlite_store.finish_job(job.id)

    class FailingPrefetch(FunctionKind):
        async def prefetch(self, jobs: object) -> None:
            raise RuntimeError("the batch read failed")

    engine = Engine(
        sqlite_store,
        Providers(SandboxProvider(sqlite_store, clock)),
        clock,
        job_kinds=[FailingPrefetch("ping", finish)],
    )
    await _queue(sqlite_store, NewJob("ping", "p1", clock.now()))
    await engine.start(run_loop=False)
    try:
        with capture_logs() as logs:
            assert await engine.drain() == 1
    finally:
        await engine.stop()
    assert ran == ["p1"]
    assert [entry["event"] for entry in logs] == ["engine.prefetch_failed"]


def test_two_job_kinds_of_one_name_are_refused(sqlite_store: SqliteStore, clock: FakeClock) -> None:
    """A kind named like one of the engine's own (or another given kind) is a ValueError."""

    async def nothing(job: Job) -> None:
        """Run nothing."""

    providers = Providers(SandboxProvider(sqlite_store, clock))
    with pytest.raises(ValueError, match="'send'"):
        Engine(sqlite_store, providers, clock, job_kinds=[FunctionKind("send", nothing)])
    twice = [FunctionKind("ping", nothing), FunctionKind("ping", nothing)]
    with pytest.raises(ValueError, match="'ping'"):
        Engine(sqlite_store, providers, clock, job_kinds=twice)


def test_the_built_engine_runs_the_webhook_sender(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """build_engine gives the engine the webhook sender as its ``webhook`` job kind, beside its
    own kinds."""
    engine = build_engine(Settings(_env_file=None), sqlite_store, clock)
    assert isinstance(engine.job_kind(JobKindName.WEBHOOK), WebhookSender)
    for name in (JobKindName.SEND, JobKindName.STEP_TIMEOUT, JobKindName.REPORT_HORIZON):
        kind = engine.job_kind(name)
        assert kind is not None
        assert kind.name == name
    assert engine.job_kind("ping") is None
