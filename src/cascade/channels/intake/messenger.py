"""Messenger Platform webhook bodies: deliveries, reads and the messages users send a page.

A body is ``{"object": "page", "entry": [{"id": PAGE_ID, "time": ms, "messaging": [event]}]}``
and may batch several entries (pages) and events. What each event comes to:

- ``message_deliveries`` (``delivery: {mids?, watermark}``): each listed ``mid`` is
  ``delivered``, and the watermark says every message the page sent that user at or before it
  is delivered (a :class:`~cascade.channels.intake.Watermark`, expanded by the store);
- ``message_reads`` (``read: {watermark}``): every message sent at or before it is ``read``;
- ``message``: an inbound message from the user (PSID) to the page, as v0.1 inbound content:
  its text, and each attachment (image, video, audio, file, sticker as an image) by its URL,
  one inbound message each; other attachment kinds are ``unsupported``. Echoes of the page's
  own sends (``is_echo``) are ignored, as are events of other kinds (postbacks, referrals...).

Messenger has no asynchronous failure event: a message that never arrives stays
``submitted``, and the step's window decides.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cascade.channels.base import InboundMessage
from cascade.channels.intake import Arrival, MalformedCallback, Parsed, Watermark, seconds
from cascade.domain.records import LinkedChannel, Receipt
from cascade.domain.status import Status

#: the provider (id space) of messages sent through Messenger: SendResult.provider
PROVIDER = LinkedChannel.MESSENGER.value

#: Messenger attachment types and the v0.1 content type each becomes
_ATTACHMENT_TYPES = {
    "image": "image",
    "sticker": "image",
    "video": "video",
    "audio": "audio",
    "file": "file",
}


class _Party(msgspec.Struct):
    """A sender or recipient: a PSID, or the page id."""

    id: str = ""


class _Payload(msgspec.Struct):
    """An attachment's payload; only its URL is used."""

    url: str | None = None


class _Attachment(msgspec.Struct):
    """One attachment of a message."""

    type: str = ""
    payload: _Payload | None = None


class _Message(msgspec.Struct):
    """A message a user sent (or, with ``is_echo``, the page's own send echoed back)."""

    mid: str = ""
    text: str | None = None
    is_echo: bool = False
    attachments: list[_Attachment] = []


class _Delivery(msgspec.Struct):
    """A ``message_deliveries`` event's body."""

    watermark: int | None = None
    mids: list[str] = []


class _Read(msgspec.Struct):
    """A ``message_reads`` event's body."""

    watermark: int | None = None


class _Event(msgspec.Struct):
    """One ``messaging`` event."""

    sender: _Party | None = None
    recipient: _Party | None = None
    timestamp: int | None = None
    message: _Message | None = None
    delivery: _Delivery | None = None
    read: _Read | None = None


class _Entry(msgspec.Struct):
    """One page's events."""

    id: str
    time: int | None = None
    messaging: list[_Event] = []


class Callback(msgspec.Struct):
    """A Messenger webhook body."""

    object: str
    entry: list[_Entry]


_decoder = msgspec.json.Decoder(Callback)


def decode(body: bytes) -> Callback:
    """The callback in ``body`` (MalformedCallback when it is not a page callback)."""
    try:
        callback = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedCallback(f"not a Messenger callback: {exc}") from exc
    if callback.object != "page":
        raise MalformedCallback(f"object is {callback.object[:40]!r}, not 'page'")
    return callback


def pages(callback: Callback) -> list[str]:
    """The page ids the callback names, each once, in order: whose links must verify it."""
    return list(dict.fromkeys(entry.id for entry in callback.entry))


def parse(callback: Callback, accounts: dict[str, str], now: float) -> Parsed:
    """What ``callback`` says; ``accounts`` maps each of its page ids to the account the page
    is linked to (inbound messages go there). An event without a time of its own takes its
    entry's, else the watermark's, else ``now``."""
    parsed = Parsed()
    for entry in callback.entry:
        page = entry.id
        for event in entry.messaging:
            psid = event.sender.id if event.sender is not None else ""
            if not psid:
                continue
            stamp = event.timestamp if event.timestamp is not None else entry.time
            if event.delivery is not None:
                delivery = event.delivery
                at = _time(stamp, delivery.watermark, now)
                for mid in dict.fromkeys(delivery.mids):
                    if mid:
                        parsed.receipts.append(Receipt(PROVIDER, mid, Status.DELIVERED, at))
                if delivery.watermark is not None:
                    mark = seconds(delivery.watermark)
                    parsed.watermarks.append(Watermark(page, psid, mark, Status.DELIVERED, at))
            elif event.read is not None and event.read.watermark is not None:
                mark = seconds(event.read.watermark)
                at = _time(stamp, event.read.watermark, now)
                parsed.watermarks.append(Watermark(page, psid, mark, Status.READ, at))
            elif event.message is not None and not event.message.is_echo:
                at = _time(stamp, None, now)
                _inbound(parsed, page, psid, event.message, at, accounts[page])
    return parsed


def _time(stamp: int | None, watermark: int | None, now: float) -> float:
    """When an event happened: its own time, else its watermark, else ``now`` (seconds)."""
    if stamp is not None:
        return seconds(stamp)
    return seconds(watermark) if watermark is not None else now


def _inbound(
    parsed: Parsed, page: str, psid: str, message: _Message, at: float, account_id: str
) -> None:
    """A message the user sent: its text and each attachment, one inbound message each."""
    if not message.mid:
        return
    contents: list[dict[str, Any]] = []
    if message.text:
        contents.append({"type": "text", "text": message.text})
    for attachment in message.attachments:
        contents.append(_attachment_content(attachment))
    for index, content in enumerate(contents):
        inbound = InboundMessage(
            provider=PROVIDER,
            channel=LinkedChannel.MESSENGER.value,
            to={"type": "messenger", "id": page},
            from_={"type": "messenger", "id": psid},
            content=content,
            at=at,
            provider_message_id=message.mid,
            account_id=account_id,
        )
        ref = message.mid if index == 0 else f"{message.mid}/{index}"
        parsed.inbound.append(Arrival(inbound, f"{PROVIDER}:{ref}"))


def _attachment_content(attachment: _Attachment) -> dict[str, Any]:
    """The v0.1 content of one attachment: its media by URL, or ``unsupported``."""
    kind = _ATTACHMENT_TYPES.get(attachment.type)
    url = attachment.payload.url if attachment.payload is not None else None
    if kind is None or not url:
        return {"type": "unsupported"}
    return {"type": kind, kind: {"url": url}}
