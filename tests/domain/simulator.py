"""A tiny pure simulator of a stored workflow under the failover rules.

It holds a :class:`WorkflowRecord` and its pending jobs, applies :class:`Changes` the way the
store does (message fields, workflow state, ``finished_at``, events; jobs added and cancelled)
and counts what the customer is told: status reports and final reports. Jobs are consumed when
they run, as the engine deletes a job it has claimed. No I/O, no clock: the tests move time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cascade.domain.failover import (
    Changes,
    Happening,
    HorizonReached,
    Observed,
    WindowClosed,
    apply,
    step_jobs,
)
from cascade.domain.records import (
    Event,
    JobKindName,
    MessageRecord,
    StepState,
    Surface,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status

T0 = 1_800_000_000.0
HORIZON = 72 * 3600.0

JobKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow to simulate: its channel and its failover (None on the last)."""

    channel: str
    expiry_time: int | None = None
    condition_status: str | None = None


def workflow_record(steps: tuple[Step, ...], at: float = T0) -> WorkflowRecord:
    """A workflow as the accept path stores it: step 1 active, the others waiting."""
    messages = tuple(
        MessageRecord(
            id=f"m{index}",
            workflow_id="w",
            step=index,
            account_id="a",
            channel=step.channel,
            to=b"{}",
            from_=b"{}",
            body=b"{}",
            client_ref=None,
            expiry_time=step.expiry_time,
            condition_status=step.condition_status,
            state=StepState.ACTIVE if index == 0 else StepState.WAITING,
            status=None,
            error_code=None,
            error_reason=None,
            provider=None,
            provider_message_id=None,
            price=None,
            currency=None,
            started_at=at if index == 0 else None,
            created_at=at,
            updated_at=at,
        )
        for index, step in enumerate(steps)
    )
    return WorkflowRecord(
        id="w",
        account_id="a",
        application_id=None,
        surface=Surface.DISPATCH,
        state=WorkflowState.RUNNING,
        created_at=at,
        updated_at=at,
        finished_at=None,
        messages=messages,
    )


@dataclass
class Simulator:
    """A workflow, its pending jobs and the reports sent, moved by :meth:`apply`."""

    steps: tuple[Step, ...]
    horizon: float = HORIZON
    now: float = T0
    workflow: WorkflowRecord = field(init=False)
    #: pending jobs: (kind, ref) -> run_at
    jobs: dict[JobKey, float] = field(init=False)
    #: status reports sent, in order: (message id, status reported)
    status_reports: list[tuple[str, str]] = field(default_factory=list)
    final_reports: int = 0
    #: every Observed applied so far, for replaying duplicates
    observed: list[Observed] = field(default_factory=list)
    #: the happening applied last
    last: Happening | None = None

    def __post_init__(self) -> None:
        self.workflow = workflow_record(self.steps, self.now)
        first = self.steps[0]
        opening = step_jobs(
            "w", "m0", first.expiry_time, len(self.steps) == 1, self.now, self.horizon
        )
        self.jobs = {(job.kind, job.ref): job.run_at for job in opening}

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> WorkflowState:
        """The workflow's state."""
        return self.workflow.state

    def message(self, index: int) -> MessageRecord:
        """Step ``index``'s message as stored."""
        return self.workflow.messages[index]

    def states(self) -> list[StepState]:
        """Every step's state, in order."""
        return [m.state for m in self.workflow.messages]

    def statuses(self) -> list[str | None]:
        """Every step's message status, in order."""
        return [m.status for m in self.workflow.messages]

    def pending(self, kind: str) -> set[str]:
        """The refs of the pending jobs of one kind."""
        return {ref for (k, ref) in self.jobs if k == kind}

    # -- moving --------------------------------------------------------------------------------

    def apply(self, happening: Happening) -> Changes:
        """Apply the rules to one happening and store what they change."""
        assert happening.at >= self.now, "the simulated clock never goes back"
        self.now = happening.at
        self.last = happening
        if isinstance(happening, Observed):
            self.observed.append(happening)
        changes = apply(self.workflow, happening, horizon=self.horizon)
        self.store(changes)
        return changes

    def store(self, changes: Changes) -> None:
        """Write ``changes`` as the store would, in one step."""
        messages = []
        for record in self.workflow.messages:
            change = changes.messages.get(record.id)
            if change is not None:
                values = change.values()
                if "status" in values:
                    values["status"] = Status(values["status"]).value
                record = replace(record, **values, updated_at=self.now)
            messages.append(record)
        workflow = replace(
            self.workflow,
            messages=tuple(messages),
            events=self.workflow.events + tuple(changes.events),
        )
        if changes.workflow_state is not None:
            workflow = replace(workflow, state=changes.workflow_state, updated_at=self.now)
        if changes.finished_at is not None:
            workflow = replace(workflow, finished_at=changes.finished_at)
        self.workflow = workflow
        for key in changes.cancel_jobs:
            self.jobs.pop(key, None)
        for job in changes.jobs:
            key = (job.kind, job.ref)
            assert key not in self.jobs, f"job {key} scheduled twice"
            self.jobs[key] = job.run_at
        by_id = {m.id: m for m in self.workflow.messages}
        for message_id in changes.status_reports:
            status = by_id[message_id].status
            assert status is not None
            self.status_reports.append((message_id, status))
        self.final_reports += changes.final_report

    # -- the engine's side: jobs run, sends return, receipts arrive ----------------------------

    def receipt(self, index: int, status: Status, at: float | None = None) -> Changes:
        """A provider receipt for step ``index``'s message."""
        failed = status.is_failure
        return self.apply(
            Observed(
                message_id=f"m{index}",
                status=status,
                at=self.now if at is None else at,
                source="provider",
                code=1300 if failed else None,
                reason="Not part of the provider network" if failed else None,
            )
        )

    def send(
        self, index: int, status: Status = Status.SUBMITTED, at: float | None = None
    ) -> Changes:
        """Step ``index``'s send job runs: accepted (``submitted``) or a permanent send error."""
        message_id = f"m{index}"
        self.jobs.pop((JobKindName.SEND, message_id), None)
        failed = status.is_failure
        return self.apply(
            Observed(
                message_id=message_id,
                status=status,
                at=self.now if at is None else at,
                source="engine",
                code=1050 if failed else None,
                reason="Number barred" if failed else None,
                provider=None if failed else "sandbox",
                provider_message_id=None if failed else f"p{index}",
            )
        )

    def close_window(
        self, index: int, delay: float = 0.0, last_error: tuple[int, str] | None = None
    ) -> Changes:
        """Step ``index``'s timer job runs, ``delay`` seconds after it fell due (or now, when
        it is not pending: a stale timer)."""
        message_id = f"m{index}"
        due = self.jobs.pop((JobKindName.STEP_TIMEOUT, message_id), self.now)
        return self.apply(WindowClosed(message_id, max(self.now, due) + delay, last_error))

    def reach_horizon(self, delay: float = 0.0) -> Changes:
        """The report horizon job runs (or a stale one, now, when it is not pending)."""
        due = self.jobs.pop((JobKindName.REPORT_HORIZON, "w"), self.now)
        return self.apply(HorizonReached(max(self.now, due) + delay))

    def run_next_timer(self) -> Changes | None:
        """Run the pending timer or horizon job that falls due first; None when there is none."""
        timers = sorted(
            (run_at, kind, ref)
            for (kind, ref), run_at in self.jobs.items()
            if kind in (JobKindName.STEP_TIMEOUT, JobKindName.REPORT_HORIZON)
        )
        if not timers:
            return None
        _, kind, ref = timers[0]
        if kind == JobKindName.STEP_TIMEOUT:
            return self.close_window(int(ref[1:]))
        return self.reach_horizon()

    def drain(self) -> None:
        """Run the pending timers and the horizon in due order until none is left."""
        while self.run_next_timer() is not None:
            pass


def kinds(events: list[Event]) -> list[str]:
    """The kinds of a list of events, in order."""
    return [event.kind for event in events]
