"""The Store contract: both back ends (SQLite, PostgreSQL) behave the same."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import asyncpg  # type: ignore[import-untyped]
import pytest

from cascade.domain.records import (
    Accepted,
    NewJob,
    StepState,
    Surface,
    WorkflowState,
)
from cascade.errors import IdempotencyConflict, NotFound, StoreConflict, StoreUnavailable
from cascade.store.base import Store
from cascade.store.postgres import PostgresStore
from cascade.store.sqlite import SqliteStore
from tests.contract.conftest import Backend
from tests.contract.factories import (
    HORIZON,
    T0,
    account,
    application,
    messenger_step,
    sms_step,
    tenant,
    workflow,
)


class TestAccounts:
    """Accounts: creation, uniqueness, lookup, listing and updates."""

    async def test_created_account_reads_back_by_id_and_api_key(self, store: Store) -> None:
        """A stored account comes back equal by its id and by its api_key."""
        stored = account()
        await store.create_account(stored)
        assert await store.get_account(stored.id) == stored
        assert await store.get_account_by_api_key(stored.api_key) == stored

    async def test_unknown_account_reads_as_none(self, store: Store) -> None:
        """Looking up an id or api_key nobody has gives None."""
        assert await store.get_account("no-such-account") is None
        assert await store.get_account_by_api_key("no-such-key") is None

    async def test_duplicate_api_key_is_a_conflict(self, store: Store) -> None:
        """A second account with a taken api_key is refused and nothing of it is stored."""
        first = account()
        await store.create_account(first)
        second = dataclasses.replace(account(), api_key=first.api_key)
        with pytest.raises(StoreConflict) as raised:
            await store.create_account(second)
        assert raised.value.__cause__ is not None  # the driver's error, chained
        assert await store.get_account(second.id) is None
        assert await store.list_accounts() == [first]

    async def test_duplicate_account_id_is_a_conflict(self, store: Store) -> None:
        """A second account with a taken id is refused."""
        first = account()
        await store.create_account(first)
        with pytest.raises(StoreConflict):
            await store.create_account(account(account_id=first.id))
        assert await store.get_account(first.id) == first

    async def test_accounts_are_listed_oldest_first(self, store: Store) -> None:
        """list_accounts orders by creation time, then by id."""
        late = account(created_at=T0 + 10)
        early = account(created_at=T0)
        tie_b = account(created_at=T0 + 5, account_id="b-account")
        tie_a = account(created_at=T0 + 5, account_id="a-account")
        for created in (late, tie_b, early, tie_a):
            await store.create_account(created)
        assert await store.list_accounts() == [early, tie_a, tie_b, late]

    async def test_update_changes_only_the_given_fields(self, store: Store) -> None:
        """update_account sets the named fields, keeps the others and returns the result."""
        stored = await tenant(store)
        updated = await store.update_account(
            stored.id, status_url="https://new.test/status", signature_secret="rotated"
        )
        expected = dataclasses.replace(
            stored, status_url="https://new.test/status", signature_secret="rotated"
        )
        assert updated == expected
        assert await store.get_account(stored.id) == expected

    async def test_update_replaces_the_api_secret_digest_alone(self, store: Store) -> None:
        """A rotated API secret's digest is stored; nothing else of the account changes."""
        stored = await tenant(store)
        updated = await store.update_account(stored.id, api_secret_sha256="f" * 64)
        assert updated == dataclasses.replace(stored, api_secret_sha256="f" * 64)
        assert await store.get_account_by_api_key(stored.api_key) == updated

    async def test_update_can_clear_urls_to_none(self, store: Store) -> None:
        """Passing None clears a webhook URL, unlike leaving the argument out."""
        stored = await tenant(store)
        updated = await store.update_account(stored.id, status_url=None, inbound_url=None)
        assert updated.status_url is None
        assert updated.inbound_url is None
        assert updated.signature_secret == stored.signature_secret
        assert await store.get_account(stored.id) == updated

    async def test_update_without_fields_returns_the_account(self, store: Store) -> None:
        """An update naming no field changes nothing and returns the account as stored."""
        stored = await tenant(store)
        assert await store.update_account(stored.id) == stored

    async def test_update_of_unknown_account_is_not_found(self, store: Store) -> None:
        """Updating an account that does not exist raises NotFound, with or without fields."""
        with pytest.raises(NotFound):
            await store.update_account("no-such-account", status_url="https://x.test")
        with pytest.raises(NotFound):
            await store.update_account("no-such-account")


class TestApplications:
    """Applications: creation, lookup and listing per account."""

    async def test_application_reads_back_by_id(self, store: Store) -> None:
        """A stored application comes back equal, whichever account asks."""
        owner = await tenant(store)
        app = application(owner)
        await store.create_application(app)
        assert await store.get_application(app.id) == app
        assert await store.get_application("no-such-application") is None

    async def test_update_changes_only_the_given_fields_of_an_application(
        self, store: Store
    ) -> None:
        """update_application sets the named fields (None clears a URL), keeps the others; an
        unknown id is NotFound."""
        owner = await tenant(store)
        app = application(owner)
        await store.create_application(app)
        updated = await store.update_application(app.id, status_url=None, public_key_pem="PEM")
        expected = dataclasses.replace(app, status_url=None, public_key_pem="PEM")
        assert updated == expected
        assert await store.get_application(app.id) == expected
        with pytest.raises(NotFound):
            await store.update_application("no-such-application", inbound_url=None)

    async def test_a_deleted_application_is_gone(self, store: Store) -> None:
        """delete_application removes it (and says so) and leaves the account's others."""
        owner = await tenant(store)
        gone, kept = application(owner), application(owner, created_at=T0 + 1)
        for app in (gone, kept):
            await store.create_application(app)
        assert await store.delete_application(gone.id)
        assert not await store.delete_application(gone.id)
        assert await store.get_application(gone.id) is None
        assert await store.list_applications(owner.id) == [kept]

    async def test_applications_are_listed_per_account_oldest_first(self, store: Store) -> None:
        """list_applications gives only the account's applications, oldest first."""
        owner, other = await tenant(store), await tenant(store)
        late, early = application(owner, created_at=T0 + 1), application(owner, created_at=T0)
        foreign = application(other)
        for app in (late, foreign, early):
            await store.create_application(app)
        assert await store.list_applications(owner.id) == [early, late]
        assert await store.list_applications(other.id) == [foreign]
        assert await store.list_applications("no-such-account") == []

    async def test_duplicate_application_id_is_a_conflict(self, store: Store) -> None:
        """A second application with a taken id is refused and the first stays."""
        owner = await tenant(store)
        app = application(owner)
        await store.create_application(app)
        with pytest.raises(StoreConflict):
            await store.create_application(dataclasses.replace(app, name="other"))
        assert await store.get_application(app.id) == app

    async def test_application_of_unknown_account_is_a_conflict(self, store: Store) -> None:
        """An application must belong to an existing account."""
        orphan = application(account())
        with pytest.raises(StoreConflict):
            await store.create_application(orphan)
        assert await store.get_application(orphan.id) is None


class TestAccept:
    """The accept path: one request becomes a workflow, its messages and its first jobs."""

    async def test_accepted_workflow_reads_back_with_its_messages(self, store: Store) -> None:
        """accept stores the workflow running, the first step active and the rest waiting."""
        owner = await tenant(store)
        request = workflow(owner)
        assert await store.accept(request) == Accepted(created=True)

        stored = await store.get_workflow(owner.id, request.id)
        assert stored is not None
        assert (stored.id, stored.account_id, stored.application_id) == (
            request.id,
            owner.id,
            None,
        )
        assert stored.surface is Surface.DISPATCH
        assert stored.state is WorkflowState.RUNNING
        assert (stored.created_at, stored.updated_at, stored.finished_at) == (T0, T0, None)
        assert stored.events == ()
        assert [m.id for m in stored.messages] == [s.message_id for s in request.steps]
        assert [m.step for m in stored.messages] == [0, 1]
        assert [m.state for m in stored.messages] == [StepState.ACTIVE, StepState.WAITING]
        assert [m.started_at for m in stored.messages] == [T0, None]
        for message, step in zip(stored.messages, request.steps, strict=True):
            assert (message.workflow_id, message.account_id) == (request.id, owner.id)
            assert (message.to, message.from_, message.body) == (step.to, step.from_, step.body)
            assert (message.channel, message.client_ref) == (step.channel, step.client_ref)
            assert (message.expiry_time, message.condition_status) == (
                step.expiry_time,
                step.condition_status,
            )
            unset = (message.status, message.error_code, message.error_reason, message.provider)
            assert unset == (None, None, None, None)
            assert (message.provider_message_id, message.price, message.currency) == (None,) * 3
            assert (message.last_error_code, message.last_error_reason) == (None, None)
            assert (message.created_at, message.updated_at) == (T0, T0)

    async def test_accept_queues_the_jobs_it_was_given(self, store: Store) -> None:
        """The first step's send job and its window's timer are stored, due when computed."""
        owner = await tenant(store)
        request = workflow(owner)
        await store.accept(request)
        first = request.steps[0].message_id
        jobs = await store.pending_jobs(first)
        assert [(j.kind, j.ref, j.run_at, j.attempts) for j in jobs] == [
            ("send", first, T0, 0),
            ("step_timeout", first, T0 + 600, 0),
        ]
        assert jobs[0].id != jobs[1].id
        assert await store.pending_jobs(request.steps[1].message_id) == []
        assert await store.pending_jobs(request.id) == []

    async def test_single_step_message_gets_send_and_horizon(self, store: Store) -> None:
        """A one-step request stores one active message, its send and the report horizon."""
        owner = await tenant(store)
        request = workflow(owner, sms_step())
        await store.accept(request)
        stored = await store.get_workflow(owner.id, request.id)
        assert stored is not None
        assert [m.state for m in stored.messages] == [StepState.ACTIVE]
        sends = await store.pending_jobs(request.steps[0].message_id)
        assert [(j.kind, j.run_at) for j in sends] == [("send", T0)]
        horizon = await store.pending_jobs(request.id)
        assert [(j.kind, j.run_at) for j in horizon] == [("report_horizon", T0 + HORIZON)]

    async def test_reads_are_scoped_to_the_owning_account(self, store: Store) -> None:
        """Another account gets None for a workflow and its messages; so does an unknown id."""
        owner, other = await tenant(store), await tenant(store)
        request = workflow(owner)
        await store.accept(request)
        first = request.steps[0].message_id
        assert await store.get_workflow(other.id, request.id) is None
        assert await store.get_message(other.id, first) is None
        assert await store.get_workflow(owner.id, "no-such-workflow") is None
        assert await store.get_message(owner.id, "no-such-message") is None
        message = await store.get_message(owner.id, first)
        stored = await store.get_workflow(owner.id, request.id)
        assert stored is not None
        assert message == stored.messages[0]

    async def test_duplicate_workflow_id_is_a_conflict(self, store: Store) -> None:
        """A request reusing a workflow id is refused and none of its rows or its key stay."""
        owner = await tenant(store)
        first = workflow(owner)
        await store.accept(first)
        again = workflow(owner, workflow_id=first.id, key="k1")
        with pytest.raises(StoreConflict):
            await store.accept(again)
        for step in again.steps:
            assert await store.get_message(owner.id, step.message_id) is None
            assert await store.pending_jobs(step.message_id) == []
        stored = await store.get_workflow(owner.id, first.id)
        assert stored is not None
        assert [m.id for m in stored.messages] == [s.message_id for s in first.steps]
        # the refused request's idempotency key was not kept: it is free for a new request
        assert await store.accept(workflow(owner, key="k1")) == Accepted(created=True)

    async def test_duplicate_message_id_is_a_conflict(self, store: Store) -> None:
        """A request reusing another workflow's message id is refused and stores nothing."""
        owner = await tenant(store)
        first = workflow(owner)
        await store.accept(first)
        taken = dataclasses.replace(sms_step(), message_id=first.steps[0].message_id)
        again = workflow(owner, messenger_step(), taken)
        with pytest.raises(StoreConflict):
            await store.accept(again)
        assert await store.get_workflow(owner.id, again.id) is None
        assert await store.get_message(owner.id, again.steps[0].message_id) is None

    async def test_accept_after_close_is_refused(self, backend: Backend) -> None:
        """A closed store refuses new requests with StoreUnavailable."""
        closed = backend.make()
        await closed.open()
        owner = await tenant(closed)
        await closed.close()
        with pytest.raises(StoreUnavailable):
            await closed.accept(workflow(owner))


class TestIdempotency:
    """Idempotency keys: replay the first response, refuse a different request."""

    async def test_same_key_and_request_replays_the_first_response(self, store: Store) -> None:
        """A repeat with the same key and digest stores nothing and returns the first response."""
        owner = await tenant(store)
        first = workflow(owner, key="key-1")
        assert await store.accept(first) == Accepted(created=True)
        repeat = workflow(owner, key="key-1")
        assert first.idempotency is not None
        assert await store.accept(repeat) == Accepted(
            created=False, response=first.idempotency.response
        )
        assert await store.get_workflow(owner.id, repeat.id) is None
        assert await store.pending_jobs(repeat.steps[0].message_id) == []

    async def test_same_key_with_another_request_is_a_conflict(self, store: Store) -> None:
        """A repeat with the same key and a different digest raises and stores nothing."""
        owner = await tenant(store)
        await store.accept(workflow(owner, key="key-1", digest="digest-a"))
        different = workflow(owner, key="key-1", digest="digest-b")
        with pytest.raises(IdempotencyConflict):
            await store.accept(different)
        assert await store.get_workflow(owner.id, different.id) is None
        assert await store.get_message(owner.id, different.steps[0].message_id) is None

    async def test_keys_are_per_account(self, store: Store) -> None:
        """The same key used by two accounts names two independent requests."""
        owner, other = await tenant(store), await tenant(store)
        assert await store.accept(workflow(owner, key="shared")) == Accepted(created=True)
        mine = workflow(other, key="shared", digest="digest-b")
        assert await store.accept(mine) == Accepted(created=True)
        assert await store.get_workflow(other.id, mine.id) is not None

    async def test_concurrent_repeats_create_exactly_once(self, store: Store) -> None:
        """Many concurrent accepts with one key store one workflow; the rest replay it."""
        owner = await tenant(store)
        requests = [workflow(owner, key="burst") for _ in range(40)]
        results = await asyncio.gather(*(store.accept(r) for r in requests))
        created = [r for r, res in zip(requests, results, strict=True) if res.created]
        assert len(created) == 1
        assert created[0].idempotency is not None
        winner = created[0].idempotency.response
        assert all(res == Accepted(False, winner) for res in results if not res.created)
        stored = [await store.get_workflow(owner.id, r.id) for r in requests]
        assert [w.id for w in stored if w is not None] == [created[0].id]

    async def test_concurrent_requests_with_one_key_behave_as_if_in_turn(
        self, store: Store
    ) -> None:
        """Requests sharing a key in one burst are decided in the order they were made."""
        owner = await tenant(store)
        first = workflow(owner, key="order", digest="digest-a")
        other = workflow(owner, key="order", digest="digest-b")
        repeat = workflow(owner, key="order", digest="digest-a")
        unrelated = workflow(owner, key="another")
        results = await asyncio.gather(
            *(store.accept(r) for r in (first, other, repeat, unrelated)),
            return_exceptions=True,
        )
        assert first.idempotency is not None
        assert results[0] == Accepted(created=True)
        assert isinstance(results[1], IdempotencyConflict)
        assert results[2] == Accepted(created=False, response=first.idempotency.response)
        assert results[3] == Accepted(created=True)
        assert await store.get_workflow(owner.id, other.id) is None
        assert await store.get_workflow(owner.id, repeat.id) is None

    async def test_a_conflict_in_a_burst_fails_only_its_request(self, store: Store) -> None:
        """One request breaking a uniqueness rule among concurrent ones fails alone."""
        owner = await tenant(store)
        existing = workflow(owner)
        await store.accept(existing)
        burst = [workflow(owner, key=f"k{i}") for i in range(10)]
        burst[4] = workflow(owner, workflow_id=existing.id, key="k4")
        results = await asyncio.gather(*(store.accept(r) for r in burst), return_exceptions=True)
        assert isinstance(results[4], StoreConflict)
        assert all(res == Accepted(created=True) for i, res in enumerate(results) if i != 4)
        for i, request in enumerate(burst):
            if i != 4:
                assert await store.get_workflow(owner.id, request.id) is not None
        # k4 was not kept with the refused request
        assert await store.accept(workflow(owner, key="k4")) == Accepted(created=True)


class TestGroupCommit:
    """Concurrent accepts share transactions, and each caller waits for its commit."""

    async def test_many_concurrent_accepts_are_all_stored(self, store: Store) -> None:
        """Every one of many concurrent accepts is stored and readable once it returns."""
        owner = await tenant(store)
        requests = [workflow(owner, key=f"key-{i}" if i % 2 else None) for i in range(300)]
        before = _commits(store)
        results = await asyncio.gather(*(store.accept(r) for r in requests))
        assert all(result == Accepted(created=True) for result in results)
        for request in requests:
            stored = await store.get_workflow(owner.id, request.id)
            assert stored is not None
            assert len(stored.messages) == 2
        if before is not None:
            commits, writes = _commits(store) or (0, 0)
            assert writes - before[1] == len(requests)
            assert commits - before[0] < len(requests) / 10  # shared, not one per request

    async def test_close_commits_what_is_still_queued(self, backend: Backend) -> None:
        """close() waits for queued accepts, which all commit and survive a reopen."""
        first = backend.make()
        await first.open()
        owner = await tenant(first)
        requests = [workflow(owner) for _ in range(50)]
        pending = [asyncio.ensure_future(first.accept(r)) for r in requests]
        await asyncio.sleep(0)  # let every accept queue its request
        await first.close()
        assert await asyncio.gather(*pending) == [Accepted(created=True)] * len(requests)
        reopened = backend.make()
        await reopened.open()
        try:
            for request in requests:
                assert await reopened.get_workflow(owner.id, request.id) is not None
        finally:
            await reopened.close()


class TestJobs:
    """pending_jobs lists the queued jobs of one row."""

    async def test_jobs_are_listed_by_due_time_then_in_order_queued(self, store: Store) -> None:
        """Jobs of one ref come back earliest first (ties in the order queued), only that ref's."""
        owner = await tenant(store)
        request = workflow(owner, sms_step())
        ref = request.steps[0].message_id
        queued = (
            NewJob("second", ref, T0 + 10),
            NewJob("first", ref, T0),
            NewJob("elsewhere", request.id, T0),
            NewJob("third", ref, T0 + 10),
        )
        await store.accept(dataclasses.replace(request, jobs=queued))
        jobs = await store.pending_jobs(ref)
        assert [(j.kind, j.ref, j.run_at) for j in jobs] == [
            ("first", ref, T0),
            ("second", ref, T0 + 10),
            ("third", ref, T0 + 10),
        ]
        assert jobs[1].id < jobs[2].id
        assert [j.kind for j in await store.pending_jobs(request.id)] == ["elsewhere"]
        assert await store.pending_jobs("no-such-ref") == []


async def test_postgres_that_does_not_answer_is_unavailable() -> None:
    """Opening a PostgreSQL store whose server does not answer raises StoreUnavailable."""
    unreachable = PostgresStore("postgresql://nobody:secret@127.0.0.1:1/none", pool_size=1)
    with pytest.raises(StoreUnavailable) as raised:
        await unreachable.open()
    assert raised.value.__cause__ is not None
    assert "secret" not in str(raised.value)
    with pytest.raises(StoreUnavailable):
        await unreachable.accept(workflow(account()))


@pytest.mark.postgres
async def test_postgres_connections_lost_surface_as_unavailable(
    postgres_url: str, postgres_schema: str
) -> None:
    """When the server drops the store's connections, each dead pooled connection fails one
    call with StoreUnavailable (the driver's error chained), then the pool reconnects."""
    name = f"cascade-{uuid.uuid4().hex[:12]}"
    pool_size = 4
    store = PostgresStore(f"{postgres_schema}&application_name={name}", pool_size=pool_size)
    await store.open()
    try:
        owner = await tenant(store)
        await asyncio.gather(*(store.get_account(owner.id) for _ in range(pool_size)))
        await _drop_connections(postgres_url, name)
        failures: list[StoreUnavailable] = []
        for _ in range(pool_size + 1):
            try:
                accepted = await store.accept(workflow(owner))
            except StoreUnavailable as exc:
                failures.append(exc)
            else:
                break
        assert accepted == Accepted(created=True)
        for failure in failures:
            cause = failure.__cause__
            assert isinstance(cause, OSError) or type(cause).__module__.startswith("asyncpg")
        assert await store.get_account(owner.id) == owner
    finally:
        await store.close()


async def _drop_connections(postgres_url: str, application_name: str) -> None:
    """Terminate every server connection of one application and wait until they are gone."""
    admin = await asyncpg.connect(postgres_url)
    try:
        pids = [
            row[0]
            for row in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
            )
        ]
        assert pids
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)
        for _ in range(200):
            left = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
            if left == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{left} connections of {application_name} outlived termination")
    finally:
        await admin.close()


def _commits(store: Store) -> tuple[int, int] | None:
    """(transactions, writes) the store committed so far, for back ends that count them."""
    if isinstance(store, SqliteStore | PostgresStore):
        return store.commits, store.writes
    return None
