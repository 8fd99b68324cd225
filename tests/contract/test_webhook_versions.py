"""Messages v1 in the store, on both back ends: an application's webhook_version, a message's
own webhook URL and shape, and a v1 workflow's failover replacing the report horizon."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

import msgspec

from cascade.domain.failover import Observed, apply
from cascade.domain.records import (
    JobKindName,
    NewStep,
    StepState,
    Surface,
    WebhookKind,
    WebhookVersion,
    WorkflowRecord,
)
from cascade.domain.reports import reports_for
from cascade.domain.status import Status
from cascade.store.base import Decision, Store, WorkflowKey
from cascade.webhooks import payloads
from tests.contract.factories import HORIZON, T0, application, tenant, workflow


def v1_step(to: str, *, url: str | None = None, version: str | None = "v1") -> NewStep:
    """An SMS step as POST /v1/messages stores it: no window, its own webhook settings."""
    return NewStep(
        message_id=str(uuid.uuid4()),
        channel="sms",
        to=b'{"type":"sms","number":"%s"}' % to.encode(),
        from_=b'{"type":"sms","number":"Acme"}',
        body=b'{"content":{"type":"text","text":"hi"}}',
        client_ref="ref-1",
        expiry_time=None,
        condition_status=None,
        webhook_url=url,
        webhook_version=version,
    )


def decider(seen: Observed) -> Callable[[WorkflowRecord], Decision]:
    """The engine's decision for ``seen``: the rules, then the webhooks they call for."""

    def decide(loaded: WorkflowRecord) -> Decision:
        changes = apply(loaded, seen, horizon=HORIZON)
        return changes, payloads.webhooks(reports_for(loaded, changes))

    return decide


async def test_an_application_is_v01_unless_set_and_its_version_can_change(
    store: Store,
) -> None:
    """webhook_version is stored with the application (v0.1 by default) and update changes
    it alone."""
    owner = await tenant(store)
    plain = application(owner)
    await store.create_application(plain)
    assert (await store.get_application(plain.id)) == plain
    assert plain.webhook_version == WebhookVersion.V0_1
    v1 = dataclasses.replace(application(owner), webhook_version="v1")
    await store.create_application(v1)
    assert (await store.get_application(v1.id)) == v1
    updated = await store.update_application(plain.id, webhook_version="v1")
    assert updated == dataclasses.replace(plain, webhook_version="v1")
    assert [a.webhook_version for a in await store.list_applications(owner.id)] == ["v1", "v1"]


async def test_a_messages_webhook_url_and_shape_read_back_everywhere(store: Store) -> None:
    """A step's webhook_url and webhook_version come back from every read of the message."""
    owner = await tenant(store)
    first = v1_step("447700900001", url="https://hooks.example.test/s")
    second = v1_step("447700900002", version=None)
    request = dataclasses.replace(workflow(owner, first, second), surface=Surface.MESSAGES_V1)
    await store.accept(request)
    read = await store.get_workflow(owner.id, request.id)
    assert read is not None
    assert read.surface is Surface.MESSAGES_V1
    assert [(m.webhook_url, m.webhook_version) for m in read.messages] == [
        ("https://hooks.example.test/s", "v1"),
        (None, None),
    ]
    found = await store.find_message(first.message_id)
    assert found is not None
    assert found.webhook_url == "https://hooks.example.test/s"


async def test_a_v1_status_webhook_goes_to_the_messages_own_url_in_the_v1_shape(
    store: Store,
) -> None:
    """The status webhook of a message that named a webhook_url goes there (not to the
    account's status URL), with the v1 body its webhook_version asks for."""
    owner = await tenant(store)
    step = v1_step("447700900001", url="https://hooks.example.test/own")
    request = dataclasses.replace(workflow(owner, step), surface=Surface.MESSAGES_V1)
    await store.accept(request)
    seen = Observed(step.message_id, Status.SUBMITTED, T0 + 1, "sandbox", price="0.0333")
    await store.transition(WorkflowKey(message_id=step.message_id), decider(seen))
    (hook,) = await store.list_webhooks(workflow_id=request.id)
    assert hook.kind is WebhookKind.STATUS
    assert hook.url == "https://hooks.example.test/own"
    body = msgspec.json.decode(hook.body)
    assert body["to"] == "447700900001"
    assert body["channel"] == "sms"
    assert body["status"] == "submitted"


async def test_failing_over_replaces_the_report_horizon(store: Store) -> None:
    """When a step without a window is rejected, the next starts with a horizon of its own:
    one report_horizon job remains, due a horizon after the failover."""
    owner = await tenant(store)
    first, second = v1_step("447700900001"), v1_step("447700900002")
    request = dataclasses.replace(workflow(owner, first, second), surface=Surface.MESSAGES_V1)
    await store.accept(request)
    assert [job.run_at for job in await store.pending_jobs(request.id)] == [T0 + HORIZON]
    rejected = Observed(first.message_id, Status.REJECTED, T0 + 50, "sandbox", 1300, "No")
    await store.transition(WorkflowKey(message_id=first.message_id), decider(rejected))
    horizon = await store.pending_jobs(request.id)
    assert [(job.kind, job.run_at) for job in horizon] == [
        (JobKindName.REPORT_HORIZON, T0 + 50 + HORIZON)
    ]
    read = await store.get_workflow(owner.id, request.id)
    assert read is not None
    assert [m.state for m in read.messages] == [StepState.FAILED, StepState.ACTIVE]


async def test_a_transition_reads_whether_a_status_url_is_set(store: Store) -> None:
    """A transition's read says whether the workflow's application or account names a status
    URL (an empty one is none), whichever way the workflow is found."""
    seen_set: list[bool] = []

    def noting(seen: Observed) -> Callable[[WorkflowRecord], Decision]:
        decide = decider(seen)

        def note(loaded: WorkflowRecord) -> Decision:
            seen_set.append(loaded.status_url_set)
            return decide(loaded)

        return note

    async def read_flags(status_url: str | None, app_url: str | None) -> list[bool]:
        owner = await tenant(store)
        await store.update_account(owner.id, status_url=status_url)
        app = dataclasses.replace(application(owner), status_url=app_url)
        await store.create_application(app)
        step = v1_step("447700900001")
        request = dataclasses.replace(workflow(owner, step), application_id=app.id)
        await store.accept(request)
        seen_set.clear()
        provider_id = f"sbx-{uuid.uuid4()}"
        submitted = Observed(
            step.message_id,
            Status.SUBMITTED,
            T0 + 1,
            "sandbox",
            provider="sandbox",
            provider_message_id=provider_id,
        )
        await store.transition(WorkflowKey(message_id=step.message_id), noting(submitted))
        delivered = Observed(step.message_id, Status.DELIVERED, T0 + 2, "sandbox")
        await store.transition(WorkflowKey(workflow_id=request.id), noting(delivered))
        read = Observed(step.message_id, Status.READ, T0 + 3, "sandbox")
        by_provider = WorkflowKey(provider="sandbox", provider_message_id=provider_id)
        await store.transition(by_provider, noting(read))
        return list(seen_set)

    assert await read_flags("https://example.test/s", None) == [True] * 3
    assert await read_flags(None, "https://example.test/app") == [True] * 3
    assert await read_flags(None, None) == [False] * 3
    assert await read_flags("", "") == [False] * 3


async def test_without_a_status_url_only_a_message_with_its_own_url_is_reported(
    store: Store,
) -> None:
    """With no status URL on the application or account, a message that named its own
    webhook_url still gets its status webhook; one that did not, and the final report, get
    none (no row, no body written)."""
    owner = await tenant(store)
    await store.update_account(owner.id, status_url=None)
    own = v1_step("447700900001", url="https://hooks.example.test/own")
    plain = v1_step("447700900002")
    for step in (own, plain):
        request = dataclasses.replace(workflow(owner, step), surface=Surface.MESSAGES_V1)
        await store.accept(request)
        seen = Observed(step.message_id, Status.SUBMITTED, T0 + 1, "sandbox", price="0.0333")
        decision = await store.transition(WorkflowKey(message_id=step.message_id), decider(seen))
        assert decision is not None
        hooks = [(h.url, h.message_id) for h in decision[1]]
        stored = [(h.url, h.message_id) for h in await store.list_webhooks(workflow_id=request.id)]
        expected = [("https://hooks.example.test/own", own.message_id)] if step is own else []
        assert hooks == stored == expected
