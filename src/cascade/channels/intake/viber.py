"""Viber REST bot API callbacks: delivery, seen and failed receipts, and messages users send.

A callback is one event: ``{"event": ..., "timestamp": ms, "message_token": n, ...}``. Viber's
bodies do not say which bot they are for; the signature does (it is keyed with the bot's auth
token), so the route finds the bot by the token that verifies the body. What each event comes
to:

====================  =======================================================================
event                 recorded
====================  =======================================================================
delivered             the message (``message_token``, as a decimal string) is ``delivered``
seen                  it is ``read``
failed                it is ``rejected``, code 1260 (destination unreachable: Viber could not
                      deliver it to the user's devices), Viber's ``desc`` as the reason
message               an inbound message from ``sender.id`` (``from.id``: the per-bot user id a
                      reply names as ``to.id``) to the bot (``to.id``): ``text``; ``picture``,
                      ``video``, ``file`` by their ``media`` URL; ``location``; anything else
                      ``unsupported``
webhook               nothing: the probe Viber sends when the webhook is set; answered 200
subscribed,           nothing (answered 200)
unsubscribed,
conversation_started
====================  =======================================================================
"""

from __future__ import annotations

from typing import Any

import msgspec

from cascade.channels.base import InboundMessage
from cascade.channels.intake import Arrival, MalformedCallback, Parsed, clip_reason, seconds
from cascade.domain.records import ChannelLink, LinkedChannel, Receipt
from cascade.domain.status import Status

#: the provider (id space) of messages sent through Viber: SendResult.provider
PROVIDER = LinkedChannel.VIBER.value

#: the Nexmo code of a Viber ``failed`` callback: destination unreachable
FAILED_CODE = 1260

_RECEIPTS = {"delivered": Status.DELIVERED, "seen": Status.READ, "failed": Status.REJECTED}
_MEDIA_TYPES = {"picture": "image", "video": "video", "file": "file"}


class _Sender(msgspec.Struct):
    """The user who sent a message."""

    id: str = ""


class _Location(msgspec.Struct):
    """A shared location."""

    lat: float | None = None
    lon: float | None = None


class _Message(msgspec.Struct):
    """What a user sent."""

    type: str = ""
    text: str | None = None
    media: str | None = None
    file_name: str | None = None
    location: _Location | None = None


class Callback(msgspec.Struct):
    """A Viber callback."""

    event: str
    timestamp: int | None = None
    message_token: int | str | None = None
    user_id: str | None = None
    desc: str | None = None
    sender: _Sender | None = None
    message: _Message | None = None

    @property
    def probe(self) -> bool:
        """Whether it is the ``webhook`` probe Viber sends when the webhook is set."""
        return self.event == "webhook"


_decoder = msgspec.json.Decoder(Callback)


def decode(body: bytes) -> Callback:
    """The callback in ``body`` (MalformedCallback when it is not one)."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedCallback(f"not a Viber callback: {exc}") from exc


def parse(callback: Callback, link: ChannelLink, now: float) -> Parsed:
    """What ``callback`` says; ``link`` is the bot whose token verified it (an event without
    a time takes ``now``)."""
    parsed = Parsed()
    token = _token(callback.message_token)
    if token is None:
        return parsed
    at = seconds(callback.timestamp) if callback.timestamp is not None else now
    status = _RECEIPTS.get(callback.event)
    if status is Status.REJECTED:
        reason = clip_reason(f"Viber: {callback.desc or 'failed'}")
        parsed.receipts.append(Receipt(PROVIDER, token, status, at, FAILED_CODE, reason))
    elif status is not None:
        parsed.receipts.append(Receipt(PROVIDER, token, status, at))
    elif callback.event == "message" and callback.sender is not None and callback.sender.id:
        inbound = InboundMessage(
            provider=PROVIDER,
            channel=LinkedChannel.VIBER.value,
            to={"type": LinkedChannel.VIBER.value, "id": link.address},
            from_={"type": LinkedChannel.VIBER.value, "id": callback.sender.id},
            content=_content(callback.message),
            at=at,
            provider_message_id=token,
            account_id=link.account_id,
        )
        parsed.inbound.append(Arrival(inbound, f"{PROVIDER}:{token}"))
    return parsed


def _token(value: int | str | None) -> str | None:
    """A message token as the decimal string receipts are matched by."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _content(message: _Message | None) -> dict[str, Any]:
    """The v0.1 inbound content of what the user sent."""
    if message is None:
        return {"type": "unsupported"}
    if message.type == "text" and message.text is not None:
        return {"type": "text", "text": message.text}
    kind = _MEDIA_TYPES.get(message.type)
    if kind is not None and message.media:
        media: dict[str, Any] = {"url": message.media}
        if message.text:
            media["caption"] = message.text
        if message.file_name:
            media["name"] = message.file_name
        return {"type": kind, kind: media}
    location = message.location
    if (
        message.type == "location"
        and location is not None
        and location.lat is not None
        and location.lon is not None
    ):
        place = {"latitude": str(location.lat), "longitude": str(location.lon)}
        return {"type": "location", "location": place}
    return {"type": "unsupported"}
