"""A workflow as it stands after a set of changes (for building the reports that describe it)."""

from __future__ import annotations

from dataclasses import fields
from operator import attrgetter
from typing import Any

from cascade.domain.failover import Changes
from cascade.domain.makers import constructor
from cascade.domain.records import MessageRecord, WorkflowRecord

#: a message's fields in order, a getter of all their values, and where each one is: a changed
#: copy is made from them in one constructor call (``dataclasses.replace`` walks the 27 fields
#: in Python, and a transition projects every message it changes)
_MESSAGE_FIELDS = tuple(field.name for field in fields(MessageRecord))
_message_values = attrgetter(*_MESSAGE_FIELDS)
_MESSAGE_INDEX = {name: index for index, name in enumerate(_MESSAGE_FIELDS)}
_message = constructor(MessageRecord)
#: a workflow likewise, its messages, state and finished time replaced
_workflow_values = attrgetter(*(field.name for field in fields(WorkflowRecord)))
_WORKFLOW_INDEX = {field.name: index for index, field in enumerate(fields(WorkflowRecord))}
_STATE, _FINISHED_AT, _MESSAGES = (
    _WORKFLOW_INDEX["state"],
    _WORKFLOW_INDEX["finished_at"],
    _WORKFLOW_INDEX["messages"],
)
_workflow = constructor(WorkflowRecord)


def project(workflow: WorkflowRecord, changes: Changes) -> WorkflowRecord:
    """``workflow`` with ``changes`` applied to its messages and state (the timeline is kept)."""
    messages: list[MessageRecord] = []
    for message in workflow.messages:
        change = changes.messages.get(message.id)
        if change is None:
            messages.append(message)
            continue
        messages.append(_changed(message, change.values()))
    values = list(_workflow_values(workflow))
    values[_MESSAGES] = tuple(messages)
    if changes.workflow_state:
        values[_STATE] = changes.workflow_state
        values[_FINISHED_AT] = changes.finished_at
    return _workflow(*values)


def _changed(message: MessageRecord, updates: dict[str, Any]) -> MessageRecord:
    """``message`` with the fields ``updates`` names set to its values."""
    values = list(_message_values(message))
    for name, value in updates.items():
        values[_MESSAGE_INDEX[name]] = value
    return _message(*values)
