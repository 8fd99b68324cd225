"""The message model of Vonage Messages v1, and its translation into the v0.1 representation.

A v1 message is flat: ``channel`` and ``message_type`` name what it is, ``to`` and ``from`` are
strings, the content sits under the field ``message_type`` names (``text`` is a string, the
others objects) and each channel's options under the channel's name. ``failover`` lists
complete v1 messages, tried in order when the one before is rejected or undeliverable.

Cascade stores, sends and reads back every message in the v0.1 shape (``to``/``from`` objects
and a ``message`` object with its ``content``). :func:`internal` is the one place a v1 message
becomes that shape, so the store, the engine and the channels know one representation.
Cross-field rules (what each channel allows) are in :mod:`cascade.domain.rules_v1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field, to_builtins

from cascade.domain.message import (
    MAX_STEPS,
    MAX_TEMPLATE_PARAMETERS,
    Caption,
    Channel,
    MessengerOptions,
    Text,
    Url,
    ViberOptions,
    WhatsAppOptions,
)

V1Channel = Literal["sms", "mms", "whatsapp", "messenger", "viber_service"]
V1MessageType = Literal["text", "image", "audio", "video", "file", "template", "custom", "vcard"]
WebhookVersionName = Literal["v0.1", "v1"]

#: the v1 names of the channels, by the name Cascade uses inside (the v0.1 ``type``)
V1_CHANNEL_NAMES: dict[str, str] = {
    Channel.SMS: "sms",
    Channel.MMS: "mms",
    Channel.WHATSAPP: "whatsapp",
    Channel.MESSENGER: "messenger",
    Channel.VIBER: "viber_service",
}
#: the internal (v0.1) name of each v1 channel
INTERNAL_CHANNELS: dict[str, Channel] = {v1: Channel(name) for name, v1 in V1_CHANNEL_NAMES.items()}

#: the fields that carry content, one per message type
CONTENT_FIELDS = ("text", "image", "audio", "video", "file", "template", "custom", "vcard")
#: the channel option objects, by the v1 channel that owns each
OPTION_FIELDS = {"messenger": "messenger", "viber_service": "viber_service", "whatsapp": "whatsapp"}
#: the longest client_ref (the v1 API and its SDKs take 100 characters; v0.1 took 40)
MAX_CLIENT_REF = 100

ClientRefV1 = Annotated[
    str,
    Meta(max_length=MAX_CLIENT_REF, description="Echoed in every status webhook of the message"),
]
Recipient = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=50,
        description="E.164 digits without + or 00 (sms, mms, whatsapp, viber_service) or the "
        "recipient's id (messenger)",
    ),
]
Sender = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=50,
        description="E.164 digits, an alphanumeric sender id (sms) or the sender's id "
        "(messenger, viber_service)",
    ),
]


class _Value(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of the v1 request values: immutable, strict about unknown fields, compact."""


class MediaV1(_Value, frozen=True):
    """An attachment by URL (image, audio, video, vCard) with an optional caption."""

    url: Url
    caption: Caption | None = None


class FileV1(_Value, frozen=True):
    """A file by URL, with an optional caption and the name the recipient sees."""

    url: Url
    caption: Caption | None = None
    name: Annotated[str, Meta(min_length=1, max_length=255)] | None = None


class TemplateV1(_Value, frozen=True):
    """A pre-approved template and the strings that fill its placeholders, in order."""

    name: Annotated[str, Meta(min_length=1, max_length=512)]
    parameters: Annotated[
        list[Annotated[str, Meta(max_length=4096)]], Meta(max_length=MAX_TEMPLATE_PARAMETERS)
    ] = field(default_factory=list)


class MessageV1(_Value, frozen=True):
    """One v1 message, as ``POST /v1/messages`` takes it and as each ``failover`` entry is."""

    channel: V1Channel
    message_type: V1MessageType
    to: Recipient
    from_: Sender = field(name="from")
    text: Text | None = None
    image: MediaV1 | None = None
    audio: MediaV1 | None = None
    video: MediaV1 | None = None
    file: FileV1 | None = None
    vcard: MediaV1 | None = None
    template: TemplateV1 | None = None
    custom: dict[str, Any] | None = None
    messenger: MessengerOptions | None = None
    viber_service: ViberOptions | None = None
    whatsapp: WhatsAppOptions | None = None
    client_ref: ClientRefV1 | None = None
    webhook_url: Url | None = None
    webhook_version: WebhookVersionName | None = None
    # options the v1 API and its SDKs have that Cascade does not offer: taken in so that
    # the answer is a problem naming the feature (domain.rules_v1), not an unknown field
    ttl: Any = None
    trusted_recipient: Any = None
    sms: Any = None
    context: Any = None


class MessageRequestV1(MessageV1, frozen=True):
    """``POST /v1/messages``: a message and the messages to fail over to, in order."""

    failover: Annotated[list[MessageV1], Meta(max_length=MAX_STEPS - 1)] | None = None

    @property
    def messages(self) -> list[MessageV1]:
        """The message and its failover messages, in the order they are tried."""
        return [self, *(self.failover or ())]


class ReplyingIndicatorV1(_Value, frozen=True):
    """WhatsApp's typing indicator, shown to the user with a read mark until the reply comes
    (or for about 25 seconds)."""

    show: bool
    type: Literal["text"] = "text"


class MessageUpdateV1(_Value, frozen=True):
    """``PATCH /v1/messages/{message_uuid}``: the status a message is to take. Cascade offers
    ``read``, on an inbound WhatsApp message (what the official SDKs'
    ``mark_whatsapp_message_read`` sends), with an optional replying indicator; ``revoked``
    (an RCS feature) is taken in so that the answer names it as not offered."""

    status: Annotated[str, Meta(min_length=1, max_length=50)]
    replying_indicator: ReplyingIndicatorV1 | None = None


#: the status a PATCH can set, and those Cascade names as not offered, with why
UPDATE_STATUS = "read"
UNOFFERED_STATUSES = {
    "revoked": "Cascade does not offer revoking a message: it is an RCS feature, and Cascade "
    "has no RCS channel.",
}

#: options Cascade does not offer, and why a request that uses one is refused
UNSUPPORTED_OPTIONS = {
    "ttl": "is not supported by Cascade: a message is tried until its provider gives up",
    "trusted_recipient": "is not supported by Cascade, which has no Fraud Defender",
    "sms": "is not supported by Cascade (encoding is chosen from the text; no number pools "
    "or regulatory ids)",
    "context": "is not supported by Cascade: a message cannot quote or react to another",
}


@dataclass(frozen=True, slots=True)
class InternalMessage:
    """A v1 message in the v0.1 representation the store, the engine and channels use."""

    channel: Channel
    to: dict[str, str]  # the v0.1 ``to`` object: {"type", "number"|"id"}
    from_: dict[str, str]  # the v0.1 ``from`` object
    message: dict[str, Any]  # the v0.1 ``message`` object: {"content": {...}, options...}
    client_ref: str | None
    webhook_url: str | None
    webhook_version: str | None


#: which field of the v0.1 address carries a channel's recipient and sender
_ADDRESS_FIELDS: dict[Channel, tuple[str, str]] = {
    Channel.SMS: ("number", "number"),
    Channel.MMS: ("number", "number"),
    Channel.WHATSAPP: ("number", "number"),
    Channel.MESSENGER: ("id", "id"),
    Channel.VIBER: ("number", "id"),
}

#: v1 option object name -> the v0.1 ``message`` field that carries it
_INTERNAL_OPTIONS = {
    "messenger": "messenger",
    "viber_service": "viber_service_msg",
    "whatsapp": "whatsapp",
}


def internal(message: MessageV1) -> InternalMessage:
    """``message`` in the v0.1 shape: ``to``/``from`` objects of the channel's type, and a
    ``message`` object whose ``content`` holds the field its ``message_type`` names."""
    channel = INTERNAL_CHANNELS[message.channel]
    to_field, from_field = _ADDRESS_FIELDS[channel]
    content: dict[str, Any] = {"type": message.message_type}
    value = getattr(message, message.message_type)
    if value is not None:
        content[message.message_type] = to_builtins(value)
    body: dict[str, Any] = {"content": content}
    for v1_name, v0_name in _INTERNAL_OPTIONS.items():
        option = getattr(message, v1_name)
        if option is not None:
            body[v0_name] = to_builtins(option)
    return InternalMessage(
        channel=channel,
        to={"type": channel.value, to_field: message.to},
        from_={"type": channel.value, from_field: message.from_},
        message=body,
        client_ref=message.client_ref,
        webhook_url=message.webhook_url,
        webhook_version=message.webhook_version,
    )
