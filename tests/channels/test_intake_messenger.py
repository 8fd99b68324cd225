"""Messenger webhook bodies: deliveries (mids and watermarks), reads, inbound messages, echoes
and batched entries, parsed without I/O."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cascade.channels.intake import MalformedCallback, Watermark
from cascade.channels.intake.messenger import decode, pages, parse
from cascade.domain.records import Receipt
from cascade.domain.status import Status

PAGE = "104116062535871"
OTHER_PAGE = "209876543210987"
PSID = "6783241905021357"
ACCOUNTS = {PAGE: "account-a", OTHER_PAGE: "account-b"}
NOW = 1_900_000_000.0


def body(*entries: dict[str, Any]) -> bytes:
    """A Messenger webhook body of these entries."""
    return msgspec.json.encode({"object": "page", "entry": list(entries)})


def entry(*events: dict[str, Any], page: str = PAGE, time: int = 1458692752478) -> dict[str, Any]:
    """One page's entry of these messaging events."""
    return {"id": page, "time": time, "messaging": list(events)}


def event(kind: str, value: dict[str, Any], *, page: str = PAGE, **more: Any) -> dict[str, Any]:
    """A messaging event from the user to the page."""
    return {"sender": {"id": PSID}, "recipient": {"id": page}, kind: value, **more}


def parsed(*entries: dict[str, Any]) -> Any:
    """What the body of these entries says."""
    return parse(decode(body(*entries)), ACCOUNTS, NOW)


class TestDeliveries:
    """``message_deliveries``: listed mids and the watermark."""

    def test_each_mid_is_delivered_and_the_watermark_covers_the_earlier_ones(self) -> None:
        """Each mid becomes a delivered receipt at the event's time, and the watermark is
        kept for the store to expand over the conversation's earlier messages."""
        result = parsed(
            entry(
                event(
                    "delivery",
                    {"mids": ["m_1", "m_2", "m_1"], "watermark": 1458668856253},
                    timestamp=1458668856300,
                )
            )
        )
        assert result.receipts == [
            Receipt("messenger", "m_1", Status.DELIVERED, 1458668856.3),
            Receipt("messenger", "m_2", Status.DELIVERED, 1458668856.3),
        ]
        assert result.watermarks == [
            Watermark(PAGE, PSID, 1458668856.253, Status.DELIVERED, 1458668856.3)
        ]

    def test_a_delivery_with_only_a_watermark(self) -> None:
        """Without mids (Messenger's usual case) only the watermark is kept; the event's time
        is the entry's when it has none."""
        result = parsed(entry(event("delivery", {"watermark": 1458668856253}), time=1458668857000))
        assert result.receipts == []
        assert result.watermarks == [
            Watermark(PAGE, PSID, 1458668856.253, Status.DELIVERED, 1458668857.0)
        ]


class TestReads:
    """``message_reads``: a read watermark."""

    def test_a_read_watermark_covers_the_conversation(self) -> None:
        """A read becomes a read watermark of the page and the user."""
        result = parsed(entry(event("read", {"watermark": 1458668856253}, timestamp=1458668856463)))
        assert result.watermarks == [
            Watermark(PAGE, PSID, 1458668856.253, Status.READ, 1458668856.463)
        ]
        assert result.receipts == []
        assert result.inbound == []

    def test_a_read_without_a_watermark_says_nothing(self) -> None:
        """A read event missing its watermark records nothing."""
        assert parsed(entry(event("read", {}))).watermarks == []


class TestInbound:
    """``message``: what users send the page."""

    def test_a_text_reaches_the_pages_account_from_the_user(self) -> None:
        """A text is one inbound message, to the page from the PSID, for the account the page
        is linked to, keyed by its mid."""
        result = parsed(
            entry(
                event("message", {"mid": "m_in", "text": "hello, world!"}, timestamp=1458692752478)
            )
        )
        (arrival,) = result.inbound
        message = arrival.message
        assert arrival.ref == "messenger:m_in"
        assert (message.provider, message.channel, message.account_id) == (
            "messenger",
            "messenger",
            "account-a",
        )
        assert message.to == {"type": "messenger", "id": PAGE}
        assert message.from_ == {"type": "messenger", "id": PSID}
        assert message.content == {"type": "text", "text": "hello, world!"}
        assert message.at == 1458692752.478
        assert message.provider_message_id == "m_in"

    def test_attachments_arrive_by_url_one_message_each(self) -> None:
        """Each attachment is its own inbound message (image, sticker as an image, video,
        audio, file), keyed by the mid and its position; a kind without a URL is
        unsupported."""
        attachments = [
            {"type": "image", "payload": {"url": "https://cdn.example/1.jpg"}},
            {"type": "sticker", "payload": {"url": "https://cdn.example/s.png", "sticker_id": 1}},
            {"type": "video", "payload": {"url": "https://cdn.example/v.mp4"}},
            {"type": "audio", "payload": {"url": "https://cdn.example/a.mp3"}},
            {"type": "file", "payload": {"url": "https://cdn.example/f.pdf"}},
            {"type": "location", "payload": {"coordinates": {"lat": 1, "long": 2}}},
        ]
        result = parsed(entry(event("message", {"mid": "m_a", "attachments": attachments})))
        assert [arrival.ref for arrival in result.inbound] == [
            "messenger:m_a",
            *(f"messenger:m_a/{n}" for n in range(1, 6)),
        ]
        assert [arrival.message.content for arrival in result.inbound] == [
            {"type": "image", "image": {"url": "https://cdn.example/1.jpg"}},
            {"type": "image", "image": {"url": "https://cdn.example/s.png"}},
            {"type": "video", "video": {"url": "https://cdn.example/v.mp4"}},
            {"type": "audio", "audio": {"url": "https://cdn.example/a.mp3"}},
            {"type": "file", "file": {"url": "https://cdn.example/f.pdf"}},
            {"type": "unsupported"},
        ]

    def test_echoes_of_the_pages_own_sends_are_ignored(self) -> None:
        """A message with is_echo is the page's own send: nothing is recorded."""
        echo = {"mid": "m_out", "text": "sent by the page", "is_echo": True, "app_id": 1}
        assert parsed(entry(event("message", echo))).inbound == []

    def test_a_message_without_a_time_takes_its_entrys_then_now(self) -> None:
        """The entry's time stands in for a missing event time, and the time of intake for
        both."""
        with_entry = parsed(entry(event("message", {"mid": "m_1", "text": "a"}), time=1000))
        assert with_entry.inbound[0].message.at == 1.0
        bare = decode(
            body({"id": PAGE, "messaging": [event("message", {"mid": "m", "text": "b"})]})
        )
        assert parse(bare, ACCOUNTS, NOW).inbound[0].message.at == NOW


class TestBatches:
    """Bodies Messenger batches: several entries and events."""

    def test_every_entry_and_event_is_read_in_order(self) -> None:
        """Two pages' entries, each with several events: all of them, each for its own page
        and account; the pages are named once each."""
        callback = decode(
            body(
                entry(
                    event("delivery", {"mids": ["m_1"], "watermark": 1000}, timestamp=1000),
                    event("read", {"watermark": 2000}, timestamp=2000),
                ),
                entry(
                    event("message", {"mid": "m_b", "text": "hi"}, page=OTHER_PAGE),
                    page=OTHER_PAGE,
                ),
                entry(event("read", {"watermark": 3000}, timestamp=3000)),
            )
        )
        assert pages(callback) == [PAGE, OTHER_PAGE]
        result = parse(callback, ACCOUNTS, NOW)
        assert [r.provider_message_id for r in result.receipts] == ["m_1"]
        assert [(w.page_id, w.status, w.up_to) for w in result.watermarks] == [
            (PAGE, Status.DELIVERED, 1.0),
            (PAGE, Status.READ, 2.0),
            (PAGE, Status.READ, 3.0),
        ]
        assert [a.message.account_id for a in result.inbound] == ["account-b"]

    def test_events_of_other_kinds_are_left_alone(self) -> None:
        """Postbacks, referrals and events without a sender record nothing."""
        result = parsed(
            entry(
                event("postback", {"title": "Start", "payload": "GET_STARTED"}),
                {"recipient": {"id": PAGE}, "read": {"watermark": 1}},
            )
        )
        assert (result.receipts, result.watermarks, result.inbound) == ([], [], [])


class TestMalformed:
    """Bodies that are not Messenger page callbacks."""

    @pytest.mark.parametrize(
        "raw",
        [
            b"{not json",
            b"[]",
            b'{"entry": []}',
            b'{"object": "instagram", "entry": []}',
            b'{"object": "page", "entry": [{"messaging": []}]}',
            b'{"object": "page", "entry": [{"id": 104116062535871}]}',
            body(entry({"sender": {"id": PSID}, "delivery": {"watermark": "x"}})),
        ],
        ids=[
            "json",
            "array",
            "no-object",
            "instagram",
            "no-page-id",
            "numeric-id",
            "bad-watermark",
        ],
    )
    def test_are_refused(self, raw: bytes) -> None:
        """Each is a MalformedCallback, whatever is wrong with it."""
        with pytest.raises(MalformedCallback):
            decode(raw)
