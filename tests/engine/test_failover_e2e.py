"""Workflows that really fail over: through HTTP, the engine and the sandbox, on a fake clock."""

from __future__ import annotations

from cascade.clock import FakeClock
from cascade.domain.records import StepState, WorkflowState
from cascade.store.sqlite import SqliteStore
from tests.engine.harness import step, workflow, world


async def test_silent_messenger_step_expires_and_sms_is_delivered(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A messenger step to a 0003 recipient expires after expiry_time; the SMS is delivered."""
    async with world(sqlite_store, clock) as w:
        workflow_id = await w.dispatch(
            workflow(
                step("messenger", "1000003", expiry=600, condition="read"),
                step("sms", "447700900000"),
            )
        )
        await w.advance(599)
        running = await w.workflow(workflow_id)
        assert running.state is WorkflowState.RUNNING
        assert [m.status for m in running.messages] == ["submitted", None]
        await w.advance(5)
        done = await w.workflow(workflow_id)
        assert done.state is WorkflowState.COMPLETED
        assert [m.state for m in done.messages] == [StepState.EXPIRED, StepState.SUCCEEDED]
        assert [m.status for m in done.messages] == ["submitted", "delivered"]
        kinds = [e.kind for e in done.events]
        assert kinds.count("failover") == 1
        assert kinds[-1] == "completed"
        sends = await sqlite_store.sandbox_messages()
        assert [s.channel for s in sends] == ["messenger", "sms"]


async def test_read_on_first_step_completes_without_sms(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A default recipient reads the message after 2 s: completed, no SMS is ever sent."""
    async with world(sqlite_store, clock) as w:
        workflow_id = await w.dispatch(
            workflow(
                step("messenger", "1000000", expiry=600, condition="read"),
                step("sms", "447700900000"),
            )
        )
        await w.advance(3600)
        done = await w.workflow(workflow_id)
        assert done.state is WorkflowState.COMPLETED
        assert [m.state for m in done.messages] == [StepState.SUCCEEDED, StepState.CANCELLED]
        assert len(await sqlite_store.sandbox_messages()) == 1
