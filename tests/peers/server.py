"""Serving a fake platform: an ASGI app on uvicorn, on a free port of 127.0.0.1, in the test's
own event loop; and the callback client that posts the platform's signed callbacks."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.types import ASGIApp


class LoopbackServer:
    """Runs ``app`` on uvicorn on 127.0.0.1 (a free port) until :meth:`stop`."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL it serves, e.g. http://127.0.0.1:40123."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen and serve; returns once it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # it failed to start: say why
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop serving (requests in progress get a second to finish) and close the socket."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None


@dataclass(frozen=True)
class Callback:
    """One callback a fake platform sent: where, its exact body and headers, and the answer
    (None when the receiver could not be reached)."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None


@dataclass
class CallbackClient:
    """Posts callbacks as a platform does: a 200 ends it, anything else (or no answer) is
    tried again ``attempts`` times in all, ``delay`` seconds apart. ``verify`` is how an https
    receiver's certificate is checked (a context trusting a test's own CA)."""

    attempts: int = 3
    delay: float = 0.05
    sent: list[Callback] = field(default_factory=list)
    verify: ssl.SSLContext | bool = True
    _client: httpx.AsyncClient | None = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        """Post ``body`` to ``url`` until answered 200 or out of attempts; the last status."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0, trust_env=False, verify=self.verify)
        status: int | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.delay)
            try:
                response = await self._client.post(url, content=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError:
                status = None
            self.sent.append(Callback(url, body, dict(headers), status))
            if status == 200:
                break
        return status

    async def get(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        """One GET (a subscription handshake): the status and body of the answer."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0, trust_env=False, verify=self.verify)
        response = await self._client.get(url, params=params)
        return response.status_code, response.text

    async def close(self) -> None:
        """Close its connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
