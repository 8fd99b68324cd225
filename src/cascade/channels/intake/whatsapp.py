"""WhatsApp Cloud API webhook bodies: message statuses and the messages users send in.

A body is ``{"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes":
[{"field": "messages", "value": {...}}]}]}``; each ``value`` names the business number it is
about in ``metadata`` (``display_phone_number``, ``phone_number_id``), which picks the link.
Changes of other fields (template reviews, account updates) are not about messages and are
left alone.

Statuses (``value.statuses[]``, by ``wamid``), which may arrive out of order:

==========  ===============  ====================================================
status      Cascade status   notes
==========  ===============  ====================================================
sent        (no change)      accepted by WhatsApp; the send result said as much
delivered   delivered        a ``delivered`` after ``read`` changes nothing
read        read             may come without ``delivered``
played      read             a voice message was played
failed      rejected         ``errors[0]`` gives the code (below) and the reason
==========  ===============  ====================================================

A ``failed`` status is ``rejected`` with the Nexmo code the send adapters give the same
WhatsApp error code when a send is refused at once (``channels.graph.GRAPH_ERRORS``, the table
of docs/design.md §7: 131047 is 1340, 131026 1300, 131050 1240, 131048 and 131049 1210, ...),
plus 130472 (a marketing message held back for an experiment), 1210; any other code is 1331
Provider error. A code that is transient at send time (a rate limit, 1000; the platform's own
trouble, 1331) is ``rejected`` here all the same: a failed status is WhatsApp's last word on
the message. The reason keeps WhatsApp's own code, title and details.

Inbound messages (``value.messages[]``) become v0.1 inbound content: ``text``; ``image``,
``audio``, ``video`` and ``document`` (as ``file``) with the media's ``id`` and MIME type, a
``url`` only when the webhook carries one (Cloud API webhooks name media by id: fetching
the URL is a Graph API call, which intake never makes), and the caption or file name;
``location`` with its coordinates as strings; every other type ``unsupported``. The sender
is ``from.number``, the business number ``to.number``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from cascade.channels.base import InboundMessage
from cascade.channels.graph import CODE_ANTI_SPAM, CODE_PROVIDER_ERROR, GRAPH_ERRORS
from cascade.channels.intake import Arrival, MalformedCallback, Parsed, clip_reason
from cascade.domain.records import ChannelLink, LinkedChannel, Receipt
from cascade.domain.status import Status

#: the provider (id space) of messages sent through WhatsApp: SendResult.provider
PROVIDER = LinkedChannel.WHATSAPP.value

_STATUSES = {
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "played": Status.READ,
    "failed": Status.REJECTED,
}

#: WhatsApp error codes (webhook ``errors[].code``) and the Nexmo code each is reported as:
#: the send adapters' codes for Graph errors of any subcode, and one only statuses carry
ERROR_CODES: dict[int, int] = {
    **{code: meaning.code for (code, subcode), meaning in GRAPH_ERRORS.items() if subcode is None},
    130472: CODE_ANTI_SPAM,
}
#: the Nexmo code of a WhatsApp error not in ERROR_CODES
UNKNOWN_ERROR = CODE_PROVIDER_ERROR

#: inbound media types and the v0.1 content type each becomes
_MEDIA_TYPES = {"image": "image", "audio": "audio", "video": "video", "document": "file"}


class _ErrorData(msgspec.Struct):
    """More about an error."""

    details: str = ""


class _Error(msgspec.Struct):
    """One error of a failed status."""

    code: int | None = None
    title: str = ""
    message: str = ""
    error_data: _ErrorData | None = None


class _Status(msgspec.Struct):
    """One status of a message the business sent."""

    id: str
    status: str
    timestamp: str | int | None = None
    recipient_id: str = ""
    errors: list[_Error] = []


class _Text(msgspec.Struct):
    """A text message's body."""

    body: str = ""


class _Media(msgspec.Struct):
    """An image, audio, video or document, named by its media id."""

    id: str = ""
    mime_type: str | None = None
    url: str | None = None
    caption: str | None = None
    filename: str | None = None


class _Location(msgspec.Struct):
    """A shared location."""

    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None


class _Message(msgspec.Struct):
    """A message a user sent the business number."""

    id: str
    from_: str = msgspec.field(name="from", default="")
    timestamp: str | int | None = None
    type: str = ""
    text: _Text | None = None
    image: _Media | None = None
    audio: _Media | None = None
    video: _Media | None = None
    document: _Media | None = None
    location: _Location | None = None


class _Metadata(msgspec.Struct):
    """The business number a change is about."""

    display_phone_number: str = ""
    phone_number_id: str = ""


class _Value(msgspec.Struct):
    """A ``messages`` change: statuses and inbound messages of one business number."""

    metadata: _Metadata | None = None
    statuses: list[_Status] = []
    messages: list[_Message] = []
    errors: list[_Error] = []


class _Change(msgspec.Struct):
    """One change; its value is read only for the ``messages`` field."""

    field: str = ""
    value: msgspec.Raw = msgspec.Raw(b"null")


class _Entry(msgspec.Struct):
    """One business account's changes."""

    id: str = ""
    changes: list[_Change] = []


class _Callback(msgspec.Struct):
    """A WhatsApp webhook body as it comes."""

    object: str
    entry: list[_Entry]


@dataclass(frozen=True, slots=True)
class Business:
    """The business number a change names: display number digits and phone number id."""

    number: str
    phone_number_id: str


@dataclass(frozen=True, slots=True)
class Callback:
    """A WhatsApp webhook body: its ``messages`` changes, each with the number it names;
    ``system_errors`` counts the app-level errors it reports (logged, nothing recorded)."""

    changes: tuple[tuple[Business, _Value], ...]
    system_errors: int


_decoder = msgspec.json.Decoder(_Callback)
_value_decoder = msgspec.json.Decoder(_Value)


def decode(body: bytes) -> Callback:
    """The callback in ``body`` (MalformedCallback when it is not a WhatsApp callback, or a
    ``messages`` change does not say which number it is about)."""
    try:
        raw = _decoder.decode(body)
        if raw.object != "whatsapp_business_account":
            wrong = raw.object[:40]
            raise MalformedCallback(f"object is {wrong!r}, not 'whatsapp_business_account'")
        changes = []
        errors = 0
        for entry in raw.entry:
            for change in entry.changes:
                if change.field != "messages":
                    continue
                value = _value_decoder.decode(change.value)
                errors += len(value.errors)
                metadata = value.metadata
                if metadata is None or not (
                    metadata.display_phone_number or metadata.phone_number_id
                ):
                    raise MalformedCallback("a messages change names no business number")
                number = _digits(metadata.display_phone_number)
                business = Business(number, metadata.phone_number_id)
                changes.append((business, value))
    except msgspec.DecodeError as exc:
        raise MalformedCallback(f"not a WhatsApp callback: {exc}") from exc
    return Callback(tuple(changes), errors)


def businesses(callback: Callback) -> list[Business]:
    """The business numbers the callback names, each once, in order: whose links must
    verify it."""
    return list(dict.fromkeys(business for business, _ in callback.changes))


def parse(callback: Callback, links: dict[Business, ChannelLink], now: float) -> Parsed:
    """What ``callback`` says; ``links`` gives the link of each number it names (its account
    gets the inbound messages, its address is their ``to.number``). A status or message
    without a readable time of its own takes ``now``."""
    parsed = Parsed()
    for business, value in callback.changes:
        link = links[business]
        for status in value.statuses:
            receipt = _receipt(status, now)
            if receipt is not None:
                parsed.receipts.append(receipt)
        for message in value.messages:
            if message.id and message.from_:
                parsed.inbound.append(_arrival(message, link, now))
    return parsed


def _digits(number: str) -> str:
    """A phone number's digits alone (the display number may carry + and spaces)."""
    return "".join(ch for ch in number if ch.isascii() and ch.isdigit())


def _seconds(timestamp: str | int | None, now: float) -> float:
    """POSIX seconds of a WhatsApp timestamp (seconds, as a string); ``now`` when it is
    missing or unreadable."""
    if timestamp is None:
        return now
    try:
        return float(timestamp)
    except ValueError:
        return now


def _receipt(status: _Status, now: float) -> Receipt | None:
    """The receipt of one status (None: it changes nothing, or is not one Cascade knows)."""
    mapped = _STATUSES.get(status.status)
    if mapped is None or not status.id:
        return None
    at = _seconds(status.timestamp, now)
    if mapped is not Status.REJECTED:
        return Receipt(PROVIDER, status.id, mapped, at)
    code, reason = failure(status.errors)
    return Receipt(PROVIDER, status.id, mapped, at, code, reason)


def failure(errors: list[_Error]) -> tuple[int, str]:
    """The Nexmo code and the reason of a failed status, from its first error."""
    if not errors:
        return UNKNOWN_ERROR, "WhatsApp reported the message failed, without an error"
    error = errors[0]
    code = ERROR_CODES.get(error.code, UNKNOWN_ERROR) if error.code is not None else UNKNOWN_ERROR
    words = error.title or error.message or "failed"
    details = error.error_data.details if error.error_data is not None else ""
    reason = f"WhatsApp error {error.code}: {words}" + (f" ({details})" if details else "")
    return code, clip_reason(reason)


def _arrival(message: _Message, link: ChannelLink, now: float) -> Arrival:
    """An inbound message to the linked number."""
    inbound = InboundMessage(
        provider=PROVIDER,
        channel=LinkedChannel.WHATSAPP.value,
        to={"type": "whatsapp", "number": link.address},
        from_={"type": "whatsapp", "number": message.from_},
        content=_content(message),
        at=_seconds(message.timestamp, now),
        provider_message_id=message.id,
        account_id=link.account_id,
    )
    return Arrival(inbound, f"{PROVIDER}:{message.id}")


def wamid_of(ref: str | None) -> str | None:
    """The wamid in an inbound message's ref as :func:`parse` records it
    (``whatsapp:<wamid>``); None for another platform's ref, or none."""
    if ref is None:
        return None
    platform, _, wamid = ref.partition(":")
    return wamid if platform == PROVIDER and wamid else None


def _content(message: _Message) -> dict[str, Any]:
    """The v0.1 inbound content of a message."""
    if message.type == "text" and message.text is not None:
        return {"type": "text", "text": message.text.body}
    kind = _MEDIA_TYPES.get(message.type)
    media: _Media | None = getattr(message, message.type) if kind is not None else None
    if kind is not None and media is not None:
        described: dict[str, Any] = {"id": media.id}
        if media.url:
            described["url"] = media.url
        if media.mime_type:
            described["mime_type"] = media.mime_type
        if media.caption:
            described["caption"] = media.caption
        if media.filename:
            described["name"] = media.filename
        return {"type": kind, kind: described}
    location = message.location
    if (
        message.type == "location"
        and location is not None
        and location.latitude is not None
        and location.longitude is not None
    ):
        place: dict[str, Any] = {
            "latitude": str(location.latitude),
            "longitude": str(location.longitude),
        }
        if location.name:
            place["name"] = location.name
        if location.address:
            place["address"] = location.address
        return {"type": "location", "location": place}
    return {"type": "unsupported"}
