"""The JSON shape of each record the ``cascade`` command prints with ``--json``: one shape per
kind of record, whichever command prints it, so a script reads every command the same way.

A key is always present; a value the command does not show (a secret it was not asked for, a
key file it did not write) is null. Times are ISO 8601 in UTC, as the API writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascade.domain.records import Account, Application, WebhookRecord, WebhookState
from cascade.webhooks.payloads import timestamp


def _time(at: float | None) -> str | None:
    return None if at is None else timestamp(at)


def account_json(
    account: Account, *, show_signature_secret: bool = False, api_secret: str | None = None
) -> dict[str, Any]:
    """An account: its API key and webhook URLs; the signature secret when shown, and the API
    secret only from the command that just made it (it is stored nowhere)."""
    return {
        "account_id": account.id,
        "api_key": account.api_key,
        "api_secret": api_secret,
        "signature_secret": account.signature_secret if show_signature_secret else None,
        "status_url": account.status_url,
        "inbound_url": account.inbound_url,
        "sandbox": account.sandbox,
        "created_at": _time(account.created_at),
    }


def application_json(application: Application, key_path: Path | None = None) -> dict[str, Any]:
    """An application: its id, name, webhook URLs and webhook shape, and the private key file
    the command wrote (null when it wrote none)."""
    return {
        "application_id": application.id,
        "name": application.name,
        "status_url": application.status_url,
        "inbound_url": application.inbound_url,
        "webhook_version": application.webhook_version,
        "created_at": _time(application.created_at),
        "private_key_file": None if key_path is None else str(key_path),
    }


def webhook_json(hook: WebhookRecord) -> dict[str, Any]:
    """A webhook's delivery: what it is about, where it goes, how its attempts went, and the
    next one while it is pending."""
    pending = hook.state == WebhookState.PENDING
    return {
        "id": hook.id,
        "kind": hook.kind.value,
        "state": hook.state.value,
        "workflow_uuid": hook.workflow_id,
        "message_uuid": hook.message_id,
        "url": hook.url,
        "attempt_count": hook.attempts,
        "created_at": _time(hook.created_at),
        "last_attempt_at": _time(hook.last_attempt_at),
        "next_attempt_at": _time(hook.next_attempt_at) if pending else None,
        "delivered_at": _time(hook.delivered_at),
        "last_status": hook.last_status,
        "last_error": hook.last_error,
    }
