"""The Messages v1 model: how a flat v1 message becomes the v0.1 representation, and the
per-channel rules (message types, addresses, options, features Cascade does not offer)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cascade.domain.message import Channel
from cascade.domain.message_v1 import MessageRequestV1, MessageV1, internal
from cascade.domain.rules_v1 import message_violations, request_violations


def v1(**fields: Any) -> MessageV1:
    """A v1 message from its JSON fields (``from`` spelled as on the wire)."""
    return msgspec.convert(fields, MessageV1)


def sms(**overrides: Any) -> dict[str, Any]:
    """The JSON of a valid v1 SMS, with ``overrides``."""
    return {
        "channel": "sms",
        "message_type": "text",
        "to": "447700900000",
        "from": "Acme",
        "text": "Your code is 1234",
        **overrides,
    }


def names(found: list[Any]) -> list[str]:
    """The field names of a list of violations."""
    return [violation.name for violation in found]


# -- the translation ---------------------------------------------------------------------------


def test_an_sms_becomes_a_v01_sms() -> None:
    """Flat to/from become {type, number} objects; the text becomes the content."""
    step = internal(v1(**sms(client_ref="ref-1")))
    assert step.channel is Channel.SMS
    assert step.to == {"type": "sms", "number": "447700900000"}
    assert step.from_ == {"type": "sms", "number": "Acme"}
    assert step.message == {"content": {"type": "text", "text": "Your code is 1234"}}
    assert step.client_ref == "ref-1"
    assert step.webhook_url is None
    assert step.webhook_version is None


def test_messenger_addresses_are_ids_and_options_keep_their_name() -> None:
    """Messenger's to/from are ids; its option object is carried as v0.1 carries it."""
    step = internal(
        v1(
            channel="messenger",
            message_type="image",
            to="1234567890",
            **{"from": "page-1"},
            image={"url": "https://example.com/a.png", "caption": "hi"},
            messenger={"category": "message_tag", "tag": "CONFIRMED_EVENT_UPDATE"},
        )
    )
    assert step.to == {"type": "messenger", "id": "1234567890"}
    assert step.from_ == {"type": "messenger", "id": "page-1"}
    assert step.message == {
        "content": {
            "type": "image",
            "image": {"url": "https://example.com/a.png", "caption": "hi"},
        },
        "messenger": {"category": "message_tag", "tag": "CONFIRMED_EVENT_UPDATE"},
    }


def test_viber_service_is_viber_service_msg_inside() -> None:
    """v1's viber_service channel and options are v0.1's viber_service_msg; from is an id."""
    step = internal(
        v1(
            channel="viber_service",
            message_type="text",
            to="447700900000",
            **{"from": "acme-bot"},
            text="hi",
            viber_service={"category": "transaction", "ttl": 600},
        )
    )
    assert step.channel is Channel.VIBER
    assert step.to == {"type": "viber_service_msg", "number": "447700900000"}
    assert step.from_ == {"type": "viber_service_msg", "id": "acme-bot"}
    assert step.message["viber_service_msg"] == {"category": "transaction", "ttl": 600}


def test_a_whatsapp_template_keeps_its_parameters_and_locale() -> None:
    """A template's string parameters and the whatsapp locale pass through unchanged."""
    step = internal(
        v1(
            channel="whatsapp",
            message_type="template",
            to="447700900000",
            **{"from": "447700900001"},
            template={"name": "ns:verify", "parameters": ["1234", "10"]},
            whatsapp={"policy": "deterministic", "locale": "en_GB"},
            webhook_url="https://hooks.example.com/status",
            webhook_version="v1",
        )
    )
    assert step.message == {
        "content": {
            "type": "template",
            "template": {"name": "ns:verify", "parameters": ["1234", "10"]},
        },
        "whatsapp": {"policy": "deterministic", "locale": "en_GB"},
    }
    assert step.webhook_url == "https://hooks.example.com/status"
    assert step.webhook_version == "v1"


def test_an_mms_vcard_is_content_of_type_vcard() -> None:
    """A vCard (an MMS type v0.1 never had) is carried as content of its own type."""
    step = internal(
        v1(
            channel="mms",
            message_type="vcard",
            to="447700900000",
            **{"from": "447700900001"},
            vcard={"url": "https://example.com/c.vcf"},
        )
    )
    assert step.message == {
        "content": {"type": "vcard", "vcard": {"url": "https://example.com/c.vcf"}}
    }


def test_a_request_lists_its_message_then_its_failover_in_order() -> None:
    """The messages of a request are tried in order: the message, then each failover one."""
    request = msgspec.convert(
        {
            **sms(channel="whatsapp", **{"from": "447700900001"}),
            "failover": [sms(to="447700900001"), sms(to="447700900002")],
        },
        MessageRequestV1,
    )
    assert [m.to for m in request.messages] == ["447700900000", "447700900001", "447700900002"]
    assert [m.channel for m in request.messages] == ["whatsapp", "sms", "sms"]


# -- the rules ---------------------------------------------------------------------------------


def test_a_valid_message_of_every_channel_breaks_no_rule() -> None:
    """One valid message per channel passes every rule."""
    valid = [
        sms(),
        sms(channel="whatsapp", **{"from": "447700900001"}),
        sms(channel="messenger", to="psid-1", **{"from": "page-1"}),
        sms(channel="viber_service", **{"from": "acme-bot"}),
        {
            "channel": "mms",
            "message_type": "image",
            "to": "14155550100",
            "from": "14155550101",
            "image": {"url": "https://example.com/a.jpg"},
        },
    ]
    for fields in valid:
        assert message_violations(v1(**fields)) == [], fields


@pytest.mark.parametrize(
    ("channel", "message_type"),
    [
        ("sms", "image"),
        ("mms", "text"),
        ("messenger", "template"),
        ("viber_service", "file"),
        ("messenger", "custom"),
    ],
)
def test_a_message_type_the_channel_lacks_is_named(channel: str, message_type: str) -> None:
    """Each channel takes the message types the v1 specification gives it, and no other."""
    found = message_violations(v1(**sms(channel=channel, message_type=message_type)))
    assert "message_type" in names(found)


def test_the_content_field_of_the_type_is_required_and_others_refused() -> None:
    """message_type image needs image; a text beside it is refused, both named."""
    found = message_violations(
        v1(**sms(channel="whatsapp", message_type="image", **{"from": "447700900001"}))
    )
    assert names(found) == ["image", "text"]


@pytest.mark.parametrize(
    ("channel", "limit"), [("sms", 1000), ("viber_service", 1000), ("messenger", 640)]
)
def test_text_longer_than_the_channel_allows_is_named(channel: str, limit: int) -> None:
    """Each channel's text limit holds to the character (WhatsApp's 4,096 is the schema's)."""
    sender = {"viber_service": "acme-bot", "messenger": "page"}.get(channel, "Acme")
    to = "psid" if channel == "messenger" else "447700900000"
    ok = v1(**sms(channel=channel, to=to, text="x" * limit, **{"from": sender}))
    long = v1(**sms(channel=channel, to=to, text="x" * (limit + 1), **{"from": sender}))
    assert message_violations(ok) == []
    assert names(message_violations(long)) == ["text"]


@pytest.mark.parametrize(
    "to", ["+447700900000", "00447700900000", "12345", "4477009000001234", "44 7700"]
)
def test_a_number_that_is_not_e164_is_a_bad_recipient(to: str) -> None:
    """to is 7 to 15 digits, without + or 00."""
    assert names(message_violations(v1(**sms(to=to)))) == ["to"]


def test_an_sms_sender_is_a_number_or_a_short_alphanumeric_id() -> None:
    """An SMS from takes E.164 digits or up to 11 characters; longer ids are refused."""
    assert message_violations(v1(**sms(**{"from": "447700900001"}))) == []
    assert message_violations(v1(**sms(**{"from": "Acme Ltd"}))) == []
    assert names(message_violations(v1(**sms(**{"from": "AcmeCorporation"})))) == ["from"]


def test_options_of_another_channel_are_refused() -> None:
    """messenger options on an SMS are named as not applying."""
    found = message_violations(v1(**sms(messenger={"category": "response"})))
    assert names(found) == ["messenger"]


def test_a_whatsapp_template_needs_a_locale() -> None:
    """A template without whatsapp.locale is refused, naming the field."""
    found = message_violations(
        v1(
            channel="whatsapp",
            message_type="template",
            to="447700900000",
            **{"from": "447700900001"},
            template={"name": "ns:verify"},
        )
    )
    assert names(found) == ["whatsapp.locale"]


def test_features_cascade_does_not_offer_are_named_as_such() -> None:
    """ttl, sms options, trusted_recipient and context are refused with a reason that says
    Cascade does not offer them (not as unknown fields)."""
    found = message_violations(
        v1(**sms(ttl=600, sms={"encoding_type": "text"}, trusted_recipient=True))
    )
    assert names(found) == ["ttl", "trusted_recipient", "sms"]
    assert all("not supported by Cascade" in violation.reason for violation in found)


def test_a_webhook_url_must_be_http() -> None:
    """webhook_url is an http(s) URL."""
    assert names(message_violations(v1(**sms(webhook_url="ftp://x")))) == ["webhook_url"]


def test_failover_messages_are_checked_under_their_own_path() -> None:
    """A bad failover message's fields are named under failover[i]."""
    request = msgspec.convert(
        {**sms(), "failover": [sms(), sms(to="123", message_type="image")]}, MessageRequestV1
    )
    assert names(request_violations(request)) == [
        "failover[1].message_type",
        "failover[1].text",
        "failover[1].to",
    ]
