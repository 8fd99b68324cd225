"""How a stored row becomes a record, by column name, the same from either driver.

SQLite and PostgreSQL store the same tables (JSON bodies as text, times as seconds); the SQLite
driver hands rows over as dicts and asyncpg's records are read by name too, so a column added
to a table is ignored here until a record has a field for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from cascade.domain.records import (
    Account,
    Application,
    Event,
    MessageRecord,
    Receipt,
    SandboxMessage,
    StepState,
    Surface,
    WebhookAttempt,
    WebhookRecord,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.store.base import Job

#: a row as either driver returns it, read by column name
Row = Mapping[str, Any]

R = TypeVar("R")


#: the field names of each record class, found once
_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(record: type) -> tuple[str, ...]:
    """The field names of a record class."""
    names = _FIELDS.get(record)
    if names is None:
        names = _FIELDS[record] = tuple(field.name for field in fields(record))
    return names


def _record(record: type[R], row: Row, **given: Any) -> R:
    """A ``record`` whose fields are the row's columns of the same names, except those
    ``given`` (a value converted, or a field stored under another name)."""
    return record(**{name: row[name] for name in _fields(record) if name not in given}, **given)


def account(row: Row) -> Account:
    """An accounts row as a record."""
    return _record(Account, row)


def application(row: Row) -> Application:
    """An applications row as a record."""
    return _record(Application, row)


def message(row: Row) -> MessageRecord:
    """A messages row as a record, its JSON text columns back to bytes."""
    return _record(
        MessageRecord,
        row,
        to=row["recipient"].encode(),
        from_=row["sender"].encode(),
        body=row["body"].encode(),
        state=StepState(row["state"]),
    )


def workflow(row: Row, messages: Iterable[MessageRecord] = ()) -> WorkflowRecord:
    """A workflows row with its messages, as a record."""
    return _record(
        WorkflowRecord,
        row,
        surface=Surface(row["surface"]),
        state=WorkflowState(row["state"]),
        messages=tuple(messages),
        events=(),
    )


def workflows(rows: Sequence[Row], message_rows: Iterable[Row]) -> list[WorkflowRecord]:
    """Workflow rows, each with its messages picked from ``message_rows``."""
    by_workflow: dict[str, list[MessageRecord]] = {}
    for record in map(message, message_rows):
        by_workflow.setdefault(record.workflow_id, []).append(record)
    return [workflow(row, by_workflow.get(row["id"], ())) for row in rows]


def transition_workflow(rows: Sequence[Row]) -> tuple[WorkflowRecord, int] | None:
    """The workflow a transition reads (its messages joined with the workflow's columns, one
    row a message) and its version; None when there are no rows."""
    if not rows:
        return None
    first = rows[0]
    record = WorkflowRecord(
        id=first["workflow_id"],
        account_id=first["account_id"],
        application_id=first["application_id"],
        surface=Surface(first["surface"]),
        state=WorkflowState(first["workflow_state"]),
        created_at=first["workflow_created_at"],
        updated_at=first["workflow_updated_at"],
        finished_at=first["workflow_finished_at"],
        messages=tuple(map(message, rows)),
    )
    return record, int(first["workflow_version"])


def event(row: Row) -> Event:
    """An events row as a timeline entry."""
    return _record(Event, row)


def webhook(row: Row) -> WebhookRecord:
    """A webhooks row as a record, its body back to bytes."""
    return _record(WebhookRecord, row, body=row["body"].encode())


def webhook_attempt(row: Row) -> WebhookAttempt:
    """A webhook_attempts row as a record."""
    return _record(WebhookAttempt, row)


def receipt(row: Row) -> Receipt:
    """An orphan_receipts row as the receipt it keeps."""
    return _record(Receipt, row, status=Status(row["status"]))


def encode_receipts(receipts: Sequence[tuple[float, str]]) -> str:
    """The receipts a sandbox message owes, as the JSON text stored."""
    return json.dumps([[at, status] for at, status in receipts])


def sandbox(row: Row) -> SandboxMessage:
    """A sandbox_messages row as a record."""
    due = tuple((float(at), str(status)) for at, status in json.loads(row["receipts_due"]))
    return _record(SandboxMessage, row, receipts_due=due)


def job(row: Row) -> Job:
    """A jobs row as a claimed or pending job."""
    return _record(Job, row)
