"""``PATCH /v1/messages/{message_uuid}``: marking an inbound WhatsApp message read; and a v1
problem document for everything else under ``/v1/messages`` that Cascade does not offer.

The official SDKs call this path to change a message's status: ``{"status": "read"}`` (with an
optional ``replying_indicator``) marks a message a WhatsApp user sent read (Python
``messages.mark_whatsapp_message_read``), ``{"status": "revoked"}`` revokes an RCS message
(``revoke_rcs_message``). Authentication is the one ``POST /v1/messages`` takes (an
application's JWT, or Basic). Then, in order:

- a body that is not JSON, or does not validate, is a 422 as on ``POST /v1/messages``; a
  status other than ``read`` is a 422 saying so, and ``revoked`` a 422 "Unsupported channel"
  saying Cascade has no RCS (a feature not offered is never a 404);
- the uuid must be one the account's inbound webhooks carried (``Intake.find_inbound_message``)
  or one of its own messages: any other, another account's included, is a 404;
- only an inbound WhatsApp message can be marked read: an outbound message, or an inbound
  message of another channel, is a 422 saying so, as is one whose business number is no
  longer linked to the account;
- the number's link marks it read on the Cloud API (``WhatsAppAdapter.mark_read``), once: a
  failure is answered, never retried here. Graph's refusal is a 422 whose ``type`` and
  ``title`` carry the Nexmo code (as a v1 status webhook's ``error`` does) and whose detail
  keeps WhatsApp's code and words, a refused token a 502 (the link needs a new token, the
  request is fine), a rate limit a 429, Graph down or unreachable a 503 (``Retry-After`` when
  Graph gave one), and no answer in time a 502 (marking again is harmless).

Success is ``200 {}``: the SDKs read no body. Other methods on ``/v1/messages`` and
``/v1/messages/{uuid}`` are a 405 naming what the path takes; deeper paths a 404 naming the
two Messages v1 surfaces Cascade has. Nothing here writes to the store.
"""

from __future__ import annotations

import math
from typing import Protocol

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cascade.api.auth import Authenticator
from cascade.api.messages import read_json_body
from cascade.api.messages_v1 import (
    INVALID_PARAMS,
    OLYMPUS,
    UNSUPPORTED_CHANNEL,
    ProblemKind,
    v1_problem,
)
from cascade.api.problems import PROBLEM_BASE, problem
from cascade.api.validation import RequestDecoder
from cascade.channels.graph import CODE_THROTTLED, CODE_TOKEN_EXPIRED
from cascade.channels.intake.whatsapp import wamid_of
from cascade.domain.message_v1 import UNOFFERED_STATUSES, MessageUpdateV1
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.domain.rules_v1 import update_violations
from cascade.errors import (
    ChannelOutcomeUnknown,
    ChannelRejected,
    ChannelUnavailable,
    InvalidParameter,
    NotFound,
    RequestRejected,
)
from cascade.store.base import ChannelLinks, Intake, Reading

log = structlog.get_logger(__name__)

_decoder = RequestDecoder(MessageUpdateV1, update_violations)

#: the methods a route under /v1/messages answers, to say which one the path takes
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: the problem of a message whose number is no longer linked: Nexmo's "Illegal Sender
#: Address", as a send from an address no link of the account covers is refused
NO_LINK = ProblemKind(1120, "Illegal Sender Address", "The number is not linked.")
SURFACES = (
    "Cascade's Messages v1 surfaces are POST /v1/messages (send a message, with failover) and "
    "PATCH /v1/messages/{message_uuid} (mark an inbound WhatsApp message read)."
)


class ReadMarker(Protocol):
    """What marks a WhatsApp message read: the WhatsApp adapter, on the shared HTTP client."""

    async def start(self) -> None:
        """Open the HTTP client."""

    async def stop(self) -> None:
        """Let go of the HTTP client."""

    async def mark_read(self, link: ChannelLink, wamid: str, *, typing: bool = False) -> None:
        """Mark ``wamid``, received by ``link``'s number, read; the seam's errors if not."""


class UpdateStore(Intake, Reading, ChannelLinks, Protocol):
    """What the endpoint reads: inbound messages by uuid, the account's own messages and its
    links."""


class MessageUpdateEndpoint:
    """``PATCH /v1/messages/{message_uuid}`` and the v1 problems of the rest of the path."""

    def __init__(
        self,
        store: UpdateStore,
        authenticator: Authenticator,
        marker: ReadMarker | None,
        *,
        max_body_bytes: int,
    ) -> None:
        """``marker`` None: this process cannot reach WhatsApp, and says so (503)."""
        self._store = store
        self._authenticator = authenticator
        self._marker = marker
        self._max_body_bytes = max_body_bytes

    def routes(self) -> list[BaseRoute]:
        """Every method on ``/v1/messages`` but POST (whose endpoint is the accept path),
        every method on ``/v1/messages/{message_uuid}``, and any deeper path."""
        return [
            *(
                Route(path, self.collection, methods=[m for m in ALL_METHODS if m != "POST"])
                for path in ("/v1/messages", "/v1/messages/")
            ),
            Route("/v1/messages/{message_uuid}", self.message, methods=ALL_METHODS),
            Route("/v1/messages/{rest:path}", self.elsewhere, methods=ALL_METHODS),
        ]

    async def collection(self, request: Request) -> Response:
        """A method other than POST on /v1/messages: 405."""
        return _not_allowed(request, "POST", "sends a message")

    async def message(self, request: Request) -> Response:
        """PATCH marks the message read; any other method is a 405."""
        if request.method != "PATCH":
            return _not_allowed(request, "PATCH", "marks an inbound WhatsApp message read")
        try:
            return await self.patch(request, request.path_params["message_uuid"])
        except RequestRejected as exc:
            return v1_problem(exc)

    async def elsewhere(self, request: Request) -> Response:
        """A path below /v1/messages/{message_uuid}: no such Messages v1 resource."""
        return problem(
            404,
            "Not Found",
            f"Messages v1 has no resource at this path. {SURFACES}",
            problem_type=f"{PROBLEM_BASE}#not-found",
        )

    async def patch(self, request: Request, message_uuid: str) -> Response:
        """Mark the account's inbound WhatsApp message read (see the module doc)."""
        principal = await self._authenticator.authenticate(request.headers.getlist("authorization"))
        update = _decoder.decode(await read_json_body(request, self._max_body_bytes))
        unoffered = UNOFFERED_STATUSES.get(update.status)
        if unoffered is not None:
            raise _rejected(
                UNSUPPORTED_CHANNEL,
                unoffered,
                [InvalidParameter("status", f"'{update.status}' is not offered by Cascade")],
            )
        account_id = principal.account.id
        inbound = await self._store.find_inbound_message(account_id, message_uuid)
        if inbound is None:
            if await self._store.get_message(account_id, message_uuid) is not None:
                raise _not_inbound_whatsapp(f"{message_uuid} is a message this account sent")
            raise NotFound(
                f"This account has no message {message_uuid}: neither one it sent nor an "
                "inbound message it still keeps (inbound messages go with their webhook after "
                "the retention period)."
            )
        wamid = wamid_of(inbound.ref)
        if inbound.channel != LinkedChannel.WHATSAPP or wamid is None:
            raise _not_inbound_whatsapp(f"{message_uuid} is an inbound {inbound.channel} message")
        link = await self._store.find_channel_link(LinkedChannel.WHATSAPP, inbound.to)
        if link is None or link.account_id != account_id:
            raise _rejected(
                NO_LINK,
                f"The WhatsApp number {inbound.to} that message {message_uuid} came in on is "
                "no longer linked to this account: link it again to mark its messages read.",
            )
        if self._marker is None:
            return problem(
                503,
                "Service Unavailable",
                "This Cascade process has no WhatsApp client to mark the message read with.",
                problem_type=f"{PROBLEM_BASE}#unavailable",
            )
        typing = update.replying_indicator is not None and update.replying_indicator.show
        try:
            await self._marker.mark_read(link, wamid, typing=typing)
        except (ChannelRejected, ChannelUnavailable) as exc:
            log.info(
                "message.mark_read_failed",
                message=message_uuid,
                account=account_id,
                link=link.id,
                code=exc.code,
                outcome=type(exc).__name__,
            )
            return _platform_problem(exc)
        log.info("message.marked_read", message=message_uuid, account=account_id, link=link.id)
        return Response(b"{}", status_code=200, media_type="application/json")


def _rejected(
    kind: ProblemKind, detail: str, parameters: list[InvalidParameter] | None = None
) -> RequestRejected:
    """A 422 v1 problem of ``kind`` with this detail."""
    return RequestRejected(
        detail,
        status_code=422,
        title=kind.title,
        problem_type=kind.type,
        invalid_parameters=parameters or [],
    )


def _not_inbound_whatsapp(what: str) -> RequestRejected:
    """The 422 for a message that is not an inbound WhatsApp message."""
    return _rejected(
        INVALID_PARAMS,
        f"Only an inbound WhatsApp message can be marked read; {what}.",
        [InvalidParameter("message_uuid", "is not an inbound WhatsApp message")],
    )


def _platform_problem(exc: ChannelRejected | ChannelUnavailable) -> Response:
    """The answer to a read mark WhatsApp refused or could not take: the Nexmo code as the
    type and title (as in a v1 status webhook's error), WhatsApp's words in the detail."""
    kind = f"{OLYMPUS}#{exc.code}"
    if isinstance(exc, ChannelRejected):
        status = 502 if exc.code == CODE_TOKEN_EXPIRED else 422
        detail = f"WhatsApp did not mark the message read: {exc.reason}"
        return problem(status, str(exc.code), detail, problem_type=kind)
    headers = (
        {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after is not None else None
    )
    if isinstance(exc, ChannelOutcomeUnknown):
        detail = (
            f"WhatsApp did not answer: {exc.message}. The message may or may not be marked "
            "read; marking it again is harmless."
        )
        return problem(502, str(exc.code), detail, problem_type=kind)
    if exc.code == CODE_THROTTLED:
        detail = f"WhatsApp is limiting requests: {exc.message}. Try again later."
        return problem(429, str(exc.code), detail, problem_type=kind, headers=headers)
    detail = (
        f"WhatsApp could not be reached or failed: {exc.message}. Nothing was marked; try again."
    )
    return problem(503, str(exc.code), detail, problem_type=kind, headers=headers)


def _not_allowed(request: Request, allowed: str, what: str) -> Response:
    """The 405 for a method a /v1/messages path does not take."""
    return problem(
        405,
        "Method Not Allowed",
        f"{request.method} is not offered on this path: {allowed} {what}. {SURFACES}",
        problem_type=f"{PROBLEM_BASE}#wrong-verb",
        headers={"Allow": allowed},
    )
