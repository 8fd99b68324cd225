"""What Cascade tells a customer after a transition: which reports it produces, and what each says.

:func:`cascade.domain.failover.apply` names the messages whose status changed and whether the
workflow finished. :func:`reports_for` turns that into reports: one status report per changed
message, in order, and a final report when a workflow that has one (docs/design.md §1.7) ends.
Each report holds the facts it states, as they stand after the transition. How a report is
written on the wire (field names, timestamps, links, JSON) is ``webhooks/payloads.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cascade.domain.failover import Changes
from cascade.domain.projection import project
from cascade.domain.records import (
    NO_FINAL_REPORT,
    MessageRecord,
    WebhookKind,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A message's new status, for its customer's status webhook."""

    #: the webhook that carries it
    kind: ClassVar[WebhookKind] = WebhookKind.STATUS
    #: the message's workflow, as it stands after the transition
    workflow: WorkflowRecord
    #: the message, as it stands after the transition
    message: MessageRecord
    #: when the status was seen
    at: float

    @property
    def error(self) -> tuple[int, str] | None:
        """The error the report states: ``(code, reason)``, or None."""
        return reported_error(self.message)


@dataclass(frozen=True, slots=True)
class FinalReport:
    """How a workflow ended, for its customer's final report (the Dispatch surface's)."""

    #: the webhook that carries it
    kind: ClassVar[WebhookKind] = WebhookKind.FINAL_REPORT
    #: the workflow, as it stands after the transition that finished it
    workflow: WorkflowRecord
    #: when it finished
    at: float

    @property
    def completed(self) -> bool:
        """Whether a step succeeded (``completed``) rather than every step failing (``error``)."""
        return self.workflow.state is WorkflowState.COMPLETED

    @property
    def messages(self) -> list[MessageRecord]:
        """The messages the report lists: every step that started (those never started were
        cancelled after an earlier step succeeded, and were never sent)."""
        return [message for message in self.workflow.messages if message.started_at is not None]


Report = StatusReport | FinalReport

#: the statuses whose report states the message's error
_FAILURES = frozenset(status.value for status in Status if status.is_failure)


def reported_error(message: MessageRecord) -> tuple[int, str] | None:
    """The error a report of ``message`` states: its error while its status is a failure. A
    success reported after a failure (docs/design.md §1.8) leaves the old error in the record,
    where it no longer applies."""
    if message.error_code is None or message.status not in _FAILURES:
        return None
    return message.error_code, message.error_reason or ""


def reports_for(workflow: WorkflowRecord, changes: Changes) -> list[Report]:
    """The reports a transition of ``workflow`` (as it was read) by ``changes`` produces: a
    status report for each message whose status changed, then the final report when the
    workflow finished, unless it came in through a Messages API (which has none: a v1
    message with failover reports each message's status only)."""
    if not changes.status_reports and not changes.final_report:
        return []
    after = project(workflow, changes)
    by_id = {message.id: message for message in after.messages}
    seen_at = {event.message_id: event.at for event in changes.events if event.kind == "status"}
    reports: list[Report] = [
        StatusReport(after, by_id[message_id], seen_at.get(message_id, after.updated_at))
        for message_id in changes.status_reports
    ]
    if changes.final_report and workflow.surface not in NO_FINAL_REPORT:
        at = changes.finished_at if changes.finished_at is not None else after.updated_at
        reports.append(FinalReport(after, at))
    return reports
