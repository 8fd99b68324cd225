"""Signed intake: the routes Messenger, WhatsApp and Viber call back.

- ``GET /channels/messenger``, ``GET /channels/whatsapp``: Meta's subscription handshake.
  ``hub.mode=subscribe`` with a ``hub.verify_token`` equal to the verify token of one of the
  channel's links (compared in constant time) is answered with the raw ``hub.challenge`` as
  text/plain; anything else is a 403.
- ``POST /channels/messenger``, ``POST /channels/whatsapp``: taken only with a valid
  ``X-Hub-Signature-256`` over the raw body, keyed with the app secret of the link of every
  page (``entry[].id``) or business number (``value.metadata``) the body names.
- ``POST /channels/viber`` (and ``/channels/viber/{bot_id}``, which names the bot): taken only
  with a valid ``X-Viber-Content-Signature``, keyed with the bot's auth token (without a bot
  id, each Viber link's token is tried). Viber's ``webhook`` probe is answered 200.

A body that names an unknown page, number or bot, or whose signature does not verify, gets a
403 problem and records nothing; a body that is not JSON in the platform's shape gets a 400;
one over the size limit a 413 (``read_json_body``, as for every POST). Nothing of a body or a
secret is logged.

What a verified callback says (:mod:`cascade.channels.intake`) is stored before the 200, since
the platforms send a callback again until they get one (docs/design.md §7):

- receipts go to a :class:`ReceiptTaker`: the engine, when this process runs one, which applies
  each by the failover rules at once; otherwise :class:`KeptReceipts`, which keeps each in the
  store as an unmatched receipt for an engine's sweep to apply (``CASCADE_RUN_WORKER=false``);
- a Messenger watermark becomes a receipt for each message of its conversation it covers
  (``Intake.messenger_thread``), and for each send it covers still waiting for the Graph API's
  answer, named by Cascade's id (``Intake.messenger_unsent``);
- an inbound message becomes an inbound webhook to the linked account, queued once per
  platform message id (``Intake.add_inbound_webhook``).

Applying a receipt twice changes nothing the second time, so a repeated callback changes
nothing twice. Intake makes no call to a platform and reads only the links and, for a
Messenger watermark, one conversation's unconfirmed messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import structlog
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cascade.api.messages import new_id, read_json_body
from cascade.channels.intake import Arrival, MalformedCallback, messenger, viber, whatsapp
from cascade.channels.intake.signatures import (
    hub_signature_valid,
    verify_token_matches,
    viber_signature_valid,
)
from cascade.clock import Clock
from cascade.domain.records import (
    ChannelLink,
    LinkedChannel,
    NewWebhook,
    Receipt,
    WebhookKind,
)
from cascade.domain.status import Status
from cascade.errors import RequestRejected
from cascade.log import LogLimiter, clip
from cascade.store.base import ChannelLinks, Intake, Tenants, Transitions
from cascade.webhooks import payloads

log = structlog.get_logger(__name__)

CALLBACKS = Counter(
    "cascade_intake_callbacks", "Platform callbacks received", ["channel", "outcome"]
)

#: the longest ``hub.challenge`` echoed back (Meta sends an integer)
MAX_CHALLENGE = 256

T = TypeVar("T")


class IntakeStore(ChannelLinks, Intake, Tenants, Protocol):
    """What intake uses of the store: the links, its own operations, and an account's
    applications (whose webhook_version shapes its inbound webhooks)."""


class ReceiptTaker(Protocol):
    """Where intake hands the receipts of a verified callback: the engine, or
    :class:`KeptReceipts`. Returns once the receipt is stored."""

    async def receipt(self, receipt: Receipt) -> None:
        """Store (and, for the engine, apply) one receipt."""


class KeptReceipts:
    """The receipts of a process that runs no engine: each is kept in the store as an
    unmatched receipt, which the engine of any process applies within its sweep interval
    (a few seconds), exactly as it applies an SMPP receipt that beat its submit."""

    def __init__(self, store: Transitions, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def receipt(self, receipt: Receipt) -> None:
        """Keep the receipt durably for an engine to apply."""
        await self._store.add_orphan_receipt(receipt, self._clock.now())


class CallbackRefused(RequestRejected):
    """The callback names no linked page, number or bot, or its signature does not verify;
    nothing was recorded."""

    status_code = 403
    problem_type = "https://developer.nexmo.com/api-errors#forbidden"
    title = "Forbidden"


class IntakeEndpoints:
    """The routes of signed intake, over the store, the receipt taker and the clock."""

    def __init__(
        self,
        store: IntakeStore,
        receipts: ReceiptTaker,
        clock: Clock,
        *,
        max_body_bytes: int,
        on_inbound: Callable[[], None] | None = None,
    ) -> None:
        """``on_inbound`` is called after inbound webhooks were queued (it wakes an engine in
        this process, so they go out at once)."""
        self._store = store
        self._receipts = receipts
        self._clock = clock
        self._max_body_bytes = max_body_bytes
        self._on_inbound = on_inbound
        self._refusals = LogLimiter(10)

    def routes(self) -> list[BaseRoute]:
        """The routes, each with and without a trailing slash."""
        table: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
            ("/channels/messenger", self.messenger_handshake, "GET"),
            ("/channels/messenger", self.messenger_callback, "POST"),
            ("/channels/whatsapp", self.whatsapp_handshake, "GET"),
            ("/channels/whatsapp", self.whatsapp_callback, "POST"),
            ("/channels/viber", self.viber_callback, "POST"),
            ("/channels/viber/{bot_id}", self.viber_callback, "POST"),
        ]
        routes: list[BaseRoute] = []
        for path in dict.fromkeys(path for path, _, _ in table):
            methods = {method: handler for p, handler, method in table if p == path}
            for variant in (path, path + "/"):
                for method, handler in methods.items():
                    routes.append(Route(variant, handler, methods=[method]))
        return routes

    # --- Meta's subscription handshake -----------------------------------------------------

    async def messenger_handshake(self, request: Request) -> Response:
        """Answer Meta's handshake for the Messenger callback URL."""
        return await self._handshake(request, LinkedChannel.MESSENGER)

    async def whatsapp_handshake(self, request: Request) -> Response:
        """Answer Meta's handshake for the WhatsApp callback URL."""
        return await self._handshake(request, LinkedChannel.WHATSAPP)

    async def _handshake(self, request: Request, channel: LinkedChannel) -> Response:
        """The challenge back when the mode is ``subscribe`` and the token is a link's."""
        params = request.query_params
        challenge = params.get("hub.challenge")
        if params.get("hub.mode") != "subscribe" or not challenge:
            raise self._refuse(channel, "handshake without subscribe mode or challenge")
        if len(challenge) > MAX_CHALLENGE or not challenge.isprintable():
            raise self._refuse(channel, "handshake challenge too long or not printable")
        tokens = [
            link.credentials.get("verify_token", "")
            for link in await self._store.channel_links()
            if link.channel == channel
        ]
        if not verify_token_matches(params.get("hub.verify_token"), tokens):
            raise self._refuse(channel, "handshake verify token matches no link")
        log.info("intake.handshake", channel=channel.value)
        return Response(challenge, media_type="text/plain")

    # --- callbacks --------------------------------------------------------------------------

    async def messenger_callback(self, request: Request) -> Response:
        """Take a Messenger callback."""
        channel = LinkedChannel.MESSENGER
        body = await read_json_body(request, self._max_body_bytes)
        callback = self._decoded(channel, messenger.decode, body)
        links: dict[str, ChannelLink] = {}
        for page in messenger.pages(callback):
            link = await self._store.find_channel_link(channel, page)
            if link is None:
                raise self._refuse(channel, "callback names a page that is not linked", page)
            links[page] = link
        self._verify_hub(channel, body, request, links.values())
        now = self._clock.now()
        parsed = messenger.parse(callback, {page: ln.account_id for page, ln in links.items()}, now)
        receipts = list(parsed.receipts)
        for mark in parsed.watermarks:
            statuses = [Status.SUBMITTED]
            if mark.status is Status.READ:
                statuses.append(Status.DELIVERED)
            # a watermark counts whole milliseconds: a send begun within its millisecond is
            # covered too
            until = mark.up_to + 0.001
            covered = await self._store.messenger_thread(
                links[mark.page_id].account_id, mark.page_id, mark.psid, until, statuses
            )
            receipts += [
                Receipt(messenger.PROVIDER, provider_id, mark.status, mark.at)
                for provider_id in covered
            ]
            # a send the watermark covers whose Graph answer is not recorded yet (the callback
            # beat it): named by Cascade's id, so the status is not lost
            in_flight = await self._store.messenger_unsent(
                links[mark.page_id].account_id, mark.page_id, mark.psid, until, statuses
            )
            receipts += [
                Receipt(messenger.PROVIDER, "", mark.status, mark.at, message_id=message_id)
                for message_id in in_flight
            ]
        return await self._record(channel, receipts, parsed.inbound)

    async def whatsapp_callback(self, request: Request) -> Response:
        """Take a WhatsApp callback."""
        channel = LinkedChannel.WHATSAPP
        body = await read_json_body(request, self._max_body_bytes)
        callback = self._decoded(channel, whatsapp.decode, body)
        links: dict[whatsapp.Business, ChannelLink] = {}
        for business in whatsapp.businesses(callback):
            link = await self._whatsapp_link(business)
            if link is None:
                raise self._refuse(
                    channel, "callback names a number that is not linked", business.number
                )
            links[business] = link
        self._verify_hub(channel, body, request, links.values())
        if callback.system_errors:
            log.warning("intake.whatsapp_errors", errors=callback.system_errors)
        parsed = whatsapp.parse(callback, links, self._clock.now())
        return await self._record(channel, parsed.receipts, parsed.inbound)

    async def viber_callback(self, request: Request) -> Response:
        """Take a Viber callback (for the bot the path names, or whichever bot's token
        verifies it)."""
        channel = LinkedChannel.VIBER
        body = await read_json_body(request, self._max_body_bytes)
        bot_id = request.path_params.get("bot_id")
        if bot_id is not None:
            found = await self._store.find_channel_link(channel, str(bot_id))
            candidates = [found] if found is not None else []
        else:
            candidates = [ln for ln in await self._store.channel_links() if ln.channel == channel]
        header = request.headers.get("x-viber-content-signature")
        link = next(
            (
                candidate
                for candidate in candidates
                if viber_signature_valid(body, header, candidate.credentials.get("auth_token", ""))
            ),
            None,
        )
        if link is None:
            raise self._refuse(channel, "signature verifies with no linked bot's token", bot_id)
        callback = self._decoded(channel, viber.decode, body)
        if callback.probe:
            CALLBACKS.labels(channel.value, "probe").inc()
            log.info("intake.viber_webhook_set", bot=clip(link.address))
            return Response(status_code=200)
        parsed = viber.parse(callback, link, self._clock.now())
        return await self._record(channel, parsed.receipts, parsed.inbound)

    # --- the parts ---------------------------------------------------------------------------

    async def _whatsapp_link(self, business: whatsapp.Business) -> ChannelLink | None:
        """The link of a business number: by its display number, when the phone number id
        agrees; else the link whose phone number id it is."""
        channel = LinkedChannel.WHATSAPP
        if business.number:
            link = await self._store.find_channel_link(channel, business.number)
            if link is not None and business.phone_number_id in (
                "",
                link.credentials.get("phone_number_id"),
            ):
                return link
        if business.phone_number_id:
            for link in await self._store.channel_links():
                if (
                    link.channel == channel
                    and link.credentials.get("phone_number_id") == business.phone_number_id
                ):
                    return link
        return None

    def _verify_hub(
        self,
        channel: LinkedChannel,
        body: bytes,
        request: Request,
        links: Iterable[ChannelLink],
    ) -> None:
        """Refuse the callback unless its X-Hub-Signature-256 verifies with the app secret of
        every link it names (and it names one at least)."""
        header = request.headers.get("x-hub-signature-256")
        secrets = {link.credentials.get("app_secret", "") for link in links}
        if not secrets or not all(hub_signature_valid(body, header, s) for s in secrets):
            raise self._refuse(channel, "X-Hub-Signature-256 missing or not valid")

    def _decoded(self, channel: LinkedChannel, decode: Callable[[bytes], T], body: bytes) -> T:
        """The decoded callback, or a 400 saying the body is not one."""
        try:
            return decode(body)
        except MalformedCallback as exc:
            CALLBACKS.labels(channel.value, "malformed").inc()
            raise RequestRejected(
                f"The body is not a {channel.value} callback: {clip(exc, 200)}"
            ) from exc

    def _refuse(
        self, channel: LinkedChannel, reason: str, address: str | None = None
    ) -> CallbackRefused:
        """The 403 to raise, logged (at most a few a second) with the reason and the
        address the callback named, never its body or a secret."""
        CALLBACKS.labels(channel.value, "refused").inc()
        suppressed = self._refusals.admit()
        if suppressed is not None:
            extra = {"suppressed": suppressed} if suppressed else {}
            address_field = {"address": clip(address)} if address is not None else {}
            log.info(
                "intake.refused",
                channel=channel.value,
                reason=reason,
                **address_field,
                **extra,
            )
        return CallbackRefused(
            "The callback is not signed by a linked page, number or bot; nothing was recorded."
        )

    async def _record(
        self, channel: LinkedChannel, receipts: Sequence[Receipt], arrivals: Sequence[Arrival]
    ) -> Response:
        """Store the receipts and inbound messages of a verified callback, then answer 200.

        Receipts of one message are handed over in the order the platform wrote them (the
        same status twice once); different messages' and the inbound messages go together,
        so one commit can hold them. Every write is awaited before the 200, and the first
        failure is raised once all are done (the platform sends the callback again; what
        was stored changes nothing twice)."""
        groups: dict[tuple[str, str], list[Receipt]] = {}
        seen: set[tuple[str, str, Status]] = set()
        for receipt in receipts:
            key = (receipt.provider, receipt.provider_message_id, receipt.status)
            if key not in seen:
                seen.add(key)
                groups.setdefault(key[:2], []).append(receipt)
        results = await asyncio.gather(
            *(self._in_order(group) for group in groups.values()),
            *(self._inbound(arrival) for arrival in arrivals),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                CALLBACKS.labels(channel.value, "failed").inc()
                raise result
        queued = sum(1 for result in results[len(groups) :] if result is True)
        if queued and self._on_inbound is not None:
            self._on_inbound()
        CALLBACKS.labels(channel.value, "taken").inc()
        log.debug(
            "intake.taken",
            channel=channel.value,
            receipts=len(seen),
            inbound=len(arrivals),
            inbound_new=queued,
        )
        return Response(status_code=200)

    async def _in_order(self, receipts: Sequence[Receipt]) -> None:
        """Hand over one message's receipts one after another."""
        for receipt in receipts:
            await self._receipts.receipt(receipt)

    async def _inbound(self, arrival: Arrival) -> bool:
        """Queue an inbound message's webhook to its account, once; whether it was new."""
        message = arrival.message
        # the parsers always name the linked account
        assert message.account_id is not None
        version = payloads.inbound_version(await self._store.list_applications(message.account_id))
        keys = message.keys(new_id())
        webhook = NewWebhook(
            kind=WebhookKind.INBOUND,
            account_id=message.account_id,
            application_id=None,
            workflow_id=None,
            message_id=None,
            url=None,
            body=payloads.inbound_body(message, keys.message_uuid, version),
        )
        return await self._store.add_inbound_webhook(webhook, arrival.ref, self._clock.now(), keys)
