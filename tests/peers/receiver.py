"""A tiny callback receiver that checks the platforms' signatures, to test the fake platforms'
callbacks (Cascade's own intake endpoints are tested elsewhere).

It answers the Graph ``GET`` subscription handshake, and takes a ``POST`` only with a valid
``X-Hub-Signature-256`` (``sha256=`` + hex HMAC-SHA256 of the raw body, keyed by one of
``app_secrets``) or ``X-Viber-Content-Signature`` (bare hex HMAC-SHA256 keyed by one of
``viber_tokens``), compared in constant time: 200 and kept in ``accepted``, else 403 and kept
in ``refused``. ``fail_next`` answers that many valid callbacks 500 first, to see retries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.peers.server import LoopbackServer


@dataclass(frozen=True)
class Delivered:
    """One callback received: its signing scheme (``meta`` or ``viber``), body and raw bytes."""

    scheme: str
    body: Any
    raw: bytes


def _valid(signature: str, keys: set[str], raw: bytes) -> bool:
    return any(
        hmac.compare_digest(signature, hmac.new(key.encode(), raw, hashlib.sha256).hexdigest())
        for key in keys
    )


@dataclass
class SignedReceiver:
    """See the module doc; ``async with`` starts and stops it."""

    app_secrets: set[str] = field(default_factory=set)
    viber_tokens: set[str] = field(default_factory=set)
    verify_token: str = "verify-me"
    fail_next: int = 0
    accepted: list[Delivered] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    _server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        """The callback URL."""
        assert self._server is not None
        return self._server.url + "/callback"

    async def __aenter__(self) -> SignedReceiver:
        app = Starlette(routes=[Route("/callback", self._callback, methods=["GET", "POST"])])
        self._server = LoopbackServer(app)
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop()

    def reset(self) -> None:
        """Forget what was received (one receiver may serve a whole module)."""
        self.accepted.clear()
        self.refused.clear()
        self.fail_next = 0

    def bodies(self, scheme: str) -> list[Any]:
        """The decoded bodies accepted under one scheme, in order."""
        return [item.body for item in self.accepted if item.scheme == scheme]

    async def _callback(self, request: Request) -> Response:
        if request.method == "GET":
            query = request.query_params
            if query.get("hub.mode") == "subscribe" and query.get("hub.verify_token") == (
                self.verify_token
            ):
                return PlainTextResponse(query.get("hub.challenge", ""))
            return Response(status_code=403)
        raw = await request.body()
        meta = request.headers.get("x-hub-signature-256", "")
        viber = request.headers.get("x-viber-content-signature", "")
        scheme = None
        digest = meta.removeprefix("sha256=")
        if meta.startswith("sha256=") and _valid(digest, self.app_secrets, raw):
            scheme = "meta"
        elif viber and _valid(viber, self.viber_tokens, raw):
            scheme = "viber"
        if scheme is None:
            self.refused.append(raw)
            return Response(status_code=403)
        if self.fail_next:
            self.fail_next -= 1
            return Response(status_code=500)
        self.accepted.append(Delivered(scheme, json.loads(raw), raw))
        return Response(status_code=200)
