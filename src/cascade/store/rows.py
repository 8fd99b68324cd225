"""How a stored row becomes a record, by column name, the same from either driver.

SQLite and PostgreSQL store the same tables (JSON bodies as text, times as seconds); the SQLite
driver hands rows over as dicts and asyncpg's records are read by name too, so a column added
to a table is ignored here until a record has a field for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from operator import itemgetter
from typing import Any, Generic, TypeVar

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
    WebhookKind,
    WebhookRecord,
    WebhookState,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.store.base import Job

#: a row as either driver returns it, read by column name
Row = Mapping[str, Any]

R = TypeVar("R")


class _Mapper(Generic[R]):
    """Makes records of one class from rows: every field read by column name in one C call
    (``itemgetter``), then the few that are stored differently converted."""

    def __init__(
        self,
        record: Callable[..., R],
        *,
        columns: Mapping[str, str] | None = None,
        convert: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        names = [field.name for field in fields(record)]  # type: ignore[arg-type]
        columns = columns or {}
        self._record = record
        self._get = itemgetter(*(columns.get(name, name) for name in names))
        self._convert = [(names.index(name), fn) for name, fn in (convert or {}).items()]

    def __call__(self, row: Row) -> R:
        """The record of one row."""
        if not self._convert:
            return self._record(*self._get(row))
        values = list(self._get(row))
        for index, fn in self._convert:
            values[index] = fn(values[index])
        return self._record(*values)


def _encode(text: str) -> bytes:
    """JSON stored as text, back to the bytes it was received as."""
    return text.encode()


def _receipts_due(stored: str) -> tuple[tuple[float, str], ...]:
    """The receipts a sandbox message owes, from the JSON text stored."""
    return tuple((float(at), str(status)) for at, status in json.loads(stored))


def encode_receipts(receipts: Sequence[tuple[float, str]]) -> str:
    """The receipts a sandbox message owes, as the JSON text stored."""
    return json.dumps([[at, status] for at, status in receipts])


account = _Mapper(Account)
application = _Mapper(Application)
#: a messages row: the request's JSON objects back to bytes
message = _Mapper(
    MessageRecord,
    columns={"to": "recipient", "from_": "sender"},
    convert={"to": _encode, "from_": _encode, "body": _encode, "state": StepState},
)
event = _Mapper(Event)
webhook = _Mapper(
    WebhookRecord, convert={"body": _encode, "kind": WebhookKind, "state": WebhookState}
)
webhook_attempt = _Mapper(WebhookAttempt)
#: an orphan_receipts row as the receipt it keeps
receipt = _Mapper(Receipt, convert={"status": Status})
sandbox = _Mapper(SandboxMessage, convert={"receipts_due": _receipts_due})
job = _Mapper(Job)


def columns(record: object) -> dict[str, Any]:
    """A record's fields by name, as the parameters of the statement that stores it (not
    ``dataclasses.asdict``, which deep-copies every value and costs ten times more)."""
    return {name: getattr(record, name) for name in _fields(type(record))}


#: the field names of each record class, found once
_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(record: type) -> tuple[str, ...]:
    """The field names of a record class."""
    names = _FIELDS.get(record)
    if names is None:
        names = _FIELDS[record] = tuple(field.name for field in fields(record))
    return names


def workflow(row: Row, messages: Iterable[MessageRecord] = ()) -> WorkflowRecord:
    """A workflows row with its messages, as a record."""
    return WorkflowRecord(
        id=row["id"],
        account_id=row["account_id"],
        application_id=row["application_id"],
        surface=Surface(row["surface"]),
        state=WorkflowState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        messages=tuple(messages),
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
