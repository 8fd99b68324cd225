"""Viber bot callbacks: delivered, seen and failed receipts, inbound messages, the webhook
probe and the events that record nothing, parsed without I/O."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cascade.channels.intake import MalformedCallback
from cascade.channels.intake.viber import FAILED_CODE, decode, parse
from cascade.domain.records import ChannelLink, LinkedChannel, Receipt
from cascade.domain.status import Status

BOT = ChannelLink(
    id="link-bot",
    account_id="account-v",
    channel=LinkedChannel.VIBER,
    address="acme-bot",
    credentials={"auth_token": "token", "sender_name": "Acme"},
    created_at=0.0,
)
NOW = 1_900_000_000.0
#: a token past 2**53, where a float would lose digits
TOKEN = 5741311803571721087


def parsed(callback: dict[str, Any]) -> Any:
    """What a callback says, for the bot."""
    return parse(decode(msgspec.json.encode(callback)), BOT, NOW)


def receipt_event(event: str, **more: Any) -> dict[str, Any]:
    """A receipt callback for message TOKEN."""
    return {
        "event": event,
        "timestamp": 1457764197627,
        "chat_hostname": "SN-CHAT-05_",
        "message_token": TOKEN,
        "user_id": "01234567890A=",
        **more,
    }


class TestReceipts:
    """``delivered``, ``seen`` and ``failed``."""

    def test_delivered_and_seen(self) -> None:
        """Delivered and seen (read) name the message by its token as an exact decimal
        string."""
        assert parsed(receipt_event("delivered")).receipts == [
            Receipt("viber_service_msg", "5741311803571721087", Status.DELIVERED, 1457764197.627)
        ]
        assert parsed(receipt_event("seen")).receipts == [
            Receipt("viber_service_msg", "5741311803571721087", Status.READ, 1457764197.627)
        ]

    def test_failed_is_rejected_with_the_description(self) -> None:
        """Failed is rejected, code 1260, Viber's description as the reason."""
        (receipt,) = parsed(receipt_event("failed", desc="failure description")).receipts
        assert (receipt.status, receipt.code, receipt.reason) == (
            Status.REJECTED,
            FAILED_CODE,
            "Viber: failure description",
        )

    def test_a_token_written_as_a_string_matches_the_same(self) -> None:
        """A token sent as a string is the same id."""
        (receipt,) = parsed(receipt_event("delivered", message_token=str(TOKEN))).receipts
        assert receipt.provider_message_id == str(TOKEN)

    def test_a_receipt_without_a_token_or_time(self) -> None:
        """Without a token nothing is recorded; without a time, the time of intake is used."""
        assert parsed({"event": "delivered", "user_id": "u"}).receipts == []
        (receipt,) = parsed({"event": "seen", "message_token": 7}).receipts
        assert (receipt.provider_message_id, receipt.at) == ("7", NOW)


class TestInbound:
    """``message``: what users send the bot."""

    def message(self, content: dict[str, Any]) -> Any:
        """The one inbound message of a ``message`` callback carrying ``content``."""
        (arrival,) = parsed(
            {
                "event": "message",
                "timestamp": 1457764197627,
                "message_token": 4912661846655238145,
                "sender": {"id": "01234567890A=", "name": "John", "language": "en"},
                "message": content,
            }
        ).inbound
        return arrival

    def test_a_text_reaches_the_bots_account(self) -> None:
        """A text goes to the bot's account, from the user's id (``from.id``, which a reply
        names as ``to.id``) to the bot (``to.id``), keyed by its token."""
        arrival = self.message({"type": "text", "text": "hi", "tracking_data": "t"})
        message = arrival.message
        assert arrival.ref == "viber_service_msg:4912661846655238145"
        assert message.account_id == "account-v"
        assert message.to == {"type": "viber_service_msg", "id": "acme-bot"}
        assert message.from_ == {"type": "viber_service_msg", "id": "01234567890A="}
        assert message.content == {"type": "text", "text": "hi"}
        assert message.at == 1457764197.627

    @pytest.mark.parametrize(
        ("sent", "content"),
        [
            (
                {"type": "picture", "media": "https://dl.example/p.jpg", "text": "look"},
                {"type": "image", "image": {"url": "https://dl.example/p.jpg", "caption": "look"}},
            ),
            (
                {"type": "video", "media": "https://dl.example/v.mp4", "size": 10},
                {"type": "video", "video": {"url": "https://dl.example/v.mp4"}},
            ),
            (
                {"type": "file", "media": "https://dl.example/f.pdf", "file_name": "f.pdf"},
                {"type": "file", "file": {"url": "https://dl.example/f.pdf", "name": "f.pdf"}},
            ),
            (
                {"type": "location", "location": {"lat": 51.5, "lon": -0.12}},
                {"type": "location", "location": {"latitude": "51.5", "longitude": "-0.12"}},
            ),
            ({"type": "sticker", "sticker_id": 46105}, {"type": "unsupported"}),
            ({"type": "picture"}, {"type": "unsupported"}),
        ],
        ids=["picture", "video", "file", "location", "sticker", "picture-without-media"],
    )
    def test_media_and_others(self, sent: dict[str, Any], content: dict[str, Any]) -> None:
        """Pictures, videos and files by their media URL, locations by coordinates, the rest
        unsupported."""
        assert self.message(sent).message.content == content


class TestOtherEvents:
    """Events that record nothing."""

    @pytest.mark.parametrize(
        "event", ["webhook", "subscribed", "unsubscribed", "conversation_started", "client_status"]
    )
    def test_record_nothing(self, event: str) -> None:
        """The probe and the subscription events are answered but record nothing."""
        result = parsed({"event": event, "timestamp": 1, "message_token": 1, "user": {"id": "u"}})
        assert (result.receipts, result.watermarks, result.inbound) == ([], [], [])

    def test_the_probe_is_recognised(self) -> None:
        """``webhook`` is the probe."""
        assert decode(b'{"event":"webhook","timestamp":1,"message_token":2}').probe
        assert not decode(b'{"event":"delivered"}').probe

    @pytest.mark.parametrize(
        "raw", [b"nope", b"{}", b'{"event": 1}', b'{"event": "seen", "timestamp": "x"}']
    )
    def test_malformed_bodies_are_refused(self, raw: bytes) -> None:
        """Not JSON, no event, or fields of the wrong type: a MalformedCallback."""
        with pytest.raises(MalformedCallback):
            decode(raw)
