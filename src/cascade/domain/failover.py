"""The failover rules (docs/design.md §1) as a pure state machine.

:func:`apply` takes a workflow as stored and one thing that happened to it (a status observed
for one of its messages, a step's window closing, the report horizon passing) and returns the
:class:`Changes` to store. It does no I/O and reads no clock, so the rules are tested directly,
including by property tests over random orders of receipts, timeouts and send errors. The rules
are numbered in docs/design.md §1, and the comments here cite them by those numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from cascade.domain.records import (
    Event,
    JobKindName,
    MessageRecord,
    NewJob,
    StepState,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import SUCCESS_RANK, Status, reaches


@dataclass(frozen=True, slots=True)
class Observed:
    """A status seen for one message: a send result or a provider receipt."""

    message_id: str
    status: Status
    at: float
    source: str
    code: int | None = None
    reason: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    price: str | None = None
    currency: str | None = None
    #: how many parts (SMS segments) the provider sent the message as
    segments: int | None = None


@dataclass(frozen=True, slots=True)
class WindowClosed:
    """A step's ``expiry_time`` passed (its timer job ran)."""

    message_id: str
    at: float
    #: the last transient send error, when the message never reached the provider
    last_error: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class HorizonReached:
    """The report horizon passed for a workflow still running on its last step."""

    at: float


Happening = Observed | WindowClosed | HorizonReached


@dataclass(slots=True)
class MessageChange:
    """New values for some fields of one message (None: unchanged)."""

    message_id: str
    state: StepState | None = None
    status: Status | None = None
    error_code: int | None = None
    error_reason: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    price: str | None = None
    currency: str | None = None
    started_at: float | None = None
    segments: int | None = None

    def values(self) -> dict[str, Any]:
        """The fields this change sets, by name (the MessageRecord fields of the same names)."""
        return {
            name: value for name in _CHANGE_FIELDS if (value := getattr(self, name)) is not None
        }


_CHANGE_FIELDS = tuple(f.name for f in fields(MessageChange) if f.name != "message_id")


@dataclass(slots=True)
class Changes:
    """Everything one happening changes, to be stored in one transaction."""

    messages: dict[str, MessageChange] = field(default_factory=dict)
    workflow_state: WorkflowState | None = None
    finished_at: float | None = None
    events: list[Event] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    #: (kind, ref) of jobs to delete, before ``jobs`` are written: timers and sends that no
    #: longer matter
    cancel_jobs: list[tuple[str, str]] = field(default_factory=list)
    #: messages whose new status must be reported to the customer, in order
    status_reports: list[str] = field(default_factory=list)
    #: whether the workflow just finished and its final report is due
    final_report: bool = False

    def message(self, message_id: str) -> MessageChange:
        """The change record of one message, created on first use."""
        change = self.messages.get(message_id)
        if change is None:
            change = self.messages[message_id] = MessageChange(message_id)
        return change

    @property
    def empty(self) -> bool:
        """Whether nothing changes."""
        return not (self.messages or self.events or self.jobs or self.cancel_jobs)


def merged_status(current: Status | None, seen: Status) -> Status | None:
    """The status after ``seen`` arrives, or None when it changes nothing (docs/design.md §1.8)."""
    if current is None:
        return seen
    if seen == current:
        return None
    if seen.is_failure:
        return seen if current == Status.SUBMITTED else None
    if current.is_failure:
        # a success reported after a failure (multi-device channels do this) is the truth
        return seen if seen != Status.SUBMITTED else None
    return seen if SUCCESS_RANK[seen] > SUCCESS_RANK[current] else None


def success_condition(step: MessageRecord, last: bool) -> str:
    """The status that makes this step a success."""
    if last or step.condition_status is None:
        return Status.DELIVERED.value
    return step.condition_status


def step_jobs(
    workflow_id: str,
    message_id: str,
    expiry_time: int | None,
    last: bool,
    at: float,
    horizon: float,
) -> list[NewJob]:
    """The jobs that start a step: its send now, and its window (docs/design.md §1.1) or, on
    the last step and on a step without a window, the report horizon (docs/design.md §1.7,
    §1.11)."""
    jobs = [NewJob(JobKindName.SEND, message_id, at)]
    if not last and expiry_time is not None:
        jobs.append(NewJob(JobKindName.STEP_TIMEOUT, message_id, at + expiry_time))
    if last or expiry_time is None:
        jobs.append(NewJob(JobKindName.REPORT_HORIZON, workflow_id, at + horizon))
    return jobs


def has_window_job(workflow: WorkflowRecord, index: int) -> bool:
    """Whether step ``index`` was given a ``step_timeout`` job when it started (as
    :func:`step_jobs` gives one): only a step with a window that is not the last. Cancelling
    the job of a step without one would be a statement that finds nothing (a plain message's
    ``delivered`` made two of them)."""
    return index < len(workflow.messages) - 1 and workflow.messages[index].expiry_time is not None


def _cancel(changes: Changes, kind: JobKindName, ref: str) -> None:
    """Cancel the job ``kind``/``ref`` once, however many rules call for it."""
    if (kind, ref) not in changes.cancel_jobs:
        changes.cancel_jobs.append((kind, ref))


def start_step(
    workflow: WorkflowRecord,
    index: int,
    at: float,
    changes: Changes,
    *,
    horizon: float,
) -> None:
    """Start step ``index`` of a running workflow."""
    step = workflow.messages[index]
    last = index == len(workflow.messages) - 1
    change = changes.message(step.id)
    change.state = StepState.ACTIVE
    change.started_at = at
    if index > 0 and workflow.messages[index - 1].expiry_time is None:
        # the step before had no window, so it had the report horizon (docs/design.md §1.11):
        # this step's jobs replace it, as cancelled jobs go before new ones are written
        changes.cancel_jobs.append((JobKindName.REPORT_HORIZON, workflow.id))
    changes.jobs += step_jobs(workflow.id, step.id, step.expiry_time, last, at, horizon)
    changes.events.append(Event(at=at, kind="step_started", message_id=step.id, source="engine"))


def _finish(
    workflow: WorkflowRecord, state: WorkflowState, at: float, reason: str, changes: Changes
) -> None:
    changes.workflow_state = state
    changes.finished_at = at
    changes.final_report = True
    for index, step in enumerate(workflow.messages):
        if _state(step, changes) == StepState.WAITING:
            changes.message(step.id).state = StepState.CANCELLED
        if has_window_job(workflow, index):
            _cancel(changes, JobKindName.STEP_TIMEOUT, step.id)
    _cancel(changes, JobKindName.REPORT_HORIZON, workflow.id)
    changes.events.append(Event(at=at, kind=state.value, reason=reason, source="engine"))


def _state(step: MessageRecord, changes: Changes) -> StepState:
    change = changes.messages.get(step.id)
    return change.state if change is not None and change.state is not None else step.state


def _advance(
    workflow: WorkflowRecord, index: int, at: float, what: str, changes: Changes, horizon: float
) -> None:
    """Move past step ``index`` after it failed or expired (``what`` happened to it, e.g.
    "rejected: 1300 ..."): start the next, or end in error. A workflow of one step (a plain
    message) has nothing to fail over from or to: it ends in error with ``what`` as its
    reason, and its timeline holds no failover."""
    step = workflow.messages[index]
    if len(workflow.messages) == 1:
        _finish(workflow, WorkflowState.ERROR, at, what, changes)
        return
    reason = f"step {index + 1} {what}"
    changes.events.append(Event(at=at, kind="failover", message_id=step.id, reason=reason))
    if index + 1 < len(workflow.messages):
        start_step(workflow, index + 1, at, changes, horizon=horizon)
    else:
        _finish(workflow, WorkflowState.ERROR, at, reason, changes)


def _find(workflow: WorkflowRecord, message_id: str) -> int | None:
    for index, step in enumerate(workflow.messages):
        if step.id == message_id:
            return index
    return None


def _observe(workflow: WorkflowRecord, seen: Observed, horizon: float) -> Changes:
    changes = Changes()
    index = _find(workflow, seen.message_id)
    if index is None:
        return changes
    step = workflow.messages[index]
    current = Status(step.status) if step.status is not None else None
    new = merged_status(current, seen.status)
    if new is None:
        # duplicate or stale: nothing changes twice; but a send result that comes after a
        # receipt or after the window closed still records the provider's id and price, so the
        # message's later receipts can be correlated (docs/design.md §1.8)
        if seen.provider_message_id is not None and step.provider_message_id is None:
            changes.message(step.id).provider = seen.provider
            changes.message(step.id).provider_message_id = seen.provider_message_id
        if seen.price is not None and step.price is None:
            changes.message(step.id).price = seen.price
            changes.message(step.id).currency = seen.currency
            changes.message(step.id).segments = seen.segments
        return changes
    change = changes.message(step.id)
    change.status = new
    if new.is_failure:
        change.error_code = seen.code
        change.error_reason = seen.reason
    if seen.provider_message_id is not None:
        change.provider = seen.provider
        change.provider_message_id = seen.provider_message_id
    if seen.price is not None:
        change.price = seen.price
        change.currency = seen.currency
    if seen.segments is not None:
        change.segments = seen.segments
    changes.events.append(
        Event(
            at=seen.at,
            kind="status",
            message_id=step.id,
            status=new.value,
            code=seen.code if new.is_failure else None,
            reason=seen.reason if new.is_failure else None,
            source=seen.source,
        )
    )
    changes.status_reports.append(step.id)

    last = index == len(workflow.messages) - 1
    if reaches(new, success_condition(step, last)):
        if step.state in (StepState.ACTIVE, StepState.EXPIRED, StepState.FAILED):
            change.state = StepState.SUCCEEDED
        if has_window_job(workflow, index):
            _cancel(changes, JobKindName.STEP_TIMEOUT, step.id)
        if workflow.state == WorkflowState.RUNNING:
            late = "" if step.state == StepState.ACTIVE else " (late, after failover)"
            # one step (a plain message): there is no other step to tell it from
            which = f"step {index + 1} " if len(workflow.messages) > 1 else ""
            _finish(
                workflow,
                WorkflowState.COMPLETED,
                seen.at,
                f"{which}reached {new.value}{late}",
                changes,
            )
        return changes
    if new.is_failure and step.state == StepState.ACTIVE:
        change.state = StepState.FAILED
        if has_window_job(workflow, index):
            _cancel(changes, JobKindName.STEP_TIMEOUT, step.id)
        if workflow.state == WorkflowState.RUNNING:
            detail = f"{seen.code} {seen.reason}" if seen.code is not None else new.value
            _advance(workflow, index, seen.at, f"{new.value}: {detail}", changes, horizon)
    return changes


def _window_closed(workflow: WorkflowRecord, closed: WindowClosed, horizon: float) -> Changes:
    changes = Changes()
    index = _find(workflow, closed.message_id)
    if index is None or workflow.state != WorkflowState.RUNNING:
        return changes
    step = workflow.messages[index]
    if (
        step.state != StepState.ACTIVE
        or index == len(workflow.messages) - 1
        or step.expiry_time is None
    ):
        # a stale timer: the step already ended, or it has no window (the last step, and
        # every step of a v1 request: docs/design.md §1.11)
        return changes
    change = changes.message(step.id)
    change.state = StepState.EXPIRED
    if step.status is None:
        # the message never reached the provider: its send is abandoned with the window
        # without a transient error to blame, the send may even have reached the provider
        # (a worker died mid-send), so the honest code is "unknown"
        code, reason = closed.last_error or (1330, "Unknown: no answer before the window closed")
        change.status = Status.UNDELIVERABLE
        change.error_code = code
        change.error_reason = reason
        changes.cancel_jobs.append((JobKindName.SEND, step.id))
        changes.events.append(
            Event(
                at=closed.at,
                kind="status",
                message_id=step.id,
                status=Status.UNDELIVERABLE.value,
                code=code,
                reason=reason,
                source="engine",
            )
        )
        changes.status_reports.append(step.id)
    condition = success_condition(step, False)
    _advance(
        workflow,
        index,
        closed.at,
        f"did not reach {condition} within {step.expiry_time} s",
        changes,
        horizon,
    )
    return changes


def _horizon(workflow: WorkflowRecord, reached: HorizonReached) -> Changes:
    changes = Changes()
    if workflow.state == WorkflowState.RUNNING:
        _finish(
            workflow,
            WorkflowState.ERROR,
            reached.at,
            "the report horizon passed without a final status",
            changes,
        )
    return changes


def apply(workflow: WorkflowRecord, happening: Happening, *, horizon: float) -> Changes:
    """What ``happening`` changes in ``workflow``; ``horizon`` is the seconds after the last
    step starts at which the final report goes regardless."""
    if isinstance(happening, Observed):
        return _observe(workflow, happening, horizon)
    if isinstance(happening, WindowClosed):
        return _window_closed(workflow, happening, horizon)
    return _horizon(workflow, happening)
