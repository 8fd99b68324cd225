"""A workflow as it stands after a set of changes (for building the reports that describe it)."""

from __future__ import annotations

from dataclasses import replace

from cascade.domain.failover import Changes
from cascade.domain.records import MessageRecord, WorkflowRecord


def project(workflow: WorkflowRecord, changes: Changes) -> WorkflowRecord:
    """``workflow`` with ``changes`` applied to its messages and state (the timeline is kept)."""
    messages: list[MessageRecord] = []
    for message in workflow.messages:
        change = changes.messages.get(message.id)
        if change is None:
            messages.append(message)
            continue
        updates = change.values()
        messages.append(replace(message, **updates))
    state = changes.workflow_state or workflow.state
    finished_at = changes.finished_at if changes.workflow_state else workflow.finished_at
    return replace(workflow, messages=tuple(messages), state=state, finished_at=finished_at)
