"""A workflow this process's transition just stored is kept as the transition left it, and the
next transition of it decides without reading it again (issue 15: the transition's read was
about a tenth of the engine's CPU, read three times for a Messenger message's submit,
delivery and read). What was kept is only a first guess: a workflow moved since by anything
else (another process's transition, a provider id taken back) is read and decided again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from cascade.domain.failover import Changes, MessageChange
from cascade.domain.records import (
    Event,
    MessageRecord,
    StepState,
    Surface,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.store.base import Decision, Store, WorkflowKey
from cascade.store.sqlstore import KnownWorkflows, SqlStore, _footprint, transitions_read_plan
from tests.contract.conftest import Backend
from tests.contract.factories import T0
from tests.contract.test_transition_batches import accepted


def changing(
    message_id: str, seen: list[WorkflowRecord], **values: Any
) -> Callable[[WorkflowRecord], Decision]:
    """A decision setting some fields of one message, noting each workflow it decided from."""

    def decide(loaded: WorkflowRecord) -> Decision:
        """Note what was seen; change the message."""
        seen.append(loaded)
        changes = Changes()
        changes.messages[message_id] = MessageChange(message_id, **values)
        changes.events.append(Event(T0 + 1, "status", message_id, values.get("status")))
        return changes, []

    return decide


def reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The plans the store reads from now on (every one, whatever it is)."""
    assert isinstance(store, SqlStore)
    done: list[object] = []
    read = store._read

    async def counted(plan: Any, **options: Any) -> Any:
        """Note the plan, then read it."""
        done.append(plan)
        return await read(plan, **options)

    monkeypatch.setattr(store, "_read", counted)
    return done


async def fresh(store: Store, workflow_id: str) -> tuple[WorkflowRecord, int]:
    """The workflow as a transition reads it from the database, with its version."""
    assert isinstance(store, SqlStore)
    found = await store._read(transitions_read_plan([WorkflowKey(workflow_id=workflow_id)]))
    loaded = found.get(WorkflowKey(workflow_id=workflow_id))
    assert loaded is not None
    return loaded


def without_times(workflow: WorkflowRecord) -> WorkflowRecord:
    """A workflow with its messages' ``updated_at`` blanked (no decision reads it)."""
    return replace(workflow, messages=tuple(replace(m, updated_at=0.0) for m in workflow.messages))


async def test_the_next_transition_decides_from_the_kept_workflow_without_a_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a submit gave the message a provider's id, its receipt, named by that id, and
    the read after it decide from what the submit left, reading nothing; what they stored is
    what a read of the database finds."""
    [request] = await accepted(store, 1)
    message_id = request.steps[0].message_id
    seen: list[WorkflowRecord] = []
    await store.transition(
        WorkflowKey(message_id=message_id),
        changing(
            message_id, seen, status=Status.SUBMITTED, provider="sms", provider_message_id="p-1"
        ),
    )
    done = reads(store, monkeypatch)
    by_provider = WorkflowKey(provider="sms", provider_message_id="p-1")
    await store.transition(by_provider, changing(message_id, seen, status=Status.DELIVERED))
    await store.transition(by_provider, changing(message_id, seen, status=Status.READ))
    assert done == []
    assert [m.status for w in seen for m in w.messages if m.id == message_id] == [
        None,
        Status.SUBMITTED,
        Status.DELIVERED,
    ]
    kept = store.transitions.known.find(by_provider)  # type: ignore[attr-defined]
    assert kept is not None
    stored = await fresh(store, request.id)
    assert (without_times(kept[0]), kept[1]) == (without_times(stored[0]), stored[1])


async def test_a_workflow_moved_by_another_process_is_read_and_decided_again(
    backend: Backend, store: Store
) -> None:
    """Another process's transition moves a workflow this one keeps: this one's next
    transition does not decide from what it kept (which lacks the other's change) but from
    the database, and both changes are stored."""
    [request] = await accepted(store, 1)
    first, second = request.steps[0].message_id, request.steps[1].message_id
    seen: list[WorkflowRecord] = []
    await store.transition(
        WorkflowKey(workflow_id=request.id), changing(first, seen, status=Status.SUBMITTED)
    )
    other = backend.make()
    await other.open()
    try:
        await other.transition(
            WorkflowKey(workflow_id=request.id), changing(second, [], status=Status.REJECTED)
        )
    finally:
        await other.close()
    seen.clear()
    await store.transition(
        WorkflowKey(workflow_id=request.id), changing(first, seen, status=Status.DELIVERED)
    )
    # decided first from what was kept, then again from the database, which has the other's
    assert [next(m.status for m in w.messages if m.id == second) for w in seen] == [
        None,
        Status.REJECTED,
    ]
    stored, _ = await fresh(store, request.id)
    assert [m.status for m in stored.messages] == [Status.DELIVERED, Status.REJECTED]


async def test_a_provider_id_taken_back_leads_its_receipt_to_the_newer_message(
    store: Store,
) -> None:
    """An SMSC hands out a kept message's id again: the receipt for that id is the newer
    message's, although this process keeps the older workflow under the id."""
    older, newer = await accepted(store, 2)
    old_id, new_id = older.steps[0].message_id, newer.steps[0].message_id
    await store.transition(
        WorkflowKey(message_id=old_id),
        changing(old_id, [], status=Status.SUBMITTED, provider="sms", provider_message_id="7"),
    )
    await store.claim_provider_ids("sms", new_id, ["7"], T0 + 5)
    await store.transition(
        WorkflowKey(message_id=new_id),
        changing(new_id, [], status=Status.SUBMITTED, provider="sms", provider_message_id="7"),
    )
    seen: list[WorkflowRecord] = []

    def receipt(loaded: WorkflowRecord) -> Decision:
        """Deliver the message of the workflow that holds the id."""
        seen.append(loaded)
        holder = next(m.id for m in loaded.messages if m.provider_message_id == "7")
        return changing(holder, [], status=Status.DELIVERED)(loaded)

    await store.transition(WorkflowKey(provider="sms", provider_message_id="7"), receipt)
    old = await store.find_message(old_id)
    new = await store.find_message(new_id)
    assert old is not None
    assert new is not None
    assert (old.status, new.status) == (Status.SUBMITTED, Status.DELIVERED)


async def test_a_finished_workflow_is_not_kept(store: Store) -> None:
    """The transition that finishes a workflow leaves nothing kept: what follows a workflow's
    end is a late receipt, rare, and read."""
    [request] = await accepted(store, 1)
    message_id = request.steps[0].message_id

    def finishing(loaded: WorkflowRecord) -> Decision:
        """Deliver the message and finish the workflow."""
        changes, webhooks = changing(message_id, [], status=Status.DELIVERED)(loaded)
        changes.workflow_state = WorkflowState.COMPLETED
        changes.finished_at = T0 + 2
        return changes, webhooks

    key = WorkflowKey(workflow_id=request.id)
    await store.transition(key, changing(message_id, [], status=Status.SUBMITTED))
    known = store.transitions.known  # type: ignore[attr-defined]
    assert known.find(key) is not None
    await store.transition(key, finishing)
    assert known.find(key) is None


def test_past_the_byte_budget_the_least_recently_stored_are_dropped() -> None:
    """Past ``MAX_BYTES``, the workflow stored least recently is dropped, with its keys; one
    larger than the whole budget (a tenant's bodies are theirs to size) is not kept."""
    message = MessageRecord(
        "m", "w", 0, "a", "sms", b"1", b"2", b"x" * 100, None, None, None,
        StepState.ACTIVE, None, None, None, None, None, None, None, None, T0, T0,
    )  # fmt: skip
    workflows = [
        WorkflowRecord(
            f"w{n}",
            "a",
            None,
            Surface.MESSAGES,
            WorkflowState.RUNNING,
            T0,
            T0,
            None,
            (replace(message, id=f"m{n}", workflow_id=f"w{n}"),),
        )
        for n in range(3)
    ]
    known = KnownWorkflows()
    known.MAX_BYTES = 2 * _footprint(workflows[0])
    for workflow in workflows:
        known.remember(workflow, 1)
    known.remember(workflows[1], 2)  # stored again: the most recent
    assert len(known) == 2
    assert known.size <= known.MAX_BYTES
    assert known.find(WorkflowKey(workflow_id="w0")) is None
    assert known.find(WorkflowKey(message_id="m0")) is None
    assert known.find(WorkflowKey(message_id="m1")) == (workflows[1], 2)
    huge = replace(workflows[0], messages=(replace(message, body=b"x" * known.MAX_BYTES),))
    known.remember(huge, 1)
    assert known.find(WorkflowKey(workflow_id="w0")) is None
    assert len(known) == 2
