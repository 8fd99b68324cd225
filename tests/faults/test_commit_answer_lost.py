"""An accept whose COMMIT reached PostgreSQL but whose answer was lost (the database restarted,
the line broke): seen when PostgreSQL was restarted under load, one message answered 503
"nothing was stored" was stored and sent, and a client retrying without an Idempotency-Key
would have sent it twice. The store now asks the database whether it took the commit: 202 when
it did, 503 "nothing was stored" when it did not, and 503 "may have been stored" when the
database cannot be asked in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from cascade.api.app import create_app
from cascade.clock import SystemClock
from cascade.domain.records import Accepted, StoredResponse
from cascade.errors import StoreOutcomeUnknown, StoreUnavailable
from cascade.store import postgres
from cascade.store.postgres import PostgresStore
from tests.conftest import Tenant, make_tenant
from tests.contract import factories
from tests.engine.harness import step, workflow
from tests.faults.conftest import through
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def api(
    postgres_schema: str, proxy: FaultProxy
) -> AsyncIterator[tuple[httpx.AsyncClient, Tenant]]:
    """The API alone (no engine: its commits would meet the proxy's trap first) on the proxied
    store, and a tenant."""
    store = PostgresStore(through(postgres_schema, proxy.port), pool_size=4)
    await store.open()
    tenant = await make_tenant(store)
    app = create_app(store, clock=SystemClock())
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c.test") as http:
            yield http, tenant
    finally:
        await store.close()


async def _stored(postgres_schema: str) -> list[str]:
    """The workflows in the database, read directly."""
    conn = await asyncpg.connect(postgres_schema)
    try:
        return [row["id"] for row in await conn.fetch("SELECT id FROM workflows")]
    finally:
        await conn.close()


BODY = workflow(step("sms", "447700900000"))


async def test_a_commit_whose_answer_was_lost_is_answered_202_when_it_was_stored(
    api: tuple[httpx.AsyncClient, Tenant], proxy: FaultProxy, postgres_schema: str
) -> None:
    """The database committed and the line broke before its answer: the store asks, finds
    the workflow, and the client gets its 202 (before, a 503 saying nothing was stored)."""
    http, tenant = api
    proxy.lose_answer_to(b"COMMIT")
    response = await http.post("/v0.1/dispatch", json=BODY, headers=tenant.basic())
    assert response.status_code == 202, response.text
    assert await _stored(postgres_schema) == [response.json()["dispatch_uuid"]]


async def test_a_commit_whose_outcome_cannot_be_asked_says_it_may_have_been_stored(
    api: tuple[httpx.AsyncClient, Tenant],
    proxy: FaultProxy,
    postgres_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database committed, the line broke and stays down past the store's patience: the
    503 says the request may have been stored, and to retry with its Idempotency-Key, since
    it was."""
    monkeypatch.setattr(postgres, "COMMIT_CHECK_PATIENCE", 1.0)
    http, tenant = api
    proxy.lose_answer_to(b"COMMIT", cut_all=True)
    response = await http.post("/v0.1/dispatch", json=BODY, headers=tenant.basic())
    assert response.status_code == 503, response.text
    assert "may have been stored" in response.json()["detail"]
    assert "Idempotency-Key" in response.json()["detail"]
    proxy.restore()
    assert len(await _stored(postgres_schema)) == 1


async def test_a_commit_whose_answer_was_lost_and_that_did_not_take_fails_as_nothing_stored(
    postgres_schema: str,
) -> None:
    """When the database answers that the batch's new workflows are not there, the commit was
    rolled back: those requests fail as unavailable (503, nothing stored), and a replay in the
    same batch, decided from what was committed before, keeps its answer."""
    store = PostgresStore(postgres_schema, pool_size=2)
    await store.open()
    try:
        owner = await factories.tenant(store)
        fresh, replayed = factories.workflow(owner), factories.workflow(owner)
        replay = Accepted(created=False, response=StoredResponse(202, b"{}"))
        lost = postgres._AnswerLost([Accepted(created=True), replay])
        batch = [postgres._Request(request, asyncio.Future()) for request in (fresh, replayed)]
        outcomes = await store._committed_or_not(batch, lost)
    finally:
        await store.close()
    assert isinstance(outcomes[0], StoreUnavailable)
    assert not isinstance(outcomes[0], StoreOutcomeUnknown)
    assert outcomes[1] is replay
