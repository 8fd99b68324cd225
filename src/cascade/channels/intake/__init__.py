"""Signed intake of the platforms' callbacks: Messenger, WhatsApp and Viber.

The platforms call Cascade back (delivery and read receipts, failures, messages users send
in). This package is the pure half of taking them: checking a callback's signature
(:mod:`.signatures`) and turning a verified body into what Cascade records (:mod:`.messenger`,
:mod:`.whatsapp`, :mod:`.viber`). It does no I/O; the HTTP routes that read the body, find the
linked page, number or bot a callback names, and store what it says are in
``cascade.api.intake``.

What a body comes to is a :class:`Parsed`: receipts (a platform's message id and its new
status, applied by the same rules as SMPP receipts), Messenger watermarks (every message of
one conversation sent at or before a time, which the store expands into receipts) and inbound
messages (each with the key that records it once however often the platform repeats it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cascade.channels.base import InboundMessage
from cascade.domain.records import Receipt
from cascade.domain.status import Status

__all__ = ["Arrival", "MalformedCallback", "Parsed", "Watermark", "clip_reason", "seconds"]

#: the longest failure reason a receipt keeps from a platform's error text
MAX_REASON_CHARS = 300


class MalformedCallback(ValueError):
    """A callback body that is not JSON, or not in the shape its platform documents."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every message a page sent to one Messenger user at or before ``up_to`` has reached
    ``status`` (delivered or read): Messenger reports deliveries and reads of a conversation
    this way rather than per message."""

    page_id: str
    psid: str
    #: the watermark, POSIX seconds (Messenger sends milliseconds)
    up_to: float
    status: Status
    #: when the platform says it happened, for the status webhook
    at: float


@dataclass(frozen=True, slots=True)
class Arrival:
    """An inbound message and the key that records it once (the platform's message id; one
    Messenger message with several attachments arrives as one message per attachment, each
    keyed by the message id and its position)."""

    message: InboundMessage
    ref: str


@dataclass(slots=True)
class Parsed:
    """What one verified callback says, in the order the platform wrote it."""

    receipts: list[Receipt] = field(default_factory=list)
    watermarks: list[Watermark] = field(default_factory=list)
    inbound: list[Arrival] = field(default_factory=list)


def clip_reason(text: str) -> str:
    """A platform's error text cut to :data:`MAX_REASON_CHARS` for a receipt's reason."""
    text = " ".join(text.split())
    if len(text) <= MAX_REASON_CHARS:
        return text
    return text[: MAX_REASON_CHARS - 1] + "\u2026"


def seconds(millis: int | float) -> float:
    """POSIX seconds of a platform's millisecond timestamp."""
    return float(millis) / 1000.0
