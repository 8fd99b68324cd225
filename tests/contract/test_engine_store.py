"""The Store contract for the engine and the webhook sender: jobs and leases, transitions, send
attempts, orphan receipts, webhooks, the sandbox journal and the read-back lists."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from cascade.domain.failover import Changes, MessageChange, Observed, apply
from cascade.domain.records import (
    Account,
    Event,
    MessageRecord,
    NewJob,
    NewWebhook,
    NewWorkflow,
    Receipt,
    SandboxMessage,
    StepState,
    Surface,
    WebhookAttempt,
    WebhookState,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.errors import StoreConflict
from cascade.store.base import Decision, ListQuery, Store, WorkflowKey
from tests.contract.factories import (
    HORIZON,
    T0,
    application,
    sms_step,
    take_orphans,
    tenant,
    workflow,
)


async def accepted(store: Store, owner: Account, *jobs: NewJob) -> NewWorkflow:
    """A Messenger-then-SMS workflow accepted with these jobs (or the API's opening jobs)."""
    request = workflow(owner)
    if jobs:
        request = dataclasses.replace(request, jobs=jobs)
    await store.accept(request)
    return request


def no_change(workflow: WorkflowRecord) -> Decision:
    """A decision that changes nothing."""
    return Changes(), []


def webhook(owner: Account, *, url: str | None, kind: str = "message-status") -> NewWebhook:
    """A webhook for ``owner`` with a small JSON body."""
    return NewWebhook(
        kind=kind,
        account_id=owner.id,
        application_id=None,
        workflow_id=None,
        message_id=None,
        url=url,
        body=b'{"status":"delivered"}',
    )


class TestJobs:
    """Claiming jobs with leases, and releasing, deferring and finishing them."""

    async def test_claim_takes_due_jobs_earliest_first_up_to_the_limit(self, store: Store) -> None:
        """Only due jobs are claimed, earliest first, at most ``limit`` of them."""
        owner = await tenant(store)
        await accepted(
            store,
            owner,
            NewJob("c", "ref", T0 + 3),
            NewJob("a", "ref", T0 + 1),
            NewJob("b", "ref", T0 + 2),
            NewJob("later", "ref", T0 + 100),
        )
        claimed = await store.claim_jobs("w1", T0 + 10, limit=2, lease=30)
        assert [(j.kind, j.run_at, j.attempts) for j in claimed] == [
            ("a", T0 + 1, 0),
            ("b", T0 + 2, 0),
        ]
        rest = await store.claim_jobs("w1", T0 + 10, limit=10, lease=30)
        assert [j.kind for j in rest] == ["c"]

    async def test_claimed_jobs_are_skipped_until_their_lease_runs_out(self, store: Store) -> None:
        """Another worker cannot take a held job, but takes it over once the lease expired."""
        owner = await tenant(store)
        await accepted(store, owner, NewJob("send", "ref", T0))
        (job,) = await store.claim_jobs("w1", T0, limit=10, lease=30)
        assert await store.claim_jobs("w2", T0 + 29, limit=10, lease=30) == []
        assert [j.id for j in await store.claim_jobs("w2", T0 + 31, limit=10, lease=30)] == [job.id]

    async def test_extend_lease_keeps_only_the_holders_jobs(self, store: Store) -> None:
        """A heartbeat extends the lease of the worker's own jobs, not of jobs taken over."""
        owner = await tenant(store)
        await accepted(store, owner, NewJob("a", "ref", T0), NewJob("b", "ref", T0 + 1))
        first, second = await store.claim_jobs("w1", T0 + 1, limit=10, lease=30)
        (taken,) = await store.claim_jobs("w2", T0 + 40, limit=1, lease=30)
        assert taken.id == first.id
        await store.extend_lease("w1", [first.id, second.id], T0 + 1000)
        # w1 still holds the second job; the first now belongs to w2, whose lease runs out first
        assert [j.id for j in await store.claim_jobs("w3", T0 + 100, limit=10, lease=30)] == [
            first.id
        ]

    async def test_next_job_at_is_the_earliest_unclaimed_job(self, store: Store) -> None:
        """next_job_at names the earliest job nobody holds, and None when there is none."""
        assert await store.next_job_at() is None
        owner = await tenant(store)
        await accepted(store, owner, NewJob("a", "ref", T0 + 5), NewJob("b", "ref", T0 + 9))
        assert await store.next_job_at() == T0 + 5
        await store.claim_jobs("w1", T0 + 5, limit=1, lease=30)
        assert await store.next_job_at() == T0 + 9

    async def test_claims_and_the_next_job_can_be_limited_to_some_kinds(self, store: Store) -> None:
        """An engine that runs only some kinds claims and waits for only those kinds."""
        owner = await tenant(store)
        await accepted(
            store,
            owner,
            NewJob("send", "ref", T0 + 1),
            NewJob("webhook", "ref", T0 + 2),
            NewJob("step_timeout", "ref", T0 + 3),
            NewJob("webhook", "ref", T0 + 4),
        )
        assert await store.next_job_at({"webhook"}) == T0 + 2
        assert await store.next_job_at({"send", "step_timeout"}) == T0 + 1
        webhooks = await store.claim_jobs("w1", T0 + 10, limit=10, lease=30, kinds={"webhook"})
        assert [(j.kind, j.run_at) for j in webhooks] == [("webhook", T0 + 2), ("webhook", T0 + 4)]
        assert await store.next_job_at({"webhook"}) is None
        rest = await store.claim_jobs("w2", T0 + 10, limit=10, lease=30, kinds={"send", "x"})
        assert [j.kind for j in rest] == ["send"]
        assert await store.next_job_at() == T0 + 3

    async def test_finish_job_deletes_it(self, store: Store) -> None:
        """A finished job is gone; finishing an unknown job changes nothing."""
        owner = await tenant(store)
        await accepted(store, owner, NewJob("a", "ref", T0), NewJob("b", "ref", T0))
        first, second = await store.pending_jobs("ref")
        await store.finish_job(first.id)
        await store.finish_job(10_000)
        assert await store.pending_jobs("ref") == [second]

    async def test_retry_job_releases_it_later_and_remembers_the_error(self, store: Store) -> None:
        """A retried job runs again later with one more attempt; its message keeps the error."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        message_id = request.steps[0].message_id
        send = (await store.claim_jobs("w1", T0, limit=1, lease=30))[0]
        await store.retry_job(
            send.id, T0 + 5, message_id=message_id, error=(1300, "throttled"), at=T0 + 1
        )
        jobs = await store.pending_jobs(message_id)
        assert [(j.kind, j.run_at, j.attempts) for j in jobs] == [
            ("send", T0 + 5, 1),
            ("step_timeout", T0 + 600, 0),
        ]
        message = await store.find_message(message_id)
        assert message is not None
        assert (message.last_error_code, message.last_error_reason) == (1300, "throttled")
        # released: claimable at once by anyone when due
        assert [j.id for j in await store.claim_jobs("w2", T0 + 5, limit=1, lease=30)] == [send.id]

    async def test_a_retry_is_a_timeline_entry_with_its_next_attempt(self, store: Store) -> None:
        """Each retry_job adds a ``retry`` event to the workflow's timeline: the error, when it
        happened, the provider that gave it and when the send is tried next."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        message_id = request.steps[0].message_id
        (send,) = await store.claim_jobs("w1", T0, limit=1, lease=30, kinds=["send"])
        await store.retry_job(
            send.id, T0 + 5, message_id=message_id, error=(1000, "Throttled"), at=T0 + 1
        )
        (send,) = await store.claim_jobs("w1", T0 + 5, limit=1, lease=30, kinds=["send"])
        await store.retry_job(
            send.id,
            T0 + 15,
            message_id=message_id,
            error=(1100, "not bound"),
            at=T0 + 5.5,
            source="smpp:a@b:1",
        )
        stored = await store.get_workflow(owner.id, request.id)
        assert stored is not None
        assert stored.events == (
            Event(T0 + 1, "retry", message_id, code=1000, reason="Throttled", next_at=T0 + 5),
            Event(
                T0 + 5.5,
                "retry",
                message_id,
                code=1100,
                reason="not bound",
                source="smpp:a@b:1",
                next_at=T0 + 15,
            ),
        )

    async def test_defer_job_releases_it_without_counting_an_attempt(self, store: Store) -> None:
        """A deferred job runs again later with its attempt count unchanged."""
        owner = await tenant(store)
        await accepted(store, owner, NewJob("webhook", "ref", T0))
        (job,) = await store.claim_jobs("w1", T0, limit=1, lease=30)
        await store.defer_job(job.id, T0 + 0.5)
        assert await store.pending_jobs("ref") == [dataclasses.replace(job, run_at=T0 + 0.5)]
        assert await store.claim_jobs("w2", T0 + 0.4, limit=1, lease=30) == []
        assert len(await store.claim_jobs("w2", T0 + 0.5, limit=1, lease=30)) == 1

    async def test_concurrent_claims_never_share_a_job(self, store: Store) -> None:
        """Workers claiming at the same moment get disjoint jobs that cover all due ones."""
        owner = await tenant(store)
        await accepted(store, owner, *(NewJob("j", f"ref{i}", T0 + i / 100) for i in range(60)))
        batches = await asyncio.gather(
            *(store.claim_jobs(f"w{n}", T0 + 1, limit=25, lease=30) for n in range(4))
        )
        ids = [job.id for batch in batches for job in batch]
        assert len(ids) == len(set(ids)) == 60


class TestSends:
    """Send attempts and the engine's unscoped message lookup."""

    async def test_find_message_ignores_the_account(self, store: Store) -> None:
        """find_message returns a message by id alone, and None for an unknown id."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        found = await store.find_message(request.steps[1].message_id)
        assert found is not None
        assert found == await store.get_message(owner.id, request.steps[1].message_id)
        assert await store.find_message("no-such-message") is None

    async def test_find_messages_reads_a_batch_by_id(self, store: Store) -> None:
        """find_messages returns each existing message by its id, as find_message would, and
        leaves out unknown ids."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        ids = [step.message_id for step in request.steps]
        found = await store.find_messages([*ids, "no-such-message"])
        assert found == {message_id: await store.find_message(message_id) for message_id in ids}
        assert await store.find_messages([]) == {}

    async def test_begin_send_reports_what_was_known_before(self, store: Store) -> None:
        """Each begin_send counts an attempt and returns the count, first start and last error
        as they were before it."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        message_id = request.steps[0].message_id
        first = await store.begin_send(message_id, T0 + 1)
        assert (first.attempts, first.started_at, first.last_error) == (0, None, None)
        send = (await store.claim_jobs("w1", T0, limit=1, lease=30))[0]
        await store.retry_job(
            send.id, T0 + 5, message_id=message_id, error=(1100, "lost"), at=T0 + 2
        )
        second = await store.begin_send(message_id, T0 + 6)
        assert (second.attempts, second.started_at, second.last_error) == (
            1,
            T0 + 1,
            (1100, "lost"),
        )
        assert (await store.begin_send(message_id, T0 + 7)).attempts == 2

    async def test_begin_send_of_unknown_message_knows_nothing(self, store: Store) -> None:
        """begin_send for a message that does not exist reports no earlier attempt."""
        attempt = await store.begin_send("no-such-message", T0)
        assert (attempt.attempts, attempt.started_at, attempt.last_error) == (0, None, None)


class TestTransitions:
    """transition: load a workflow, decide, and store the decision in one transaction."""

    async def test_decision_is_stored(self, store: Store) -> None:
        """Message changes, events, new and cancelled jobs are stored and the done job deleted."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first, second = (step.message_id for step in request.steps)
        done = (await store.claim_jobs("w1", T0, limit=1, lease=30))[0]
        seen: list[WorkflowRecord] = []

        def decide(loaded: WorkflowRecord) -> Decision:
            """Record what was loaded and decide a submit with its provider id, price and jobs."""
            seen.append(loaded)
            changes = Changes()
            change = changes.message(first)
            change.status = Status.SUBMITTED
            change.provider, change.provider_message_id = "sandbox", "p-1"
            change.price, change.currency = "0.01", "EUR"
            changes.events.append(
                Event(at=T0 + 2, kind="status", message_id=first, status="submitted")
            )
            changes.jobs.append(NewJob("probe", second, T0 + 50))
            changes.cancel_jobs.append(("step_timeout", first))
            return changes, []

        result = await store.transition(WorkflowKey(message_id=first), decide, done_job=done.id)
        assert result is not None
        assert [w.id for w in seen] == [request.id]
        assert seen[0].events == ()  # decisions see messages, not the timeline
        assert [m.id for m in seen[0].messages] == [first, second]

        message = await store.get_message(owner.id, first)
        assert message is not None
        assert (message.status, message.provider, message.provider_message_id) == (
            "submitted",
            "sandbox",
            "p-1",
        )
        assert (message.price, message.currency, message.updated_at) == ("0.01", "EUR", T0 + 2)
        assert message.state is StepState.ACTIVE
        stored = await store.get_workflow(owner.id, request.id)
        assert stored is not None
        assert stored.events == (
            Event(at=T0 + 2, kind="status", message_id=first, status="submitted"),
        )
        assert await store.pending_jobs(first) == []  # the send done, the timer cancelled
        assert [(j.kind, j.run_at) for j in await store.pending_jobs(second)] == [
            ("probe", T0 + 50)
        ]

    async def test_workflow_is_found_by_any_of_its_keys(self, store: Store) -> None:
        """A transition finds its workflow by its id, a message id or a provider's message id."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first = request.steps[1].message_id

        def set_provider_id(loaded: WorkflowRecord) -> Decision:
            """Give the SMS step a provider's message id."""
            changes = Changes()
            changes.messages[first] = MessageChange(
                first, provider="smpp", provider_message_id="m-9"
            )
            return changes, []

        await store.transition(WorkflowKey(workflow_id=request.id), set_provider_id)
        seen: list[str] = []

        def record(loaded: WorkflowRecord) -> Decision:
            """Note which workflow was loaded."""
            seen.append(loaded.id)
            return Changes(), []

        for key in (
            WorkflowKey(workflow_id=request.id),
            WorkflowKey(message_id=first),
            WorkflowKey(provider="smpp", provider_message_id="m-9"),
        ):
            assert await store.transition(key, record) is not None
        assert seen == [request.id] * 3

    async def test_no_workflow_means_no_decision_but_the_job_is_done(self, store: Store) -> None:
        """Without a matching workflow, decide is not called, None is returned and the done job
        is still deleted."""
        owner = await tenant(store)
        await accepted(store, owner, NewJob("step_timeout", "gone", T0))
        (job,) = await store.pending_jobs("gone")

        def decide(loaded: WorkflowRecord) -> Decision:
            """Fail: there is no workflow to decide about."""
            raise AssertionError("decide must not be called without a workflow")

        for key in (
            WorkflowKey(message_id="gone"),
            WorkflowKey(workflow_id="gone"),
            WorkflowKey(provider="smpp", provider_message_id="unknown"),
        ):
            assert await store.transition(key, decide, done_job=job.id) is None
        assert await store.pending_jobs("gone") == []

    async def test_a_failing_decision_changes_nothing(self, store: Store) -> None:
        """When decide raises, its error reaches the caller and the done job stays."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        (done,) = await store.claim_jobs("w1", T0, limit=1, lease=30)

        def decide(loaded: WorkflowRecord) -> Decision:
            """Fail as broken rules would."""
            raise ValueError("rules failed")

        with pytest.raises(ValueError, match="rules failed"):
            await store.transition(WorkflowKey(workflow_id=request.id), decide, done_job=done.id)
        assert done.id in [j.id for j in await store.pending_jobs(done.ref)]

    async def test_the_failover_rules_complete_a_workflow(self, store: Store) -> None:
        """A ``read`` receipt on the first step, decided by the rules, completes the workflow,
        cancels the waiting SMS step and its timer, and records the finish."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first, second = (step.message_id for step in request.steps)
        seen = Observed(message_id=first, status=Status.READ, at=T0 + 30, source="test")

        def decide(loaded: WorkflowRecord) -> Decision:
            """Apply the failover rules to the receipt."""
            return apply(loaded, seen, horizon=HORIZON), []

        await store.transition(WorkflowKey(message_id=first), decide)
        stored = await store.get_workflow(owner.id, request.id)
        assert stored is not None
        assert stored.state is WorkflowState.COMPLETED
        assert (stored.finished_at, stored.updated_at) == (T0 + 30, T0 + 30)
        assert [m.state for m in stored.messages] == [StepState.SUCCEEDED, StepState.CANCELLED]
        assert stored.messages[0].status == "read"
        assert [e.kind for e in stored.events] == ["status", "completed"]
        assert [j.kind for j in await store.pending_jobs(first)] == ["send"]
        assert await store.pending_jobs(second) == []

    async def test_a_provider_id_belongs_to_one_message(self, store: Store) -> None:
        """Giving a second message a provider's id already in use is a conflict."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first, second = (step.message_id for step in request.steps)

        def claim(message_id: str) -> Callable[[WorkflowRecord], Decision]:
            """Give ``message_id`` the provider id ``same``."""

            def decide(loaded: WorkflowRecord) -> Decision:
                """Claim the shared provider id for the message."""
                changes = Changes()
                changes.messages[message_id] = MessageChange(
                    message_id, provider="smpp", provider_message_id="same"
                )
                return changes, []

            return decide

        await store.transition(WorkflowKey(message_id=first), claim(first))
        with pytest.raises(StoreConflict):
            await store.transition(WorkflowKey(message_id=second), claim(second))
        message = await store.find_message(second)
        assert message is not None
        assert message.provider_message_id is None

    async def test_concurrent_transitions_of_one_workflow_run_in_turn(self, store: Store) -> None:
        """Transitions of one workflow made at once each see the one before (no lost update)."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first = request.steps[0].message_id

        def count(loaded: WorkflowRecord) -> Decision:
            """Add one to the first message's price, as read."""
            changes = Changes()
            before = int(loaded.messages[0].price or "0")
            changes.messages[first] = MessageChange(first, price=str(before + 1))
            return changes, []

        await asyncio.gather(
            *(store.transition(WorkflowKey(message_id=first), count) for _ in range(20))
        )
        message = await store.find_message(first)
        assert message is not None
        assert message.price == "20"


class TestWebhooks:
    """Queued customer webhooks, their attempts and replays."""

    async def test_webhooks_go_to_the_given_then_application_then_account_url(
        self, store: Store
    ) -> None:
        """A webhook without a URL takes its application's, else its account's. With none
        anywhere a status webhook is not stored, and an inbound message is stored as
        ``no_url``; neither gets a delivery job."""
        owner = await tenant(store)
        app = application(owner)
        await store.create_application(app)
        bare = await tenant(store)
        await store.update_account(bare.id, status_url=None, inbound_url=None)
        given = webhook(owner, url="https://given.test/hook")
        of_app = dataclasses.replace(
            webhook(owner, url=None, kind="inbound"), application_id=app.id
        )
        of_account = webhook(owner, url=None)
        nowhere = webhook(bare, url=None)
        inbound_nowhere = webhook(bare, url=None, kind="inbound")
        await store.add_webhooks([given, of_app, of_account, nowhere, inbound_nowhere], T0)

        stored = await store.list_webhooks()
        assert [(w.url, w.state, w.kind) for w in stored] == [
            ("https://given.test/hook", "pending", "message-status"),
            (app.inbound_url, "pending", "inbound"),
            (owner.status_url, "pending", "message-status"),
            (None, "no_url", "inbound"),
        ]
        assert [w.body for w in stored] == [given.body] * 4
        assert [(w.attempts, w.created_at) for w in stored] == [(0, T0)] * 4
        assert [w.next_attempt_at for w in stored] == [T0, T0, T0, None]
        for record in stored:
            jobs = await store.pending_jobs(str(record.id))
            assert [(j.kind, j.run_at) for j in jobs] == ([("webhook", T0)] if record.url else [])
        assert await store.get_webhook(stored[0].id) == stored[0]
        assert await store.get_webhook(10_000) is None
        batch = await store.get_webhooks([stored[0].id, stored[2].id, 10_000])
        assert batch == {stored[0].id: stored[0], stored[2].id: stored[2]}
        assert await store.get_webhooks([]) == {}

    async def test_transitions_in_flight_together_each_decide_from_the_last_stored(
        self, store: Store
    ) -> None:
        """Two transitions of one workflow started at once: the second decides from the
        workflow as the first stored it (a decision made from an older read is made again)."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        message_id = request.steps[0].message_id
        key = WorkflowKey(message_id=message_id)
        seen: list[tuple[Status, Status | None, int | None]] = []

        def setting(status: Status) -> Callable[[WorkflowRecord], Decision]:
            def decide(loaded: WorkflowRecord) -> Decision:
                """Note what the message looked like, and set its status."""
                current = next(m for m in loaded.messages if m.id == message_id)
                seen.append((status, current.status, current.last_error_code))
                changes = Changes()
                changes.messages[message_id] = MessageChange(message_id, status=status)
                return changes, []

            return decide

        await asyncio.gather(
            store.transition(key, setting(Status.SUBMITTED)),
            store.transition(key, setting(Status.DELIVERED)),
        )
        # whichever stored first, the other decided again from what it stored and won
        (first_status, *_), (second_status, *_) = seen[0], seen[1]
        last_status, last_saw, _ = seen[-1]
        assert {first_status, second_status} == {Status.SUBMITTED, Status.DELIVERED}
        assert len(seen) in (2, 3)  # a decision from a read another moved was made again
        assert last_saw == ({Status.SUBMITTED, Status.DELIVERED} - {last_status}).pop()
        stored = await store.find_message(message_id)
        assert stored is not None
        assert stored.status == last_status

    async def test_latest_webhooks_are_newest_first_filtered_and_paged(self, store: Store) -> None:
        """latest_webhooks lists newest first, by state, and a page continues below the last
        id of the page before."""
        owner = await tenant(store)
        await store.add_webhooks(
            [webhook(owner, url="https://r.test/"), webhook(owner, url=None)] * 3, T0
        )
        every = [hook.id for hook in await store.list_webhooks()]
        assert [hook.id for hook in await store.latest_webhooks()] == every[::-1]
        newest = await store.latest_webhooks(limit=2)
        assert [hook.id for hook in newest] == every[::-1][:2]
        rest = await store.latest_webhooks(before_id=newest[-1].id, limit=10)
        assert [hook.id for hook in rest] == every[::-1][2:]
        first = WebhookAttempt(every[0], T0 + 1, 204, None, 0.01)
        await store.record_webhook_attempt(
            first, job_id=None, state=WebhookState.DELIVERED, next_attempt_at=None
        )
        pending = await store.latest_webhooks(state=WebhookState.PENDING)
        assert [hook.id for hook in pending] == every[:0:-1]
        assert await store.latest_webhooks(account_id="no-such-account") == []

    async def test_transitions_queue_their_webhooks(self, store: Store) -> None:
        """Webhooks returned by a decision are stored with the transition."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        report = dataclasses.replace(webhook(owner, url=None), workflow_id=request.id)

        def decide(loaded: WorkflowRecord) -> Decision:
            """Add an event and the report webhook."""
            changes = Changes()
            changes.events.append(Event(at=T0 + 3, kind="probe"))
            return changes, [report]

        await store.transition(WorkflowKey(workflow_id=request.id), decide)
        (stored,) = await store.list_webhooks(workflow_id=request.id)
        assert (stored.url, stored.created_at, stored.state) == (
            owner.status_url,
            T0 + 3,
            "pending",
        )

    async def test_attempts_are_recorded_and_the_job_follows(self, store: Store) -> None:
        """A failed attempt reschedules the job; the last one deletes it; both are kept."""
        owner = await tenant(store)
        await store.add_webhooks([webhook(owner, url="https://r.test/")], T0)
        (record,) = await store.list_webhooks()
        (job,) = await store.claim_jobs("w1", T0, limit=1, lease=30)
        failed = WebhookAttempt(record.id, T0 + 1, 503, "busy", 0.25)
        await store.record_webhook_attempt(
            failed, job_id=job.id, state="pending", next_attempt_at=T0 + 6
        )
        retried = await store.get_webhook(record.id)
        assert retried is not None
        assert (retried.attempts, retried.first_attempt_at, retried.last_attempt_at) == (
            1,
            T0 + 1,
            T0 + 1,
        )
        assert (retried.next_attempt_at, retried.last_status, retried.last_error) == (
            T0 + 6,
            503,
            "busy",
        )
        assert retried.delivered_at is None
        assert [(j.run_at, j.attempts) for j in await store.pending_jobs(str(record.id))] == [
            (T0 + 6, 1)
        ]

        delivered = WebhookAttempt(record.id, T0 + 7, 200, None, 0.05)
        await store.record_webhook_attempt(
            delivered, job_id=job.id, state="delivered", next_attempt_at=None
        )
        done = await store.get_webhook(record.id)
        assert done is not None
        assert (done.state, done.attempts, done.first_attempt_at, done.delivered_at) == (
            "delivered",
            2,
            T0 + 1,
            T0 + 7,
        )
        assert await store.pending_jobs(str(record.id)) == []
        assert await store.webhook_attempts([record.id]) == [failed, delivered]
        assert await store.webhook_attempts([]) == []

    async def test_attempt_of_unknown_webhook_is_a_conflict(self, store: Store) -> None:
        """An attempt must belong to a stored webhook."""
        with pytest.raises(StoreConflict):
            await store.record_webhook_attempt(
                WebhookAttempt(10_000, T0, 200, None, 0.1),
                job_id=None,
                state="delivered",
                next_attempt_at=None,
            )

    async def test_lists_filter_and_limit(self, store: Store) -> None:
        """list_webhooks filters by account, workflow and state, oldest first, up to a limit."""
        owner, other = await tenant(store), await tenant(store)
        await store.update_account(other.id, status_url=None, inbound_url=None)
        mine = [dataclasses.replace(webhook(owner, url="https://a.test/"), workflow_id="wf")]
        mine.append(webhook(owner, url="https://a.test/"))
        await store.add_webhooks([*mine, webhook(other, url=None, kind="inbound")], T0)
        everything = await store.list_webhooks()
        assert [w.account_id for w in everything] == [owner.id, owner.id, other.id]
        assert [w.id for w in await store.list_webhooks(account_id=owner.id)] == [
            w.id for w in everything[:2]
        ]
        assert [w.id for w in await store.list_webhooks(workflow_id="wf")] == [everything[0].id]
        assert [w.id for w in await store.list_webhooks(state="no_url")] == [everything[2].id]
        assert [w.id for w in await store.list_webhooks(limit=1)] == [everything[0].id]

    async def test_replay_requeues_dead_letters(self, store: Store) -> None:
        """Replaying dead letters makes them pending again with a fresh schedule, window and
        job, keeping their attempt rows."""
        owner, other = await tenant(store), await tenant(store)
        await store.add_webhooks(
            [
                webhook(owner, url="https://dead.test/"),
                webhook(owner, url="https://ok.test/"),
                webhook(other, url="https://dead.test/"),
            ],
            T0,
        )
        dead_mine, _, dead_other = await store.list_webhooks()
        for record in (dead_mine, dead_other):
            (job,) = await store.pending_jobs(str(record.id))
            await store.record_webhook_attempt(
                WebhookAttempt(record.id, T0 + 1, 404, None, 0.1),
                job_id=job.id,
                state="dead",
                next_attempt_at=None,
            )
        assert await store.replay_webhooks(None, T0 + 100, account_id=owner.id) == 1
        replayed = await store.get_webhook(dead_mine.id)
        assert replayed is not None
        assert (
            replayed.state,
            replayed.attempts,
            replayed.first_attempt_at,
            replayed.next_attempt_at,
        ) == ("pending", 0, None, T0 + 100)
        # the attempt rows stay: the history of the first round is kept
        assert len(await store.webhook_attempts([dead_mine.id])) == 1
        assert [(j.kind, j.run_at) for j in await store.pending_jobs(str(dead_mine.id))] == [
            ("webhook", T0 + 100)
        ]
        still_dead = await store.get_webhook(dead_other.id)
        assert still_dead is not None
        assert still_dead.state == "dead"
        assert await store.replay_webhooks(None, T0 + 200) == 1  # the other account's

    async def test_replay_by_id_skips_webhooks_without_a_url(self, store: Store) -> None:
        """Replaying named webhooks requeues those with a URL and replaces their pending job."""
        owner = await tenant(store)
        bare = await tenant(store)
        await store.update_account(bare.id, status_url=None, inbound_url=None)
        await store.add_webhooks(
            [webhook(owner, url="https://a.test/"), webhook(bare, url=None, kind="inbound")], T0
        )
        with_url, without = await store.list_webhooks()
        assert await store.replay_webhooks([with_url.id, without.id, 10_000], T0 + 9) == 1
        assert [(j.run_at, j.attempts) for j in await store.pending_jobs(str(with_url.id))] == [
            (T0 + 9, 0)
        ]
        assert await store.replay_webhooks([], T0 + 9) == 0


class TestOrphanReceipts:
    """Receipts that arrive before their message's provider id is known."""

    async def test_orphans_wait_until_a_message_matches(self, store: Store) -> None:
        """Kept receipts are returned once, oldest first, when a message carries their id."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first = request.steps[0].message_id
        early = Receipt("smpp", "m-1", Status.DELIVERED, T0 + 1)
        later = Receipt("smpp", "m-1", Status.REJECTED, T0 + 2, code=1370, reason="expired")
        stranger = Receipt("smpp", "m-2", Status.DELIVERED, T0 + 3)
        for receipt in (early, later, stranger):
            await store.add_orphan_receipt(receipt, T0 + 5)
        assert await take_orphans(store) == []

        def set_provider_id(loaded: WorkflowRecord) -> Decision:
            """Give the first message the orphans' provider id."""
            changes = Changes()
            changes.messages[first] = MessageChange(
                first, provider="smpp", provider_message_id="m-1"
            )
            return changes, []

        await store.transition(WorkflowKey(message_id=first), set_provider_id)
        assert await take_orphans(store) == [early, later]
        assert await take_orphans(store) == []

    async def test_matched_receipts_stay_kept_until_dropped(self, store: Store) -> None:
        """Reading the matched receipts removes none: a worker killed before it applied them
        leaves them for the next sweep (dropping them on the read lost them); each is gone
        once dropped by its kept id, and dropping it again does nothing."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first = request.steps[0].message_id
        kept = Receipt("sandbox", "s-1", Status.DELIVERED, T0 + 1)
        await store.add_orphan_receipt(kept, T0 + 2)
        await store.transition(
            WorkflowKey(message_id=first),
            lambda loaded: (
                Changes(
                    messages={
                        first: MessageChange(first, provider="sandbox", provider_message_id="s-1")
                    }
                ),
                [],
            ),
        )
        read = await store.matched_orphan_receipts()
        assert read == [kept]
        assert await store.matched_orphan_receipts("sandbox", "s-1") == [kept]
        assert read[0].kept_id is not None
        await store.drop_orphan_receipt(read[0].kept_id)
        await store.drop_orphan_receipt(read[0].kept_id)
        assert await store.matched_orphan_receipts() == []

    async def test_taking_one_provider_id_leaves_the_others(self, store: Store) -> None:
        """Taking the receipts of one provider id returns only those that match it."""
        owner = await tenant(store)
        request = await accepted(store, owner)

        def set_provider_ids(loaded: WorkflowRecord) -> Decision:
            """Give the two messages provider ids ``a`` and ``b``."""
            changes = Changes()
            for step, ref in zip(request.steps, ("a", "b"), strict=True):
                changes.messages[step.message_id] = MessageChange(
                    step.message_id, provider="smpp", provider_message_id=ref
                )
            return changes, []

        await store.transition(WorkflowKey(workflow_id=request.id), set_provider_ids)
        for ref in ("a", "b"):
            await store.add_orphan_receipt(Receipt("smpp", ref, Status.DELIVERED, T0), T0)
        taken = await take_orphans(store, "smpp", "b")
        assert [r.provider_message_id for r in taken] == ["b"]
        assert [r.provider_message_id for r in await take_orphans(store)] == ["a"]

    async def test_one_naming_its_message_by_cascades_id_is_taken_at_once(
        self, store: Store
    ) -> None:
        """A receipt kept under Cascade's id of its message (it beat the send's answer) is
        returned by the next sweep with that id; one naming no stored message waits."""
        owner = await tenant(store)
        request = await accepted(store, owner)
        first = request.steps[0].message_id
        mine = Receipt("messenger", "", Status.READ, T0, message_id=first)
        gone = Receipt("messenger", "", Status.READ, T0, message_id="no-such-message")
        for receipt in (mine, gone):
            await store.add_orphan_receipt(receipt, T0)
        assert await take_orphans(store) == [mine]
        assert await take_orphans(store) == []


class TestSandboxJournal:
    """The sandbox provider's record of what it received and the receipts it owes."""

    def received(self, n: int) -> SandboxMessage:
        """A message the sandbox received."""
        return SandboxMessage(
            message_id=f"m{n}",
            provider_message_id=f"sandbox-{n}",
            channel="sms",
            recipient="447700900000",
            text="hello",
            attempts=1,
            received_at=None,
            receipts_due=((T0 + 1, "delivered"),),
        )

    async def test_first_receive_stores_the_message_as_given(self, store: Store) -> None:
        """A new message is stored and returned as given."""
        assert await store.sandbox_receive(self.received(1)) == self.received(1)
        assert await store.sandbox_messages() == [self.received(1)]

    async def test_receiving_again_counts_an_attempt(self, store: Store) -> None:
        """A repeat for a known message only raises its attempt count."""
        await store.sandbox_receive(self.received(1))
        again = dataclasses.replace(self.received(1), text="changed", attempts=7)
        assert await store.sandbox_receive(again) == dataclasses.replace(
            self.received(1), attempts=2
        )

    async def test_a_resend_of_an_accepted_message_is_not_counted(self, store: Store) -> None:
        """Once a message is accepted (received_at set), a resend returns it unchanged."""
        accepted = dataclasses.replace(self.received(1), received_at=T0)
        await store.sandbox_receive(accepted)
        again = dataclasses.replace(accepted, provider_message_id="sandbox-9", received_at=T0 + 5)
        assert await store.sandbox_receive(again) == accepted
        assert await store.sandbox_messages() == [accepted]

    async def test_receipts_owed_are_replaced(self, store: Store) -> None:
        """set_receipts replaces what is owed and keeps the received time unless given one."""
        await store.sandbox_receive(self.received(1))
        await store.sandbox_set_receipts("sandbox-1", [(T0 + 2, "read")], T0 + 1.5)
        await store.sandbox_set_receipts("sandbox-1", [], None)
        (stored,) = await store.sandbox_messages()
        assert (stored.receipts_due, stored.received_at) == ((), T0 + 1.5)

    async def test_journal_lists_in_arrival_order(self, store: Store) -> None:
        """sandbox_messages lists messages in the order they first arrived."""
        for n in (3, 1, 2):
            await store.sandbox_receive(self.received(n))
        await store.sandbox_receive(self.received(3))
        assert [m.message_id for m in await store.sandbox_messages()] == ["m3", "m1", "m2"]

    async def test_owed_lists_the_messages_that_still_owe_receipts(self, store: Store) -> None:
        """sandbox_owed lists, in arrival order, only the messages with receipts still owed
        (what the sandbox re-arms when it starts)."""
        for n in (3, 1, 2):
            await store.sandbox_receive(self.received(n))
        await store.sandbox_set_receipts("sandbox-1", [], None)
        assert [m.message_id for m in await store.sandbox_owed()] == ["m3", "m2"]

    async def test_provider_ids_are_unique(self, store: Store) -> None:
        """A second message with a taken provider id is refused."""
        await store.sandbox_receive(self.received(1))
        clash = dataclasses.replace(self.received(2), provider_message_id="sandbox-1")
        with pytest.raises(StoreConflict):
            await store.sandbox_receive(clash)
        assert [m.message_id for m in await store.sandbox_messages()] == ["m1"]


class TestLists:
    """Reading back many: an account's workflows and messages, newest first, in pages."""

    async def stored(self, store: Store, owner: Account, count: int) -> list[NewWorkflow]:
        """``count`` accepted workflows, one second apart, the last two at the same time."""
        requests = []
        for n in range(count):
            at = T0 + min(n, count - 2)
            request = workflow(owner, at=at, workflow_id=f"wf-{n:02d}")
            await store.accept(request)
            requests.append(request)
        return requests

    async def test_workflows_are_listed_newest_first_with_their_messages(
        self, store: Store
    ) -> None:
        """list_workflows gives the account's workflows newest first (ties by id), with
        their messages and without their timelines."""
        owner, other = await tenant(store), await tenant(store)
        requests = await self.stored(store, owner, 4)
        await store.accept(workflow(other))
        listed = await store.list_workflows(owner.id, ListQuery())
        assert [w.id for w in listed] == ["wf-03", "wf-02", "wf-01", "wf-00"]
        assert [m.id for m in listed[0].messages] == [s.message_id for s in requests[3].steps]
        assert all(w.events == () for w in listed)
        single = await store.get_workflow(owner.id, "wf-00")
        assert single is not None
        assert listed[3] == single

    async def test_workflow_pages_follow_the_cursor(self, store: Store) -> None:
        """A keyset cursor (created_at, id) continues exactly after the last row of a page."""
        owner = await tenant(store)
        await self.stored(store, owner, 5)
        pages: list[list[str]] = []
        cursor = None
        while True:
            page = await store.list_workflows(owner.id, ListQuery(limit=2, before=cursor))
            if not page:
                break
            pages.append([w.id for w in page])
            cursor = (page[-1].created_at, page[-1].id)
        assert pages == [["wf-04", "wf-03"], ["wf-02", "wf-01"], ["wf-00"]]

    async def test_workflows_filter_by_state_and_time(self, store: Store) -> None:
        """State and a created_at range [after, before) narrow the list."""
        owner = await tenant(store)
        await self.stored(store, owner, 4)
        seen = Observed(message_id="", status=Status.READ, at=T0 + 50, source="test")

        def complete(loaded: WorkflowRecord) -> Decision:
            """Complete the workflow with a read receipt on its first step."""
            first = loaded.messages[0].id
            return apply(loaded, dataclasses.replace(seen, message_id=first), horizon=1.0), []

        await store.transition(WorkflowKey(workflow_id="wf-01"), complete)
        done = await store.list_workflows(owner.id, ListQuery(state="completed"))
        assert [w.id for w in done] == ["wf-01"]
        window = ListQuery(created_after=T0 + 1, created_before=T0 + 2)
        assert [w.id for w in await store.list_workflows(owner.id, window)] == ["wf-01"]
        assert await store.list_workflows(owner.id, ListQuery(state="error")) == []

    async def test_a_dispatch_list_leaves_out_plain_messages(self, store: Store) -> None:
        """With dispatches_only, the list holds the workflows made through /v0.1/dispatch and
        /beta/workflows, not plain messages; without it, all of them."""
        owner = await tenant(store)
        await self.stored(store, owner, 2)
        plain = dataclasses.replace(
            workflow(owner, sms_step(), at=T0 + 5, workflow_id="wf-plain"),
            surface=Surface.MESSAGES,
        )
        preview = dataclasses.replace(
            workflow(owner, at=T0 + 6, workflow_id="wf-preview"), surface=Surface.WORKFLOWS
        )
        await store.accept(plain)
        await store.accept(preview)
        everything = await store.list_workflows(owner.id, ListQuery())
        assert [w.id for w in everything] == ["wf-preview", "wf-plain", "wf-01", "wf-00"]
        dispatches = await store.list_workflows(owner.id, ListQuery(dispatches_only=True))
        assert [w.id for w in dispatches] == ["wf-preview", "wf-01", "wf-00"]
        page = ListQuery(dispatches_only=True, limit=1, before=(T0 + 6, "wf-preview"))
        assert [w.id for w in await store.list_workflows(owner.id, page)] == ["wf-01"]

    async def test_messages_are_listed_and_filtered(self, store: Store) -> None:
        """list_messages gives the account's messages newest first, by status and channel."""
        owner, other = await tenant(store), await tenant(store)
        requests = await self.stored(store, owner, 2)
        await store.accept(workflow(other))
        listed = await store.list_messages(owner.id, ListQuery())
        expected = sorted(
            ((r.accepted_at, s.message_id) for r in requests for s in r.steps), reverse=True
        )
        assert [(m.created_at, m.id) for m in listed] == expected
        sms = await store.list_messages(owner.id, ListQuery(channel="sms"))
        assert [m.id for m in sms] == [m.id for m in listed if m.channel == "sms"]
        assert await store.list_messages(owner.id, ListQuery(state="delivered")) == []
        page = await store.list_messages(owner.id, ListQuery(limit=1, before=expected[0]))
        assert [m.id for m in page] == [expected[1][1]]
        assert all(isinstance(m, MessageRecord) for m in listed)
