"""WhatsApp Cloud API webhook bodies: statuses (out of order, read without delivered, failed
with errors[]), inbound messages of each kind, and batches, parsed without I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from cascade.channels.intake import MalformedCallback
from cascade.channels.intake.whatsapp import (
    UNKNOWN_ERROR,
    Business,
    businesses,
    decode,
    parse,
)
from cascade.domain.records import ChannelLink, LinkedChannel, Receipt
from cascade.domain.status import Status

NUMBER = "15550783881"
NUMBER_ID = "106540352242922"
OTHER = Business("15550009999", "200000000000001")
NOW = 1_900_000_000.0


def link(business: Business, account_id: str) -> ChannelLink:
    """The link of a business number."""
    return ChannelLink(
        id=f"link-{business.number}",
        account_id=account_id,
        channel=LinkedChannel.WHATSAPP,
        address=business.number,
        credentials={"phone_number_id": business.phone_number_id, "app_secret": "s"},
        created_at=0.0,
    )


HOME = Business(NUMBER, NUMBER_ID)
LINKS = {HOME: link(HOME, "account-a"), OTHER: link(OTHER, "account-b")}


def value(
    *,
    statuses: Sequence[dict[str, Any]] = (),
    messages: Sequence[dict[str, Any]] = (),
    business: Business = HOME,
    display: str | None = None,
) -> dict[str, Any]:
    """A ``messages`` change's value for a business number."""
    return {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": display or business.number,
            "phone_number_id": business.phone_number_id,
        },
        "statuses": list(statuses),
        "messages": list(messages),
    }


def body(*values: dict[str, Any], field: str = "messages") -> bytes:
    """A webhook body with one entry of these changes."""
    changes = [{"field": field, "value": v} for v in values]
    return msgspec.json.encode(
        {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": changes}]}
    )


def status(wamid: str, state: str, at: int, **more: Any) -> dict[str, Any]:
    """One status of a message the business sent."""
    return {
        "id": wamid,
        "status": state,
        "timestamp": str(at),
        "recipient_id": "16505551234",
        **more,
    }


def receipts(*statuses: dict[str, Any]) -> list[Receipt]:
    """The receipts of these statuses."""
    return parse(decode(body(value(statuses=list(statuses)))), LINKS, NOW).receipts


class TestStatuses:
    """``value.statuses``."""

    def test_sent_changes_nothing_delivered_and_read_are_receipts(self) -> None:
        """``sent`` is no receipt; ``delivered`` and ``read`` are, at their own times."""
        assert receipts(
            status("wamid.1", "sent", 100),
            status("wamid.1", "delivered", 101),
            status("wamid.1", "read", 102),
        ) == [
            Receipt("whatsapp", "wamid.1", Status.DELIVERED, 101.0),
            Receipt("whatsapp", "wamid.1", Status.READ, 102.0),
        ]

    def test_read_without_delivered_and_out_of_order(self) -> None:
        """A read that comes alone, and a delivered that comes after the read, are each
        passed on as they came: the status rules make the late delivered change nothing."""
        assert receipts(status("wamid.2", "read", 200), status("wamid.2", "delivered", 150)) == [
            Receipt("whatsapp", "wamid.2", Status.READ, 200.0),
            Receipt("whatsapp", "wamid.2", Status.DELIVERED, 150.0),
        ]

    def test_a_played_voice_message_is_read(self) -> None:
        """``played`` counts as read."""
        assert receipts(status("wamid.3", "played", 300)) == [
            Receipt("whatsapp", "wamid.3", Status.READ, 300.0)
        ]

    @pytest.mark.parametrize(
        ("code", "nexmo"),
        [
            (131026, 1300),
            (131047, 1340),
            (131049, 1210),
            (131050, 1240),
            (131056, 1000),
            (368, 1060),
            (131053, 1380),
            (130429, 1000),
            (132001, 1022),
            (190, 1370),
            (131000, 1331),
            (130472, 1210),
            (999999, UNKNOWN_ERROR),
        ],
    )
    def test_failed_is_rejected_with_a_mapped_code(self, code: int, nexmo: int) -> None:
        """``failed`` is rejected with the Nexmo code of WhatsApp's error code, and the reason
        keeps WhatsApp's code, title and details."""
        error = {
            "code": code,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Message could not be delivered"},
        }
        (receipt,) = receipts(status("wamid.4", "failed", 400, errors=[error]))
        assert (receipt.status, receipt.code, receipt.at) == (Status.REJECTED, nexmo, 400.0)
        assert receipt.reason == (
            f"WhatsApp error {code}: Message undeliverable (Message could not be delivered)"
        )

    def test_failed_without_errors_is_rejected_unknown(self) -> None:
        """A failure that names no error is rejected with 1330, saying so."""
        (receipt,) = receipts(status("wamid.5", "failed", 500))
        assert (receipt.status, receipt.code) == (Status.REJECTED, UNKNOWN_ERROR)
        assert receipt.reason is not None
        assert "without an error" in receipt.reason

    def test_a_long_reason_is_clipped(self) -> None:
        """An error text of any length is cut to a few hundred characters."""
        error = {"code": 131026, "title": "x" * 5000}
        (receipt,) = receipts(status("wamid.6", "failed", 600, errors=[error]))
        assert receipt.reason is not None
        assert len(receipt.reason) <= 300

    def test_unknown_statuses_and_times(self) -> None:
        """A status Cascade does not know (``deleted``) is no receipt; a missing or unreadable
        timestamp is the time of intake."""
        assert receipts(
            status("wamid.7", "deleted", 700),
            {"id": "wamid.7", "status": "delivered"},
            {"id": "wamid.8", "status": "read", "timestamp": "soon"},
        ) == [
            Receipt("whatsapp", "wamid.7", Status.DELIVERED, NOW),
            Receipt("whatsapp", "wamid.8", Status.READ, NOW),
        ]


def inbound(message: dict[str, Any]) -> Any:
    """The one inbound message of a body carrying ``message``."""
    base = {"from": "16505551234", "id": "wamid.in", "timestamp": "1700000000"}
    (arrival,) = parse(decode(body(value(messages=[{**base, **message}]))), LINKS, NOW).inbound
    return arrival


class TestInbound:
    """``value.messages``: what users send the business number."""

    def test_a_text_reaches_the_linked_account_from_the_sender(self) -> None:
        """A text goes to the number's account, from the sender's number to the linked
        number, keyed by its wamid."""
        arrival = inbound({"type": "text", "text": {"body": "Hi there"}})
        message = arrival.message
        assert arrival.ref == "whatsapp:wamid.in"
        assert message.account_id == "account-a"
        assert message.to == {"type": "whatsapp", "number": NUMBER}
        assert message.from_ == {"type": "whatsapp", "number": "16505551234"}
        assert message.content == {"type": "text", "text": "Hi there"}
        assert (message.at, message.provider_message_id) == (1700000000.0, "wamid.in")

    @pytest.mark.parametrize(
        ("kind", "media", "content"),
        [
            (
                "image",
                {"id": "MEDIA1", "mime_type": "image/jpeg", "caption": "a cat", "sha256": "x"},
                {
                    "type": "image",
                    "image": {"id": "MEDIA1", "mime_type": "image/jpeg", "caption": "a cat"},
                },
            ),
            (
                "audio",
                {"id": "MEDIA2", "mime_type": "audio/ogg"},
                {"type": "audio", "audio": {"id": "MEDIA2", "mime_type": "audio/ogg"}},
            ),
            (
                "video",
                {"id": "MEDIA3", "url": "https://lookaside.example/v"},
                {"type": "video", "video": {"id": "MEDIA3", "url": "https://lookaside.example/v"}},
            ),
            (
                "document",
                {"id": "MEDIA4", "filename": "invoice.pdf", "mime_type": "application/pdf"},
                {
                    "type": "file",
                    "file": {"id": "MEDIA4", "mime_type": "application/pdf", "name": "invoice.pdf"},
                },
            ),
        ],
    )
    def test_media_by_id_and_url_when_given(
        self, kind: str, media: dict[str, Any], content: dict[str, Any]
    ) -> None:
        """Media arrive by their media id (and URL when the webhook has one), with MIME type,
        caption and file name; a document is a file."""
        assert inbound({"type": kind, kind: media}).message.content == content

    def test_a_location(self) -> None:
        """A location's coordinates come as strings, with its name and address."""
        location = {
            "latitude": 37.758056,
            "longitude": -122.425332,
            "name": "HQ",
            "address": "1 Way",
        }
        assert inbound({"type": "location", "location": location}).message.content == {
            "type": "location",
            "location": {
                "latitude": "37.758056",
                "longitude": "-122.425332",
                "name": "HQ",
                "address": "1 Way",
            },
        }

    @pytest.mark.parametrize(
        "message",
        [
            {"type": "sticker", "sticker": {"id": "S", "animated": False}},
            {"type": "reaction", "reaction": {"message_id": "wamid.x", "emoji": "+"}},
            {"type": "unknown", "errors": [{"code": 131051}]},
            {"type": "location", "location": {"name": "nowhere"}},
        ],
    )
    def test_anything_else_is_unsupported(self, message: dict[str, Any]) -> None:
        """Other types, and a location without coordinates, are ``unsupported``."""
        assert inbound(message).message.content == {"type": "unsupported"}


class TestBatches:
    """Bodies with several changes and numbers."""

    def test_each_change_goes_with_its_own_number(self) -> None:
        """Two numbers' changes: each status and message is read, each inbound message goes
        to its own number's account; the numbers are named once each, in order, the display
        number reduced to its digits."""
        message = {
            "from": "1",
            "id": "wamid.b",
            "timestamp": "1",
            "type": "text",
            "text": {"body": "b"},
        }
        callback = decode(
            body(
                value(statuses=[status("wamid.a", "delivered", 1)], display="+1 555-078-3881"),
                value(messages=[message], business=OTHER),
                value(statuses=[status("wamid.c", "read", 2)]),
            )
        )
        assert businesses(callback) == [HOME, OTHER]
        result = parse(callback, LINKS, NOW)
        assert [r.provider_message_id for r in result.receipts] == ["wamid.a", "wamid.c"]
        assert [(a.message.account_id, a.message.to["number"]) for a in result.inbound] == [
            ("account-b", OTHER.number)
        ]

    def test_changes_of_other_fields_and_system_errors_record_nothing(self) -> None:
        """A template review is not about messages, and app-level errors are counted, not
        recorded."""
        review = body(
            {"event": "APPROVED", "message_template_id": 1}, field="message_template_status_update"
        )
        callback = decode(review)
        assert (callback.changes, businesses(callback)) == ((), [])
        with_errors = value()
        with_errors["errors"] = [{"code": 131000, "title": "Something went wrong"}]
        assert decode(body(with_errors)).system_errors == 1


class TestMalformed:
    """Bodies that are not WhatsApp callbacks."""

    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b'{"object": "page", "entry": []}',
            body({"statuses": []}),
            body({"metadata": {"display_phone_number": "", "phone_number_id": ""}}),
            body(value(statuses=[{"status": "read"}])),
            body(value(messages=[{"id": 5}])),
        ],
        ids=["empty", "page", "no-metadata", "blank-metadata", "status-without-id", "numeric-id"],
    )
    def test_are_refused(self, raw: bytes) -> None:
        """Each is a MalformedCallback."""
        with pytest.raises(MalformedCallback):
            decode(raw)
