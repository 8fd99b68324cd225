"""The message model of the Nexmo Messages v0.1 and Dispatch v0.1 contract.

These are plain immutable values (msgspec Structs, so the HTTP layer decodes straight into them
and the OpenAPI document is generated from them). Field constraints that a schema can express
live in the annotations; the rules that need more than one field live in ``domain.rules``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

Id = Annotated[str, Meta(min_length=1, max_length=50, description="A channel-specific id")]
Number = Annotated[
    str, Meta(min_length=1, max_length=50, description="E.164 number without a leading + or 00")
]
Url = Annotated[str, Meta(min_length=1, max_length=2000, description="A public https URL")]
Caption = Annotated[str, Meta(min_length=1, max_length=3000)]
Text = Annotated[str, Meta(min_length=1, max_length=4096)]
ClientRef = Annotated[
    str, Meta(max_length=40, description="Echoed in every status webhook of the message")
]
ExpiryTime = Annotated[int, Meta(ge=15, le=86400, description="Seconds before failing over")]
ViberTtl = Annotated[int, Meta(ge=30, le=259200, description="Seconds the provider keeps trying")]

#: the most steps a workflow may have
MAX_STEPS = 10
#: the most values a template may fill (a WhatsApp body of 1,024 characters has room for fewer)
MAX_TEMPLATE_PARAMETERS = 100

ChannelType = Literal["sms", "mms", "whatsapp", "messenger", "viber_service_msg"]
ContentType = Literal["text", "image", "audio", "video", "file", "template", "custom"]


class Channel(StrEnum):
    """A messaging channel, named as the v0.1 ``type`` field names it."""

    SMS = "sms"
    MMS = "mms"
    WHATSAPP = "whatsapp"
    MESSENGER = "messenger"
    VIBER = "viber_service_msg"


class _Value(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of the request values: immutable, strict about unknown fields, compact when encoded."""


class Address(_Value, frozen=True):
    """One end of a message: the channel and a phone number or a channel id."""

    type: ChannelType
    number: Number | None = None
    id: Id | None = None


class Media(_Value, frozen=True):
    """A media attachment given by URL (image, audio, video or file)."""

    url: Url
    caption: Caption | None = None


class TemplateParameter(_Value, frozen=True):
    """A template parameter in the Dispatch spelling: ``{"default": "value"}``."""

    default: Annotated[str, Meta(max_length=4096)]


class Template(_Value, frozen=True):
    """A pre-approved template and the values for its placeholders, in order."""

    name: Annotated[str, Meta(min_length=1, max_length=512)]
    parameters: Annotated[
        list[str | TemplateParameter], Meta(max_length=MAX_TEMPLATE_PARAMETERS)
    ] = field(default_factory=list)


class Content(_Value, frozen=True):
    """What the message says: ``type`` names which one of the other fields carries it."""

    type: ContentType
    text: Text | None = None
    image: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    file: Media | None = None
    template: Template | None = None
    custom: dict[str, Any] | None = None


class ViberOptions(_Value, frozen=True):
    """Viber Service Message options."""

    category: Literal["transaction", "promotion"] | None = None
    ttl: ViberTtl | None = None
    type: Annotated[str, Meta(max_length=64)] | None = None


class MessengerOptions(_Value, frozen=True):
    """Facebook Messenger options; ``message_tag`` needs a ``tag``."""

    category: Literal["response", "update", "message_tag"] | None = None
    tag: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class WhatsAppOptions(_Value, frozen=True):
    """WhatsApp options for template messages."""

    policy: Literal["fallback", "deterministic"] | None = None
    locale: Annotated[str, Meta(min_length=2, max_length=20)] | None = None


class MessageBody(_Value, frozen=True):
    """The ``message`` object: the content plus per-channel options."""

    content: Content
    viber_service_msg: ViberOptions | None = None
    messenger: MessengerOptions | None = None
    whatsapp: WhatsAppOptions | None = None


class Failover(_Value, frozen=True):
    """When to move on to the next step: ``condition_status`` not reached in ``expiry_time``."""

    expiry_time: ExpiryTime
    condition_status: Literal["delivered", "read"]


class MessageRequest(_Value, frozen=True):
    """``POST /v0.1/messages``: one message."""

    to: Address
    from_: Address = field(name="from")
    message: MessageBody
    client_ref: ClientRef | None = None


class WorkflowStep(_Value, frozen=True):
    """One step of a failover workflow: a message and, except on the last step, its failover."""

    to: Address
    from_: Address = field(name="from")
    message: MessageBody
    failover: Failover | None = None
    client_ref: ClientRef | None = None


class WorkflowRequest(_Value, frozen=True):
    """``POST /v0.1/dispatch`` and ``POST /beta/workflows``: a failover workflow."""

    template: Literal["failover"]
    workflow: Annotated[list[WorkflowStep], Meta(min_length=1, max_length=MAX_STEPS)]


def encode(value: object) -> bytes:
    """JSON bytes of a value (how message bodies are stored and sent on)."""
    return _encoder.encode(value)


_encoder = msgspec.json.Encoder()
