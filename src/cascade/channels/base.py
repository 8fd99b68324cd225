"""The channel seam: hand a message to a provider; hear back receipts and inbound messages.

A provider knows its wire protocol and nothing of workflows. ``send`` either returns the
provider's id for the message or raises: ``ChannelUnavailable`` when trying again later may
work (throttled, timed out, connection lost), ``ChannelRejected`` when it never will. What the
provider reports later (delivery receipts, read receipts, replies) goes to the
:class:`ReceiptSink` the engine gives it at start. :class:`ChannelProvider` also declares what
else the engine asks of a provider (its id space, whether its ids can repeat, whether it
deduplicates a resend), each with the safe default.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Protocol

from cascade.domain.records import InboundKeys, Receipt

__all__ = [
    "ChannelProvider",
    "InboundMessage",
    "OutboundMessage",
    "Receipt",
    "ReceiptSink",
    "SendResult",
]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message to send, as the API accepted it."""

    message_id: str
    channel: str
    to: dict[str, Any]  # the v0.1 ``to`` object: {"type", "number"|"id"}
    from_: dict[str, Any]  # the v0.1 ``from`` object
    message: dict[str, Any]  # the v0.1 ``message`` object: {"content": {...}, options...}
    client_ref: str | None = None
    #: the account that sent it: a linked channel sends only with this account's link
    account_id: str | None = None

    @property
    def recipient(self) -> str:
        """The recipient's number or id."""
        return str(self.to.get("number") or self.to.get("id") or "")

    @property
    def text(self) -> str | None:
        """The text content, when the message is a text."""
        value = self.message.get("content", {}).get("text")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the provider answered to a successful submission."""

    provider_message_id: str
    price: str | None = None  # per message, as a decimal string (Nexmo's usage.price)
    currency: str | None = None
    segments: int = 1
    #: every part's provider id, in order, the first included, when the message went out in
    #: parts with a receipt each (SMPP); empty when ``provider_message_id`` is the only id
    segment_ids: tuple[str, ...] = ()
    #: the id space the ids belong to, stored as the message's provider and matched against
    #: receipts' (an SMPP provider has one per SMSC account); None = the provider's ``name``
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a customer's customer sent in (an MO SMS, a Messenger reply...)."""

    provider: str
    channel: str
    to: dict[str, Any]
    from_: dict[str, Any]
    content: dict[str, Any]  # the v0.1 inbound ``message.content``
    at: float
    provider_message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # channel extras, e.g. sms.num_messages
    #: the account it is for (a linked channel's owner); None: the first account (SMS)
    account_id: str | None = None

    def keys(self, message_uuid: str) -> InboundKeys:
        """What is kept beside its webhook so that a request can name it by ``message_uuid``
        later: its channel and the address it was sent to (``to.number`` or ``to.id``)."""
        address = str(self.to.get("number") or self.to.get("id") or "")
        return InboundKeys(message_uuid, self.channel, address)


class ReceiptSink(Protocol):
    """Where a provider reports what happens after a send (the engine implements it)."""

    async def receipt(self, receipt: Receipt) -> None:
        """Record a receipt durably; returns once it is stored."""

    async def inbound(self, message: InboundMessage) -> None:
        """Record an inbound message durably; returns once it is stored."""


class ChannelProvider(abc.ABC):
    """One provider connection (the sandbox, an SMSC, the Graph API...)."""

    #: the provider's name, stored with each message it sent (receipts are matched by it)
    #: unless its SendResult names another id space
    name: str = "provider"
    #: whether an id it hands out may be handed out again for another message (an SMSC after a
    #: restart): the engine then takes the id from the older message before recording it
    ids_can_repeat: bool = True
    #: whether it recognises a message handed to it again (by its message id) and sends it
    #: only once. The engine asks because sending is at least once: a send job may run again
    #: after a crash. A provider that deduplicates is simply called again; for one that does
    #: not, the engine counts each attempt in the store first, and records a send that may
    #: already have reached the provider ``undeliverable`` (error 1330) instead of repeating it
    deduplicates: bool = False

    async def deduplicates_send(self, message: OutboundMessage) -> bool:
        """Whether this provider recognises ``message`` handed to it again (``deduplicates``,
        unless the provider routes messages to places that differ in this)."""
        return self.deduplicates

    async def start(self, sink: ReceiptSink) -> None:  # noqa: B027 - optional hook
        """Connect; keep ``sink`` for receipts and inbound messages."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Disconnect, finishing what is in flight."""

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Submit one message; raise ChannelUnavailable or ChannelRejected if it fails."""
