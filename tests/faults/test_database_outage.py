"""Cascade on PostgreSQL through a proxy that cuts the line: work accepted before, during and
after a database outage completes, once, with no operator.

The service runs in-process (API, engine, sandbox 20 times faster) on a store whose every
connection goes through :class:`FaultProxy`. Dispatches are accepted before the cut; during the
cut (the API answers 503, and the client retries with the same Idempotency-Key, as a polite
client does, until it gets its 202 after the line is back); and after it. The engine was running
throughout: before the fix its job loop ended on the first failed read and nothing more was ever
sent. Every workflow must then fail over (Messenger rejected, SMS delivered) and complete, with
one final report and the sandbox handed each message once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cascade.api.app import create_app
from cascade.clock import SystemClock
from cascade.config import Settings
from cascade.domain.records import WebhookKind, WorkflowState
from cascade.engine.engine import Engine
from cascade.errors import StoreUnavailable
from cascade.runtime import build_engine
from cascade.store.postgres import PostgresStore
from tests.conftest import Tenant, make_tenant
from tests.engine.harness import step, workflow
from tests.faults.conftest import through
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: dispatches accepted in each phase
PER_PHASE = 20
#: how long the database is away
OUTAGE = 3.0
#: the whole scenario must end well within this
DEADLINE = 60.0


class Service:
    """The API and engine of one process, on the proxied store."""

    def __init__(self, store: PostgresStore, engine: Engine, http: httpx.AsyncClient) -> None:
        self.store = store
        self.engine = engine
        self.http = http

    async def dispatch(self, tenant: Tenant, deadline: float) -> str:
        """Accept one failover dispatch, retrying a 503 with the same Idempotency-Key."""
        body = workflow(
            step("messenger", "1234560001", expiry=600),  # rejected at once: fail over
            step("sms", "447700900000"),
        )
        headers = {**tenant.basic(), "Idempotency-Key": str(uuid.uuid4())}
        while True:
            response = await self.http.post("/v0.1/dispatch", json=body, headers=headers)
            if response.status_code == 202:
                return str(response.json()["dispatch_uuid"])
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "still refused long after the outage"
            await asyncio.sleep(0.2)


@pytest.fixture
async def service(postgres_schema: str, proxy: FaultProxy) -> AsyncIterator[Service]:
    """Cascade on the proxied database, engine running."""
    clock = SystemClock()
    settings = Settings(
        database_url=through(postgres_schema, proxy.port),
        sandbox_speed=20.0,
        job_lease_seconds=2.0,
        postgres_pool_size=8,
    )
    store = PostgresStore(settings.database_url, pool_size=settings.postgres_pool_size)
    await store.open()
    engine = build_engine(settings, store, clock)
    app = create_app(store, clock=clock, on_accepted=engine.wake, engine_health=engine.health)
    await engine.start()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://c.test") as http:
            yield Service(store, engine, http)
    finally:
        await engine.stop()
        await store.close()


async def test_work_accepted_around_a_database_outage_completes_once(
    service: Service, proxy: FaultProxy
) -> None:
    """Dispatches accepted before, during and after the database is cut off all fail over
    and complete once, and the engine needed no restart."""
    deadline = time.monotonic() + DEADLINE
    tenant = await make_tenant(service.store)
    # a status URL, so that each final report is stored (nothing listens there: it is retried)
    await service.store.update_account(tenant.account.id, status_url="http://127.0.0.1:9/s")
    before = [await service.dispatch(tenant, deadline) for _ in range(PER_PHASE)]

    proxy.cut()
    during = [asyncio.create_task(service.dispatch(tenant, deadline)) for _ in range(PER_PHASE)]
    await asyncio.sleep(OUTAGE)
    ready = await service.http.get("/ready")
    assert ready.status_code == 503, ready.text
    assert proxy.refused > 0
    proxy.restore()
    accepted_during = await asyncio.gather(*during)

    after = [await service.dispatch(tenant, deadline) for _ in range(PER_PHASE)]
    ids = before + accepted_during + after
    assert len(set(ids)) == 3 * PER_PHASE

    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            stuck = [await service.store.get_workflow(tenant.account.id, w) for w in pending]
            jobs = [await service.store.pending_jobs(m.id) for w in stuck if w for m in w.messages]
            pytest.fail(f"{len(pending)} workflows never finished: {stuck} {jobs}")
        for workflow_id in list(pending):
            record = await service.store.get_workflow(tenant.account.id, workflow_id)
            assert record is not None
            if record.state is WorkflowState.COMPLETED:
                pending.discard(workflow_id)
        await asyncio.sleep(0.2)

    assert service.engine.health()["status"] == "ok"
    assert (await service.http.get("/ready")).status_code == 200
    reports: Counter[str] = Counter()
    for workflow_id in ids:
        for webhook in await service.store.list_webhooks(workflow_id=workflow_id, limit=100):
            if webhook.kind == WebhookKind.FINAL_REPORT:
                reports[workflow_id] += 1
    assert reports == dict.fromkeys(ids, 1)
    journal: Counter[Any] = Counter(m.message_id for m in await service.store.sandbox_messages())
    assert journal
    assert max(journal.values()) == 1
    assert len(journal) == 2 * len(ids)  # the rejected Messenger step and the SMS, each once


async def test_a_database_gone_silent_fails_the_call_and_the_store_recovers(
    postgres_schema: str, proxy: FaultProxy
) -> None:
    """A statement on a connection that stops answering (no reset, no close) fails as
    StoreUnavailable after the command timeout instead of holding its caller for ever; once
    the line answers again, so does the store."""
    store = PostgresStore(through(postgres_schema, proxy.port), pool_size=2, command_timeout=0.5)
    await store.open()
    try:
        await store.ping()
        proxy.stall()
        async with asyncio.timeout(20):  # without the timeout: for ever
            with pytest.raises(StoreUnavailable, match="TimeoutError"):
                await store.list_accounts()
        proxy.restore()
        async with asyncio.timeout(20):
            while True:
                try:
                    await store.ping()
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1)  # a connection left broken by the stall is replaced
        assert await store.list_accounts() == []
    finally:
        proxy.restore()
        await store.close()
