"""The retention sweep: what one sweep deletes with the settings given, batch by batch, and a
sweep loop that outlives store errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cascade.clock import FakeClock
from cascade.engine.retention import DAY, RETRY_FIRST, Retention, RetentionSettings
from cascade.errors import StoreUnavailable
from cascade.store.sqlite import SqliteStore
from tests.contract.factories import T0, tenant, workflow
from tests.contract.test_retention import finished


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened SQLite store in a temporary directory, closed after the test."""
    opened = SqliteStore(tmp_path / "cascade.db", synchronous="NORMAL")
    await opened.open()
    yield opened
    await opened.close()


async def _store_with_history(store: SqliteStore) -> tuple[SqliteStore, str, list[str]]:
    """The store holding three workflows finished 40 days before T0 + 40 days, one finished a
    day before it, and an Idempotency-Key first used at T0; their owner and the old ids."""
    owner = await tenant(store)
    old = [(await finished(store, owner.id, T0 + n)).id for n in range(3)]
    await finished(store, owner.id, T0 + 39 * DAY)
    await store.accept(workflow(owner, key="k", at=T0))
    return store, owner.id, old


async def test_a_sweep_deletes_what_is_older_than_the_settings(store: SqliteStore) -> None:
    """With 30 days' retention and batches of one, a sweep deletes the three old workflows
    and the day-old Idempotency-Key, and keeps the recent workflow."""
    store, owner_id, old = await _store_with_history(store)
    clock = FakeClock(T0 + 40 * DAY)
    sweep = Retention(store, clock, RetentionSettings(days=30, batch_size=1))
    assert await sweep.purge_once() == 4
    for workflow_id in old:
        assert await store.get_workflow(owner_id, workflow_id) is None
    assert len(await store.list_webhooks(account_id=owner_id)) == 1
    assert await store.purge_idempotency_keys(T0 + 1, 10) == 0
    assert await sweep.purge_once() == 0


async def test_zero_days_keeps_workflows_but_keys_still_expire(store: SqliteStore) -> None:
    """Retention 0 keeps every workflow forever; Idempotency-Keys still expire."""
    store, owner_id, old = await _store_with_history(store)
    clock = FakeClock(T0 + 40 * DAY)
    sweep = Retention(store, clock, RetentionSettings(days=0))
    assert await sweep.purge_once() == 1
    for workflow_id in old:
        assert await store.get_workflow(owner_id, workflow_id) is not None


class FailingOnce(SqliteStore):
    """A store whose first purge fails as an unreachable database would."""

    calls = 0
    #: set when a purge after the failing one has returned
    retried = asyncio.Event()

    async def purge_idempotency_keys(self, before: float, limit: int) -> int:
        self.calls += 1
        if self.calls == 1:
            raise StoreUnavailable("database unreachable")
        purged = await super().purge_idempotency_keys(before, limit)
        self.retried.set()
        return purged


async def test_the_sweep_loop_logs_a_failure_and_tries_again(tmp_path: Path) -> None:
    """A sweep that fails is logged and tried again after the backoff; the loop goes on."""
    store = FailingOnce(tmp_path / "cascade.db", synchronous="NORMAL")
    await store.open()
    owner = await tenant(store)
    await store.accept(workflow(owner, key="k", at=T0))
    clock = FakeClock(T0 + 2 * DAY)
    sweep = Retention(store, clock, RetentionSettings(days=30, interval=300))
    with capture_logs() as logs:
        task = asyncio.create_task(sweep.run())
        for _ in range(5):
            await asyncio.sleep(0)
        assert [e["event"] for e in logs] == ["retention.failed"]
        clock.advance(RETRY_FIRST)
        async with asyncio.timeout(10):  # the retried sweep commits on SQLite's helper thread
            await store.retried.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
    assert store.calls == 2
    assert [e["event"] for e in logs] == ["retention.failed", "retention.purged"]
    assert await store.purge_idempotency_keys(T0 + 1, 10) == 0
    await store.close()
