"""Unit tests of Messages v1 failover (docs/design.md §1.11): steps without a window fail over
only when rejected or undeliverable, and the report horizon bounds each of them."""

from __future__ import annotations

from dataclasses import replace

from cascade.domain.failover import WindowClosed, apply, step_jobs
from cascade.domain.records import JobKindName, NewJob, StepState, Surface, WorkflowState
from cascade.domain.reports import FinalReport, StatusReport, reports_for
from cascade.domain.status import Status
from tests.domain.simulator import HORIZON, T0, Simulator, Step

WHATSAPP, SMS = Step("whatsapp"), Step("sms")


def test_a_step_without_a_window_gets_the_horizon_and_no_timer() -> None:
    """The first of several windowless steps is sent now and bounded by the horizon only."""
    assert step_jobs("w", "m0", None, False, T0, HORIZON) == [
        NewJob(JobKindName.SEND, "m0", T0),
        NewJob(JobKindName.REPORT_HORIZON, "w", T0 + HORIZON),
    ]


def test_a_windowed_step_keeps_its_timer_and_no_horizon() -> None:
    """A v0.1 step with a window is unchanged: its timer, no horizon."""
    assert step_jobs("w", "m0", 60, False, T0, HORIZON) == [
        NewJob(JobKindName.SEND, "m0", T0),
        NewJob(JobKindName.STEP_TIMEOUT, "m0", T0 + 60),
    ]


def test_rejected_fails_over_and_the_next_step_gets_its_own_horizon() -> None:
    """A rejection starts the next message at once; its horizon replaces the first's."""
    sim = Simulator((WHATSAPP, SMS, SMS))
    sim.send(0)
    changes = sim.receipt(0, Status.REJECTED, at=T0 + 100)
    assert sim.states() == [StepState.FAILED, StepState.ACTIVE, StepState.WAITING]
    assert (JobKindName.REPORT_HORIZON, "w") in changes.cancel_jobs
    assert sim.jobs[(JobKindName.REPORT_HORIZON, "w")] == T0 + 100 + HORIZON
    assert sim.pending(JobKindName.STEP_TIMEOUT) == set()
    assert sim.state == WorkflowState.RUNNING


def test_undeliverable_fails_over_down_the_whole_list() -> None:
    """Undeliverable and rejected each move to the next message; the last one delivered
    completes the workflow."""
    sim = Simulator((WHATSAPP, SMS, SMS))
    sim.send(0, Status.UNDELIVERABLE)
    sim.send(1, Status.REJECTED)
    sim.send(2)
    sim.receipt(2, Status.DELIVERED)
    assert sim.states() == [StepState.FAILED, StepState.FAILED, StepState.SUCCEEDED]
    assert sim.state == WorkflowState.COMPLETED
    assert sim.jobs == {}


def test_delivered_completes_and_the_failover_messages_are_never_sent() -> None:
    """The first message delivered ends it: the failover messages are cancelled, unsent."""
    sim = Simulator((WHATSAPP, SMS))
    sim.send(0)
    sim.receipt(0, Status.DELIVERED)
    assert sim.states() == [StepState.SUCCEEDED, StepState.CANCELLED]
    assert sim.state == WorkflowState.COMPLETED
    assert sim.message(1).started_at is None


def test_no_news_never_fails_over_and_the_horizon_ends_it_in_error() -> None:
    """A message that stays submitted is not failed over (v1 has no timer); at the horizon the
    workflow ends in error and the unsent messages are cancelled."""
    sim = Simulator((WHATSAPP, SMS))
    sim.send(0)
    changes = sim.reach_horizon()
    assert sim.now == T0 + HORIZON
    assert sim.states() == [StepState.ACTIVE, StepState.CANCELLED]
    assert sim.state == WorkflowState.ERROR
    assert changes.final_report
    assert sim.message(1).started_at is None


def test_a_window_closing_on_a_step_without_one_changes_nothing() -> None:
    """A timer a windowless step never had (a stale or foreign job) neither expires it nor
    fails it over."""
    sim = Simulator((WHATSAPP, SMS))
    sim.send(0)
    assert apply(sim.workflow, WindowClosed("m0", T0 + 5), horizon=HORIZON).empty


def test_a_late_delivery_after_failover_is_reported_and_completes() -> None:
    """Delivered after a rejection (multi-device channels do this) is the truth: reported, and
    the workflow completes with the next message cancelled if it had not started."""
    sim = Simulator((WHATSAPP, SMS, SMS))
    sim.send(0, Status.REJECTED)
    sim.send(1)
    sim.receipt(0, Status.DELIVERED, at=T0 + 10)
    assert sim.states() == [StepState.SUCCEEDED, StepState.ACTIVE, StepState.CANCELLED]
    assert sim.state == WorkflowState.COMPLETED


def test_a_v1_workflow_has_status_reports_and_no_final_report() -> None:
    """A v1 workflow's end is told through its messages' statuses only: no final report."""
    sim = Simulator((WHATSAPP, SMS))
    sim.workflow = replace(sim.workflow, surface=Surface.MESSAGES_V1)
    sim.send(0)
    changes = apply(
        sim.workflow,
        replace(sim.observed[-1], status=Status.DELIVERED, at=T0 + 1, provider_message_id=None),
        horizon=HORIZON,
    )
    assert changes.final_report
    reports = reports_for(sim.workflow, changes)
    assert [type(report) for report in reports] == [StatusReport]
    dispatch = replace(sim.workflow, surface=Surface.DISPATCH)
    assert [type(report) for report in reports_for(dispatch, changes)] == [
        StatusReport,
        FinalReport,
    ]
