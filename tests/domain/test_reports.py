"""Unit tests of what a transition reports to the customer (the pure rules of domain/reports.py)."""

from __future__ import annotations

from dataclasses import replace

from cascade.domain.failover import Changes
from cascade.domain.projection import project
from cascade.domain.records import StepState, Surface, WebhookKind, WorkflowState
from cascade.domain.reports import FinalReport, StatusReport, reported_error, reports_for
from cascade.domain.status import Status
from tests.domain.simulator import T0, Simulator, Step

MESSENGER = Step("messenger", 600, "read")
SMS = Step("sms")


def _reports(sim: Simulator, move: str, *args: object) -> list[StatusReport | FinalReport]:
    """The reports of one move of the simulator (``send``, ``receipt``, ``close_window``...),
    decided from the workflow as it was read before the move."""
    before = sim.workflow
    changes: Changes = getattr(sim, move)(*args)
    return reports_for(before, changes)


def test_nothing_to_report_gives_no_report() -> None:
    """A duplicate status changes nothing, so nothing is reported."""
    sim = Simulator((SMS,))
    sim.send(0)
    assert _reports(sim, "send", 0) == []


def test_a_status_report_states_the_message_as_it_stands_after_the_transition() -> None:
    """The report holds the message with its new status, and the time that status was seen."""
    sim = Simulator((MESSENGER, SMS))
    (report,) = _reports(sim, "send", 0, Status.SUBMITTED, T0 + 2)
    assert isinstance(report, StatusReport)
    assert report.kind is WebhookKind.STATUS
    assert (report.message.id, report.message.status) == ("m0", Status.SUBMITTED)
    assert report.message.provider_message_id == "p0"
    assert report.at == T0 + 2
    assert report.workflow.messages[0] is report.message
    assert report.error is None


def test_success_reports_the_status_then_the_final_report() -> None:
    """The transition that completes a workflow reports the status first, then the final
    report, which lists the steps that started and says completed."""
    sim = Simulator((MESSENGER, SMS))
    sim.send(0)
    status, final = _reports(sim, "receipt", 0, Status.READ, T0 + 30)
    assert isinstance(status, StatusReport)
    assert isinstance(final, FinalReport)
    assert final.kind is WebhookKind.FINAL_REPORT
    assert final.completed
    assert final.at == T0 + 30
    assert final.workflow.state is WorkflowState.COMPLETED
    # the SMS step never started: it was cancelled, and the report does not list it
    assert final.workflow.messages[1].state is StepState.CANCELLED
    assert [message.id for message in final.messages] == ["m0"]


def test_a_workflow_ending_in_error_says_so_with_every_started_step() -> None:
    """When the last step fails, the final report says error and lists every step."""
    sim = Simulator((MESSENGER, SMS))
    sim.send(0, Status.REJECTED)
    sim.send(1)
    status, final = _reports(sim, "receipt", 1, Status.REJECTED, T0 + 5)
    assert isinstance(status, StatusReport)
    assert status.error == (1300, "Not part of the provider network")
    assert isinstance(final, FinalReport)
    assert not final.completed
    assert [message.id for message in final.messages] == ["m0", "m1"]


def test_a_plain_message_has_no_final_report() -> None:
    """A workflow accepted through the messages surface reports statuses only."""
    sim = Simulator((SMS,))
    sim.workflow = replace(sim.workflow, surface=Surface.MESSAGES)
    sim.send(0)
    reports = _reports(sim, "receipt", 0, Status.DELIVERED, T0 + 1)
    assert [type(report) for report in reports] == [StatusReport]


def test_a_window_closing_on_an_unsent_message_reports_it_undeliverable_then() -> None:
    """The status a closing window gives a message that never reached its provider is reported
    at the time the window closed, with its error; the next step starts unreported."""
    sim = Simulator((MESSENGER, SMS))
    (report,) = _reports(sim, "close_window", 0, 0.0, (1020, "Throttled"))
    assert isinstance(report, StatusReport)
    assert report.message.status is Status.UNDELIVERABLE
    assert report.at == T0 + 600
    assert report.error == (1020, "Throttled")


def test_the_error_a_report_states_applies_only_to_a_failure() -> None:
    """A failed message's report states its error; a success after a failure keeps the old
    error in the record, and its report states none."""
    sim = Simulator((SMS,))
    sim.send(0)
    sim.receipt(0, Status.REJECTED)
    failed = sim.message(0)
    assert reported_error(failed) == (1300, "Not part of the provider network")
    sim.receipt(0, Status.DELIVERED)
    delivered = sim.message(0)
    assert delivered.error_code == 1300
    assert reported_error(delivered) is None
    assert reported_error(replace(failed, error_reason=None)) == (1300, "")
    assert reported_error(replace(failed, error_code=None)) is None


def test_a_projection_changes_only_the_fields_a_change_names() -> None:
    """A projected message is the stored one with exactly the changed fields replaced."""
    sim = Simulator((MESSENGER, SMS))
    before = sim.workflow
    changes = sim.send(0, Status.SUBMITTED, T0 + 2)
    after = project(before, changes)
    for old, new in zip(before.messages, after.messages, strict=True):
        change = changes.messages.get(old.id)
        assert new == (old if change is None else replace(old, **change.values()))
