"""A fake Graph API: the Messenger Send API and the WhatsApp Cloud API on 127.0.0.1.

What it simulates:

- ``POST /{version}/me/messages`` (Messenger) and ``POST /{version}/{phone_number_id}/messages``
  (WhatsApp): the token (a bearer header or an ``access_token`` parameter) must be a registered
  page's or the number's, the version must be the configured one, and the body must be one the
  platform takes (the checks below); the answer is the documented success body, with ids shaped
  like the real ones (``m_...``, ``wamid....``), or a Graph error body.
- Error injection by recipient (``recipient.id`` or ``to``): ``err-<code>`` or
  ``err-<code>-<subcode>`` answers with that Graph error as documented (HTTP status, message,
  ``error_data.details``, ``is_transient``; see :data:`ERRORS`), ``err-http-<status>`` with a
  bare HTTP status and no Graph body (``err-http-429`` with ``Retry-After: 7``), ``hang``
  never answers (until the server stops). :meth:`FakeGraph.fail` does the same for a given
  recipient, for numbers the API's validation would refuse as ``err-...``.
- Callbacks, signed ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``
  (and the older ``X-Hub-Signature: sha1=...``), posted to ``callback_url`` until answered 200
  (three attempts): Messenger ``message_deliveries`` (``mids`` and ``watermark``),
  ``message_reads`` (``watermark``) and inbound ``messages``; WhatsApp ``statuses`` (``sent``,
  ``delivered``, ``read``, ``failed`` with ``errors[]``) and inbound ``messages``. After a send
  each recipient follows its :class:`Behaviour` (deliver, read, fail, or stay silent), set with
  :meth:`FakeGraph.behave`; the ``GET`` subscription handshake is :meth:`FakeGraph.subscribe`.
- WhatsApp's mark-as-read, a POST to the same endpoint with ``{"messaging_product": "whatsapp",
  "status": "read", "message_id": "<wamid>"}`` (and optionally ``"typing_indicator": {"type":
  "text"}``): the token must be the number's, and the wamid one of a message the fake posted
  to that number (:meth:`FakeGraph.whatsapp_inbound`); otherwise error 100, as Graph answers
  an id it does not know. Answered ``{"success": true}``, recorded with api
  ``"whatsapp_read"``. Errors are injected by message id as sends' are by recipient
  (:meth:`FakeGraph.fail`, ``err-...``, ``hang``).
- Everything it was sent is kept in :attr:`FakeGraph.received`.

What it does not simulate: rate limits, the messaging windows and user opt-ins (only their
errors, by injection), media download, template approval (any template name is taken),
reactions, echoes, postbacks, batching, webhook retries beyond three quick attempts, mTLS,
``appsecret_proof``, how old a message may be to be marked read, and any Graph endpoint other
than the two send endpoints (and WhatsApp's mark-as-read on the second). Error messages
follow the documented ones but are not guaranteed word for word.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cascade.clock import Clock, SystemClock
from tests.peers.server import CallbackClient, LoopbackServer

#: Graph errors by (code, subcode): HTTP status, message, WhatsApp details, transient
ERRORS: dict[tuple[int, int | None], tuple[int, str, str | None, bool]] = {
    (190, 463): (
        401,
        "Error validating access token: Session has expired on Tuesday, 01-Dec-26 08:00:00 PST.",
        None,
        False,
    ),
    (190, None): (401, "Invalid OAuth access token - Cannot parse access token", None, False),
    (10, 2018278): (
        400,
        "(#10) This message is sent outside of allowed window. Learn more about the new policy "
        "here: https://developers.facebook.com/docs/messenger-platform/policy-overview",
        None,
        False,
    ),
    (551, 1545041): (400, "(#551) This person isn't available right now.", None, False),
    (100, 2018001): (400, "(#100) No matching user found", None, False),
    (4, None): (400, "(#4) Application request limit reached", None, True),
    (613, None): (400, "(#613) Calls to this api have exceeded the rate limit.", None, True),
    (80006, None): (
        400,
        "(#80006) There have been too many messages sent to this user.",
        None,
        True,
    ),
    (2, None): (
        503,
        "An unexpected error has occurred. Please retry your request later.",
        None,
        True,
    ),
    (131000, None): (500, "(#131000) Something went wrong", "Message failed to send.", False),
    (131047, None): (
        400,
        "(#131047) Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
        False,
    ),
    (131026, None): (
        400,
        "(#131026) Message undeliverable",
        "Unable to deliver message. The recipient phone number is not a WhatsApp phone number.",
        False,
    ),
    (130429, None): (
        400,
        "(#130429) Rate limit hit",
        "Cloud API message throughput has been reached.",
        False,
    ),
    (131056, None): (
        400,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number to the same phone number in a short period of time.",
        False,
    ),
    (132001, None): (
        404,
        "(#132001) Template name does not exist in the translation",
        "template name does not exist in the translation",
        False,
    ),
}

#: the subcode an ``err-<code>`` recipient gets when its code has a documented one
DEFAULT_SUBCODES = {190: 463, 10: 2018278, 551: 1545041}

MESSENGER_TAGS = frozenset(
    {
        "ACCOUNT_UPDATE",
        "CONFIRMED_EVENT_UPDATE",
        "CUSTOMER_FEEDBACK",
        "HUMAN_AGENT",
        "POST_PURCHASE_UPDATE",
    }
)
WHATSAPP_TYPES = frozenset(
    {
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "template",
        "interactive",
        "location",
        "contacts",
        "reaction",
    }
)
_INJECTED = re.compile(r"err-(\d+)(?:-(\d+))?")
_INJECTED_HTTP = re.compile(r"err-http-(\d{3})")


@dataclass(frozen=True)
class Page:
    """A Facebook page the fake knows: its id, page access token and app secret."""

    page_id: str
    token: str
    app_secret: str


@dataclass(frozen=True)
class Number:
    """A WhatsApp business number the fake knows."""

    phone_number_id: str
    display_number: str
    business_account_id: str
    token: str
    app_secret: str


@dataclass(frozen=True)
class Behaviour:
    """What a recipient does after a message to it was accepted: seconds until it is delivered
    and read (None: never), or a WhatsApp ``failed`` status with ``fail_code`` instead."""

    deliver_after: float | None = 0.0
    read_after: float | None = 0.0
    fail_code: int | None = None
    #: Messenger: post the delivery and read callbacks, and hear their answers, before answering
    #: the send (Meta's callbacks can overtake its answer)
    callbacks_first: bool = False


#: delivered and read at once (the default)
READS = Behaviour()
#: delivered, never read
NEVER_READS = Behaviour(read_after=None)
#: nothing ever comes back
SILENT = Behaviour(deliver_after=None, read_after=None)


def failing(code: int = 131026) -> Behaviour:
    """A WhatsApp recipient whose messages are accepted and then reported ``failed``."""
    return Behaviour(deliver_after=None, read_after=None, fail_code=code)


@dataclass(frozen=True)
class Received:
    """One send request as the fake received it."""

    api: str  # "messenger" or "whatsapp"
    path: str
    headers: dict[str, str]
    body: Any
    status: int  # what the fake answered


@dataclass
class FakeGraph:
    """The fake Graph API (see the module doc); ``async with`` starts and stops it."""

    version: str = "v25.0"
    clock: Clock = field(default_factory=SystemClock)
    #: where callbacks go (None: nowhere, they are not sent)
    callback_url: str | None = None
    default: Behaviour = READS
    pages: dict[str, Page] = field(default_factory=dict)  # by page id
    numbers: dict[str, Number] = field(default_factory=dict)  # by phone number id
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    injected: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    #: the wamids of the messages posted to each number (by phone number id), which it may
    #: mark read
    inbound_ids: dict[str, set[str]] = field(default_factory=dict)
    callbacks: CallbackClient = field(default_factory=CallbackClient)
    _server: LoopbackServer | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- set-up ------------------------------------------------------------------------

    def add_page(self, page_id: str, token: str, app_secret: str) -> Page:
        """Know a page: sends with ``token`` are its, callbacks for it signed with its secret."""
        page = Page(page_id, token, app_secret)
        self.pages[page_id] = page
        return page

    def add_number(
        self,
        phone_number_id: str,
        display_number: str,
        token: str,
        app_secret: str,
        business_account_id: str = "102290129340398",
    ) -> Number:
        """Know a WhatsApp business number."""
        number = Number(phone_number_id, display_number, business_account_id, token, app_secret)
        self.numbers[phone_number_id] = number
        return number

    def behave(self, recipient: str, behaviour: Behaviour) -> None:
        """What ``recipient`` does after each message accepted for it."""
        self.behaviours[recipient] = behaviour

    def fail(self, recipient: str, code: int, subcode: int | None = None) -> None:
        """Answer every send to ``recipient`` with the Graph error ``code``/``subcode``."""
        self.injected[recipient] = (code, subcode)

    @property
    def url(self) -> str:
        """The base URL to configure as ``graph_base_url``."""
        assert self._server is not None, "not started"
        return self._server.url

    async def __aenter__(self) -> FakeGraph:
        self._server = LoopbackServer(self.app())
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
        self.callback_url = None
        self.default = READS
        self.behaviours.clear()
        self.injected.clear()
        self.received.clear()
        self.inbound_ids.clear()
        self.callbacks.sent.clear()

    async def settled(self, within: float = 5.0) -> None:
        """Wait until every callback scheduled so far was sent."""
        async with asyncio.timeout(within):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(
            routes=[
                Route("/{version}/me/messages", self._messenger_send, methods=["POST"]),
                Route(
                    "/{version}/{phone_number_id}/messages", self._whatsapp_send, methods=["POST"]
                ),
            ]
        )

    # --- the send endpoints --------------------------------------------------------------

    async def _messenger_send(self, request: Request) -> Response:
        body = await _json_body(request)
        page = self._page_of(_token(request))
        recipient = (body or {}).get("recipient", {}).get("id") if isinstance(body, dict) else None
        response = (
            self._version_error(request)
            or (_graph_error(190) if page is None else None)
            or await self._injected(recipient)
            or _messenger_problem(body)
        )
        if response is None:
            assert page is not None
            assert isinstance(recipient, str)
            mid = "m_" + base64.urlsafe_b64encode(secrets.token_bytes(30)).decode().rstrip("=")
            response = JSONResponse({"recipient_id": recipient, "message_id": mid})
            await self._after_messenger_send(page, recipient, mid)
        self._record("messenger", request, body, response.status_code)
        return response

    async def _whatsapp_send(self, request: Request) -> Response:
        body = await _json_body(request)
        number = self.numbers.get(request.path_params["phone_number_id"])
        token_ok = number is not None and hmac.compare_digest(_token(request), number.token)
        if isinstance(body, dict) and "status" in body:
            return await self._whatsapp_read(request, body, number if token_ok else None)
        recipient = body.get("to") if isinstance(body, dict) else None
        response = (
            self._version_error(request)
            or (None if token_ok else _graph_error(190))
            or await self._injected(recipient)
            or _whatsapp_problem(body)
        )
        if response is None:
            assert number is not None
            assert isinstance(body, dict)
            assert isinstance(recipient, str)
            wamid = "wamid." + base64.b64encode(
                f"{recipient}_{next(self._ids)}_{secrets.token_hex(8)}".encode()
            ).decode().rstrip("=")
            message: dict[str, Any] = {"id": wamid}
            if body.get("type") == "template":
                message["message_status"] = "accepted"
            response = JSONResponse(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": recipient, "wa_id": recipient}],
                    "messages": [message],
                }
            )
            self._after_whatsapp_send(number, recipient, wamid)
        self._record("whatsapp", request, body, response.status_code)
        return response

    async def _whatsapp_read(
        self, request: Request, body: dict[str, Any], number: Number | None
    ) -> Response:
        """A mark-as-read of a message the number received (``number`` None: the token is
        not the number's)."""
        wamid = body.get("message_id")
        received = self.inbound_ids.get(number.phone_number_id, set()) if number else set()
        response = (
            self._version_error(request)
            or (_graph_error(190) if number is None else None)
            or await self._injected(wamid)
            or _read_problem(body, received)
            or JSONResponse({"success": True})
        )
        self._record("whatsapp_read", request, body, response.status_code)
        return response

    def _record(self, api: str, request: Request, body: Any, status: int) -> None:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append(Received(api, request.url.path, headers, body, status))

    def _version_error(self, request: Request) -> Response | None:
        if request.path_params["version"] == self.version:
            return None
        return _error_response(
            400,
            2635,
            None,
            f"(#2635) Unknown or deprecated API version {request.path_params['version']}",
        )

    def _page_of(self, token: str) -> Page | None:
        for page in self.pages.values():
            if hmac.compare_digest(token, page.token):
                return page
        return None

    async def _injected(self, recipient: object) -> Response | None:
        """The injected answer for ``recipient``, if it has one."""
        if not isinstance(recipient, str):
            return None
        if recipient == "hang":
            await self._release.wait()
            return Response(status_code=503)
        http = _INJECTED_HTTP.fullmatch(recipient)
        if http:
            status = int(http.group(1))
            headers = {"Retry-After": "7"} if status == 429 else {}
            return Response(f"<html>{status}</html>", status_code=status, headers=headers)
        code_subcode = self.injected.get(recipient)
        match = _INJECTED.fullmatch(recipient)
        if code_subcode is None and match:
            code = int(match.group(1))
            subcode = int(match.group(2)) if match.group(2) else DEFAULT_SUBCODES.get(code)
            code_subcode = (code, subcode)
        return None if code_subcode is None else _graph_error(*code_subcode)

    # --- behaviours after a send ---------------------------------------------------------

    async def _after_messenger_send(self, page: Page, psid: str, mid: str) -> None:
        behaviour = self.behaviours.get(psid, self.default)
        sent_at = self._ms()

        async def follow() -> None:
            if behaviour.deliver_after is not None:
                await asyncio.sleep(behaviour.deliver_after)
                await self.messenger_delivery(page.page_id, psid, [mid], watermark=sent_at)
            if behaviour.read_after is not None:
                await asyncio.sleep(max(behaviour.read_after - (behaviour.deliver_after or 0), 0))
                await self.messenger_read(page.page_id, psid, watermark=sent_at)

        if behaviour.callbacks_first and self.callback_url is not None:
            await follow()
        else:
            self._spawn(follow())

    def _after_whatsapp_send(self, number: Number, recipient: str, wamid: str) -> None:
        behaviour = self.behaviours.get(recipient, self.default)

        async def follow() -> None:
            await self.whatsapp_status(number.phone_number_id, wamid, recipient, "sent")
            if behaviour.fail_code is not None:
                await self.whatsapp_status(
                    number.phone_number_id,
                    wamid,
                    recipient,
                    "failed",
                    fail_code=behaviour.fail_code,
                )
                return
            if behaviour.deliver_after is not None:
                await asyncio.sleep(behaviour.deliver_after)
                await self.whatsapp_status(number.phone_number_id, wamid, recipient, "delivered")
            if behaviour.read_after is not None:
                await asyncio.sleep(max(behaviour.read_after - (behaviour.deliver_after or 0), 0))
                await self.whatsapp_status(number.phone_number_id, wamid, recipient, "read")

        self._spawn(follow())

    def _spawn(self, work: Awaitable[None]) -> None:
        if self.callback_url is None:
            if asyncio.iscoroutine(work):
                work.close()
            return
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ms(self) -> int:
        return int(self.clock.now() * 1000)

    # --- callbacks -----------------------------------------------------------------------

    async def _post(self, app_secret: str, payload: dict[str, Any]) -> int | None:
        """Sign and post one callback; the receiver's last answer."""
        if self.callback_url is None:
            return None
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256="
            + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest(),
            "X-Hub-Signature": "sha1="
            + hmac.new(app_secret.encode(), raw, hashlib.sha1).hexdigest(),
        }
        return await self.callbacks.post(self.callback_url, raw, headers)

    async def _messenger_event(self, page_id: str, event: dict[str, Any]) -> int | None:
        page = self.pages[page_id]
        payload = {
            "object": "page",
            "entry": [{"id": page_id, "time": self._ms(), "messaging": [event]}],
        }
        return await self._post(page.app_secret, payload)

    async def messenger_delivery(
        self, page_id: str, psid: str, mids: list[str], *, watermark: int | None = None
    ) -> int | None:
        """Post a ``message_deliveries`` event: ``mids`` delivered, and everything sent up to
        ``watermark`` (ms; now by default)."""
        watermark = self._ms() if watermark is None else watermark
        return await self._messenger_event(
            page_id,
            {
                "sender": {"id": psid},
                "recipient": {"id": page_id},
                "timestamp": self._ms(),
                "delivery": {"mids": mids, "watermark": watermark},
            },
        )

    async def messenger_read(
        self, page_id: str, psid: str, *, watermark: int | None = None
    ) -> int | None:
        """Post a ``message_reads`` event: everything sent up to ``watermark`` (ms) was read."""
        watermark = self._ms() if watermark is None else watermark
        return await self._messenger_event(
            page_id,
            {
                "sender": {"id": psid},
                "recipient": {"id": page_id},
                "timestamp": self._ms(),
                "read": {"watermark": watermark},
            },
        )

    async def messenger_inbound(
        self,
        page_id: str,
        psid: str,
        text: str | None = None,
        attachments: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """Post an inbound ``messages`` event from ``psid``: a text and/or attachments given as
        (type, url); returns its ``mid``."""
        mid = "m_" + secrets.token_urlsafe(30)
        message: dict[str, Any] = {"mid": mid}
        if text is not None:
            message["text"] = text
        if attachments:
            message["attachments"] = [
                {"type": kind, "payload": {"url": url}} for kind, url in attachments
            ]
        await self._messenger_event(
            page_id,
            {
                "sender": {"id": psid},
                "recipient": {"id": page_id},
                "timestamp": self._ms(),
                "message": message,
            },
        )
        return mid

    def _whatsapp_payload(self, number: Number, value: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": number.business_account_id,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": number.display_number,
                                    "phone_number_id": number.phone_number_id,
                                },
                                **value,
                            },
                        }
                    ],
                }
            ],
        }

    async def whatsapp_status(
        self,
        phone_number_id: str,
        wamid: str,
        recipient: str,
        status: str,
        *,
        fail_code: int = 131026,
    ) -> int | None:
        """Post a ``statuses`` change: ``sent``, ``delivered``, ``read`` or ``failed`` (with
        ``errors[]`` of ``fail_code``)."""
        number = self.numbers[phone_number_id]
        entry: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(self.clock.now())),
            "recipient_id": recipient,
        }
        if status in ("sent", "delivered", "read"):
            entry["pricing"] = {
                "billable": True,
                "pricing_model": "PMP",
                "category": "service",
                "type": "free_customer_service",
            }
        if status == "failed":
            _, message, details, _ = ERRORS.get(
                (fail_code, None), (400, f"(#{fail_code}) Failed", None, False)
            )
            title = message.split(") ", 1)[-1]
            entry["errors"] = [
                {
                    "code": fail_code,
                    "title": title,
                    "message": title,
                    "error_data": {"details": details or title},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }
            ]
        return await self._post(
            number.app_secret, self._whatsapp_payload(number, {"statuses": [entry]})
        )

    async def whatsapp_inbound(
        self, phone_number_id: str, sender: str, text: str, *, name: str = "Kerry Fisher"
    ) -> str:
        """Post an inbound text message from ``sender`` (digits); returns its ``wamid``."""
        number = self.numbers[phone_number_id]
        wamid = "wamid." + base64.b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        value = {
            "contacts": [{"profile": {"name": name}, "wa_id": sender}],
            "messages": [
                {
                    "from": sender,
                    "id": wamid,
                    "timestamp": str(int(self.clock.now())),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
        self.inbound_ids.setdefault(phone_number_id, set()).add(wamid)
        await self._post(number.app_secret, self._whatsapp_payload(number, value))
        return wamid

    async def subscribe(self, verify_token: str) -> tuple[int, bool]:
        """The GET handshake a platform makes when its webhook is configured: the receiver's
        status, and whether its body was exactly the ``hub.challenge`` sent."""
        assert self.callback_url is not None
        challenge = str(secrets.randbelow(10**9))
        query = {
            "hub.mode": "subscribe",
            "hub.verify_token": verify_token,
            "hub.challenge": challenge,
        }
        status, body = await self.callbacks.get(self.callback_url, query)
        return status, body == challenge


# --- request checks and error bodies ----------------------------------------------------------


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def _token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    return request.query_params.get("access_token", "")


def _error_response(
    status: int,
    code: int,
    subcode: int | None,
    message: str,
    details: str | None = None,
    transient: bool = False,
) -> JSONResponse:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if transient:
        error["is_transient"] = True
    error["fbtrace_id"] = "A" + secrets.token_hex(10)
    return JSONResponse({"error": error}, status_code=status)


def _graph_error(code: int, subcode: int | None = None) -> JSONResponse:
    """The documented answer for a Graph error (a generic one for codes not in ERRORS)."""
    status, message, details, transient = ERRORS.get(
        (code, subcode), ERRORS.get((code, None), (400, f"(#{code}) Injected error", None, False))
    )
    return _error_response(status, code, subcode, message, details, transient)


def _invalid(details: str) -> JSONResponse:
    return _error_response(400, 100, None, "(#100) Invalid parameter", details)


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def _messenger_problem(body: Any) -> JSONResponse | None:
    """Why the Send API would refuse ``body``, or None."""
    if not isinstance(body, dict):
        return _invalid("the body must be a JSON object")
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not isinstance(recipient.get("id"), str):
        return _invalid("recipient.id is required")
    kind = body.get("messaging_type")
    if kind not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
        return _invalid(f"messaging_type {kind!r} is not one of RESPONSE, UPDATE, MESSAGE_TAG")
    if (kind == "MESSAGE_TAG") != ("tag" in body):
        return _invalid("tag is required with MESSAGE_TAG and only there")
    if kind == "MESSAGE_TAG" and body["tag"] not in MESSENGER_TAGS:
        return _invalid(f"tag {body['tag']!r} is not a message tag")
    message = body.get("message")
    if not isinstance(message, dict) or len({"text", "attachment"} & message.keys()) != 1:
        return _invalid("message must have exactly one of text and attachment")
    if "text" in message:
        if not isinstance(message["text"], str) or not 0 < len(message["text"]) <= 2000:
            return _invalid("message.text must be 1 to 2000 characters")
        return None
    attachment = message["attachment"]
    if not isinstance(attachment, dict) or attachment.get("type") not in (
        "image",
        "audio",
        "video",
        "file",
        "template",
    ):
        return _invalid("message.attachment.type is not an attachment type")
    payload = attachment.get("payload")
    if not isinstance(payload, dict):
        return _invalid("message.attachment.payload is required")
    if attachment["type"] != "template" and not _is_url(payload.get("url")):
        return _invalid("message.attachment.payload.url must be a URL")
    return None


def _read_problem(body: dict[str, Any], received: set[str]) -> JSONResponse | None:
    """Why the Cloud API would refuse a mark-as-read of one of ``received``, or None."""
    if body.get("messaging_product") != "whatsapp":
        return _invalid("messaging_product must be whatsapp")
    if body.get("status") != "read":
        return _invalid("status must be read")
    if body.get("message_id") not in received:
        return _invalid("message_id is not a message this number received")
    if "typing_indicator" in body and body["typing_indicator"] != {"type": "text"}:
        return _invalid("typing_indicator.type must be text")
    if body.keys() - {"messaging_product", "status", "message_id", "typing_indicator"}:
        return _invalid("a mark-as-read takes no other field")
    return None


def _whatsapp_problem(body: Any) -> JSONResponse | None:
    """Why the Cloud API would refuse ``body``, or None."""
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
        return _invalid("messaging_product must be whatsapp")
    if not isinstance(body.get("to"), str) or not body["to"]:
        return _invalid("to is required")
    kind = body.get("type", "text")
    if kind not in WHATSAPP_TYPES or not isinstance(body.get(kind), dict):
        return _invalid(f"type {kind!r} needs an object of that name")
    item = body[kind]
    if kind == "text":
        text = item.get("body")
        if not isinstance(text, str) or not 0 < len(text) <= 4096:
            return _invalid("text.body must be 1 to 4096 characters")
    elif kind in ("image", "audio", "video", "document", "sticker"):
        if not _is_url(item.get("link")) and not item.get("id"):
            return _invalid(f"{kind}.link or {kind}.id is required")
        if "caption" in item and kind not in ("image", "video", "document"):
            return _invalid(f"{kind} takes no caption")
    elif kind == "template":
        language = item.get("language")
        if not isinstance(item.get("name"), str) or not isinstance(language, dict):
            return _invalid("template.name and template.language are required")
        if not isinstance(language.get("code"), str):
            return _invalid("template.language.code is required")
        if language.get("policy", "deterministic") != "deterministic":
            return _invalid("template.language.policy must be deterministic")
        for component in item.get("components", []):
            for parameter in component.get("parameters", []):
                if parameter.get("type") == "text" and not isinstance(parameter.get("text"), str):
                    return _invalid("a text parameter needs its text")
    return None
