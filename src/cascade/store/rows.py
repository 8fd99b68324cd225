"""How a stored row becomes a record, by column name, the same from either driver.

SQLite and PostgreSQL store the same tables (JSON bodies as text, times as seconds). A
statement's rows come as :class:`Rows`: the driver's tuples or records and where each column
is, so a record's fields are found by name once per statement and then read by position; one
row on its own (``first``) is read by name. A column added to a table is ignored here until a
record has a field for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from enum import Enum
from itertools import groupby
from operator import attrgetter, itemgetter
from typing import Any, Generic, TypeVar

from cascade.domain.makers import constructor
from cascade.domain.records import (
    Account,
    Application,
    Event,
    InboundRecord,
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
from cascade.store.base import DashboardSession, Job, SignInFailures, SmppBind

#: a row as either driver returns it, read by column name
Row = Mapping[str, Any]

R = TypeVar("R")


class Rows(list[Any]):
    """The rows of one statement as the driver gives them (tuples, or asyncpg's records) and
    where each column is: read by name through a column map made once per statement, rather
    than a dict per row (which cost more than anything else a read did)."""

    __slots__ = ("columns", "key")

    def __init__(self, rows: Iterable[Any], columns: Mapping[str, int], key: str) -> None:
        super().__init__(rows)
        #: each column's position
        self.columns = columns
        #: what the rows came from (the statement's SQL): mappers keep one plan per key
        self.key = key

    def column(self, name: str) -> list[Any]:
        """One column's values, in row order."""
        if not self:
            return []
        index = self.columns[name]
        return [row[index] for row in self]

    def pick(self, *names: str) -> list[tuple[Any, ...]]:
        """Two or more columns of every row, as tuples in the order named."""
        if not self:
            return []
        get = itemgetter(*(self.columns[name] for name in names))
        return [get(row) for row in self]

    def value(self, row: Sequence[Any], name: str) -> Any:
        """One column of one of these rows."""
        return row[self.columns[name]]

    def sorted_by(self, name: str) -> Rows:
        """The same rows, ordered by one column."""
        if not self:
            return self
        return Rows(sorted(self, key=itemgetter(self.columns[name])), self.columns, self.key)


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
        self._record = constructor(record)
        self._columns = [columns.get(name, name) for name in names]
        self._get = itemgetter(*self._columns)
        self._convert = [(names.index(name), fn) for name, fn in (convert or {}).items()]
        #: for each statement's rows (by Rows.key), the getter of the fields' positions
        self._positions: dict[str, Callable[[Any], tuple[Any, ...]]] = {}

    def __call__(self, row: Row) -> R:
        """The record of one row read by name (a dict, or an asyncpg record)."""
        return self._make(self._get(row))

    def all(self, found: Rows) -> list[R]:
        """The records of a statement's rows, the columns found by name once per statement."""
        if not found:
            return []
        get = self._positions.get(found.key)
        if get is None:
            positions = [found.columns[column] for column in self._columns]
            get = self._positions[found.key] = itemgetter(*positions)
        if not self._convert:
            record = self._record
            return [record(*get(row)) for row in found]
        return [self._make(get(row)) for row in found]

    def _make(self, values: tuple[Any, ...]) -> R:
        """The record of its fields' values in order, the stored forms converted."""
        if not self._convert:
            return self._record(*values)
        converted = list(values)
        for index, fn in self._convert:
            converted[index] = fn(converted[index])
        return self._record(*converted)


E = TypeVar("E", bound=Enum)


def _member(enum: type[E]) -> Callable[[Any], E]:
    """The member of ``enum`` a stored value names, found in a dict (calling the class runs
    Enum's lookup in Python, a microsecond a value, and rows hold several); an unknown value
    fails as the class's own call does."""
    members: dict[Any, E] = {member.value: member for member in enum}

    def of(value: Any) -> E:
        member = members.get(value)
        return member if member is not None else enum(value)

    return of


_step_state = _member(StepState)
_surface = _member(Surface)
_workflow_state = _member(WorkflowState)


#: JSON stored as text, back to the bytes it was received as (UTF-8; a C call per value)
_encode = str.encode


def _receipts_due(stored: str) -> tuple[tuple[float, str], ...]:
    """The receipts a sandbox message owes, from the JSON text stored."""
    return tuple((float(at), str(status)) for at, status in json.loads(stored))


def encode_receipts(receipts: Sequence[tuple[float, str]]) -> str:
    """The receipts a sandbox message owes, as the JSON text stored."""
    return json.dumps([[at, status] for at, status in receipts])


#: an accounts row: SQLite keeps ``sandbox`` as 0 or 1
account = _Mapper(Account, convert={"sandbox": bool})
application = _Mapper(Application)
#: a messages row: the request's JSON objects back to bytes
message = _Mapper(
    MessageRecord,
    columns={"to": "recipient", "from_": "sender"},
    convert={"to": _encode, "from_": _encode, "body": _encode, "state": _step_state},
)
event = _Mapper(Event)
webhook = _Mapper(
    WebhookRecord,
    convert={"body": _encode, "kind": _member(WebhookKind), "state": _member(WebhookState)},
)
webhook_attempt = _Mapper(WebhookAttempt)
#: an orphan_receipts row as the receipt it keeps
receipt = _Mapper(Receipt, columns={"kept_id": "id"}, convert={"status": _member(Status)})
sandbox = _Mapper(SandboxMessage, convert={"receipts_due": _receipts_due})
job = _Mapper(Job)
dashboard_session = _Mapper(DashboardSession)
sign_in_failures = _Mapper(SignInFailures)
inbound = _Mapper(InboundRecord)
#: an smpp_binds row: SQLite keeps ``bound`` as 0 or 1
smpp_bind = _Mapper(SmppBind, convert={"bound": bool})


def columns(record: object) -> dict[str, Any]:
    """A record's fields by name, as the parameters of the statement that stores it (not
    ``dataclasses.asdict``, which deep-copies every value and costs ten times more)."""
    reader = _READERS.get(type(record))
    if reader is None:
        reader = _READERS[type(record)] = _reader(type(record))
    names, get = reader
    return dict(zip(names, get(record), strict=True))


#: the field names of each record class and the getter of their values, found once (one C
#: call reads them all)
_READERS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _reader(record: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """The field names of a record class and a getter of their values as a tuple."""
    names = tuple(field.name for field in fields(record))
    getter = attrgetter(*names)
    if len(names) == 1:
        return names, lambda value: (getter(value),)
    return names, getter


def workflow(row: Row, messages: Iterable[MessageRecord] = ()) -> WorkflowRecord:
    """A workflows row with its messages, as a record."""
    return _workflow_of(tuple(row[name] for name in _WORKFLOW_COLUMNS), messages)


def workflows(found: Rows, message_rows: Rows) -> list[WorkflowRecord]:
    """Workflow rows, each with its messages picked from ``message_rows``."""
    by_workflow: dict[str, list[MessageRecord]] = {}
    for record in message.all(message_rows):
        by_workflow.setdefault(record.workflow_id, []).append(record)
    get = itemgetter(*(found.columns[name] for name in _WORKFLOW_COLUMNS))
    return [_workflow_of(get(row), by_workflow.get(found.value(row, "id"), ())) for row in found]


#: the columns of a workflow record, in the order of its fields
_WORKFLOW_COLUMNS = (
    "id",
    "account_id",
    "application_id",
    "surface",
    "state",
    "created_at",
    "updated_at",
    "finished_at",
)


_workflow_record = constructor(WorkflowRecord)


def _workflow_of(
    values: tuple[Any, ...], messages: Iterable[MessageRecord], status_url_set: bool = True
) -> WorkflowRecord:
    """A workflow of its columns' values (in _WORKFLOW_COLUMNS order) and its messages."""
    id_, account_id, application_id, surface, state, created_at, updated_at, finished_at = values
    return _workflow_record(
        id_,
        account_id,
        application_id,
        _surface(surface),
        _workflow_state(state),
        created_at,
        updated_at,
        finished_at,
        tuple(messages),
        (),
        status_url_set,
    )


def transition_workflow(found: Rows) -> tuple[WorkflowRecord, int] | None:
    """The workflow a transition reads (its messages joined with the workflow's columns, one
    row a message) and its version; None when there are no rows."""
    if not found:
        return None
    get = _TRANSITION_GETTERS.get(found.key)
    if get is None:
        positions = [found.columns[column] for column in _TRANSITION_COLUMNS]
        get = _TRANSITION_GETTERS[found.key] = itemgetter(*positions)
    *values, status_url_set, version = get(found[0])
    return _workflow_of(tuple(values), message.all(found), bool(status_url_set)), int(version)


def transition_workflows(found: Rows) -> list[tuple[WorkflowRecord, int]]:
    """The workflows a batch of transitions reads, each with its version: the rows of several
    workflows, ordered by workflow, read as :func:`transition_workflow` reads one."""
    if not found:
        return []
    by_workflow = itemgetter(found.columns["workflow_id"])
    loaded = []
    for _, group in groupby(found, by_workflow):
        workflow = transition_workflow(Rows(group, found.columns, found.key))
        if workflow is not None:
            loaded.append(workflow)
    return loaded


#: the workflow's columns in a transition's read (in _WORKFLOW_COLUMNS order), then its version
_TRANSITION_COLUMNS = (
    "workflow_id",
    "account_id",
    "application_id",
    "surface",
    "workflow_state",
    "workflow_created_at",
    "workflow_updated_at",
    "workflow_finished_at",
    "status_url_set",
    "workflow_version",
)
#: for each statement's rows (by Rows.key), the getter of the columns above
_TRANSITION_GETTERS: dict[str, Callable[[Any], tuple[Any, ...]]] = {}
