"""Unit tests of the failover rules (docs/design.md §1) on the pure state machine."""

from __future__ import annotations

import pytest

from cascade.domain.failover import (
    Changes,
    HorizonReached,
    Observed,
    WindowClosed,
    apply,
    merged_status,
    start_step,
    step_jobs,
    success_condition,
)
from cascade.domain.records import JobKindName, NewJob, StepState, WorkflowState
from cascade.domain.status import Status, reaches
from tests.domain.simulator import HORIZON, T0, Simulator, Step, kinds, workflow_record

S, D, R = Status.SUBMITTED, Status.DELIVERED, Status.READ
REJ, UND = Status.REJECTED, Status.UNDELIVERABLE

MESSENGER_READ = Step("messenger", 600, "read")
VIBER_DELIVERED = Step("viber_service_msg", 300, "delivered")
WHATSAPP_READ = Step("whatsapp", 900, "read")
SMS = Step("sms")


# -- the status ladder ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "seen", "expected"),
    [
        # the first status is taken as it comes, whatever it is
        (None, S, S),
        (None, D, D),
        (None, R, R),
        (None, REJ, REJ),
        (None, UND, UND),
        # up the ladder
        (S, D, D),
        (S, R, R),  # read without delivered
        (D, R, R),
        # never down it, and never the same twice
        (S, S, None),
        (D, D, None),
        (R, R, None),
        (D, S, None),
        (R, S, None),
        (R, D, None),
        # a failure replaces submitted only
        (S, REJ, REJ),
        (S, UND, UND),
        (D, REJ, None),
        (D, UND, None),
        (R, REJ, None),
        (R, UND, None),
        (REJ, REJ, None),
        (REJ, UND, None),
        (UND, REJ, None),
        (UND, UND, None),
        # a success after a failure is the truth (see the test's docstring)
        (REJ, S, None),
        (UND, S, None),
        (REJ, D, D),
        (UND, D, D),
        (REJ, R, R),
        (UND, R, R),
    ],
)
def test_merged_status(current: Status | None, seen: Status, expected: Status | None) -> None:
    """Statuses only move up; a failure replaces only submitted; a success after one counts.

    Why accept a success after a failure: the device is the authority on delivery. Multi-device
    channels (Messenger, WhatsApp on a second device) and SMSCs that retry after reporting a
    temporary failure as final do report ``delivered`` after ``rejected``; the message did reach
    the recipient, and a customer reading the Nexmo docs expects the status webhook to tell the
    truth. ``submitted`` after a failure adds nothing and stays ignored.
    """
    assert merged_status(current, seen) == expected


@pytest.mark.parametrize(
    ("status", "condition", "expected"),
    [
        (None, "delivered", False),
        (S, "delivered", False),
        (D, "delivered", True),
        (R, "delivered", True),
        (S, "read", False),
        (D, "read", False),
        (R, "read", True),
        (REJ, "delivered", False),
        (UND, "read", False),
    ],
)
def test_reaches(status: Status | None, condition: str, expected: bool) -> None:
    """``read`` satisfies ``delivered``; failures and ``submitted`` satisfy nothing."""
    assert reaches(status, condition) is expected


def test_success_condition_of_the_last_step_is_delivered() -> None:
    """A middle step succeeds on its condition_status; the last step on delivered."""
    record = workflow_record((MESSENGER_READ, VIBER_DELIVERED, SMS))
    first, middle, last = record.messages
    assert success_condition(first, last=False) == "read"
    assert success_condition(middle, last=False) == "delivered"
    assert success_condition(last, last=True) == "delivered"
    # even a last step stored with a condition succeeds on delivered
    assert success_condition(first, last=True) == "delivered"


# -- the jobs that start a step ------------------------------------------------------------------


def test_step_jobs_of_a_middle_step_are_send_and_timer() -> None:
    """A non-last step is sent now and its window closes expiry_time seconds after it starts."""
    assert step_jobs("w", "m", 600, last=False, at=T0, horizon=HORIZON) == [
        NewJob(JobKindName.SEND, "m", T0),
        NewJob(JobKindName.STEP_TIMEOUT, "m", T0 + 600),
    ]


def test_step_jobs_of_the_last_step_are_send_and_horizon() -> None:
    """The last step has no window: it is sent now and the report horizon is set from now."""
    assert step_jobs("w", "m", None, last=True, at=T0, horizon=HORIZON) == [
        NewJob(JobKindName.SEND, "m", T0),
        NewJob(JobKindName.REPORT_HORIZON, "w", T0 + HORIZON),
    ]


def test_start_step_activates_it_and_schedules_its_jobs() -> None:
    """Starting a step marks it active at that instant, schedules its jobs and logs it."""
    record = workflow_record((MESSENGER_READ, VIBER_DELIVERED, SMS))
    changes = Changes()
    start_step(record, 1, T0 + 5, changes, horizon=HORIZON)
    change = changes.messages["m1"]
    assert (change.state, change.started_at) == (StepState.ACTIVE, T0 + 5)
    assert changes.jobs == [
        NewJob(JobKindName.SEND, "m1", T0 + 5),
        NewJob(JobKindName.STEP_TIMEOUT, "m1", T0 + 305),
    ]
    assert kinds(changes.events) == ["step_started"]
    assert changes.workflow_state is None
    assert not changes.final_report


# -- scenarios -----------------------------------------------------------------------------------


def test_messenger_times_out_and_sms_delivers() -> None:
    """Messenger -> SMS: step 1 times out, SMS starts then, its delivery completes the workflow."""
    sim = Simulator((MESSENGER_READ, SMS))
    assert sim.jobs == {(JobKindName.SEND, "m0"): T0, (JobKindName.STEP_TIMEOUT, "m0"): T0 + 600}
    sim.send(0, at=T0 + 1)
    sim.receipt(0, D, at=T0 + 2)  # delivered, but the condition is read
    assert sim.state == WorkflowState.RUNNING

    changes = sim.close_window(0)
    assert changes.messages["m0"].state == StepState.EXPIRED
    assert changes.messages["m0"].status is None  # the expired step keeps its message
    assert sim.message(1).state == StepState.ACTIVE
    assert sim.message(1).started_at == T0 + 600
    assert sim.jobs == {
        (JobKindName.SEND, "m1"): T0 + 600,
        (JobKindName.REPORT_HORIZON, "w"): T0 + 600 + HORIZON,
    }
    assert kinds(changes.events) == ["failover", "step_started"]
    assert not changes.final_report

    sim.send(1, at=T0 + 601)
    changes = sim.receipt(1, D, at=T0 + 610)
    assert sim.state == WorkflowState.COMPLETED
    assert sim.workflow.finished_at == T0 + 610
    assert sim.states() == [StepState.EXPIRED, StepState.SUCCEEDED]
    assert changes.final_report
    assert sim.final_reports == 1
    assert (JobKindName.REPORT_HORIZON, "w") in changes.cancel_jobs
    assert not sim.pending(JobKindName.STEP_TIMEOUT)
    assert not sim.pending(JobKindName.REPORT_HORIZON)
    assert sim.status_reports == [
        ("m0", "submitted"),
        ("m0", "delivered"),
        ("m1", "submitted"),
        ("m1", "delivered"),
    ]


@pytest.mark.parametrize("last", [False, True])
def test_read_satisfies_delivered(last: bool) -> None:
    """``read`` meets a ``delivered`` condition, on a middle step and on the last step."""
    sim = Simulator((VIBER_DELIVERED, WHATSAPP_READ, Step("messenger")))
    if last:
        sim.close_window(0)
        sim.close_window(1)
    index = 2 if last else 0
    sim.send(index)
    changes = sim.receipt(index, R)
    assert sim.state == WorkflowState.COMPLETED
    assert sim.message(index).state == StepState.SUCCEEDED
    assert changes.final_report


def test_read_reported_without_delivered() -> None:
    """``read`` right after ``submitted`` is reported once; a later ``delivered`` is nothing."""
    sim = Simulator((WHATSAPP_READ, SMS))
    sim.send(0)
    changes = sim.receipt(0, R)
    assert sim.message(0).status == "read"
    assert changes.status_reports == ["m0"]
    assert sim.state == WorkflowState.COMPLETED
    assert sim.receipt(0, D).empty
    assert sim.message(0).status == "read"


def test_read_without_delivered_on_a_delivered_condition() -> None:
    """``read`` with no ``delivered`` before it still meets a ``delivered`` condition."""
    sim = Simulator((VIBER_DELIVERED, SMS))
    sim.receipt(0, R)
    assert sim.state == WorkflowState.COMPLETED


def test_rejected_at_once_starts_the_next_step_at_the_same_instant() -> None:
    """A send error on step 1 starts step 2 at the same instant and drops step 1's timer."""
    sim = Simulator((MESSENGER_READ, SMS))
    changes = sim.send(0, REJ, at=T0 + 3)
    assert sim.message(0).state == StepState.FAILED
    assert sim.message(0).status == "rejected"
    assert (sim.message(0).error_code, sim.message(0).error_reason) == (1050, "Number barred")
    assert sim.message(1).state == StepState.ACTIVE
    assert sim.message(1).started_at == T0 + 3
    assert (JobKindName.STEP_TIMEOUT, "m0") in changes.cancel_jobs
    assert sim.jobs == {
        (JobKindName.SEND, "m1"): T0 + 3,
        (JobKindName.REPORT_HORIZON, "w"): T0 + 3 + HORIZON,
    }
    assert kinds(changes.events) == ["status", "failover", "step_started"]
    assert changes.status_reports == ["m0"]
    assert sim.state == WorkflowState.RUNNING
    assert not changes.final_report


@pytest.mark.parametrize("failure", [REJ, UND])
def test_provider_failure_after_submitted_starts_the_next_step(failure: Status) -> None:
    """A rejected/undeliverable receipt after submitted fails the step over at once."""
    sim = Simulator((VIBER_DELIVERED, WHATSAPP_READ, SMS))
    sim.send(0, at=T0 + 1)
    sim.receipt(0, failure, at=T0 + 20)
    assert sim.states() == [StepState.FAILED, StepState.ACTIVE, StepState.WAITING]
    assert sim.message(1).started_at == T0 + 20
    assert sim.pending(JobKindName.STEP_TIMEOUT) == {"m1"}


def test_last_step_rejected_ends_in_error_with_one_report() -> None:
    """The last step's failure ends the workflow in error with exactly one final report."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.close_window(0)
    sim.send(1)
    changes = sim.receipt(1, REJ, at=sim.now + 30)
    assert sim.state == WorkflowState.ERROR
    assert sim.workflow.finished_at == sim.now
    assert sim.message(1).state == StepState.FAILED
    assert changes.final_report
    assert sim.final_reports == 1
    assert kinds(changes.events) == ["status", "failover", "error"]
    assert not sim.pending(JobKindName.STEP_TIMEOUT)
    assert not sim.pending(JobKindName.REPORT_HORIZON)
    # a second failure, and the horizon job if it had already been claimed, change nothing
    assert sim.receipt(1, UND).empty
    assert sim.reach_horizon().empty
    assert sim.final_reports == 1


def test_single_message_rejected_ends_in_error() -> None:
    """A one-step workflow (POST /v0.1/messages) ends in error when its send is rejected."""
    sim = Simulator((SMS,))
    assert sim.jobs == {
        (JobKindName.SEND, "m0"): T0,
        (JobKindName.REPORT_HORIZON, "w"): T0 + HORIZON,
    }
    sim.send(0, REJ)
    assert sim.state == WorkflowState.ERROR
    assert sim.final_reports == 1


def test_window_closed_without_a_status_records_undeliverable() -> None:
    """A window closing before any status: undeliverable with last_error, send cancelled."""
    sim = Simulator((MESSENGER_READ, SMS))
    changes = sim.close_window(0, last_error=(1000, "Throttled"))
    record = sim.message(0)
    assert (record.state, record.status) == (StepState.EXPIRED, "undeliverable")
    assert (record.error_code, record.error_reason) == (1000, "Throttled")
    assert (JobKindName.SEND, "m0") in changes.cancel_jobs
    assert (JobKindName.SEND, "m0") not in sim.jobs
    assert changes.status_reports == ["m0"]
    assert kinds(changes.events) == ["status", "failover", "step_started"]
    assert changes.events[0].source == "engine"
    assert sim.message(1).state == StepState.ACTIVE


def test_window_closed_without_a_status_or_error_uses_a_generic_error() -> None:
    """With no transient error recorded, the undeliverable status carries a generic error."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.close_window(0)
    assert sim.message(0).status == "undeliverable"
    assert sim.message(0).error_code is not None
    assert sim.message(0).error_reason


def test_window_closed_after_submitted_keeps_the_status() -> None:
    """A window closing after submitted expires the step without inventing a status."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.send(0)
    changes = sim.close_window(0, last_error=(1000, "Throttled"))
    assert sim.message(0).status == "submitted"
    assert sim.message(0).error_code is None
    assert not changes.status_reports
    assert (JobKindName.SEND, "m0") not in changes.cancel_jobs


def test_stale_window_after_completion_changes_nothing() -> None:
    """A timer that ran after the workflow completed (its cancel lost the race) is ignored."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.send(0)
    sim.receipt(0, R)
    assert sim.state == WorkflowState.COMPLETED
    before = sim.workflow
    assert apply(before, WindowClosed("m0", T0 + 600), horizon=HORIZON).empty
    assert apply(before, WindowClosed("m1", T0 + 600), horizon=HORIZON).empty


def test_stale_window_of_the_active_step_after_a_late_success_changes_nothing() -> None:
    """After a late success, the still-active step's stale timer changes nothing."""
    sim = Simulator((MESSENGER_READ, VIBER_DELIVERED, SMS))
    sim.close_window(0)
    sim.receipt(0, R)
    assert sim.states() == [StepState.SUCCEEDED, StepState.ACTIVE, StepState.CANCELLED]
    assert sim.apply(WindowClosed("m1", sim.now + 300)).empty


def test_send_result_after_the_window_closed_keeps_the_provider_message_id() -> None:
    """A send result after its window closed still records the provider message id and price.

    The send was in flight when the window closed (its job already claimed), so the message is
    ``undeliverable`` and ``submitted`` no longer changes its status; but without the provider's
    message id the delivery receipt that follows could not be correlated, and rules
    docs/design.md §1.5 and docs/design.md §1.6 say it must still be recorded and count as a
    late success.
    """
    sim = Simulator((VIBER_DELIVERED, SMS))
    sim.close_window(0)  # the send job was already claimed and is talking to the provider
    assert sim.message(0).status == "undeliverable"
    changes = sim.apply(
        Observed(
            "m0",
            Status.SUBMITTED,
            sim.now + 1,
            "engine",
            provider="viber",
            provider_message_id="v-1",
            price="0.01",
            currency="EUR",
        )
    )
    record = sim.message(0)
    assert (record.status, record.provider, record.provider_message_id) == (
        "undeliverable",
        "viber",
        "v-1",
    )
    assert (record.price, record.currency) == ("0.01", "EUR")
    assert not changes.events
    assert not changes.status_reports
    sim.receipt(0, D)
    assert sim.state == WorkflowState.COMPLETED
    assert sim.states() == [StepState.SUCCEEDED, StepState.ACTIVE]


def test_send_result_after_its_receipt_keeps_the_provider_message_id() -> None:
    """A send result after its message's receipt records the provider id; again, nothing.

    The engine parks a DLR that beats its submit response, but the rules do not rely on it.
    """
    sim = Simulator((VIBER_DELIVERED, SMS))
    sim.receipt(0, D)
    assert sim.state == WorkflowState.COMPLETED
    changes = sim.send(0)
    assert sim.message(0).status == "delivered"
    assert (sim.message(0).provider, sim.message(0).provider_message_id) == ("sandbox", "p0")
    assert not changes.events
    assert not changes.status_reports
    assert sim.send(0).empty


def test_stale_window_of_a_failed_step_changes_nothing() -> None:
    """A timer for a step that already failed over does not start another step."""
    sim = Simulator((MESSENGER_READ, VIBER_DELIVERED, SMS))
    sim.send(0, REJ)
    assert sim.apply(WindowClosed("m0", T0 + 600)).empty
    assert sim.states() == [StepState.FAILED, StepState.ACTIVE, StepState.WAITING]


def test_window_of_the_last_step_changes_nothing() -> None:
    """The last step has no window, so a WindowClosed for it is ignored."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.close_window(0)
    assert sim.apply(WindowClosed("m1", sim.now + 1)).empty


def test_horizon_when_finished_changes_nothing() -> None:
    """HorizonReached for a workflow that already finished changes nothing."""
    sim = Simulator((SMS,))
    sim.send(0)
    sim.receipt(0, D)
    assert sim.state == WorkflowState.COMPLETED
    assert apply(sim.workflow, HorizonReached(T0 + HORIZON), horizon=HORIZON).empty


def test_horizon_on_the_last_step_ends_in_error_with_last_known_statuses() -> None:
    """At the horizon a still-running workflow ends in error once, its statuses as they are."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.send(0)
    sim.receipt(0, D)
    sim.close_window(0)
    sim.send(1)
    changes = sim.reach_horizon()
    assert sim.state == WorkflowState.ERROR
    assert sim.workflow.finished_at == T0 + 600 + HORIZON
    assert sim.statuses() == ["delivered", "submitted"]
    assert sim.states() == [StepState.EXPIRED, StepState.ACTIVE]
    assert changes.final_report
    assert not changes.status_reports
    assert sim.final_reports == 1


def test_workflow_never_sent_fails_over_step_by_step_then_errors_at_the_horizon() -> None:
    """With no send ever done, each window closes in turn and the horizon ends it in error."""
    sim = Simulator((MESSENGER_READ, VIBER_DELIVERED, SMS))
    sim.drain()
    assert sim.state == WorkflowState.ERROR
    assert sim.states() == [StepState.EXPIRED, StepState.EXPIRED, StepState.ACTIVE]
    assert [m.started_at for m in sim.workflow.messages] == [T0, T0 + 600, T0 + 900]
    assert sim.workflow.finished_at == T0 + 900 + HORIZON
    assert sim.statuses() == ["undeliverable", "undeliverable", None]
    assert sim.final_reports == 1
    assert set(sim.jobs) == {
        (JobKindName.SEND, "m2")
    }  # a started step keeps its send (never un-started)


def test_duplicate_receipt_is_empty() -> None:
    """The same receipt twice changes nothing the second time."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.send(0)
    sim.receipt(0, D)
    assert sim.receipt(0, D).empty
    assert sim.receipt(0, S).empty


def test_unknown_message_is_empty() -> None:
    """A status for a message that is not in the workflow changes nothing."""
    record = workflow_record((MESSENGER_READ, SMS))
    seen = Observed("elsewhere", Status.DELIVERED, T0, "provider")
    assert apply(record, seen, horizon=HORIZON).empty


def test_failure_after_delivered_changes_nothing() -> None:
    """A failure never overwrites delivered, and does not fail a read-condition step over."""
    sim = Simulator((MESSENGER_READ, SMS))
    sim.send(0)
    sim.receipt(0, D)
    assert sim.receipt(0, REJ).empty
    assert sim.states() == [StepState.ACTIVE, StepState.WAITING]


def test_late_success_completes_and_cancels_waiting_steps() -> None:
    """A late read on step 1 completes the workflow, cancels step 3 and leaves step 2 active.

    Step 2 already started (its send is enqueued, docs/design.md §1.1), so it is not un-started:
    its send stays and its own receipts are still recorded and reported.
    """
    sim = Simulator((MESSENGER_READ, VIBER_DELIVERED, SMS))
    sim.send(0)
    sim.receipt(0, D)
    sim.close_window(0)
    sim.send(1)
    changes = sim.receipt(0, R, at=sim.now + 5)
    assert sim.state == WorkflowState.COMPLETED
    assert sim.states() == [StepState.SUCCEEDED, StepState.ACTIVE, StepState.CANCELLED]
    assert changes.status_reports == ["m0"]
    assert changes.final_report
    assert sim.final_reports == 1
    assert "late" in (changes.events[-1].reason or "")
    assert not sim.pending(JobKindName.STEP_TIMEOUT)
    assert not sim.pending(JobKindName.REPORT_HORIZON)
    # step 2's own receipts are still recorded and reported, without a second final report
    changes = sim.receipt(1, D)
    assert sim.message(1).state == StepState.SUCCEEDED
    assert changes.status_reports == ["m1"]
    assert not changes.final_report
    assert sim.state == WorkflowState.COMPLETED
    assert sim.final_reports == 1


def test_success_after_failure_is_a_late_success() -> None:
    """``delivered`` after ``rejected`` on a failed-over step completes the workflow.

    A success after a failure is the truth (see test_merged_status), so it is a late success.
    """
    sim = Simulator((VIBER_DELIVERED, SMS))
    sim.send(0)
    sim.receipt(0, REJ)
    assert sim.message(1).state == StepState.ACTIVE
    sim.receipt(0, D)
    assert sim.states() == [StepState.SUCCEEDED, StepState.ACTIVE]
    assert sim.state == WorkflowState.COMPLETED
    assert sim.final_reports == 1


def test_late_success_after_error_is_recorded_but_the_outcome_stands() -> None:
    """A success after the workflow ended in error is reported; the error outcome stands.

    docs/design.md §1.6 says a late success "completes the workflow if it is still running".
    Read with docs/design.md §1.7 (one final report) this means "if it was still running": the
    customer already got ``error`` in the final report and the Nexmo docs promise one final
    report per workflow, so flipping the stored state afterwards would make GET contradict the
    report. The late status itself still reaches the customer as a status report.
    """
    sim = Simulator((MESSENGER_READ, SMS))
    sim.send(0)
    sim.close_window(0)
    sim.send(1, REJ)
    assert sim.state == WorkflowState.ERROR
    changes = sim.receipt(0, R)
    assert sim.message(0).state == StepState.SUCCEEDED
    assert changes.status_reports == ["m0"]
    assert not changes.final_report
    assert changes.workflow_state is None
    assert sim.state == WorkflowState.ERROR
    assert sim.final_reports == 1


def test_receipt_on_an_expired_step_is_recorded_without_failover() -> None:
    """A failure on a step whose window already closed is recorded; no step starts again."""
    sim = Simulator((MESSENGER_READ, VIBER_DELIVERED, SMS))
    sim.send(0)
    sim.close_window(0)
    changes = sim.receipt(0, UND)
    assert sim.message(0).status == "undeliverable"
    assert sim.states() == [StepState.EXPIRED, StepState.ACTIVE, StepState.WAITING]
    assert kinds(changes.events) == ["status"]


def test_a_job_is_cancelled_once_and_a_step_without_a_window_has_no_timer_to_cancel() -> None:
    """A plain message delivered cancels its report horizon alone (a step without a window
    was given no step_timeout job, so none is cancelled); a first step with a window that
    succeeds cancels its step_timeout once, though two rules call for it."""
    plain = Simulator((SMS,))
    assert (JobKindName.REPORT_HORIZON, "w") in plain.jobs
    plain.send(0, S)
    done = plain.receipt(0, D)
    assert plain.state == WorkflowState.COMPLETED
    assert done.cancel_jobs == [(JobKindName.REPORT_HORIZON, "w")]

    sim = Simulator((MESSENGER_READ, SMS))
    assert (JobKindName.STEP_TIMEOUT, "m0") in sim.jobs
    sim.send(0, S)
    read = sim.receipt(0, R)
    assert sim.state == WorkflowState.COMPLETED
    assert read.cancel_jobs.count((JobKindName.STEP_TIMEOUT, "m0")) == 1
    assert len(read.cancel_jobs) == len(set(read.cancel_jobs))
