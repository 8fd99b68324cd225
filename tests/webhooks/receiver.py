"""A real HTTP receiver for customer webhooks: an asyncio server on 127.0.0.1 speaking just
enough HTTP/1.1 (keep-alive, Content-Length bodies), whose answer to each request is scripted
and which records every request with its headers and exact body bytes.

Scripted behaviours, in the order requests arrive (then ``default`` for every later one):

- :class:`Respond` — a status line, headers and a body, optionally after a real delay or sent a
  few bytes at a time;
- :class:`Hang` — read the request and never answer (until the client gives up);
- :class:`Close` — read the request and close the connection without a word.

:meth:`Receiver.down` stops listening (connections are then refused) and :meth:`Receiver.up`
listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import jwt
import msgspec
from vonage_jwt import verify_signature

from cascade.clock import Clock

REASONS = {
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    401: "Unauthorized",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Respond:
    """Answer with this status, headers and body, after ``delay`` real seconds; with
    ``trickle``, the answer goes out one byte every ``trickle`` seconds."""

    status: int = 204
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay: float = 0.0
    trickle: float | None = None


@dataclass(frozen=True)
class Hang:
    """Never answer; wait until the client closes the connection."""


@dataclass(frozen=True)
class Close:
    """Close the connection without answering."""


Action = Respond | Hang | Close


@dataclass(frozen=True)
class Request:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # the test clock's time when it arrived
    real_at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        """The body, decoded."""
        return msgspec.json.decode(self.body)

    @property
    def token(self) -> str:
        """The bearer token of its Authorization header."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        assert scheme == "Bearer", self.headers
        return token


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Receiver:
    """A scripted webhook receiver on 127.0.0.1."""

    clock: Clock
    port: int = field(default_factory=free_port)
    default: Action = field(default_factory=Respond)
    requests: list[Request] = field(default_factory=list)
    #: the most connections that were open at once
    peak_connections: int = 0
    _script: deque[Action] = field(default_factory=deque)
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def then(self, *actions: Action) -> Receiver:
        """Answer the next requests with these actions, in order."""
        self._script.extend(actions)
        return self

    async def up(self) -> Receiver:
        """Listen (again) on the port."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
        return self

    async def down(self) -> None:
        """Stop listening and drop open connections: new connections are refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def wait_for(self, count: int, within: float = 5.0) -> list[Request]:
        """Wait (in real time) until at least ``count`` requests arrived."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.peak_connections = max(self.peak_connections, len(self._connections))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body, self.clock.now(), time.monotonic())
                action = self._script.popleft() if self._script else self.default
                async with self._arrived:
                    self.requests.append(request)
                    self._arrived.notify_all()
                if isinstance(action, Close):
                    return
                if isinstance(action, Hang):
                    await reader.read()  # until the client gives up
                    return
                await self._respond(writer, action)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # down() ends the connection: the task ends as done, since Python 3.11's
            # start_server logs a handler that ends cancelled as an "Exception in callback"
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, action: Respond) -> None:
        if action.delay:
            await asyncio.sleep(action.delay)
        reason = REASONS.get(action.status, "Whatever")
        head = [f"HTTP/1.1 {action.status} {reason}", f"Content-Length: {len(action.body)}"]
        head += [f"{name}: {value}" for name, value in action.headers]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + action.body
        if action.trickle is None:
            writer.write(raw)
            await writer.drain()
            return
        for index in range(len(raw)):
            writer.write(raw[index : index + 1])
            await writer.drain()
            await asyncio.sleep(action.trickle)


def verify(request: Request, secret: str) -> dict[str, Any]:
    """Check a webhook as a Vonage receiver does and return its claims: the token verifies with
    ``vonage_jwt.verify_signature`` and the signature secret, and ``payload_hash`` is the
    SHA-256 of the exact body bytes received."""
    token = request.token
    assert verify_signature(token, secret) is True
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["payload_hash"] == hashlib.sha256(request.body).hexdigest()
    return claims
