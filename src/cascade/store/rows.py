"""What the two SQL stores share: the columns they read and how a row becomes a record.

SQLite and PostgreSQL store the same tables (JSON bodies as text, times as seconds), so a row
reads back the same way from either driver; only placeholders and transactions differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from cascade.domain.records import (
    MessageRecord,
    SandboxMessage,
    StepState,
    Surface,
    WebhookRecord,
    WorkflowRecord,
    WorkflowState,
)

ACCOUNT_COLUMNS = (
    "id, api_key, api_secret_sha256, signature_secret, status_url, inbound_url, created_at"
)
APPLICATION_COLUMNS = "id, account_id, name, public_key_pem, status_url, inbound_url, created_at"
#: the columns an accepted message is inserted with
MESSAGE_COLUMNS = (
    "id, workflow_id, step, account_id, channel, recipient, sender, body, client_ref, "
    "expiry_time, condition_status, state, status, error_code, error_reason, provider, "
    "provider_message_id, price, currency, started_at, created_at, updated_at"
)
#: what a MessageRecord is read from (the stored columns plus the last transient error)
MESSAGE_READ = MESSAGE_COLUMNS + ", last_error_code, last_error_reason, segments"
WORKFLOW_COLUMNS = (
    "id, account_id, application_id, surface, state, created_at, updated_at, finished_at"
)
WEBHOOK_COLUMNS = (
    "id, account_id, application_id, workflow_id, message_id, kind, url, body, state, "
    "attempts, created_at, first_attempt_at, last_attempt_at, next_attempt_at, last_status, "
    "last_error, delivered_at"
)
SANDBOX_COLUMNS = (
    "message_id, provider_message_id, channel, recipient, text, attempts, received_at, receipts_due"
)


def message(row: Sequence[Any]) -> MessageRecord:
    """A message row (MESSAGE_READ) as a record, its JSON text columns back to bytes."""
    values = list(row)
    for index in (5, 6, 7):  # recipient, sender, body
        values[index] = values[index].encode()
    values[11] = StepState(values[11])
    return MessageRecord(*values)


def workflow(row: Sequence[Any], messages: Iterable[MessageRecord] = ()) -> WorkflowRecord:
    """A workflow row (WORKFLOW_COLUMNS) with its messages, as a record."""
    return WorkflowRecord(
        id=row[0],
        account_id=row[1],
        application_id=row[2],
        surface=Surface(row[3]),
        state=WorkflowState(row[4]),
        created_at=row[5],
        updated_at=row[6],
        finished_at=row[7],
        messages=tuple(messages),
    )


def workflows(
    rows: Sequence[Sequence[Any]], message_rows: Iterable[Sequence[Any]]
) -> list[WorkflowRecord]:
    """Workflow rows, each with its messages picked from ``message_rows``."""
    by_workflow: dict[str, list[MessageRecord]] = {}
    for record in map(message, message_rows):
        by_workflow.setdefault(record.workflow_id, []).append(record)
    return [workflow(row, by_workflow.get(row[0], ())) for row in rows]


def webhook(row: Sequence[Any]) -> WebhookRecord:
    """A webhook row (WEBHOOK_COLUMNS) as a record, its body back to bytes."""
    values = list(row)
    values[7] = values[7].encode()
    return WebhookRecord(*values)


def encode_receipts(receipts: Sequence[tuple[float, str]]) -> str:
    """The receipts a sandbox message owes, as the JSON text stored."""
    return json.dumps([[at, status] for at, status in receipts])


def sandbox(row: Sequence[Any]) -> SandboxMessage:
    """A sandbox journal row (SANDBOX_COLUMNS) as a record."""
    due = tuple((float(at), str(status)) for at, status in json.loads(row[7]))
    return SandboxMessage(row[0], row[1], row[2], row[3], row[4], row[5], row[6], due)
