"""A fake Viber Bot API on 127.0.0.1.

What it simulates:

- ``POST /pa/send_message``: the ``X-Viber-Auth-Token`` must be a registered bot's, the bot
  must have a webhook set (else status 10 ``webhookNotSet``, as Viber does), and the body must
  be one Viber takes (``receiver``; ``sender.name`` of 1 to 28 characters; ``min_api_version``;
  a ``type`` with its fields: ``text``, or ``picture`` with ``media`` and a ``text`` caption of
  at most 768 characters; at most 30 KB). Errors are HTTP 200 with a non-zero ``status`` and
  its ``status_message`` (:data:`STATUSES`); success is ``status`` 0 with a 64-bit
  ``message_token`` and a ``chat_hostname``.
- Error injection by ``receiver``: ``err-<status>`` answers with that Viber status,
  ``err-http-<status>`` with a bare HTTP status, ``hang`` never answers (until stopped).
- ``POST /pa/set_webhook``: sends the ``webhook`` probe event to the URL, signed, and sets it
  only when the probe is answered 200 (else status 1 ``invalidUrl``).
- Callbacks, signed ``X-Viber-Content-Signature: <hex HMAC-SHA256(bot auth token, raw body)>``
  (no prefix), posted to the bot's webhook until answered 200 (three attempts): ``delivered``,
  ``seen``, ``failed`` (with ``desc``) and inbound ``message``. After a send each receiver
  follows its :class:`Behaviour` (:meth:`FakeViber.behave`).
- Everything it was sent is kept in :attr:`FakeViber.received`.

What it does not simulate: the 100-messages-per-user-per-hour limit and user subscriptions
(only their statuses, by injection), keyboards and rich media checks, broadcast, account info
and user details endpoints, ``conversation_started``/``subscribed``/``unsubscribed`` events,
and Viber's hour of webhook retries (three quick attempts here).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cascade.clock import Clock, SystemClock
from tests.peers.server import CallbackClient, LoopbackServer

#: Viber send statuses and their ``status_message``
STATUSES = {
    0: "ok",
    1: "invalidUrl",
    2: "invalidAuthToken",
    3: "badData",
    4: "missingData",
    5: "receiverNotRegistered",
    6: "receiverNotSubscribed",
    7: "publicAccountBlocked",
    8: "publicAccountNotFound",
    9: "publicAccountSuspended",
    10: "webhookNotSet",
    11: "receiverNoSuitableDevice",
    12: "tooManyRequests",
    13: "apiVersionNotSupported",
    14: "incompatibleWithVersion",
}
MAX_BODY_BYTES = 30 * 1024
_INJECTED = re.compile(r"err-(\d+)")
_INJECTED_HTTP = re.compile(r"err-http-(\d{3})")


@dataclass
class Bot:
    """A bot the fake knows: its auth token, id, name and webhook (None: not set yet)."""

    token: str
    bot_id: str
    name: str
    webhook: str | None = None


@dataclass(frozen=True)
class Behaviour:
    """What a receiver does after a message was accepted: seconds until ``delivered`` and
    ``seen`` (None: never), or a ``failed`` event with ``fail_desc`` instead."""

    deliver_after: float | None = 0.0
    seen_after: float | None = 0.0
    fail_desc: str | None = None


#: delivered and seen at once (the default)
SEES = Behaviour()
#: delivered, never seen
NEVER_SEES = Behaviour(seen_after=None)
#: nothing ever comes back
SILENT = Behaviour(deliver_after=None, seen_after=None)


def failing(desc: str = "Failed to deliver the message to the user") -> Behaviour:
    """A receiver whose messages are accepted and then reported ``failed``."""
    return Behaviour(deliver_after=None, seen_after=None, fail_desc=desc)


@dataclass(frozen=True)
class Received:
    """One request as the fake received it, and the ``status`` it answered (HTTP status for
    an injected HTTP error)."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class FakeViber:
    """The fake Viber Bot API (see the module doc); ``async with`` starts and stops it."""

    clock: Clock = field(default_factory=SystemClock)
    default: Behaviour = SEES
    bots: dict[str, Bot] = field(default_factory=dict)  # by auth token
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    callbacks: CallbackClient = field(default_factory=CallbackClient)
    _server: LoopbackServer | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def add_bot(self, token: str, bot_id: str, name: str, webhook: str | None = None) -> Bot:
        """Know a bot (with its webhook already set, when given)."""
        bot = Bot(token, bot_id, name, webhook)
        self.bots[token] = bot
        return bot

    def behave(self, receiver: str, behaviour: Behaviour) -> None:
        """What ``receiver`` does after each message accepted for it."""
        self.behaviours[receiver] = behaviour

    @property
    def url(self) -> str:
        """The base URL to configure as ``viber_base_url``."""
        assert self._server is not None, "not started"
        return self._server.url

    async def __aenter__(self) -> FakeViber:
        self._server = LoopbackServer(
            Starlette(
                routes=[
                    Route("/pa/send_message", self._send_message, methods=["POST"]),
                    Route("/pa/set_webhook", self._set_webhook, methods=["POST"]),
                ]
            )
        )
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop()
        await self.callbacks.close()

    async def reset(self) -> None:
        """Forget what one test did (callbacks still pending are cancelled), so that one
        server can serve a whole module: starting and stopping uvicorn takes ~0.2 s."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.default = SEES
        self.behaviours.clear()
        self.received.clear()
        self.callbacks.sent.clear()

    async def settled(self, within: float = 5.0) -> None:
        """Wait until every callback scheduled so far was sent."""
        async with asyncio.timeout(within):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- endpoints -----------------------------------------------------------------------

    async def _send_message(self, request: Request) -> Response:
        raw = await request.body()
        body = _decode(raw)
        receiver = body.get("receiver") if isinstance(body, dict) else None
        bot = self.bots.get(request.headers.get("x-viber-auth-token", ""))
        injected = await self._injected(receiver)
        if isinstance(injected, Response):
            self._record(request, body, injected.status_code)
            return injected
        if bot is None:
            status, message = 2, STATUSES[2]
        elif bot.webhook is None:
            status, message = 10, STATUSES[10]
        elif injected is not None:
            status, message = injected, STATUSES.get(injected, "generalError")
        else:
            status, message = _problem(body, len(raw))
        self._record(request, body, status)
        if status != 0:
            return JSONResponse({"status": status, "status_message": message})
        assert bot is not None
        assert isinstance(receiver, str)
        token = secrets.randbits(63)
        self._after_send(bot, receiver, token)
        return JSONResponse(
            {
                "status": 0,
                "status_message": "ok",
                "message_token": token,
                "chat_hostname": "SN-CHAT-05_",
                "billing_status": 1,
            }
        )

    async def _set_webhook(self, request: Request) -> Response:
        body = _decode(await request.body())
        bot = self.bots.get(request.headers.get("x-viber-auth-token", ""))
        if bot is None:
            self._record(request, body, 2)
            return JSONResponse({"status": 2, "status_message": STATUSES[2]})
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            self._record(request, body, 4)
            return JSONResponse({"status": 4, "status_message": STATUSES[4]})
        probe = {
            "event": "webhook",
            "timestamp": self._ms(),
            "chat_hostname": "SN-CHAT-05_",
            "message_token": secrets.randbits(63),
        }
        answered = await self._post(bot, probe, url=url)
        if answered != 200:
            self._record(request, body, 1)
            return JSONResponse({"status": 1, "status_message": STATUSES[1]})
        bot.webhook = url
        self._record(request, body, 0)
        events = body.get("event_types") or ["delivered", "seen", "failed", "subscribed"]
        return JSONResponse(
            {
                "status": 0,
                "status_message": "ok",
                "event_types": events,
                "chat_hostname": "SN-CHAT-05_",
            }
        )

    def _record(self, request: Request, body: Any, status: int) -> None:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append(Received(request.url.path, headers, body, status))

    async def _injected(self, receiver: object) -> Response | int | None:
        """An injected answer for ``receiver``: a bare HTTP response, a Viber status, or None."""
        if not isinstance(receiver, str):
            return None
        if receiver == "hang":
            await self._release.wait()
            return Response(status_code=503)
        http = _INJECTED_HTTP.fullmatch(receiver)
        if http:
            return Response(f"<html>{http.group(1)}</html>", status_code=int(http.group(1)))
        match = _INJECTED.fullmatch(receiver)
        return int(match.group(1)) if match else None

    # --- callbacks -----------------------------------------------------------------------

    def _after_send(self, bot: Bot, receiver: str, token: int) -> None:
        behaviour = self.behaviours.get(receiver, self.default)

        async def follow() -> None:
            if behaviour.fail_desc is not None:
                await self.event(bot.token, "failed", token, receiver, desc=behaviour.fail_desc)
                return
            if behaviour.deliver_after is not None:
                await asyncio.sleep(behaviour.deliver_after)
                await self.event(bot.token, "delivered", token, receiver)
            if behaviour.seen_after is not None:
                await asyncio.sleep(max(behaviour.seen_after - (behaviour.deliver_after or 0), 0))
                await self.event(bot.token, "seen", token, receiver)

        self._spawn(follow())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ms(self) -> int:
        return int(self.clock.now() * 1000)

    async def _post(
        self, bot: Bot, payload: dict[str, Any], *, url: str | None = None
    ) -> int | None:
        """Sign a callback with the bot's token and post it to ``url`` (its webhook)."""
        target = url or bot.webhook
        if target is None:
            return None
        raw = json.dumps(payload, separators=(",", ":")).encode()
        signature = hmac.new(bot.token.encode(), raw, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Viber-Content-Signature": signature}
        return await self.callbacks.post(target, raw, headers)

    async def event(
        self,
        token: str,
        event: str,
        message_token: int,
        user_id: str,
        *,
        desc: str | None = None,
    ) -> int | None:
        """Post a ``delivered``, ``seen`` or ``failed`` (with ``desc``) callback for a message
        of the bot with auth token ``token``; the receiver's answer."""
        payload: dict[str, Any] = {
            "event": event,
            "timestamp": self._ms(),
            "chat_hostname": "SN-CHAT-05_",
            "message_token": message_token,
            "user_id": user_id,
        }
        if desc is not None:
            payload["desc"] = desc
        return await self._post(self.bots[token], payload)

    async def inbound(self, token: str, sender_id: str, text: str, *, name: str = "Jane") -> int:
        """Post an inbound text ``message`` from ``sender_id`` to the bot; its message token."""
        message_token = secrets.randbits(63)
        payload = {
            "event": "message",
            "timestamp": self._ms(),
            "chat_hostname": "SN-CHAT-05_",
            "message_token": message_token,
            "sender": {
                "id": sender_id,
                "name": name,
                "avatar": "https://example.com/avatar.jpg",
                "language": "en",
                "country": "GB",
                "api_version": 10,
            },
            "message": {"type": "text", "text": text},
            "silent": False,
        }
        await self._post(self.bots[token], payload)
        return message_token


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _problem(body: Any, size: int) -> tuple[int, str]:
    """The status Viber would answer a send with: (0, "ok") or an error and its words."""
    if not isinstance(body, dict):
        return 3, "badData: the body is not a JSON object"
    if size > MAX_BODY_BYTES:
        return 3, "badData: the message is larger than 30 KB"
    if not isinstance(body.get("receiver"), str) or not body["receiver"]:
        return 4, "missingData: receiver"
    sender = body.get("sender")
    if not isinstance(sender, dict) or not isinstance(sender.get("name"), str):
        return 4, "missingData: sender.name"
    if not 0 < len(sender["name"]) <= 28:
        return 3, "badData: sender.name must be 1 to 28 characters"
    if "avatar" in sender and not str(sender["avatar"]).startswith(("http://", "https://")):
        return 3, "badData: sender.avatar must be a URL"
    if not isinstance(body.get("min_api_version", 1), int):
        return 3, "badData: min_api_version"
    kind = body.get("type")
    if kind == "text":
        if not isinstance(body.get("text"), str) or not body["text"]:
            return 4, "missingData: text"
    elif kind == "picture":
        if not str(body.get("media", "")).startswith(("http://", "https://")):
            return 4, "missingData: media"
        if not isinstance(body.get("text"), str) or len(body["text"]) > 768:
            return 3, "badData: a picture's text must be a string of at most 768 characters"
    elif kind not in ("video", "file", "contact", "location", "url", "sticker", "rich_media"):
        return 3, f"badData: unknown type {kind!r}"
    return 0, "ok"
