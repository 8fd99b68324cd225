"""The Store contract for retention: Idempotency-Keys expire, and finished workflows, settled
inbound webhooks and orphan receipts are purged in batches, leaving everything else; SQLite's
files are private to their owner."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from cascade.domain.failover import Changes
from cascade.domain.records import (
    NewWebhook,
    NewWorkflow,
    Receipt,
    SandboxMessage,
    WebhookAttempt,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.errors import IdempotencyConflict
from cascade.store.base import Decision, Store, WorkflowKey
from cascade.store.sqlite import SqliteStore
from tests.contract.conftest import Backend
from tests.contract.factories import T0, tenant, workflow

TTL = 3600.0


async def finished(
    store: Store, owner_id: str, at: float, *, delivered: bool = True
) -> NewWorkflow:
    """A workflow accepted at T0 and completed at ``at`` with its final report queued; the
    report delivered (with one attempt) unless told otherwise."""
    owner = await store.get_account(owner_id)
    assert owner is not None
    request = workflow(owner)
    await store.accept(request)
    first = request.steps[0].message_id

    def finish(loaded: WorkflowRecord) -> Decision:
        """Complete the workflow and queue its final report."""
        changes = Changes(workflow_state=WorkflowState.COMPLETED, finished_at=at)
        report = NewWebhook(
            kind="final-report",
            account_id=owner_id,
            application_id=None,
            workflow_id=request.id,
            message_id=first,
            url="https://hooks.example/final",
            body=b'{"status":"completed"}',
        )
        return changes, [report]

    await store.transition(WorkflowKey(workflow_id=request.id), finish)
    if delivered:
        (report,) = await store.list_webhooks(workflow_id=request.id)
        (job,) = await store.pending_jobs(str(report.id))
        await store.record_webhook_attempt(
            WebhookAttempt(report.id, at + 1, 200, None, 0.01),
            job_id=job.id,
            state="delivered",
            next_attempt_at=None,
        )
    return request


class TestIdempotencyExpiry:
    async def test_an_expired_key_no_longer_deduplicates(self, store: Store) -> None:
        """Within its time to live a key replays (or conflicts); from then on, a request naming
        it is a new request, and the key names that request."""
        store.idempotency_ttl = TTL
        owner = await tenant(store)
        first = workflow(owner, key="k", digest="a", at=T0)
        assert (await store.accept(first)).created
        replay = await store.accept(workflow(owner, key="k", digest="a", at=T0 + TTL - 1))
        assert not replay.created
        with pytest.raises(IdempotencyConflict):
            await store.accept(workflow(owner, key="k", digest="b", at=T0 + TTL - 1))
        again = workflow(owner, key="k", digest="b", at=T0 + TTL)
        assert (await store.accept(again)).created
        assert await store.get_workflow(owner.id, again.id) is not None
        later = await store.accept(workflow(owner, key="k", digest="b", at=T0 + TTL + 1))
        assert not later.created
        assert again.idempotency is not None
        assert later.response == again.idempotency.response

    async def test_old_keys_are_purged_in_batches(self, store: Store) -> None:
        """Keys first used before the cut-off go, ``limit`` at a time; a newer key stays and
        still deduplicates."""
        owner = await tenant(store)
        for n, at in enumerate((T0, T0 + 10, T0 + 20)):
            await store.accept(workflow(owner, key=f"k{n}", at=at))
        assert await store.purge_idempotency_keys(T0 + 15, 1) == 1
        assert await store.purge_idempotency_keys(T0 + 15, 1) == 1
        assert await store.purge_idempotency_keys(T0 + 15, 1) == 0
        assert not (await store.accept(workflow(owner, key="k2", at=T0 + 21))).created
        assert (await store.accept(workflow(owner, key="k0", at=T0 + 21))).created


class TestPurgeWorkflows:
    async def test_only_old_finished_and_reported_workflows_go(self, store: Store) -> None:
        """A workflow finished before the cut-off with its report delivered goes with its
        messages, webhooks, attempts, jobs, parts and sandbox rows; a running one, one whose
        report is still pending and one finished after the cut-off stay."""
        owner = await tenant(store)
        old = await finished(store, owner.id, T0 + 30)
        old_first = old.steps[0].message_id
        await store.add_message_parts("smpp", old_first, ["p1", "p2"])
        await store.sandbox_receive(
            SandboxMessage(old_first, "sandbox-1", "sms", "447700900000", "hi", 1, None, ())
        )
        (old_report,) = await store.list_webhooks(workflow_id=old.id)
        running = workflow(owner)
        await store.accept(running)
        unreported = await finished(store, owner.id, T0 + 30, delivered=False)
        recent = await finished(store, owner.id, T0 + 100)

        assert await store.purge_workflows(T0 + 50, 10) == 1

        assert await store.get_workflow(owner.id, old.id) is None
        assert await store.get_message(owner.id, old_first) is None
        assert await store.get_webhook(old_report.id) is None
        assert await store.webhook_attempts([old_report.id]) == []
        assert await store.pending_jobs(old.id) == []
        assert await store.pending_jobs(old_first) == []
        assert [m.message_id for m in await store.sandbox_messages()] == []
        part = Receipt("smpp", "p1", Status.DELIVERED, T0 + 60)
        assert await store.record_part_receipt(part) is None
        for kept in (running, unreported, recent):
            assert await store.get_workflow(owner.id, kept.id) is not None
        assert len(await store.list_webhooks(workflow_id=unreported.id)) == 1
        assert await store.pending_jobs(running.steps[0].message_id) != []

    async def test_workflows_go_in_batches_of_the_limit(self, store: Store) -> None:
        """Each call deletes at most ``limit`` workflows; the next takes the rest."""
        owner = await tenant(store)
        for n in range(3):
            await finished(store, owner.id, T0 + n)
        assert await store.purge_workflows(T0 + 50, 2) == 2
        assert await store.purge_workflows(T0 + 50, 2) == 1
        assert await store.purge_workflows(T0 + 50, 2) == 0

    async def test_engines_purging_at_once_delete_each_workflow_once(
        self, store: Store, backend: Backend
    ) -> None:
        """Purges running at once on several stores of one database delete every eligible
        workflow exactly once, without an error."""
        owner = await tenant(store)
        for n in range(6):
            await finished(store, owner.id, T0 + n)
        others = [backend.make() for _ in range(2)]
        for other in others:
            if other is not store:
                await other.open()
        try:
            counts = await asyncio.gather(
                *(s.purge_workflows(T0 + 50, 2) for s in [store, *others] for _ in range(2))
            )
        finally:
            for other in others:
                if other is not store:
                    await other.close()
        left = await store.purge_workflows(T0 + 50, 100)
        assert sum(counts) + left == 6
        assert await store.list_webhooks(account_id=owner.id) == []


class TestPurgeOthers:
    async def test_settled_inbound_webhooks_go_pending_ones_stay(self, store: Store) -> None:
        """A webhook of no workflow that is settled and old goes with its attempts; a pending
        one and a recent one stay."""
        owner = await tenant(store)

        def inbound() -> NewWebhook:
            """An inbound-message webhook."""
            url = "https://hooks.example/in"
            return NewWebhook("inbound", owner.id, None, None, None, url, b'{"text":"hi"}')

        async def deliver(at: float) -> None:
            """Deliver the newest pending webhook at ``at``."""
            pending = (await store.list_webhooks(state="pending"))[-1]
            (job,) = await store.pending_jobs(str(pending.id))
            await store.record_webhook_attempt(
                WebhookAttempt(pending.id, at, 200, None, 0.01),
                job_id=job.id,
                state="delivered",
                next_attempt_at=None,
            )

        await store.add_webhooks([inbound(), inbound()], T0)
        await deliver(T0 + 1)
        (gone,) = await store.list_webhooks(state="delivered")
        await store.add_webhooks([inbound()], T0 + 100)
        await deliver(T0 + 101)
        assert await store.purge_webhooks(T0 + 50, 10) == 1
        assert await store.webhook_attempts([gone.id]) == []
        left = await store.list_webhooks(account_id=owner.id)
        assert sorted((w.state, w.created_at) for w in left) == [
            ("delivered", T0 + 100),
            ("pending", T0),
        ]

    async def test_old_orphan_receipts_go(self, store: Store) -> None:
        """Receipts kept since before the cut-off go, ``limit`` at a time; newer ones stay."""
        for n, at in enumerate((T0, T0 + 10, T0 + 100)):
            receipt = Receipt("smpp", f"lost-{n}", Status.DELIVERED, at)
            await store.add_orphan_receipt(receipt, at)
        assert await store.purge_orphan_receipts(T0 + 50, 1) == 1
        assert await store.purge_orphan_receipts(T0 + 50, 5) == 1
        assert await store.purge_orphan_receipts(T0 + 50, 5) == 0
        assert await store.purge_orphan_receipts(T0 + 200, 5) == 1


class TestSqliteFiles:
    async def test_database_and_wal_are_created_for_the_owner_only(self, tmp_path: Path) -> None:
        """Under umask 000 the database, its WAL and its shared-memory file are mode 0600."""
        path = tmp_path / "private.db"
        old_umask = os.umask(0)
        try:
            store = SqliteStore(path)
            await store.open()
            await tenant(store)
            modes = {
                suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
                for suffix in ("", "-wal", "-shm")
            }
            await store.close()
        finally:
            os.umask(old_umask)
        assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}

    async def test_an_existing_readable_database_is_tightened(self, tmp_path: Path) -> None:
        """A database file left group- and world-readable (e.g. by an older release) loses
        those bits when the store opens it."""
        path = tmp_path / "old.db"
        sqlite3.connect(path).close()
        os.chmod(path, 0o644)
        store = SqliteStore(path)
        await store.open()
        await store.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
