"""Linked channels: send with the page, number or bot that the sending account linked.

One :class:`LinkedProvider` serves one channel (messenger, whatsapp, viber_service_msg). For
each message it finds the link named by the message's ``from`` (``from.id`` for Messenger and
Viber, ``from.number`` for WhatsApp) and sends with it through the channel's adapter
(:mod:`~cascade.channels.messenger`, :mod:`~cascade.channels.whatsapp`,
:mod:`~cascade.channels.viber`) only when the link belongs to the message's account. Without
such a link the message goes to the sandbox when the account is a sandbox account, and is
otherwise rejected with 1120 "Illegal Sender Address" ("no messenger page 123 is linked to
this account"): a message is never sent with another account's credentials, and the reason
does not say whether another account linked that address.

Links and accounts are read through :class:`LinkLookup` (the store) and kept for
``cache_seconds`` (5 s by default), so a send does not read the store each time; a link removed
or added takes effect within that time.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, TypeVar

from cascade.channels.base import ChannelProvider, OutboundMessage, ReceiptSink, SendResult
from cascade.channels.http import ChannelHttp
from cascade.channels.messenger import MessengerAdapter
from cascade.channels.viber import ViberAdapter
from cascade.channels.whatsapp import WhatsAppAdapter
from cascade.clock import Clock, SystemClock
from cascade.config import Settings
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelRejected

#: Nexmo's "Illegal Sender Address": the ``from`` is not one this account may send as
CODE_NO_LINK = 1120

#: how many entries a cache holds before the stale ones are dropped
CACHE_SWEEP_SIZE = 1024

T = TypeVar("T")

#: what each channel's ``from`` names, in the words of a rejection
_ADDRESS_FIELD = {
    LinkedChannel.MESSENGER: ("id", "messenger page"),
    LinkedChannel.WHATSAPP: ("number", "whatsapp number"),
    LinkedChannel.VIBER: ("id", "viber bot"),
}


class SandboxFlag(Protocol):
    """What a send asks of an account: whether it is a sandbox account."""

    @property
    def sandbox(self) -> bool:
        """Whether its unlinked channels go to the sandbox."""


class LinkLookup(Protocol):
    """Where links and accounts are read from (the Store plays this role)."""

    async def find_channel_link(self, channel: LinkedChannel, address: str) -> ChannelLink | None:
        """The link of ``address`` on ``channel``, whichever account it belongs to."""

    async def get_account(self, account_id: str) -> SandboxFlag | None:
        """The account with this id."""


class ChannelAdapter(Protocol):
    """One platform's client: sends a message with a given link."""

    @property
    def channel(self) -> LinkedChannel:
        """The channel it sends."""

    async def start(self) -> None:
        """Get ready to send (open the shared HTTP client)."""

    async def stop(self) -> None:
        """Stop sending (let go of the shared HTTP client)."""

    async def send(self, link: ChannelLink, message: OutboundMessage) -> SendResult:
        """Send ``message`` with ``link``'s credentials."""


class LinkedProvider(ChannelProvider):
    """The provider of one linked channel: the account's own link, else the sandbox for a
    sandbox account, else rejected (see the module doc)."""

    ids_can_repeat = False  # message ids, wamids and Viber tokens are never handed out again

    def __init__(
        self,
        adapter: ChannelAdapter,
        sandbox: ChannelProvider,
        lookup: LinkLookup,
        *,
        clock: Clock | None = None,
        cache_seconds: float = 5.0,
    ) -> None:
        self.adapter = adapter
        self.channel = adapter.channel
        #: the id space of the provider ids it returns, which intake's receipts name too
        self.name = self.channel.value
        self._sandbox = sandbox
        self._lookup = lookup
        self._clock: Clock = clock or SystemClock()
        self._ttl = cache_seconds
        self._links: dict[str, tuple[float, ChannelLink | None]] = {}
        self._accounts: dict[str, tuple[float, bool | None]] = {}

    async def start(self, sink: ReceiptSink) -> None:
        """Open the adapter's HTTP client. Receipts come through intake, not from here; the
        sandbox is started by the engine as the default provider."""
        await self.adapter.start()

    async def stop(self) -> None:
        """Let go of the adapter's HTTP client."""
        await self.adapter.stop()

    async def deduplicates_send(self, message: OutboundMessage) -> bool:
        """Whether a resend of ``message`` is recognised: when it goes to the sandbox (which
        recognises a resend), as a sandbox account's unlinked address does; never on a
        platform's API."""
        field, _ = _ADDRESS_FIELD[self.channel]
        address = str(message.from_.get(field) or "")
        link = await self._link(address) if address else None
        if link is not None and link.account_id == message.account_id:
            return False
        return message.account_id is not None and await self._is_sandbox(message.account_id)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send with the account's link, to the sandbox, or reject (see the module doc)."""
        field, noun = _ADDRESS_FIELD[self.channel]
        address = str(message.from_.get(field) or "")
        link = await self._link(address) if address else None
        if link is not None and link.account_id == message.account_id:
            return await self.adapter.send(link, message)
        if message.account_id is not None and await self._is_sandbox(message.account_id):
            result = await self._sandbox.send(message)
            # the sandbox's receipts name its own id space, so the message must record it
            return dataclasses.replace(result, provider=result.provider or self._sandbox.name)
        raise ChannelRejected(CODE_NO_LINK, f"no {noun} {address} is linked to this account")

    async def _link(self, address: str) -> ChannelLink | None:
        """The link of ``address``, from the cache while it is fresh."""
        now = self._clock.now()
        cached = self._links.get(address)
        if cached is not None and cached[0] > now:
            return cached[1]
        link = await self._lookup.find_channel_link(self.channel, address)
        if self._ttl > 0:
            _forget_expired(self._links, now)
            self._links[address] = (now + self._ttl, link)
        return link

    async def _is_sandbox(self, account_id: str) -> bool:
        """Whether the account is a sandbox account (an unknown account is not)."""
        now = self._clock.now()
        cached = self._accounts.get(account_id)
        if cached is not None and cached[0] > now:
            return bool(cached[1])
        account = await self._lookup.get_account(account_id)
        sandbox = account.sandbox if account is not None else None
        if self._ttl > 0:
            _forget_expired(self._accounts, now)
            self._accounts[account_id] = (now + self._ttl, sandbox)
        return bool(sandbox)


def channel_http(settings: Settings) -> ChannelHttp:
    """The HTTP client the linked channels share, with the settings' timeout and limit."""
    return ChannelHttp(
        timeout=settings.channel_http_timeout_seconds,
        max_connections=settings.channel_http_max_connections,
    )


def linked_providers(
    settings: Settings,
    sandbox: ChannelProvider,
    lookup: LinkLookup,
    clock: Clock,
    *,
    http: ChannelHttp | None = None,
) -> dict[str, ChannelProvider]:
    """The providers of the three linked channels, by channel name, on one shared HTTP client
    (``http``, else one of their own) with the settings' base URLs, Graph API version,
    timeout, connection limit and cache."""
    http = http or channel_http(settings)
    adapters: list[ChannelAdapter] = [
        MessengerAdapter(
            http, base_url=settings.graph_base_url, api_version=settings.graph_api_version
        ),
        WhatsAppAdapter(
            http, base_url=settings.graph_base_url, api_version=settings.graph_api_version
        ),
        ViberAdapter(http, base_url=settings.viber_base_url),
    ]
    return {
        adapter.channel.value: LinkedProvider(
            adapter,
            sandbox,
            lookup,
            clock=clock,
            cache_seconds=settings.channel_link_cache_seconds,
        )
        for adapter in adapters
    }


def _forget_expired(cache: dict[str, tuple[float, T]], now: float) -> None:
    """Drop stale entries once a cache has grown, so that addresses seen once (a typo in a
    ``from``) are not kept for ever."""
    if len(cache) >= CACHE_SWEEP_SIZE:
        for key in [key for key, (until, _) in cache.items() if until <= now]:
            del cache[key]
