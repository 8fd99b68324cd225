"""A lean HTTP/1.1 client for POSTs: pooled keep-alive connections, responses parsed by
``httptools`` (the C parser uvicorn uses). Webhook delivery and the linked-channel adapters
(Messenger, WhatsApp, Viber) both send through it.

Why not aiohttp or httpx: on this hardware one aiohttp POST costs about 100 µs of event-loop
CPU, one httpx POST about 300 µs, and this client about 15 µs (BENCHMARKS.md, "Webhook
delivery" and "Messenger"). Every SMS sends two status webhooks and every Messenger message one
Send API call and three webhooks, at a thousand or more a second. What is needed is a small
part of HTTP: one POST with a small body, a status code, a few headers (``Retry-After``,
``Location``) and a bounded answer. Redirects are never followed, cookies never kept, proxies
never used.

The caller bounds each request's time (``asyncio.timeout``, or ``post``'s own ``within``,
which also says whether the request was written before time ran out); a request cancelled or
failed midway closes its connection, so a pooled connection is always between two whole
exchanges. Every failure is :class:`~cascade.errors.PeerUnreachable`, whose ``request_sent``
says whether the peer can have acted on the request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from cascade.errors import DestinationRefused, PeerUnreachable
from cascade.reach import AddressRule

#: characters sent as they are in a request target; anything else is percent-encoded
_TARGET_SAFE = "/?&=%:@!$'()*+,;-._~[]"
#: response headers kept: what a webhook attempt or a platform's error answer needs
_KEPT_HEADERS = frozenset({b"retry-after", b"location"})


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a request goes: one pool of connections per destination."""

    scheme: str
    host: str
    port: int

    @property
    def key(self) -> str:
        """The destination as text (scheme://host:port, an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Target:
    """A URL made ready to send to: its destination, request target and ``Host`` header."""

    destination: Destination
    #: the path and query, percent-encoded as a request line needs
    path: str
    #: the ``Host`` header (the port only when it is not the scheme's default)
    host_header: str


def parse_url(url: str) -> Target:
    """The request target of an http(s) URL; ValueError says why no request can go to it."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"the URL is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("the URL is not http(s)")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        # the signed bearer token is the Authorization header: there is no room for Basic too
        raise ValueError("the URL carries credentials; webhooks are signed with a bearer token")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"the URL's host is not a valid name: {exc}") from exc
    default_port = 443 if parts.scheme == "https" else 80
    port = port or default_port
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == default_port else f"{bracketed}:{port}"
    path = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Target(Destination(parts.scheme, host, port), path, host_header)


@dataclass(slots=True)
class Response:
    """What is kept of an answer."""

    status: int
    #: the kept headers (lower-case names): ``retry-after`` and ``location`` when present
    headers: dict[str, str] = field(default_factory=dict)
    #: the start of the body, ``max_body`` bytes at most
    body: bytes = b""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request and parses its answer."""

    def __init__(self, pool: HttpClient, destination: Destination) -> None:
        self._pool = pool
        self.destination = destination
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_name = b""
        #: whether any byte of the current answer has arrived
        self.answered = False
        #: whether the connection may carry another request
        self.reusable = True
        self.closed = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, though they are one
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self.close()  # an answer nobody asked for: the connection is out of step
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(PeerUnreachable("the server switched protocols", request_sent=True))
        except httptools.HttpParserError as exc:
            self._fail(
                PeerUnreachable(f"the server's answer is not HTTP: {exc}", request_sent=True)
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._pool._forget(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._response is not None and self._parser is not None:
            # an answer with neither a length nor chunks ends when the connection does
            self._finish()
            return
        reason = f": {exc}" if exc else ""
        waiter.set_exception(
            PeerUnreachable(f"the server closed the connection{reason}", request_sent=True)
        )

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name:
            self._header_name = name.lower()
        if self._header_name in _KEPT_HEADERS and self._response is not None:
            key = self._header_name.decode("latin-1")
            self._response.headers[key] = self._response.headers.get(key, "") + value.decode(
                "latin-1"
            )

    def on_status(self, status: bytes) -> None:
        assert self._parser is not None
        self._response = Response(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        room = self._pool.max_body - self._body_size
        if room > 0:
            self._body.append(body[:room])
            self._body_size += min(room, len(body))

    def on_message_complete(self) -> None:
        response = self._response
        if response is not None and 100 <= response.status < 200:
            # an interim answer (100 Continue and the like): the real one follows
            self._response = None
            return
        assert self._parser is not None
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish()

    # -- requests

    def send(self, request: bytes) -> asyncio.Future[Response]:
        """Send one whole request; the future is its answer."""
        assert self._transport is not None
        assert self._waiter is None
        self._parser = httptools.HttpResponseParser(self)
        self._response = None
        self._body = []
        self._body_size = 0
        self.answered = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiter

    def _finish(self) -> None:
        waiter, response = self._waiter, self._response
        self._waiter = None
        self._parser = None
        if waiter is not None and not waiter.done() and response is not None:
            response.body = b"".join(self._body)
            waiter.set_result(response)

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        """Close the connection (it leaves the pool)."""
        self.reusable = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class HttpClient:
    """Keep-alive connections per destination, at most ``max_connections`` open in all."""

    def __init__(
        self,
        *,
        user_agent: str,
        max_connections: int = 256,
        max_body: int = 4096,
        ssl_context: ssl.SSLContext | None = None,
        reach: AddressRule | None = None,
    ) -> None:
        """``reach``: the addresses connections may be made to (default: any)."""
        self.user_agent = user_agent
        self._reach = reach if reach is not None and reach.restricts else None
        self.max_body = max_body
        self._ssl = ssl_context
        self._idle: dict[Destination, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._room = asyncio.Semaphore(max_connections)
        #: requests waiting for room to open a connection
        self._waiting_for_room = 0

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return len(self._open)

    async def post(
        self,
        target: Target,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        *,
        within: float | None = None,
        resend_on_stale: bool = True,
    ) -> Response:
        """POST ``body`` with ``headers`` (besides Host, User-Agent and Content-Length) and
        read the answer; PeerUnreachable when no answer could be had (also when ``within``
        seconds pass first). A kept connection the server closed just as it was taken is
        tried again on a new one unless ``resend_on_stale`` is false (a request that must not
        be repeated: the server may have read it before closing)."""
        head = [
            f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"User-Agent: {self.user_agent}\r\nContent-Length: {len(body)}\r\n"
        ]
        for name, value in headers:
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        if within is None:
            return await self._exchange(target.destination, request, resend_on_stale, [])
        sent: list[bool] = []
        try:
            async with asyncio.timeout(within):
                return await self._exchange(target.destination, request, resend_on_stale, sent)
        except TimeoutError as exc:
            if sent:
                raise PeerUnreachable(
                    f"no answer from {target.destination.key} within {within:g} s",
                    request_sent=True,
                ) from exc
            raise PeerUnreachable(
                f"connecting to {target.destination.key} timed out after {within:g} s",
                request_sent=False,
            ) from exc

    async def _exchange(
        self, destination: Destination, request: bytes, resend_on_stale: bool, sent: list[bool]
    ) -> Response:
        """Send ``request`` on a pooled connection and read its answer; ``sent`` gets an entry
        once it was written."""
        while True:
            connection, reused = await self._connection(destination)
            try:
                sent.append(True)
                response = await connection.send(request)
            except PeerUnreachable:
                connection.close()
                if resend_on_stale and reused and not connection.answered:
                    # the server closed an idle connection just as it was taken: the request
                    # never reached it, so it goes again on a new connection
                    sent.clear()
                    continue
                raise
            except BaseException:
                connection.close()  # cancelled midway: out of step with the server
                raise
            if connection.reusable and not self._waiting_for_room:
                self._idle.setdefault(destination, []).append(connection)
            else:
                connection.close()  # (and, at the limit, makes room for a waiting request)
            return response

    async def _connection(self, destination: Destination) -> tuple[_Connection, bool]:
        """An idle connection to ``destination`` (True) or a new one (False)."""
        idle = self._idle.get(destination)
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.reusable:
                return connection, True
        if self._room.locked():
            self._evict_idle()
        self._waiting_for_room += 1
        try:
            await self._room.acquire()
        finally:
            self._waiting_for_room -= 1
        loop = asyncio.get_running_loop()
        https = destination.scheme == "https"
        try:
            hosts = [destination.host]
            if self._reach is not None:
                hosts = await self._admitted_addresses(destination)
            for index, host in enumerate(hosts):
                try:
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self, destination),
                        host,
                        destination.port,
                        ssl=self._ssl_context() if https else None,
                        server_hostname=destination.host if https else None,
                    )
                    break
                except OSError:
                    if index == len(hosts) - 1:
                        raise  # each admitted address tried in turn, as a lookup's would be
        except OSError as exc:
            self._room.release()
            raise PeerUnreachable(
                f"connecting to {destination.key} failed: {type(exc).__name__}: {exc}",
                request_sent=False,
            ) from exc
        except BaseException:
            # cancelled (the caller's deadline) while connecting, or a refused destination
            self._room.release()
            raise
        self._open.add(protocol)
        return protocol, False

    async def _admitted_addresses(self, destination: Destination) -> list[str]:
        """The addresses ``destination``'s host resolves to that the rule admits, in the
        resolver's order, to connect to those very addresses (a second lookup could answer
        otherwise); DestinationRefused when it admits none, OSError when the name does not
        resolve."""
        assert self._reach is not None
        found = await asyncio.get_running_loop().getaddrinfo(
            destination.host, destination.port, type=socket.SOCK_STREAM
        )
        admitted = [
            str(sockaddr[0])
            for *_, sockaddr in found
            if self._reach.admits(ip_address(str(sockaddr[0])))
        ]
        if not admitted:
            refusal = self._reach.refusal(destination.host)
            raise DestinationRefused(f"{destination.key} refused: {refusal}")
        return list(dict.fromkeys(admitted))

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _evict_idle(self) -> None:
        """Close one idle connection (of any destination) to make room for a new one."""
        for connections in self._idle.values():
            while connections:
                connection = connections.pop(0)
                if not connection.closed:
                    connection.close()
                    return

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: it no longer counts against the limit."""
        if connection in self._open:
            self._open.discard(connection)
            self._room.release()
        idle = self._idle.get(connection.destination)
        if idle and connection in idle:
            idle.remove(connection)

    async def close(self) -> None:
        """Close every connection."""
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        # connection_lost runs on the next loop iterations
        for _ in range(3):
            if not self._open:
                break
            await asyncio.sleep(0)
