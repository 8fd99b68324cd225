"""Property tests of the failover rules: random workflows under random sequences of receipts,
send results, window closings and the report horizon, checked against docs/design.md §1 after
every single happening and once every timer has run.

Readings of docs/design.md §1 these properties fix (each argued in a unit test's docstring): a
success after a failure is accepted (test_merged_status); "completed iff some step reached its
condition" is judged when the workflow leaves ``running``, since its one final report cannot be
taken back (test_late_success_after_error_is_recorded_but_the_outcome_stands); a step that
already started is never un-started by a late success
(test_late_success_completes_and_cancels_waiting_steps).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.domain.failover import (
    Changes,
    Happening,
    HorizonReached,
    Observed,
    WindowClosed,
    success_condition,
)
from cascade.domain.records import (
    JobKindName,
    MessageRecord,
    StepState,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status, reaches
from tests.domain.simulator import Simulator, Step

CHANNELS = ("sms", "messenger", "whatsapp", "viber_service_msg")
STATUSES = tuple(Status)
PROPERTIES = settings(max_examples=300, deadline=None)

#: the step state moves the rules may make, and no other
STEP_MOVES = {
    (StepState.WAITING, StepState.ACTIVE),  # failover to it
    (StepState.WAITING, StepState.CANCELLED),  # an earlier step succeeded first
    (StepState.ACTIVE, StepState.EXPIRED),
    (StepState.ACTIVE, StepState.FAILED),
    (StepState.ACTIVE, StepState.SUCCEEDED),
    (StepState.EXPIRED, StepState.SUCCEEDED),  # late success
    (StepState.FAILED, StepState.SUCCEEDED),  # success after a failure
}
RANK = {Status.SUBMITTED: 1, Status.DELIVERED: 2, Status.READ: 3}
STARTED = {StepState.ACTIVE, StepState.EXPIRED, StepState.FAILED, StepState.SUCCEEDED}


def allowed_status_move(before: str | None, after: str) -> bool:
    """Whether a message's status may go from ``before`` to ``after`` (docs/design.md §1.8; a
    success after a failure is the truth: see test_failover.test_merged_status)."""
    new = Status(after)
    if before is None:
        return True
    old = Status(before)
    if old.is_failure:
        return new in (Status.DELIVERED, Status.READ)
    if new.is_failure:
        return old == Status.SUBMITTED
    return RANK[new] > RANK[old]


# -- generators ----------------------------------------------------------------------------------


@st.composite
def workflows(draw: st.DrawFn) -> tuple[Step, ...]:
    """1-4 steps on any channel; every step but the last has an expiry and a condition (never
    ``read`` on SMS, which the API refuses)."""
    count = draw(st.integers(1, 4))
    steps = []
    for index in range(count):
        channel = draw(st.sampled_from(CHANNELS))
        if index == count - 1:
            steps.append(Step(channel))
            continue
        conditions = ["delivered"] if channel == "sms" else ["delivered", "read"]
        steps.append(
            Step(
                channel,
                draw(st.sampled_from([15, 60, 600, 3600, 86400]) | st.integers(15, 86400)),
                draw(st.sampled_from(conditions)),
            )
        )
    return tuple(steps)


@st.composite
def windowless_workflows(draw: st.DrawFn) -> tuple[Step, ...]:
    """1-4 steps on any channel, none with a window: a Messages v1 message and its failover
    messages (docs/design.md §1.11)."""
    return tuple(Step(draw(st.sampled_from(CHANNELS))) for _ in range(draw(st.integers(1, 4))))


@dataclass(frozen=True)
class Action:
    """One thing to happen, chosen against whatever the simulator holds at that point."""

    kind: str  # receipt | duplicate | send | window | stale_window | horizon | stale_horizon
    pick: int  # which step (or earlier receipt), modulo the candidates
    status: Status
    delay: int  # seconds after now (or after the job fell due)


actions = st.lists(
    st.builds(
        Action,
        st.sampled_from(
            ["receipt"] * 4
            + ["duplicate", "send", "send", "window", "window", "stale_window", "stale_window"]
            + ["horizon", "stale_horizon"]
        ),
        st.integers(0, 7),
        st.sampled_from(STATUSES),
        st.sampled_from([0, 0, 1, 30, 900]),
    ),
    max_size=40,
)


def started(sim: Simulator) -> list[int]:
    """The indices of the steps that have started."""
    return [i for i, state in enumerate(sim.states()) if state in STARTED]


def run(sim: Simulator, action: Action) -> tuple[Happening, WorkflowRecord, Changes] | None:
    """Turn one action into a happening, apply it and return (happening, before, changes);
    None when the action has nothing to act on."""
    before = sim.workflow
    kind, status = action.kind, action.status
    if kind == "receipt":
        steps = started(sim)
        index = steps[action.pick % len(steps)]
        if status == Status.READ and sim.message(index).channel == "sms":
            status = Status.DELIVERED  # SMS has no read receipts
        changes = sim.receipt(index, status, at=sim.now + action.delay)
    elif kind == "duplicate":
        if not sim.observed:
            return None
        seen = sim.observed[action.pick % len(sim.observed)]
        changes = sim.apply(replace(seen, at=sim.now + action.delay))
        assert changes.empty, "a receipt seen before changes nothing"
    elif kind == "send":
        sending = sorted(sim.pending(JobKindName.SEND))
        if not sending:
            return None
        index = int(sending[action.pick % len(sending)][1:])
        if not status.is_failure:
            status = Status.SUBMITTED
        changes = sim.send(index, status, at=sim.now + action.delay)
    elif kind == "window":
        timers = sorted(sim.pending(JobKindName.STEP_TIMEOUT))
        if not timers:
            return None
        message_id = timers[action.pick % len(timers)]
        last_error = (1000, "Throttled") if action.pick % 2 else None
        due = sim.jobs[(JobKindName.STEP_TIMEOUT, message_id)]
        changes = sim.close_window(int(message_id[1:]), action.delay, last_error)
        assert sim.now >= due
    elif kind == "stale_window":
        timers = sim.pending(JobKindName.STEP_TIMEOUT)
        stale = [i for i in started(sim) if f"m{i}" not in timers]
        if not stale:
            return None
        changes = sim.close_window(stale[action.pick % len(stale)], action.delay)
        assert changes.empty, "a timer that is no longer pending changes nothing"
    elif kind == "horizon":
        if not sim.pending(JobKindName.REPORT_HORIZON):
            return None
        changes = sim.reach_horizon(action.delay)
    else:  # stale_horizon: the horizon job ran although the workflow had finished
        if sim.state == WorkflowState.RUNNING:
            return None
        changes = sim.reach_horizon(action.delay)
        assert changes.empty, "the horizon of a finished workflow changes nothing"
    assert sim.last is not None
    return sim.last, before, changes


# -- invariants ----------------------------------------------------------------------------------


def succeeded(record: MessageRecord, last: bool) -> bool:
    """Whether a message's status meets its step's success condition."""
    status = Status(record.status) if record.status is not None else None
    return reaches(status, success_condition(record, last))


def check_move(
    sim: Simulator, happening: Happening, before: WorkflowRecord, changes: Changes
) -> None:
    """Everything one happening may and must change."""
    after = sim.workflow
    count = len(after.messages)
    was_running = before.state == WorkflowState.RUNNING
    is_running = after.state == WorkflowState.RUNNING

    # a finished workflow stays as it finished
    if not was_running:
        assert after.state == before.state
        assert after.finished_at == before.finished_at
    # the final report goes exactly when the workflow leaves running
    assert changes.final_report == (was_running and not is_running)
    if changes.final_report:
        assert after.finished_at == happening.at

    # a job is never both scheduled and cancelled by one change, save the report horizon of a
    # step without a window, which the next step's replaces (docs/design.md §1.11)
    replaced = {(j.kind, j.ref) for j in changes.jobs} & set(changes.cancel_jobs)
    if replaced:
        assert replaced == {(JobKindName.REPORT_HORIZON, "w")}
        assert any(
            old.state == StepState.WAITING
            and new.state == StepState.ACTIVE
            and before.messages[index - 1].expiry_time is None
            for index, (old, new) in enumerate(zip(before.messages, after.messages, strict=True))
        )

    for index, (old, new) in enumerate(zip(before.messages, after.messages, strict=True)):
        last = index == count - 1
        if old.state != new.state:
            assert (old.state, new.state) in STEP_MOVES, (old.state, new.state)
        if old.state == StepState.WAITING and new.state == StepState.ACTIVE:
            # a step starts only as failover from its predecessor, while running
            assert index > 0
            assert was_running
            assert is_running
            assert before.messages[index - 1].state == StepState.ACTIVE
            assert after.messages[index - 1].state in (StepState.FAILED, StepState.EXPIRED)
            if before.messages[index - 1].expiry_time is None:
                # without a window, only a failure fails over (docs/design.md §1.11)
                assert after.messages[index - 1].state == StepState.FAILED
            assert new.started_at == happening.at
        if new.state == StepState.CANCELLED and old.state != StepState.CANCELLED:
            assert was_running
            # an earlier step succeeded, or the horizon passed while a step without a window
            # still waited for news (docs/design.md §1.11)
            assert after.state == WorkflowState.COMPLETED or (
                isinstance(happening, HorizonReached)
                and any(
                    m.state == StepState.ACTIVE and m.expiry_time is None
                    for m in before.messages[:-1]
                )
            )
        # statuses: monotonic, and each change reported exactly once
        reports = changes.status_reports.count(new.id)
        if old.status != new.status:
            assert new.status is not None
            assert allowed_status_move(old.status, new.status), (old.status, new.status)
            assert reports == 1
        else:
            assert reports == 0
        # a step that reaches its condition is marked succeeded (when it had started)
        if succeeded(new, last) and not succeeded(old, last):
            assert new.state == StepState.SUCCEEDED
            if was_running:
                assert after.state == WorkflowState.COMPLETED

    # how a workflow finishes
    if was_running and after.state == WorkflowState.COMPLETED:
        assert any(succeeded(m, i == count - 1) for i, m in enumerate(after.messages))
    if was_running and after.state == WorkflowState.ERROR:
        assert not any(succeeded(m, i == count - 1) for i, m in enumerate(after.messages))
        last_failed = (
            isinstance(happening, Observed)
            and happening.message_id == after.messages[-1].id
            and after.messages[-1].state == StepState.FAILED
        )
        assert last_failed or isinstance(happening, HorizonReached)
    if isinstance(happening, WindowClosed):
        assert after.state != WorkflowState.ERROR or not was_running

    # a duplicate status is nothing, save a provider id or price not stored before
    if isinstance(happening, Observed):
        record = before.messages[int(happening.message_id[1:])]
        if record.status == happening.status.value:
            new_facts = (
                happening.provider_message_id is not None and record.provider_message_id is None
            ) or (happening.price is not None and record.price is None)
            if not new_facts:
                assert changes.empty
            assert not changes.events
            assert not changes.jobs
            assert not changes.cancel_jobs
            assert not changes.status_reports
            assert all(c.status is None and c.state is None for c in changes.messages.values())


def check_state(sim: Simulator) -> None:
    """What holds between any two happenings."""
    workflow = sim.workflow
    count = len(workflow.messages)
    states = sim.states()
    timers = sim.pending(JobKindName.STEP_TIMEOUT)
    horizon = sim.pending(JobKindName.REPORT_HORIZON)
    # no job for a step that never started
    for kind, ref in sim.jobs:
        if kind != JobKindName.REPORT_HORIZON:
            assert states[int(ref[1:])] in STARTED, (kind, ref)
    if workflow.state == WorkflowState.RUNNING:
        assert workflow.finished_at is None
        assert sim.final_reports == 0
        # the steps so far failed over one by one; exactly one is active, the rest wait
        active = states.index(StepState.ACTIVE)
        assert all(s in (StepState.FAILED, StepState.EXPIRED) for s in states[:active])
        assert all(s == StepState.WAITING for s in states[active + 1 :])
        assert not any(succeeded(m, i == count - 1) for i, m in enumerate(workflow.messages))
        # the active step's window, or the horizon of the last step or of a step without a
        # window (docs/design.md §1.11), is pending; nothing else
        record = workflow.messages[active]
        if active < count - 1 and record.expiry_time is not None:
            assert timers == {record.id}
            assert not horizon
            assert record.started_at is not None
            assert record.expiry_time is not None
            assert (
                sim.jobs[(JobKindName.STEP_TIMEOUT, record.id)]
                == record.started_at + record.expiry_time
            )
        else:
            assert not timers
            assert horizon == {"w"}
            started_at = record.started_at
            assert started_at is not None
            assert sim.jobs[(JobKindName.REPORT_HORIZON, "w")] == started_at + sim.horizon
    else:
        assert sim.final_reports == 1
        assert workflow.finished_at is not None
        assert not timers
        assert not horizon
        assert StepState.WAITING not in states
        if workflow.state == WorkflowState.ERROR and StepState.CANCELLED in states:
            # only the horizon ends a workflow in error before its last step started, and only
            # while a step without a window waited (docs/design.md §1.11)
            assert workflow.messages[states.index(StepState.CANCELLED) - 1].expiry_time is None
    # the provider's message id from a send result is kept, whatever order the receipts came in
    for seen in sim.observed:
        if seen.provider_message_id is not None:
            record = workflow.messages[int(seen.message_id[1:])]
            assert record.provider_message_id == seen.provider_message_id
    # every report names the status the message had then; every status change was reported
    reported = {message_id: status for message_id, status in sim.status_reports}
    for record in workflow.messages:
        assert reported.get(record.id) == record.status


def play(steps: tuple[Step, ...], script: list[Action]) -> Simulator:
    """Run a script against a fresh workflow, checking every move and state."""
    sim = Simulator(steps)
    check_state(sim)
    for action in script:
        moved = run(sim, action)
        if moved is not None:
            check_move(sim, *moved)
        check_state(sim)
    return sim


# -- properties ----------------------------------------------------------------------------------


@PROPERTIES
@given(workflows(), actions)
def test_every_move_keeps_the_rules(steps: tuple[Step, ...], script: list[Action]) -> None:
    """Any order of receipts, send results, timers and horizon keeps every docs/design.md §1 rule.

    Checked after each happening: step order, monotonic statuses, one report per status
    change, pending jobs, one final report, and how the workflow finishes.
    """
    play(steps, script)


@PROPERTIES
@given(workflows(), actions)
def test_every_workflow_finishes_once(steps: tuple[Step, ...], script: list[Action]) -> None:
    """Once every timer and the horizon have run, the workflow has finished, reported once."""
    sim = play(steps, script)
    while True:
        before = sim.workflow
        changes = sim.run_next_timer()
        if changes is None:
            break
        assert sim.last is not None
        check_move(sim, sim.last, before, changes)
        check_state(sim)
    assert sim.state != WorkflowState.RUNNING
    assert sim.final_reports == 1


@PROPERTIES
@given(workflows(), actions, st.sampled_from(STATUSES), st.integers(0, 7))
def test_a_receipt_twice_changes_nothing_the_second_time(
    steps: tuple[Step, ...], script: list[Action], status: Status, pick: int
) -> None:
    """Whatever happened before, the same receipt twice changes nothing the second time."""
    sim = play(steps, script)
    candidates = started(sim)
    index = candidates[pick % len(candidates)]
    if status == Status.READ and sim.message(index).channel == "sms":
        status = Status.DELIVERED
    sim.receipt(index, status)
    assert sim.receipt(index, status).empty


@PROPERTIES
@given(windowless_workflows(), actions)
def test_without_windows_every_move_keeps_the_rules(
    steps: tuple[Step, ...], script: list[Action]
) -> None:
    """Messages v1 failover (docs/design.md §1.11) under any order of receipts, send results
    and horizons keeps every rule; no step ever expires or has a timer, and a step starts
    only after the one before failed."""
    sim = play(steps, script)
    assert StepState.EXPIRED not in sim.states()
    assert not sim.pending(JobKindName.STEP_TIMEOUT)


@PROPERTIES
@given(windowless_workflows(), actions)
def test_without_windows_every_workflow_finishes_once(
    steps: tuple[Step, ...], script: list[Action]
) -> None:
    """Without windows, the horizon still ends every workflow, with one final decision."""
    sim = play(steps, script)
    while True:
        before = sim.workflow
        changes = sim.run_next_timer()
        if changes is None:
            break
        assert sim.last is not None
        check_move(sim, sim.last, before, changes)
        check_state(sim)
    assert sim.state != WorkflowState.RUNNING
    assert sim.final_reports == 1
