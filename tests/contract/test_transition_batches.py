"""Transitions asked for at once are read and written as one batch (issue 15: a bind's receipts
came dozens at a time and each cost a read and a write of its own), and what fails in a batch
fails alone: a decision that raises, or a value the database refuses, is that caller's error
and the others are stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cascade.domain.failover import Changes, MessageChange
from cascade.domain.records import Event, NewWorkflow, WorkflowRecord
from cascade.domain.status import Status
from cascade.store.base import Decision, Store, WorkflowKey
from cascade.store.sqlstore import SqlStore
from tests.contract.conftest import Backend
from tests.contract.factories import T0, tenant, workflow
from tests.contract.test_batch_isolation import UNSTORABLE


def setting(
    message_id: str, status: Status, *, event_reason: str = "r"
) -> Callable[[WorkflowRecord], Decision]:
    """A decision setting one message's status, with an event on the timeline."""

    def decide(loaded: WorkflowRecord) -> Decision:
        """Set the status; note it on the timeline."""
        assert any(m.id == message_id for m in loaded.messages)
        changes = Changes()
        changes.messages[message_id] = MessageChange(message_id, status=status)
        changes.events.append(
            Event(T0 + 1, "status", message_id, status.value, reason=event_reason)
        )
        return changes, []

    return decide


def failing(loaded: WorkflowRecord) -> Decision:
    """A decision with a bug."""
    raise ValueError(f"no rule for {loaded.id}")


async def accepted(store: Store, count: int) -> list[NewWorkflow]:
    """``count`` workflows of one tenant, accepted."""
    owner = await tenant(store)
    requests = [workflow(owner) for _ in range(count)]
    for request in requests:
        await store.accept(request)
    return requests


def batches(store: Store) -> int:
    """The transition batches the store has written so far."""
    assert isinstance(store, SqlStore)
    return store.transitions.batches


async def test_transitions_asked_at_once_are_one_batch(store: Store) -> None:
    """Forty transitions asked in the same moment, naming their workflows by id, by message
    and by a provider's id, are read and stored as one batch; one naming nothing is None."""
    requests = await accepted(store, 40)
    by_provider = requests[:10]
    await asyncio.gather(
        *(
            store.transition(
                WorkflowKey(workflow_id=request.id),
                lambda loaded, m=request.steps[0].message_id: _provider_id(m),
            )
            for request in by_provider
        )
    )
    keys = [
        WorkflowKey(provider="sms", provider_message_id=f"p-{request.steps[0].message_id}")
        for request in by_provider
    ]
    keys += [WorkflowKey(message_id=request.steps[0].message_id) for request in requests[10:25]]
    keys += [WorkflowKey(workflow_id=request.id) for request in requests[25:]]
    before = batches(store)
    outcomes = await asyncio.gather(
        *(
            store.transition(key, setting(request.steps[0].message_id, Status.DELIVERED))
            for key, request in zip(keys, requests, strict=True)
        ),
        store.transition(WorkflowKey(provider="sms", provider_message_id="nobody"), failing),
    )
    assert batches(store) == before + 1
    assert all(outcome is not None for outcome in outcomes[:-1])
    assert outcomes[-1] is None
    for request in requests:
        message = await store.find_message(request.steps[0].message_id)
        assert message is not None
        assert message.status == "delivered", request.id


def _provider_id(message_id: str) -> Decision:
    """A submit: the message gets a provider's id."""
    changes = Changes()
    changes.messages[message_id] = MessageChange(
        message_id, status=Status.SUBMITTED, provider="sms", provider_message_id=f"p-{message_id}"
    )
    return changes, []


async def test_a_decision_that_raises_fails_only_its_own_transition(store: Store) -> None:
    """In a batch of ten, the transition whose decision raises gets that error; the other
    nine are stored."""
    requests = await accepted(store, 10)
    decisions = [setting(r.steps[0].message_id, Status.DELIVERED) for r in requests]
    decisions[4] = failing
    outcomes = await asyncio.gather(
        *(
            store.transition(WorkflowKey(workflow_id=r.id), decide)
            for r, decide in zip(requests, decisions, strict=True)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[4], ValueError)
    for index, request in enumerate(requests):
        message = await store.find_message(request.steps[0].message_id)
        assert message is not None
        assert message.status == (None if index == 4 else "delivered")


async def test_a_value_the_database_refuses_fails_only_its_transition(
    backend: Backend, store: Store
) -> None:
    """In a batch of ten, the transition whose event holds a value the database cannot store
    fails; the other nine, of the same batch, are stored."""
    requests = await accepted(store, 10)
    bad = UNSTORABLE[backend.name][0]
    decisions = [setting(r.steps[0].message_id, Status.DELIVERED) for r in requests]
    decisions[7] = setting(requests[7].steps[0].message_id, Status.DELIVERED, event_reason=bad)
    outcomes = await asyncio.gather(
        *(
            store.transition(WorkflowKey(message_id=r.steps[0].message_id), decide)
            for r, decide in zip(requests, decisions, strict=True)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[7], Exception)
    assert [isinstance(outcome, Exception) for outcome in outcomes].count(True) == 1
    for index, request in enumerate(requests):
        stored = await store.get_workflow(request.account_id, request.id)
        assert stored is not None
        assert len(stored.events) == (0 if index == 7 else 1)


async def test_transitions_of_one_workflow_in_a_batch_each_decide_from_the_one_before(
    store: Store,
) -> None:
    """Three transitions of one workflow in one batch, beside others, are all stored, and each
    decides from the workflow as the one before it left it, not from the batch's read."""
    requests = await accepted(store, 6)
    request = requests[0]
    message_id = request.steps[0].message_id
    seen: list[str | None] = []

    def noting(status: Status) -> Callable[[WorkflowRecord], Decision]:
        """Note the message's status when decided, then set ``status``."""
        add = setting(message_id, status, event_reason=status.value)

        def decide(loaded: WorkflowRecord) -> Decision:
            """Note, then decide."""
            seen.append(next(m.status for m in loaded.messages if m.id == message_id))
            return add(loaded)

        return decide

    statuses = [Status.SUBMITTED, Status.DELIVERED, Status.READ]
    others = [
        store.transition(
            WorkflowKey(workflow_id=other.id),
            setting(other.steps[0].message_id, Status.SUBMITTED),
        )
        for other in requests[1:]
    ]
    before = batches(store)
    outcomes = await asyncio.gather(
        *(store.transition(WorkflowKey(workflow_id=request.id), noting(s)) for s in statuses),
        *others,
    )
    assert batches(store) == before + 1
    assert all(outcome is not None for outcome in outcomes)
    stored = await store.get_workflow(request.account_id, request.id)
    assert stored is not None
    assert [event.reason for event in stored.events] == ["submitted", "delivered", "read"]
    assert seen[-2:] == ["submitted", "delivered"]
