"""Request bodies and assertions shared by the HTTP contract tests."""

from __future__ import annotations

import copy
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import httpx

from cascade.store.sqlite import SqliteStore

#: which address field each channel uses for (to, from)
ADDRESSING = {
    "sms": ("number", "number"),
    "mms": ("number", "number"),
    "whatsapp": ("number", "number"),
    "messenger": ("id", "id"),
    "viber_service_msg": ("number", "id"),
}
CHANNELS = tuple(ADDRESSING)
_TO = {"number": "447700900000", "id": "1234567890"}
_FROM = {"number": "447700900001", "id": "cascade-sender"}

IMAGE_URL = "https://example.com/cat.jpg"
PROBLEM_FIELDS = {"type", "title", "detail", "instance"}
STORED_TABLES = ("workflows", "messages", "jobs", "events", "idempotency_keys")


def message(
    channel: str,
    content: dict[str, Any] | None = None,
    *,
    to: dict[str, Any] | None = None,
    from_: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A valid Messages v0.1 body for ``channel``; each argument replaces its part."""
    to_field, from_field = ADDRESSING.get(channel, ("number", "number"))
    if content is None:
        content = (
            {"type": "image", "image": {"url": IMAGE_URL}}
            if channel == "mms"
            else {"type": "text", "text": "Hello from Cascade"}
        )
    return {
        "to": to if to is not None else {"type": channel, to_field: _TO[to_field]},
        "from": from_ if from_ is not None else {"type": channel, from_field: _FROM[from_field]},
        "message": {"content": content, **(options or {})},
        **extra,
    }


def text(channel: str, body: str, **extra: Any) -> dict[str, Any]:
    """A text message on ``channel``."""
    return message(channel, {"type": "text", "text": body}, **extra)


def failover(expiry_time: Any = 600, condition_status: Any = "delivered") -> dict[str, Any]:
    """A step's failover object."""
    return {"expiry_time": expiry_time, "condition_status": condition_status}


def workflow(*steps: dict[str, Any], template: Any = "failover") -> dict[str, Any]:
    """A Dispatch body of these steps, as given (failover objects included or not)."""
    return {"template": template, "workflow": list(steps)}


def failover_workflow() -> dict[str, Any]:
    """A valid two-step workflow: Messenger, then SMS."""
    return workflow(
        {**text("messenger", "Hi"), "failover": failover(600, "read")},
        text("sms", "Hi by SMS"),
    )


@dataclass(frozen=True)
class Api:
    """One accept surface: its path, the id field of its 202, and its body shape."""

    path: str
    id_field: str
    takes_workflow: bool

    def body(self, single: dict[str, Any]) -> dict[str, Any]:
        """``single`` (a one-message body) in this surface's shape."""
        return workflow(copy.deepcopy(single)) if self.takes_workflow else copy.deepcopy(single)

    def name(self, field: str) -> str:
        """The JSON path of a message field as this surface reports it."""
        return f"workflow[0].{field}" if self.takes_workflow else field

    def __str__(self) -> str:
        return self.path


MESSAGES = Api("/v0.1/messages", "message_uuid", takes_workflow=False)
BETA_MESSAGES = Api("/beta/messages", "message_uuid", takes_workflow=False)
DISPATCH = Api("/v0.1/dispatch", "dispatch_uuid", takes_workflow=True)
WORKFLOWS = Api("/beta/workflows", "workflow_uuid", takes_workflow=True)
APIS = (MESSAGES, BETA_MESSAGES, DISPATCH, WORKFLOWS)
WORKFLOW_APIS = (DISPATCH, WORKFLOWS)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 7807 body of ``response``, after checking its status, type and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_FIELDS
    assert all(isinstance(body[name], str) and body[name] for name in PROBLEM_FIELDS)
    return body


def bad_names(response: httpx.Response) -> set[str]:
    """The field names a 400 problem lists in ``invalid_parameters``."""
    body = assert_problem(response, 400)
    parameters = body.get("invalid_parameters", [])
    assert all(isinstance(p["reason"], str) and p["reason"] for p in parameters)
    return {p["name"] for p in parameters}


def reasons(response: httpx.Response) -> dict[str, str]:
    """``invalid_parameters`` as name -> reason."""
    return {p["name"]: p["reason"] for p in response.json()["invalid_parameters"]}


def stored_rows(store: SqliteStore) -> dict[str, int]:
    """How many rows each request-related table holds, read from the file itself."""
    with closing(sqlite3.connect(store.path)) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in STORED_TABLES
        }


def assert_nothing_stored(store: SqliteStore) -> None:
    """No request left a row behind."""
    assert stored_rows(store) == dict.fromkeys(STORED_TABLES, 0)
