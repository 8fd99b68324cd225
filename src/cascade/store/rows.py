"""How a stored row becomes a record, by column name, the same from either driver.

SQLite and PostgreSQL store the same tables (JSON bodies as text, times as seconds); the SQLite
driver hands rows over as dicts and asyncpg's records are read by name too, so a column added
to a table is ignored here until a record has a field for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


def account(row: Row) -> Account:
    """An accounts row as a record."""
    return Account(
        id=row["id"],
        api_key=row["api_key"],
        api_secret_sha256=row["api_secret_sha256"],
        signature_secret=row["signature_secret"],
        status_url=row["status_url"],
        inbound_url=row["inbound_url"],
        created_at=row["created_at"],
    )


def application(row: Row) -> Application:
    """An applications row as a record."""
    return Application(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        public_key_pem=row["public_key_pem"],
        status_url=row["status_url"],
        inbound_url=row["inbound_url"],
        created_at=row["created_at"],
    )


def message(row: Row) -> MessageRecord:
    """A messages row as a record, its JSON text columns back to bytes."""
    return MessageRecord(
        id=row["id"],
        workflow_id=row["workflow_id"],
        step=row["step"],
        account_id=row["account_id"],
        channel=row["channel"],
        to=row["recipient"].encode(),
        from_=row["sender"].encode(),
        body=row["body"].encode(),
        client_ref=row["client_ref"],
        expiry_time=row["expiry_time"],
        condition_status=row["condition_status"],
        state=StepState(row["state"]),
        status=row["status"],
        error_code=row["error_code"],
        error_reason=row["error_reason"],
        provider=row["provider"],
        provider_message_id=row["provider_message_id"],
        price=row["price"],
        currency=row["currency"],
        started_at=row["started_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_error_code=row["last_error_code"],
        last_error_reason=row["last_error_reason"],
        segments=row["segments"],
    )


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


def event(row: Row) -> Event:
    """An events row as a timeline entry."""
    return Event(
        at=row["at"],
        kind=row["kind"],
        message_id=row["message_id"],
        status=row["status"],
        code=row["code"],
        reason=row["reason"],
        source=row["source"],
    )


def webhook(row: Row) -> WebhookRecord:
    """A webhooks row as a record, its body back to bytes."""
    return WebhookRecord(
        id=row["id"],
        account_id=row["account_id"],
        application_id=row["application_id"],
        workflow_id=row["workflow_id"],
        message_id=row["message_id"],
        kind=row["kind"],
        url=row["url"],
        body=row["body"].encode(),
        state=row["state"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        first_attempt_at=row["first_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        next_attempt_at=row["next_attempt_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
    )


def webhook_attempt(row: Row) -> WebhookAttempt:
    """A webhook_attempts row as a record."""
    return WebhookAttempt(
        webhook_id=row["webhook_id"],
        at=row["at"],
        status_code=row["status_code"],
        error=row["error"],
        duration=row["duration"],
    )


def receipt(row: Row) -> Receipt:
    """An orphan_receipts row as the receipt it keeps."""
    return Receipt(
        provider=row["provider"],
        provider_message_id=row["provider_message_id"],
        status=Status(row["status"]),
        at=row["at"],
        code=row["code"],
        reason=row["reason"],
    )


def encode_receipts(receipts: Sequence[tuple[float, str]]) -> str:
    """The receipts a sandbox message owes, as the JSON text stored."""
    return json.dumps([[at, status] for at, status in receipts])


def sandbox(row: Row) -> SandboxMessage:
    """A sandbox_messages row as a record."""
    return SandboxMessage(
        message_id=row["message_id"],
        provider_message_id=row["provider_message_id"],
        channel=row["channel"],
        recipient=row["recipient"],
        text=row["text"],
        attempts=row["attempts"],
        received_at=row["received_at"],
        receipts_due=tuple(
            (float(at), str(status)) for at, status in json.loads(row["receipts_due"])
        ),
    )


def job(row: Row) -> Job:
    """A jobs row as a claimed or pending job."""
    return Job(
        id=row["id"],
        kind=row["kind"],
        ref=row["ref"],
        run_at=row["run_at"],
        attempts=row["attempts"],
    )
