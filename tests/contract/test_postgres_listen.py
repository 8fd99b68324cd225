"""PostgreSQL wake-ups across processes: transactions that queue jobs NOTIFY, and a store's
listener (and so the engine) hears it at once, also after its connection was dropped.

Notifications are per database, so other tests sharing it can wake a listener too: these tests
only ever wait for a wake-up, never for its absence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from cascade.channels.sandbox import SandboxProvider
from cascade.clock import SystemClock
from cascade.domain.failover import Changes
from cascade.domain.records import NewJob, NewWebhook, WebhookAttempt, WorkflowRecord
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.store.base import Decision, Job, WorkflowKey
from cascade.store.postgres import PostgresStore
from tests.contract.factories import T0, tenant, workflow
from tests.engine.harness import FunctionKind

pytestmark = pytest.mark.postgres

#: how soon a notification must wake the listener
PROMPT = 1.0


@dataclasses.dataclass
class Pair:
    """Two stores on one database, as two processes have: one listens, the other writes."""

    listener: PostgresStore
    writer: PostgresStore
    woken: asyncio.Event


@pytest.fixture
async def pair(postgres_schema: str) -> AsyncIterator[Pair]:
    """A listening store and a writing store on one fresh schema, closed after the test."""
    listener = PostgresStore(postgres_schema, pool_size=2)
    writer = PostgresStore(postgres_schema, pool_size=2)
    await listener.open()
    await writer.open()
    woken = asyncio.Event()
    try:
        await listener.listen_for_jobs(woken.set)
        yield Pair(listener, writer, woken)
    finally:
        await listener.close()
        await writer.close()


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    """Poll ``condition()`` until it is true, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


async def backend_alive(url: str, pid: int) -> bool:
    """Whether the server process ``pid`` still serves a connection."""
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
        )
    finally:
        await conn.close()


def webhook(account_id: str) -> NewWebhook:
    """A webhook with a URL of its own (so it gets a delivery job)."""
    return NewWebhook(
        kind="message-status",
        account_id=account_id,
        application_id=None,
        workflow_id=None,
        message_id=None,
        url="https://example.test/hook",
        body=b"{}",
    )


async def test_an_accept_elsewhere_wakes_the_listener(pair: Pair) -> None:
    """An accept committed by another store instance wakes the listener within a second."""
    owner = await tenant(pair.writer)
    pair.woken.clear()
    await pair.writer.accept(workflow(owner))
    await asyncio.wait_for(pair.woken.wait(), PROMPT)


async def test_every_write_that_queues_jobs_wakes_the_listener(pair: Pair) -> None:
    """Transitions that queue jobs, new webhooks, replays and retried jobs each wake it."""
    owner = await tenant(pair.writer)
    request = workflow(owner)
    await pair.writer.accept(request)

    def queue_a_timer(loaded: WorkflowRecord) -> Decision:
        """Queue one job."""
        changes = Changes()
        changes.jobs.append(NewJob("probe", request.id, T0 + 60))
        return changes, []

    async def retry() -> None:
        """Claim the send and put it back for later."""
        (send,) = await pair.writer.claim_jobs("w1", T0, limit=1, lease=30)
        message_id = request.steps[0].message_id
        await pair.writer.retry_job(
            send.id, T0 + 5, message_id=message_id, error=(1, "busy"), at=T0 + 1
        )

    async def replay() -> None:
        """Make the webhook a dead letter, then replay it."""
        (stored,) = await pair.writer.list_webhooks()
        (job,) = await pair.writer.pending_jobs(str(stored.id))
        await pair.writer.record_webhook_attempt(
            WebhookAttempt(stored.id, T0 + 1, 404, None, 0.1),
            job_id=job.id,
            state="dead",
            next_attempt_at=None,
        )
        pair.woken.clear()
        assert await pair.writer.replay_webhooks(None, T0 + 2) == 1

    writes = {
        "transition": pair.writer.transition(WorkflowKey(workflow_id=request.id), queue_a_timer),
        "webhooks": pair.writer.add_webhooks([webhook(owner.id)], T0),
        "replay": replay(),
        "retry": retry(),
    }
    for name, write in writes.items():
        pair.woken.clear()
        await write
        try:
            await asyncio.wait_for(pair.woken.wait(), PROMPT)
        except TimeoutError:
            pytest.fail(f"{name} did not wake the listener")


async def test_the_listener_comes_back_after_its_connection_drops(
    pair: Pair, postgres_schema: str
) -> None:
    """When the server drops the listening connection, a new one listens and an accept
    elsewhere wakes the listener again."""
    owner = await tenant(pair.writer)
    dropped = pair.listener.listener_pid
    assert dropped is not None
    conn = await asyncpg.connect(postgres_schema)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", dropped)
    finally:
        await conn.close()
    await wait_until(lambda: pair.listener.listener_pid not in (None, dropped), within=5)
    pair.woken.clear()
    await pair.writer.accept(workflow(owner))
    await asyncio.wait_for(pair.woken.wait(), PROMPT)


async def test_a_failed_connect_is_retried_not_raised(
    postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """listen_for_jobs returns when it cannot connect; it keeps trying and then listens."""
    store = PostgresStore(postgres_schema, pool_size=2)
    await store.open()
    connect = asyncpg.connect
    refused = 0

    async def refuse_once(*args: Any, **kwargs: Any) -> Any:
        """Refuse the first connection, as a server briefly down would."""
        nonlocal refused
        if refused == 0:
            refused += 1
            raise ConnectionRefusedError("refused for the test")
        return await connect(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "connect", refuse_once)
    woken = asyncio.Event()
    try:
        await store.listen_for_jobs(woken.set)
        assert refused == 1
        assert store.listener_pid is None
        await wait_until(lambda: store.listener_pid is not None, within=5)
        woken.clear()
        await store.accept(workflow(await tenant(store)))
        await asyncio.wait_for(woken.wait(), PROMPT)
    finally:
        await store.close()


async def test_close_ends_the_listening_connection(postgres_schema: str) -> None:
    """Closing the store closes its listening connection."""
    store = PostgresStore(postgres_schema, pool_size=2)
    await store.open()
    await store.listen_for_jobs(lambda: None)
    pid = store.listener_pid
    assert pid is not None
    await store.close()
    assert store.listener_pid is None
    deadline = time.monotonic() + 5
    while await backend_alive(postgres_schema, pid):
        assert time.monotonic() < deadline, "the listening connection outlived the store"
        await asyncio.sleep(0.05)


async def test_an_engine_runs_work_queued_elsewhere_before_its_next_poll(pair: Pair) -> None:
    """A running engine hears an accept made through another store and runs its due job at
    once, though it would not poll again for a minute."""
    ran: asyncio.Queue[Job] = asyncio.Queue()
    clock = SystemClock()

    async def record(job: Job) -> None:
        """Note the job and finish it."""
        await pair.listener.finish_job(job.id)
        await ran.put(job)

    engine = Engine(
        pair.listener,
        Providers(SandboxProvider(pair.listener, clock)),
        clock,
        EngineSettings(poll_interval=60.0, claim_interval=60.0),
        job_kinds=[FunctionKind("ping", record)],
    )
    await engine.start()
    try:
        await asyncio.sleep(0.2)  # the loop finds nothing and settles into its long sleep
        owner = await tenant(pair.writer)
        request = dataclasses.replace(
            workflow(owner), jobs=(NewJob("ping", "queued-elsewhere", clock.now()),)
        )
        await pair.writer.accept(request)
        job = await asyncio.wait_for(ran.get(), PROMPT)
        assert job.ref == "queued-elsewhere"
    finally:
        await engine.stop()
