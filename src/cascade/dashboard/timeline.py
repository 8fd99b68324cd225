"""A workflow's timeline as the dashboard draws it: one lane per step, each thing that
happened placed at its time along one axis (the workflow's start to its end, or to now and the
open window's deadline while it runs).

Pure: it reads the records the store returns and the webhook views of ``cascade.views``, and
returns plain values a template lays out, positions as fractions of the axis (0..1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from cascade.domain.records import Event, MessageRecord, WorkflowRecord, WorkflowState
from cascade.webhooks.payloads import timestamp


@dataclass(frozen=True, slots=True)
class Mark:
    """Something that happened on a lane: where on the axis, when, what, and how it reads."""

    x: float
    at: str
    kind: str  # start, status, retry, failover, webhook
    label: str
    detail: str = ""
    #: the status a status mark carried (for its colour)
    status: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """A step's window: from its start to its deadline, on the axis (the end clipped to it)."""

    x0: float
    x1: float
    opened: str
    deadline: str
    seconds: int
    condition: str


@dataclass(frozen=True, slots=True)
class Failover:
    """The moment one step gave way to the next, and why."""

    at: str
    from_step: int
    from_channel: str
    to_step: int | None
    to_channel: str | None
    reason: str


@dataclass(slots=True)
class Lane:
    """One step: its channel, recipient, state and status, its window, its marks and its
    webhooks."""

    step: int
    message_id: str
    channel: str
    recipient: str
    state: str
    status: str
    error: str
    window: Window | None
    marks: list[Mark] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Timeline:
    """What the workflow page draws."""

    workflow_id: str
    state: str
    running: bool
    started: str
    ends: str
    lanes: list[Lane]
    failovers: list[Failover]
    #: webhooks of no step (the final report)
    webhooks: list[dict[str, Any]]
    #: the workflow's own end, when it has one (completed or error, and why)
    outcome: str


def recipient(message: MessageRecord) -> str:
    """The number or id a message went to."""
    try:
        to = msgspec.json.decode(message.to)
    except msgspec.DecodeError:
        return "?"
    if isinstance(to, dict):
        return str(to.get("number") or to.get("id") or "?")
    return "?"


def _status_mark(event: Event, x: float) -> Mark:
    """A status a step reached, with its error when it is a failure."""
    detail = f"error {event.code} {event.reason or ''}".strip() if event.code is not None else ""
    if event.source:
        detail = f"{detail} [{event.source}]".strip()
    return Mark(x, timestamp(event.at), "status", event.status or "?", detail, event.status or "")


def build(workflow: WorkflowRecord, webhooks: list[dict[str, Any]], now: float) -> Timeline:
    """The timeline of ``workflow`` as of ``now``, with its webhooks (``views.webhook_views``)."""
    start = workflow.created_at
    end = workflow.finished_at if workflow.finished_at is not None else now
    for message in workflow.messages:
        if (
            workflow.finished_at is None
            and message.started_at is not None
            and message.expiry_time is not None
        ):
            end = max(end, message.started_at + message.expiry_time)
    for event in workflow.events:
        end = max(end, event.at)
    span = max(end - start, 1e-3)

    def x(at: float) -> float:
        return min(max((at - start) / span, 0.0), 1.0)

    by_id = {message.id: message for message in workflow.messages}
    lanes: dict[str, Lane] = {}
    for message in workflow.messages:
        window = None
        if message.started_at is not None and message.expiry_time is not None:
            deadline = message.started_at + message.expiry_time
            window = Window(
                x(message.started_at),
                x(deadline),
                timestamp(message.started_at),
                timestamp(deadline),
                message.expiry_time,
                message.condition_status or "delivered",
            )
        error = (
            f"{message.error_code} {message.error_reason or ''}".strip()
            if message.error_code is not None
            else ""
        )
        lane = Lane(
            message.step + 1,
            message.id,
            message.channel,
            recipient(message),
            message.state.value,
            message.status or "",
            error,
            window,
        )
        if message.started_at is not None:
            opened = message.started_at
            lane.marks.append(Mark(x(opened), timestamp(opened), "start", "started"))
        lanes[message.id] = lane

    failovers: list[Failover] = []
    outcome = ""
    for event in workflow.events:
        lane_of = lanes.get(event.message_id) if event.message_id is not None else None
        if event.kind == "status" and lane_of is not None:
            lane_of.marks.append(_status_mark(event, x(event.at)))
        elif event.kind == "retry" and lane_of is not None:
            then = f"; next attempt {timestamp(event.next_at)}" if event.next_at else ""
            lane_of.marks.append(
                Mark(
                    x(event.at),
                    timestamp(event.at),
                    "retry",
                    "retry",
                    f"error {event.code} {event.reason or ''}".strip() + then,
                )
            )
        elif event.kind == "failover" and lane_of is not None:
            failed = by_id[lane_of.message_id]
            following = next((m for m in workflow.messages if m.step == failed.step + 1), None)
            lane_of.marks.append(
                Mark(x(event.at), timestamp(event.at), "failover", "failover", event.reason or "")
            )
            failovers.append(
                Failover(
                    timestamp(event.at),
                    failed.step + 1,
                    failed.channel,
                    following.step + 1 if following is not None else None,
                    following.channel if following is not None else None,
                    event.reason or "",
                )
            )
        elif event.kind in (WorkflowState.COMPLETED.value, WorkflowState.ERROR.value):
            outcome = f"{event.kind} at {timestamp(event.at)}"
            if event.reason:
                outcome += f": {event.reason}"

    unplaced: list[dict[str, Any]] = []
    for hook in webhooks:
        lane_of = lanes.get(hook.get("message_uuid") or "")
        if lane_of is None:
            unplaced.append(hook)
            continue
        lane_of.webhooks.append(hook)
    for lane in lanes.values():
        lane.marks.sort(key=lambda mark: mark.x)
    return Timeline(
        workflow.id,
        workflow.state.value,
        workflow.state is WorkflowState.RUNNING,
        timestamp(start),
        timestamp(end),
        list(lanes.values()),
        failovers,
        unplaced,
        outcome,
    )
