"""The ceiling of the accept benchmark: a raw ASGI app that answers like Cascade, doing nothing.

``POST`` anything: the body is read and dropped, and the reply is ``202`` with a constant
``{"dispatch_uuid":"..."}`` body of the same length as Cascade's. ``GET`` anything: ``200
{"status":"ok"}`` (the load generators use it for the health check and while draining).

Served by ``bench/accept.py`` as ``uvicorn trivial_app:app --loop uvloop --http httptools``, one
worker, the same server stack as ``cascade serve``, so the ratio of the two measures what
Cascade's own work costs (framework, validation, auth, the durable write).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ACCEPTED = b'{"dispatch_uuid":"00000000-0000-4000-8000-000000000000"}'
_HEALTHY = b'{"status":"ok"}'


def _start(status: int, body: bytes) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request at once; accept the lifespan protocol and do nothing in it."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body; it ends with more_body False (or a disconnect)
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    if scope["method"] == "POST":
        status, body = 202, _ACCEPTED
    else:
        status, body = 200, _HEALTHY
    await send(_start(status, body))
    await send({"type": "http.response.body", "body": body})
