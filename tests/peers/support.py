"""Builders for the linked-channel tests: links and outbound messages as the engine makes them."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from cascade.channels.base import OutboundMessage
from cascade.domain.records import ChannelLink, LinkedChannel

_ids = itertools.count(1)

#: what each channel's ``to`` and ``from`` name (v0.1)
_FIELDS = {
    "messenger": ("id", "id"),
    "whatsapp": ("number", "number"),
    "viber_service_msg": ("number", "id"),
}


def make_link(
    channel: LinkedChannel, address: str, account_id: str = "acct-1", **credentials: str
) -> ChannelLink:
    """A link of ``address`` on ``channel`` for ``account_id`` with these credentials."""
    return ChannelLink(
        id=f"link-{next(_ids)}",
        account_id=account_id,
        channel=channel,
        address=address,
        credentials=dict(credentials),
        created_at=1_700_000_000.0,
    )


def outbound(
    channel: str,
    to: str,
    sender: str,
    content: dict[str, Any],
    *,
    account_id: str | None = "acct-1",
    **options: Any,
) -> OutboundMessage:
    """A v0.1 message on ``channel`` from ``sender`` to ``to`` with ``content`` and channel
    ``options`` (e.g. ``messenger={"category": "update"}``)."""
    to_field, from_field = _FIELDS[channel]
    return OutboundMessage(
        message_id=str(uuid.uuid4()),
        channel=channel,
        to={"type": channel, to_field: to},
        from_={"type": channel, from_field: sender},
        message={"content": content, **options},
        account_id=account_id,
    )


def text(body: str = "Your code is 1234") -> dict[str, Any]:
    """A text content."""
    return {"type": "text", "text": body}


def media(kind: str, url: str, caption: str | None = None) -> dict[str, Any]:
    """An image, audio, video or file content."""
    item: dict[str, Any] = {"url": url}
    if caption is not None:
        item["caption"] = caption
    return {"type": kind, kind: item}
