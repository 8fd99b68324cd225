"""Connection limits for the HTTP server: uvicorn's httptools protocol, with the bounds it lacks.

uvicorn closes a keep-alive connection left idle after a response (``timeout_keep_alive``), but
nothing bounds a connection that never completes a request head: a new connection that sends
nothing, or one that sends a byte now and then (which also cancels the keep-alive timer). Its
head size cap (``h11_max_incomplete_event_size``) is h11's alone; on httptools a head of any size
is read. ``limit_concurrency`` answers 503 to a complete request beyond the limit, but idle
sockets still hold a file descriptor each until accept() fails for want of one, and from then on
every new connection is reset. ``LimitedHttpToolsProtocol`` adds a head deadline, a head size cap
(431), and a cap on open connections below the file limit.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import msgspec
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from cascade.api.problems import PROBLEM_BASE
from cascade.config import Settings
from cascade.log import LogLimiter

log = structlog.get_logger(__name__)

#: file descriptors kept back from client connections: the listening socket, the database
#: (its pool), SMPP binds, webhook connections, log files and what libraries open
RESERVED_FILES = 64
#: the soft file limit asked for when the hard limit is unlimited
UNLIMITED_FILES = 1 << 20
#: lines per second for each kind of connection refusal logged; the rest are counted
REFUSAL_LINES_PER_SECOND = 5


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a head may take, how long an idle connection stays, how large a head may be
    and how many connections may be open at once."""

    head_timeout: float
    keepalive_timeout: float
    max_head_bytes: int
    max_connections: int


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each connection takes
    one); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def connection_limits(settings: Settings, file_limit: int) -> ConnectionLimits:
    """The limits of ``settings``, with the connection cap kept below ``file_limit`` (less
    what the database pool and the rest of the process need)."""
    reserved = RESERVED_FILES + settings.postgres_pool_size
    return ConnectionLimits(
        head_timeout=settings.http_head_timeout_seconds,
        keepalive_timeout=settings.http_keepalive_timeout_seconds,
        max_head_bytes=settings.http_max_head_bytes,
        max_connections=max(1, min(settings.http_max_connections, file_limit - reserved)),
    )


def limited_protocol(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for one server (uvicorn's ``http=``), with ``limits`` and its own
    register of open connections."""

    class ServerProtocol(LimitedHttpToolsProtocol):
        pass

    ServerProtocol.limits = limits
    ServerProtocol.open_connections = {}
    return ServerProtocol


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the cap."""


_HEAD_TOO_LARGE_BODY = msgspec.json.encode(
    {
        "type": f"{PROBLEM_BASE}#request-header-fields-too-large",
        "title": "Request Header Fields Too Large",
        "detail": "The request line and headers are larger than this server accepts.",
    }
)
_HEAD_TOO_LARGE = b"".join(
    [
        STATUS_LINE[431],
        b"content-type: application/problem+json\r\n",
        b"content-length: %d\r\n" % len(_HEAD_TOO_LARGE_BODY),
        b"connection: close\r\n\r\n",
        _HEAD_TOO_LARGE_BODY,
    ]
)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head, a cap on its size,
    and a cap on open connections (at the cap, a new connection closes the oldest one with no
    request in progress: idle sockets cannot lock out clients that send requests)."""

    limits: ClassVar[ConnectionLimits]
    #: this server's open connections, oldest first (a dict as an ordered set)
    open_connections: ClassVar[dict[LimitedHttpToolsProtocol, None]]
    _head_too_large_log: ClassVar[LogLimiter] = LogLimiter(REFUSAL_LINES_PER_SECOND)
    _full_log: ClassVar[LogLimiter] = LogLimiter(REFUSAL_LINES_PER_SECOND)
    _bad_request_log: ClassVar[LogLimiter] = LogLimiter(REFUSAL_LINES_PER_SECOND)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn annotates it int; loop.call_later takes the float of the setting
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._head_deadline: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        #: bytes received since the current head began (counted before parsing, so a header
        #: that never ends is caught while the parser still buffers it)
        self._received_head_bytes = 0
        #: whether the current head began in the read that ended the request before it (that
        #: part of it was not counted)
        self._unmetered = False
        #: the headers of the request that ended last (uvicorn makes a new list per request)
        self._finished_headers: list[tuple[bytes, bytes]] | None = None
        #: whether the connection is TLS (cascade serve --ssl-certfile)
        self._tls = False

    # --- connections ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = transport.get_extra_info("ssl_object") is not None
        self.open_connections[self] = None
        if len(self.open_connections) > self.limits.max_connections:
            self._make_room()
        if not transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def _make_room(self) -> None:
        """At the cap: close the oldest connection with no request in progress, or else this
        new one."""
        victim = next(
            (other for other in self.open_connections if other is not self and other._idle()),
            self,
        )
        suppressed = self._full_log.admit()
        if suppressed is not None:
            log.warning(
                "http.connections_full",
                max_connections=self.limits.max_connections,
                closed="an idle connection" if victim is not self else "the new connection",
                suppressed=suppressed,
            )
        victim._close()

    def _idle(self) -> bool:
        """No request being answered (waiting for a head, or idle between requests)."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _close(self) -> None:
        self._forget()
        self._end()

    def _end(self) -> None:
        """Close the connection. Over TLS a close waits (up to 30 s) for the client's
        close_notify, which an idle keep-alive client never sends: with nothing left to
        write, the connection is dropped at once instead, so it neither holds its file for
        that long nor keeps a stopping server waiting."""
        if self.transport.is_closing():
            return
        if self._tls and self.transport.get_write_buffer_size() == 0:
            self.transport.abort()
        else:
            self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        """An idle keep-alive connection's time is up: end it."""
        self._end()

    def shutdown(self) -> None:
        """The server is stopping: end an idle connection now; one answering a request
        closes once its response is sent (uvicorn's way)."""
        if self.cycle is None or self.cycle.response_complete:
            self._end()
        else:
            super().shutdown()

    def _forget(self) -> None:
        self.open_connections.pop(self, None)
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    # --- the head deadline ---------------------------------------------------------------

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.limits.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self._idle():
            # a pipelined head waits (reading paused) while the request before it is answered
            self._arm_head_deadline()
            return
        self._close()

    # --- parsing ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._received_head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
            else:
                self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._unmetered and self.headers is self._finished_headers:
            # no request began after the one that ended in this read: nothing went uncounted
            self._unmetered = False
        if self._awaiting_head:
            if self._received_head_bytes > self.limits.max_head_bytes:
                self._refuse_head()
            elif self._head_deadline is None and self._received_head_bytes:
                # a request after an idle keep-alive began but its head did not end in this
                # read: it is now due (a head read whole never costs a timer)
                self._arm_head_deadline()

    def _bad_request(self) -> None:
        """uvicorn's 400 for bytes that are not HTTP, logged at a bounded rate."""
        msg = "Invalid HTTP request received."
        suppressed = self._bad_request_log.admit()
        if suppressed is not None:
            log.warning("http.invalid_request", suppressed=suppressed)
        self.send_400_response(msg)

    def _refuse_head(self) -> None:
        """Answer 431 and close: the head is over the cap."""
        suppressed = self._head_too_large_log.admit()
        if suppressed is not None:
            log.info(
                "http.head_too_large",
                max_head_bytes=self.limits.max_head_bytes,
                suppressed=suppressed,
            )
        self._forget()
        if not self.transport.is_closing():
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        # the bytes counted may include a body that came with the head: only then (or when
        # the head began inside an earlier request's last read) is the head measured itself,
        # keeping the per-header callbacks off the path of every request
        if self._received_head_bytes > self.limits.max_head_bytes or self._unmetered:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limits.max_head_bytes:
                raise _HeadTooLarge
        self._awaiting_head = False
        self._unmetered = False
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True
        self._received_head_bytes = 0
        # the rest of this read (a pipelined request) is not counted
        self._unmetered = True
        self._finished_headers = self.headers
