"""The access log: one line per HTTP request, and the request id that ties it to other lines.

Every request gets an id: the ``X-Request-Id`` a proxy in front sent when it is a sane token,
else one of ours. The response carries it back in ``X-Request-Id``, the access line names it,
and so do the lines logged while the request runs (a workflow accepted), so that an operator
can go from a client's complaint to everything the request did. The line holds the method,
the path (never the query string, where a careless client may put a secret), the status, the
duration and, once the request is authenticated, the account.

The line is written by a :class:`~cascade.log.HotLogger`: a few microseconds, where the same
line through structlog's processors would cost about half of what a whole accepted request
does (BENCHMARKS.md, "The access log").
"""

from __future__ import annotations

import itertools
import os
import re
import time
from contextvars import ContextVar, Token
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cascade.log import HotLogger, clip

log = HotLogger(__name__)

#: the response header (and request header, from a proxy) that carries the request id
REQUEST_ID_HEADER = b"x-request-id"
#: what a request id a client sent must look like to be used: a short token, nothing that
#: could forge a log line or smuggle a secret's worth of text
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,64}").fullmatch
#: how much of a path a line quotes (our longest, a read of one dispatch, is 52 characters)
PATH_CHARS = 128


class RequestContext:
    """One request being answered: its id (and the ``X-Request-Id`` header that carries it),
    when it started, and the account once the request is authenticated."""

    __slots__ = ("_token", "account_id", "header", "request_id", "started")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        self.account_id: str | None = None
        self.started = time.perf_counter()
        self._token: Token[RequestContext | None] | None = None

    @classmethod
    def begin(cls, scope: Scope) -> RequestContext:
        """The context of the HTTP request ``scope`` names, current until :meth:`end`."""
        context = cls(_request_id(scope["headers"]))
        context._token = _current.set(context)
        return context

    def end(self, scope: Scope, status: int, *, log_it: bool) -> None:
        """The request was answered with ``status``: no longer current, and (``log_it``) its
        access line logged."""
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if log_it and log.is_info():
            fields: dict[str, Any] = {
                "method": scope["method"],
                "path": clip(scope["path"], PATH_CHARS),
                "status": status,
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 2),
            }
            if self.account_id is not None:
                fields["account"] = self.account_id
            fields["request_id"] = self.request_id
            log.info_fields("http.request", fields)


_current: ContextVar[RequestContext | None] = ContextVar("cascade_request", default=None)


def current_request() -> RequestContext | None:
    """The request being answered in this task (None outside one)."""
    return _current.get()


def note_account(account_id: str) -> None:
    """Name the account the current request acts for, in its access line."""
    context = _current.get()
    if context is not None:
        context.account_id = account_id


class _RequestIds:
    """Request ids: a random prefix per process and a counter, 24 hex digits (unique across
    processes without a system call per request; a forked child draws its own prefix)."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count()

    def new(self) -> str:
        """A new request id."""
        return f"{self._prefix}{next(self._count):012x}"


new_request_id = _RequestIds().new


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The id a proxy in front gave the request, when sane; else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _SANE_ID(value):
                return value.decode("ascii")
            break
    return new_request_id()


class AccessLog:
    """ASGI middleware: gives each HTTP request an id (returned as ``X-Request-Id``) and, when
    ``enabled``, logs one ``http.request`` line once it is answered. (The accept fast path,
    ``api.app.AcceptFastPath``, does the same itself, without wrapping ``send``.)"""

    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext.begin(scope)
        # what the client got when the app raised before answering: the server's 500
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), context.header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.end(scope, status, log_it=self.enabled)
