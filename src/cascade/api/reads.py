"""Reading back: a workflow or a message with its whole timeline, and filtered, paged lists.

Everything is scoped to the caller's account: another account's id is a 404, exactly like an
id that does not exist. Lists are newest first and paged by an opaque cursor (a keyset on
creation time and id, so pages stay stable while new rows arrive). Dispatches (made through
``/v0.1/dispatch`` or ``/beta/workflows``) are read and listed under ``/v0.1/dispatch``; a plain
message (``/v0.1/messages``) is read and listed under ``/v0.1/messages`` only.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cascade.api.auth import Authenticator, Principal
from cascade.domain.records import Surface, WorkflowState
from cascade.domain.status import Status
from cascade.errors import InvalidParameter, InvalidRequest, NotFound
from cascade.store.base import ListQuery, Reading, Webhooks
from cascade.views import (
    message_timeline,
    message_view,
    webhook_views,
    workflow_summary,
    workflow_view,
)

MAX_PAGE = 100
_CHANNELS = {"sms", "mms", "whatsapp", "messenger", "viber_service_msg"}


def encode_cursor(created_at: float, row_id: str) -> str:
    """The opaque cursor of the page after a row."""
    return base64.urlsafe_b64encode(f"{created_at!r}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The keyset a cursor names; InvalidRequest when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, row_id = raw.split("|", 1)
        moment = float(created_at)
        if not (math.isfinite(moment) and _is_our_id(row_id)):
            raise ValueError("not a cursor of ours")
        return moment, row_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            invalid_parameters=[InvalidParameter("cursor", "is not a cursor this API returned")]
        ) from exc


def _time(name: str, value: str, bad: list[InvalidParameter]) -> float | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        bad.append(InvalidParameter(name, "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"))
        return None
    if moment.tzinfo is None:
        bad.append(InvalidParameter(name, "must name its time zone, e.g. a trailing Z"))
        return None
    return moment.timestamp()


def _page_size(raw: str) -> int | None:
    """The page size ``raw`` names, or None when it names none from 1 to MAX_PAGE."""
    # isdigit() alone takes "²" and other digits int() refuses, and int() refuses more than
    # 4,300 digits: only a few ASCII digits can name a page size
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3):
        return None
    size = int(raw)
    return size if 1 <= size <= MAX_PAGE else None


def _is_our_id(value: str) -> bool:
    """Whether ``value`` can be an id this API gave out (printable ASCII of a sane length): any
    other is not looked up, since a store may refuse it (PostgreSQL cannot take U+0000)."""
    return 0 < len(value) <= 100 and value.isascii() and value.isprintable()


def parse_list_query(request: Request, states: set[str]) -> ListQuery:
    """The filters and page of a list request; InvalidRequest naming each bad parameter."""
    params = request.query_params
    bad: list[InvalidParameter] = []
    known = {"status", "channel", "created_after", "created_before", "page_size", "cursor"}
    for name in params:
        if name not in known:
            bad.append(InvalidParameter(name, "is not a known query parameter"))
    limit = 50
    if "page_size" in params:
        size = _page_size(params["page_size"])
        if size is None:
            bad.append(
                InvalidParameter("page_size", f"must be a whole number from 1 to {MAX_PAGE}")
            )
        else:
            limit = size
    state = params.get("status")
    if state is not None and state not in states:
        bad.append(InvalidParameter("status", f"must be one of {', '.join(sorted(states))}"))
    channel = params.get("channel")
    if channel is not None and channel not in _CHANNELS:
        bad.append(InvalidParameter("channel", f"must be one of {', '.join(sorted(_CHANNELS))}"))
    after = (
        _time("created_after", params["created_after"], bad) if "created_after" in params else None
    )
    until = (
        _time("created_before", params["created_before"], bad)
        if "created_before" in params
        else None
    )
    before = decode_cursor(params["cursor"]) if "cursor" in params else None
    if bad:
        raise InvalidRequest(invalid_parameters=bad)
    return ListQuery(
        limit=limit,
        before=before,
        state=state,
        channel=channel,
        created_after=after,
        created_before=until,
    )


def _page(
    request: Request,
    items: list[dict[str, Any]],
    key: str,
    last: tuple[float, str] | None,
    page_size: int,
) -> Response:
    """A page of a list: ``page_size`` is the size asked for (the last page holds fewer)."""
    body: dict[str, Any] = {"page_size": page_size, "_embedded": {key: items}, "_links": {}}
    if last is not None:
        query = {k: v for k, v in request.query_params.items() if k != "cursor"}
        query["cursor"] = encode_cursor(*last)
        href = request.url.path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        body["_links"]["next"] = {"href": href}
    return JSONResponse(body)


class ReadStore(Reading, Webhooks, Protocol):
    """What the read endpoints use of the store: workflows and messages, and the webhooks
    that reported them."""


class ReadEndpoints:
    """GET handlers of workflows and messages."""

    def __init__(self, store: ReadStore, authenticator: Authenticator) -> None:
        self._store = store
        self._authenticator = authenticator

    async def _principal(self, request: Request) -> Principal:
        return await self._authenticator.authenticate(request.headers.getlist("authorization"))

    async def workflow(self, request: Request) -> Response:
        """One dispatch with its steps and timeline (a plain message is not one: it is read
        at /v0.1/messages/{message_uuid})."""
        principal = await self._principal(request)
        workflow_id = str(request.path_params["uuid"])
        workflow = (
            await self._store.get_workflow(principal.account.id, workflow_id)
            if _is_our_id(workflow_id)
            else None
        )
        if workflow is None:
            raise NotFound("No workflow with this id in your account.")
        if workflow.surface is Surface.MESSAGES:
            message_id = workflow.messages[0].id if workflow.messages else "{message_uuid}"
            raise NotFound(
                "This id is a plain message's, not a dispatch's: "
                f"read it at /v0.1/messages/{message_id}."
            )
        return JSONResponse(workflow_view(workflow, await self._webhooks(workflow.id)))

    async def _webhooks(
        self, workflow_id: str, message_id: str | None = None
    ) -> list[dict[str, Any]]:
        hooks = await self._store.list_webhooks(workflow_id=workflow_id, limit=1000)
        if message_id is not None:
            hooks = [hook for hook in hooks if hook.message_id == message_id]
        attempts = await self._store.webhook_attempts([hook.id for hook in hooks])
        return webhook_views(hooks, attempts)

    async def message(self, request: Request) -> Response:
        """One message with its statuses and its timeline (retries included) and webhooks."""
        principal = await self._principal(request)
        message_id = str(request.path_params["uuid"])
        message = (
            await self._store.get_message(principal.account.id, message_id)
            if _is_our_id(message_id)
            else None
        )
        if message is None:
            raise NotFound("No message with this id in your account.")
        workflow = await self._store.get_workflow(principal.account.id, message.workflow_id)
        events = workflow.events if workflow is not None else ()
        view = message_view(message, events)
        if workflow is not None:
            view["timeline"] = message_timeline(workflow, message.id)
        view["webhooks"] = await self._webhooks(message.workflow_id, message.id)
        return JSONResponse(view)

    async def workflows(self, request: Request) -> Response:
        """The account's dispatches (no plain messages), newest first, filtered and paged."""
        principal = await self._principal(request)
        query = parse_list_query(request, {s.value for s in WorkflowState})
        if query.channel is not None:
            raise InvalidRequest(
                invalid_parameters=[InvalidParameter("channel", "only filters messages")]
            )
        query = dataclasses.replace(query, dispatches_only=True)
        rows = await self._store.list_workflows(principal.account.id, query)
        last = (rows[-1].created_at, rows[-1].id) if len(rows) == query.limit else None
        return _page(request, [workflow_summary(w) for w in rows], "workflows", last, query.limit)

    async def messages(self, request: Request) -> Response:
        """The account's messages, newest first, filtered and paged."""
        principal = await self._principal(request)
        query = parse_list_query(request, {s.value for s in Status})
        rows = await self._store.list_messages(principal.account.id, query)
        last = (rows[-1].created_at, rows[-1].id) if len(rows) == query.limit else None
        return _page(request, [message_view(m) for m in rows], "messages", last, query.limit)

    def routes(self) -> list[tuple[str, Callable[[Request], Awaitable[Response]]]]:
        """(path, handler) of every GET endpoint."""
        return [
            ("/v0.1/dispatch/{uuid}", self.workflow),
            ("/beta/workflows/{uuid}", self.workflow),
            ("/v0.1/messages/{uuid}", self.message),
            ("/v0.1/dispatch", self.workflows),
            ("/v0.1/messages", self.messages),
        ]
