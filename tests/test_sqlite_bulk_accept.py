"""The SQLite writer's bulk path: a run of accepts in one batch is inserted with one statement
per table, and stores exactly what one-by-one inserts store; a failing accept in the run fails
alone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from cascade.clock import FakeClock
from cascade.domain.failover import step_jobs
from cascade.domain.records import Accepted, NewStep, NewWorkflow, Surface
from cascade.errors import StoreConflict
from cascade.service import new_account
from cascade.store.sqlite import SqliteStore, _Accept
from cascade.store.sqlstore import AcceptRows

NOW = 1_800_000_000.0


def _workflow(account_id: str, workflow_id: str | None = None) -> NewWorkflow:
    steps = (
        NewStep(
            message_id=str(uuid.uuid4()),
            channel="messenger",
            to=b'{"type":"messenger","id":"1234560003"}',
            from_=b'{"type":"messenger","id":"page"}',
            body=b'{"content":{"type":"text","text":"Hi"}}',
            client_ref="ref-1",
            expiry_time=600,
            condition_status="read",
        ),
        NewStep(
            message_id=str(uuid.uuid4()),
            channel="sms",
            to=b'{"type":"sms","number":"447700900000"}',
            from_=b'{"type":"sms","number":"Acme"}',
            body=b'{"content":{"type":"text","text":"Hi by SMS"}}',
            client_ref=None,
            expiry_time=None,
            condition_status=None,
        ),
    )
    wid = workflow_id or str(uuid.uuid4())
    jobs = step_jobs(wid, steps[0].message_id, 600, False, NOW, 72 * 3600.0)
    return NewWorkflow(
        id=wid,
        account_id=account_id,
        application_id=None,
        surface=Surface.DISPATCH,
        steps=steps,
        accepted_at=NOW,
        jobs=tuple(jobs),
    )


def _rows(path: Path, workflow_ids: list[str]) -> list[tuple[object, ...]]:
    """Every stored row of these workflows, in a stable order, without generated job ids."""
    conn = sqlite3.connect(path)
    try:
        marks = ",".join("?" * len(workflow_ids))
        rows: list[tuple[object, ...]] = []
        rows += conn.execute(
            f"SELECT * FROM workflows WHERE id IN ({marks}) ORDER BY id", workflow_ids
        ).fetchall()
        rows += conn.execute(
            f"SELECT * FROM messages WHERE workflow_id IN ({marks}) ORDER BY id", workflow_ids
        ).fetchall()
        rows += conn.execute(
            "SELECT kind, ref, run_at, attempts, locked_by, locked_until, created_at FROM jobs "
            f"WHERE ref IN (SELECT id FROM messages WHERE workflow_id IN ({marks})) "
            "ORDER BY ref, kind",
            workflow_ids,
        ).fetchall()
    finally:
        conn.close()
    return rows


async def _one_batch(store: SqliteStore, workflows: list[NewWorkflow]) -> list[object]:
    """Submit every accept before the writer can take any, so that they share one batch (the
    writer flushes on the event loop's next turn, after these submits)."""
    writer = store._writer
    futures = [writer.submit(_Accept(AcceptRows.of(w))) for w in workflows]
    return list(await asyncio.gather(*futures, return_exceptions=True))


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    """An opened store with one account."""
    opened = SqliteStore(tmp_path / "bulk.db", synchronous="NORMAL")
    await opened.open()
    await opened.create_account(new_account(FakeClock(time.time())).account)
    return opened


async def test_a_batch_of_accepts_is_one_commit_with_the_same_rows(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Thirty accepts in one batch commit once and store the rows that one-by-one accepts
    store."""
    account = (await store.list_accounts())[0]
    try:
        singles = [_workflow(account.id) for _ in range(3)]
        for single in singles:  # each alone in its batch: the one-by-one path
            assert await store.accept(single) == Accepted(created=True)
        bulk = [_workflow(account.id) for _ in range(30)]
        commits = store.commits
        assert await _one_batch(store, bulk) == [Accepted(created=True)] * 30
        assert store.commits == commits + 1
    finally:
        await store.close()
    by_bulk = _rows(tmp_path / "bulk.db", [w.id for w in bulk])
    assert len(by_bulk) == 30 * (1 + 2 + 2)
    # the same shape, column by column, as the rows the one-by-one path wrote
    by_one = _rows(tmp_path / "bulk.db", [w.id for w in singles])
    assert {tuple(type(v) for v in row) for row in by_bulk} == {
        tuple(type(v) for v in row) for row in by_one
    }


async def test_a_conflicting_accept_in_a_bulk_run_fails_alone(
    store: SqliteStore, tmp_path: Path
) -> None:
    """An accept whose id exists fails with StoreConflict; the others in its batch are
    stored."""
    account = (await store.list_accounts())[0]
    try:
        first = _workflow(account.id)
        await store.accept(first)
        batch = [_workflow(account.id), _workflow(account.id, first.id), _workflow(account.id)]
        outcomes = await _one_batch(store, batch)
    finally:
        await store.close()
    assert outcomes[0] == outcomes[2] == Accepted(created=True)
    assert isinstance(outcomes[1], StoreConflict)
    stored = _rows(tmp_path / "bulk.db", [batch[0].id, batch[2].id])
    assert len(stored) == 2 * (1 + 2 + 2)
