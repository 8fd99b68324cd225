"""The timeline the workflow page draws: lanes, windows, marks and the failover, placed on
one axis from the workflow's records."""

from __future__ import annotations

from dataclasses import replace

from cascade.dashboard.timeline import build
from cascade.domain.records import (
    Event,
    MessageRecord,
    StepState,
    Surface,
    WorkflowRecord,
    WorkflowState,
)

T0 = 1_800_000_000.0


def message(step: int, channel: str, to: bytes, **fields: object) -> MessageRecord:
    """A message of workflow w1."""
    record = MessageRecord(
        id=f"m{step}",
        workflow_id="w1",
        step=step,
        account_id="a1",
        channel=channel,
        to=to,
        from_=b'{"type":"sms","number":"Acme"}',
        body=b"{}",
        client_ref=None,
        expiry_time=None,
        condition_status=None,
        state=StepState.WAITING,
        status=None,
        error_code=None,
        error_reason=None,
        provider=None,
        provider_message_id=None,
        price=None,
        currency=None,
        started_at=None,
        created_at=T0,
        updated_at=T0,
    )
    return replace(record, **fields)  # type: ignore[arg-type]


def failed_over(state: WorkflowState, finished_at: float | None) -> WorkflowRecord:
    """Messenger (a 20 s window, expired at T0+20) then SMS."""
    first = message(
        0,
        "messenger",
        b'{"type":"messenger","id":"1234560003"}',
        expiry_time=20,
        condition_status="read",
        state=StepState.EXPIRED,
        status="submitted",
        started_at=T0,
    )
    second = message(
        1,
        "sms",
        b'{"type":"sms","number":"447700900000"}',
        state=StepState.ACTIVE,
        started_at=T0 + 20,
    )
    events = (
        Event(T0 + 1, "status", "m0", status="submitted", source="sandbox"),
        Event(T0 + 5, "retry", "m0", code=1000, reason="Throttled", next_at=T0 + 10),
        Event(T0 + 20, "failover", "m0", reason="step 1 did not reach read within 20 s"),
        Event(T0 + 20, "step_started", "m1", source="engine"),
    )
    return WorkflowRecord(
        "w1", "a1", None, Surface.DISPATCH, state, T0, T0, finished_at, (first, second), events
    )


def test_lanes_window_and_failover_are_placed_on_the_axis() -> None:
    """Each step is a lane; the window spans its start to its deadline; the failover is a mark
    on the failed step's lane and names both steps and the reason."""
    drawn = build(failed_over(WorkflowState.COMPLETED, T0 + 40), [], now=T0 + 100)
    assert not drawn.running
    first, second = drawn.lanes
    assert (first.channel, first.recipient, second.recipient) == (
        "messenger",
        "1234560003",
        "447700900000",
    )
    assert first.window is not None
    assert (first.window.x0, first.window.x1, first.window.seconds) == (0.0, 0.5, 20)
    assert [(m.kind, m.x) for m in first.marks] == [
        ("start", 0.0),
        ("status", 0.025),
        ("retry", 0.125),
        ("failover", 0.5),
    ]
    assert "next attempt" in first.marks[2].detail
    [failover] = drawn.failovers
    assert (failover.from_step, failover.from_channel, failover.to_step, failover.to_channel) == (
        1,
        "messenger",
        2,
        "sms",
    )
    assert failover.reason == "step 1 did not reach read within 20 s"


def test_a_running_workflow_reaches_to_now_or_its_open_deadline() -> None:
    """While it runs, the axis ends at the later of now and the open window's deadline."""
    running = replace(
        failed_over(WorkflowState.RUNNING, None),
        events=(),
    )
    early = build(running, [], now=T0 + 5)
    assert early.running
    assert early.lanes[0].window is not None
    assert early.lanes[0].window.x1 == 1.0  # the deadline, T0+20, ends the axis
    late = build(running, [], now=T0 + 80)
    assert late.lanes[0].window is not None
    assert late.lanes[0].window.x1 == 0.25


def test_webhooks_go_to_their_steps_lane_and_the_final_report_to_the_workflow() -> None:
    """A status webhook sits on its message's lane; the final report on the workflow."""
    hooks = [
        {"id": 1, "kind": "message-status", "message_uuid": "m1", "attempts": []},
        {"id": 2, "kind": "final-report", "message_uuid": None, "attempts": []},
    ]
    drawn = build(failed_over(WorkflowState.COMPLETED, T0 + 40), hooks, now=T0 + 40)
    assert [h["id"] for h in drawn.lanes[1].webhooks] == [1]
    assert [h["id"] for h in drawn.webhooks] == [2]
