"""The SQLite writer: writes on the event loop thread, commits on a helper thread. A failing
write in a batch fails alone; writes queued during a commit share the next one; a write lock
held by another process is waited for without blocking the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cascade.config import Settings
from cascade.domain.failover import Changes
from cascade.domain.records import Event, NewJob, WorkflowRecord
from cascade.errors import StoreUnavailable
from cascade.service import open_store
from cascade.store.base import Decision, WorkflowKey
from cascade.store.sqlite import IntakeSignal, SqliteStore
from tests.contract.factories import T0, tenant, workflow


def _insert(ref: str, fail: bool = False) -> Callable[[sqlite3.Connection], str]:
    def write(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO jobs (kind, ref, run_at, created_at) VALUES ('x', ?, 0, 0)", (ref,)
        )
        if fail:
            conn.execute("INSERT INTO no_such_table VALUES (1)")
        return ref

    return write


async def _refs(store: SqliteStore) -> set[str]:
    return {job.ref for ref in "abcdefgh" for job in await store.pending_jobs(ref)}


async def test_a_failing_write_in_a_batch_is_undone_alone(sqlite_store: SqliteStore) -> None:
    """Writes that share a batch with a failing one are committed; everything the failing
    one did before it failed is undone, and it gets its error."""
    writer = sqlite_store._writer

    futures = [  # all three in one batch: the writer flushes on the loop's next turn
        writer.submit(_insert("a")),
        writer.submit(_insert("b", fail=True)),
        writer.submit(_insert("c")),
    ]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0] == "a"
    assert outcomes[2] == "c"
    assert isinstance(outcomes[1], StoreUnavailable)
    assert await _refs(sqlite_store) == {"a", "c"}


async def test_writes_queued_during_a_commit_share_the_next(sqlite_store: SqliteStore) -> None:
    """Ten writes queued while a transaction commits are committed together, in one."""
    writer = sqlite_store._writer
    first = writer.submit(_insert("a"))
    await asyncio.sleep(0)  # the first transaction is open: the next writes wait for it
    commits = sqlite_store.commits
    rest = [writer.submit(_insert(ref)) for ref in "bcdefgh"]
    await asyncio.gather(first, *rest)
    assert sqlite_store.commits - commits <= 2
    assert await _refs(sqlite_store) == set("abcdefgh")


async def test_another_process_holding_the_lock_does_not_block_the_loop(
    sqlite_store: SqliteStore,
) -> None:
    """While another connection holds the write lock, a write waits for it (trying again
    every few ms) and the event loop keeps running; the write commits once the lock is free,
    together with the writes queued while it waited."""
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.ensure_future(sqlite_store._writer.submit(_insert("a")))
        started = time.monotonic()
        for _ in range(10):
            await asyncio.sleep(0.02)
        assert time.monotonic() - started < 1.0  # the loop was not held
        assert not write.done()
        later = [asyncio.ensure_future(sqlite_store._writer.submit(_insert(r))) for r in "bc"]
        commits = sqlite_store.commits
    finally:
        other.execute("COMMIT")
        other.close()
    assert await asyncio.wait_for(asyncio.gather(write, *later), 10) == ["a", "b", "c"]
    assert sqlite_store.commits == commits + 1
    assert await _refs(sqlite_store) == {"a", "b", "c"}


async def test_a_lock_held_too_long_fails_the_waiting_writes(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that waited BUSY_TIMEOUT_MS for another process's lock fail as unavailable,
    and the writer goes on with later writes once the lock is free."""
    monkeypatch.setattr(type(sqlite_store._writer), "BUSY_TIMEOUT_MS", 100)
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await asyncio.wait_for(sqlite_store._writer.submit(_insert("a")), 10)
    finally:
        other.execute("COMMIT")
        other.close()
    assert await sqlite_store._writer.submit(_insert("b")) == "b"
    assert await _refs(sqlite_store) == {"b"}


async def test_a_transition_decided_before_another_write_is_decided_again(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transition decides before it takes the write lock; when a write queued before it
    changed the workflow (here a retry's last error, which a closing window reports), its
    transaction sees the version moved and decides again from what is stored."""
    owner = await tenant(sqlite_store)
    request = dataclasses.replace(workflow(owner), jobs=(NewJob("send", "x", T0),))
    await sqlite_store.accept(request)
    message_id = request.steps[0].message_id
    (job,) = await sqlite_store.claim_jobs("w1", T0, 10, 30.0)
    seen: list[int | None] = []

    def decide(loaded: WorkflowRecord) -> Decision:
        """Note the message's last error; change nothing else."""
        (current,) = [m for m in loaded.messages if m.id == message_id]
        seen.append(current.last_error_code)
        changes = Changes()
        changes.events.append(Event(at=T0 + 1, kind="probe"))
        return changes, []

    read = sqlite_store._read
    retried = False

    async def read_then_retry(plan: Any, *, snapshot: bool = False) -> Any:
        """The transition's read, then the retry's write stored before its transaction."""
        nonlocal retried
        found = await read(plan, snapshot=snapshot)
        if not retried:
            retried = True
            await sqlite_store.retry_job(
                job.id, T0 + 9, message_id=message_id, error=(1000, "busy"), at=T0 + 1
            )
        return found

    monkeypatch.setattr(sqlite_store, "_read", read_then_retry)
    await sqlite_store.transition(WorkflowKey(message_id=message_id), decide)
    assert seen == [None, 1000]  # decided early from the old read, then again in the lock


def test_none_and_bools_bind_as_null_and_integers() -> None:
    """With the store's adapters registered (importing it does, for speed), None still binds as
    NULL and a bool as the integer 0 or 1, as sqlite3 binds them without adapters."""
    conn = sqlite3.connect(":memory:")
    try:
        found = conn.execute(
            "SELECT typeof(?), ?, typeof(?), ?, ?, coalesce(?, 'kept')",
            (None, None, True, True, False, None),
        ).fetchone()
    finally:
        conn.close()
    assert found == ("null", None, "integer", 1, 0, "kept")


async def test_the_page_cache_of_both_connections_follows_the_setting(tmp_path: Path) -> None:
    """CASCADE_SQLITE_CACHE_MB sizes the page cache of the reader and the writer alike."""
    settings = Settings(sqlite_cache_mb=8)
    store = open_store(f"sqlite:///{tmp_path / 'cache.db'}", settings)
    assert isinstance(store, SqliteStore)
    await store.open()
    try:
        reader = store._reader
        assert reader is not None
        assert reader.execute("PRAGMA cache_size").fetchone() == (-8 * 1024,)
        sizes = await store._writer.submit(
            lambda conn: conn.execute("PRAGMA cache_size").fetchone()
        )
        assert sizes == (-8 * 1024,)
    finally:
        await store.close()


async def test_the_apis_wait_for_the_lock_is_seen_by_the_engines_store(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the API's writer finds the write lock taken, another store of the same file (the
    engine's process) sees it waiting, for a window after its last wait and no longer; the
    API's own store never counts its own waits, and it tries the lock every millisecond."""
    monkeypatch.setattr(IntakeSignal, "WINDOW", 0.2)
    engine = SqliteStore(sqlite_store.path)
    await engine.open()
    sqlite_store.announce_intake_waits()
    try:
        assert not engine.intake_waiting()
        other = sqlite3.connect(sqlite_store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            write = asyncio.ensure_future(sqlite_store._writer.submit(_insert("a")))
            await asyncio.sleep(0.03)
            assert engine.intake_waiting()
            assert not sqlite_store.intake_waiting()
            # the API's writer looks for the lock at least every millisecond, the engine's
            # every 4: the engine's transactions it waits for are short
            assert sqlite_store._writer._lock_retry == 0.001
        finally:
            other.execute("COMMIT")
            other.close()
        assert await asyncio.wait_for(write, 10) == "a"
        assert engine.intake_waiting()  # still within the window of the last wait
        await asyncio.sleep(0.4)
        assert not engine.intake_waiting()
    finally:
        await engine.close()


async def test_the_engine_stores_small_batches_while_the_api_waits(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transitions asked together are stored in batches of YIELDING_BATCH while the API
    waits for the write lock, and of MAX_BATCH otherwise."""
    owner = await tenant(sqlite_store)
    requests = [workflow(owner) for _ in range(70)]
    for request in requests:
        await sqlite_store.accept(request)

    def noting(loaded: WorkflowRecord) -> Decision:
        changes = Changes()
        changes.events.append(Event(at=T0 + 1, kind="note", source="test"))
        return changes, []

    async def batches_for(waiting: bool) -> int:
        monkeypatch.setattr(sqlite_store, "intake_waiting", lambda: waiting)
        before = sqlite_store.transitions.batches
        await asyncio.gather(
            *(sqlite_store.transition(WorkflowKey(workflow_id=r.id), noting) for r in requests)
        )
        return sqlite_store.transitions.batches - before

    small = sqlite_store.transitions.YIELDING_BATCH
    assert await batches_for(True) == -(-len(requests) // small)  # 3 of at most 30
    assert await batches_for(False) == 1


@pytest.mark.parametrize("run_worker", [False, True])
def test_only_an_api_without_its_engine_announces_its_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_worker: bool
) -> None:
    """`serve`'s API process (its engine apart) announces its waits for the lock; a process
    that runs the engine beside the API has nobody to yield to, and does not."""
    import cascade.runtime

    made: list[SqliteStore] = []

    def keeping(url: str, settings: Settings) -> SqliteStore:
        store = open_store(url, settings)
        assert isinstance(store, SqliteStore)
        made.append(store)
        return store

    monkeypatch.setattr(cascade.runtime, "open_store", keeping)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'c.db'}", run_worker=run_worker)
    cascade.runtime.build_app(settings)
    (store,) = made
    assert store._writer.announces is not run_worker
