"""The WhatsApp adapter against the fake Graph server over loopback: request bodies for every
content type, templates, ids, error mapping, timeouts; and the fake's signed status callbacks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from cascade.channels.http import ChannelHttp
from cascade.channels.whatsapp import WhatsAppAdapter
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelOutcomeUnknown, ChannelRejected, ChannelUnavailable
from tests.peers.graph import NEVER_READS, FakeGraph, failing
from tests.peers.receiver import SignedReceiver
from tests.peers.support import make_link, media, outbound, text

NUMBER_ID = "106540352242922"
BUSINESS_NUMBER = "15550783881"
TOKEN = "EAAG-system-user-token"
SECRET = "wa-app-secret"
CUSTOMER = "447700900123"

#: one fake Graph server and one receiver serve the whole module (starting uvicorn takes time)
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers() -> AsyncIterator[tuple[FakeGraph, SignedReceiver]]:
    """The fake Graph server with one business number, and a callback receiver."""
    async with FakeGraph() as graph, SignedReceiver() as receiver:
        graph.add_number(NUMBER_ID, BUSINESS_NUMBER, TOKEN, SECRET)
        yield graph, receiver


@pytest_asyncio.fixture(loop_scope="module")
async def graph(servers: tuple[FakeGraph, SignedReceiver]) -> FakeGraph:
    """The fake Graph server, as new."""
    await servers[0].reset()
    return servers[0]


@pytest_asyncio.fixture(loop_scope="module")
async def receiver(servers: tuple[FakeGraph, SignedReceiver]) -> SignedReceiver:
    """The receiver, as new, knowing the number's app secret."""
    servers[1].reset()
    servers[1].app_secrets = {SECRET}
    return servers[1]


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[ChannelHttp]:
    """A started shared client with a short timeout."""
    client = ChannelHttp(timeout=0.5, max_connections=10)
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
def adapter(graph: FakeGraph, http: ChannelHttp) -> WhatsAppAdapter:
    """The adapter pointed at the fake."""
    return WhatsAppAdapter(http, base_url=graph.url, api_version="v25.0")


@pytest.fixture
def link() -> ChannelLink:
    """The business number's link."""
    return make_link(
        LinkedChannel.WHATSAPP,
        BUSINESS_NUMBER,
        phone_number_id=NUMBER_ID,
        business_account_id="102290129340398",
        access_token=TOKEN,
        app_secret=SECRET,
    )


async def sent_body(
    adapter: WhatsAppAdapter,
    graph: FakeGraph,
    link: ChannelLink,
    content: dict[str, Any],
    **opts: Any,
) -> Any:
    """Send ``content`` to the customer and return the body the fake received (and accepted)."""
    await adapter.send(link, outbound("whatsapp", CUSTOMER, BUSINESS_NUMBER, content, **opts))
    assert graph.received[-1].status == 200, graph.received[-1]
    return graph.received[-1].body


async def test_a_text_goes_to_the_numbers_messages_endpoint_with_the_token(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A text is POSTed to /v25.0/{phone_number_id}/messages with a bearer token and the
    answer's messages[0].id (a wamid) is the result's id in the whatsapp id space."""
    result = await adapter.send(link, outbound("whatsapp", CUSTOMER, BUSINESS_NUMBER, text("hi")))
    [request] = graph.received
    assert request.path == f"/v25.0/{NUMBER_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CUSTOMER,
        "type": "text",
        "text": {"body": "hi", "preview_url": False},
    }
    assert result.provider_message_id.startswith("wamid.")
    assert result.provider == "whatsapp"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            media("image", "https://example.com/a.jpg", "look"),
            {"type": "image", "image": {"link": "https://example.com/a.jpg", "caption": "look"}},
        ),
        (
            media("video", "https://example.com/v.mp4"),
            {"type": "video", "video": {"link": "https://example.com/v.mp4"}},
        ),
        (
            media("audio", "https://example.com/s.ogg", "ignored"),
            {"type": "audio", "audio": {"link": "https://example.com/s.ogg"}},
        ),
        (
            media("file", "https://example.com/files/Invoice%2042.pdf", "your invoice"),
            {
                "type": "document",
                "document": {
                    "link": "https://example.com/files/Invoice%2042.pdf",
                    "caption": "your invoice",
                    "filename": "Invoice 42.pdf",
                },
            },
        ),
        (
            media("file", "https://example.com/download"),
            {"type": "document", "document": {"link": "https://example.com/download"}},
        ),
    ],
)
async def test_media_goes_by_link_with_captions_where_whatsapp_takes_them(
    adapter: WhatsAppAdapter,
    graph: FakeGraph,
    link: ChannelLink,
    content: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    """Image and video keep their caption, audio drops it, a file is a document named after
    the URL's last segment when it looks like a file name."""
    body = await sent_body(adapter, graph, link, content)
    assert {
        key: body[key] for key in body if key not in ("messaging_product", "recipient_type", "to")
    } == expected


async def test_a_template_has_its_name_language_and_parameters_in_order(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """The name loses its v0.1 namespace, whatsapp.locale is language.code with the
    deterministic policy, and both parameter spellings become body text parameters in order."""
    content = {
        "type": "template",
        "template": {
            "name": "9b6b4fcb_da19_4a26:order_update",
            "parameters": ["ORD-1", {"default": "Friday"}],
        },
    }
    body = await sent_body(
        adapter, graph, link, content, whatsapp={"policy": "deterministic", "locale": "en_GB"}
    )
    assert body["type"] == "template"
    assert body["template"] == {
        "name": "order_update",
        "language": {"policy": "deterministic", "code": "en_GB"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "ORD-1"},
                    {"type": "text", "text": "Friday"},
                ],
            }
        ],
    }


async def test_a_template_without_parameters_has_no_components(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A template with no parameters sends no components."""
    content = {"type": "template", "template": {"name": "hello_world"}}
    body = await sent_body(adapter, graph, link, content, whatsapp={"locale": "en_US"})
    assert body["template"] == {
        "name": "hello_world",
        "language": {"policy": "deterministic", "code": "en_US"},
    }


async def test_custom_content_is_the_message_but_to_is_always_the_recipient(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A custom content is the message object; its own ``to`` cannot redirect the message."""
    custom = {
        "type": "interactive",
        "interactive": {"type": "button", "body": {"text": "Yes?"}},
        "to": "19995550000",
    }
    body = await sent_body(adapter, graph, link, {"type": "custom", "custom": custom})
    assert body["to"] == CUSTOMER
    assert body["interactive"] == custom["interactive"]
    assert body["messaging_product"] == "whatsapp"


@pytest.mark.parametrize(
    ("recipient", "error", "code", "words"),
    [
        ("err-131047", ChannelRejected, 1340, "more than 24 hours"),
        ("err-131026", ChannelRejected, 1300, "not a WhatsApp phone number"),
        ("err-132001", ChannelRejected, 1022, "Template name does not exist"),
        ("err-131050", ChannelRejected, 1240, "(#131050)"),
        ("err-130429", ChannelUnavailable, 1000, "throughput"),
        ("err-131000", ChannelUnavailable, 1331, "Something went wrong"),
        ("err-http-503", ChannelUnavailable, 1331, "HTTP 503"),
        ("err-http-400", ChannelRejected, 1331, "HTTP 400"),
    ],
)
async def test_cloud_api_errors_map_to_rejected_or_transient_with_the_platforms_words(
    adapter: WhatsAppAdapter,
    link: ChannelLink,
    recipient: str,
    error: type[Exception],
    code: int,
    words: str,
) -> None:
    """The window (131047) and recipient (131026) errors are rejected with their documented
    codes, rate limits and 5xx are transient; the reason has the platform's words."""
    with pytest.raises(error) as caught:
        await adapter.send(link, outbound("whatsapp", recipient, BUSINESS_NUMBER, text()))
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert words in caught.value.message  # type: ignore[attr-defined]


async def test_the_pair_rate_limit_asks_for_six_seconds(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """131056 (one message per 6 s to a user) is throttled with retry_after 6, for a real
    number whose sends the fake fails."""
    graph.fail(CUSTOMER, 131056)
    with pytest.raises(ChannelUnavailable) as caught:
        await adapter.send(link, outbound("whatsapp", CUSTOMER, BUSINESS_NUMBER, text()))
    assert caught.value.code == 1000
    assert caught.value.retry_after == 6.0


async def test_a_refused_token_is_rejected_and_logged_once_per_link(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A token the number does not take is rejected 1370; repeated sends log one warning per
    link, naming it and never the token."""
    stale = make_link(
        LinkedChannel.WHATSAPP,
        BUSINESS_NUMBER,
        phone_number_id=NUMBER_ID,
        access_token="expired-token",
        app_secret=SECRET,
    )
    with capture_logs() as logs:
        for refused in (stale, stale, link):
            recipient = CUSTOMER if refused is stale else "err-190"
            with pytest.raises(ChannelRejected) as caught:
                await adapter.send(
                    refused, outbound("whatsapp", recipient, BUSINESS_NUMBER, text())
                )
            assert caught.value.code == 1370
    warnings = [entry for entry in logs if entry["event"] == "channel.token_refused"]
    assert [entry["link"] for entry in warnings] == [stale.id, link.id]
    assert "expired-token" not in json.dumps(logs, default=str)
    assert TOKEN not in json.dumps(logs, default=str)


async def test_no_answer_in_time_is_an_unknown_outcome(
    adapter: WhatsAppAdapter, link: ChannelLink
) -> None:
    """A request the platform does not answer in time is ChannelOutcomeUnknown."""
    with pytest.raises(ChannelOutcomeUnknown):
        await adapter.send(link, outbound("whatsapp", "hang", BUSINESS_NUMBER, text()))


# --- marking a received message read ----------------------------------------------------------


async def test_mark_read_posts_the_wamid_with_the_numbers_token(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """Marking a message the number received read POSTs status read and its wamid to the
    number's messages endpoint with the link's token; the typing indicator is added only when
    asked for."""
    wamid = await graph.whatsapp_inbound(NUMBER_ID, CUSTOMER, "hello")
    await adapter.mark_read(link, wamid)
    await adapter.mark_read(link, wamid, typing=True)
    plain, typing = graph.received
    assert (plain.api, plain.status, plain.path) == (
        "whatsapp_read",
        200,
        f"/v25.0/{NUMBER_ID}/messages",
    )
    assert plain.headers["authorization"] == f"Bearer {TOKEN}"
    assert plain.body == {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    assert typing.body == {**plain.body, "typing_indicator": {"type": "text"}}


async def test_mark_read_errors_are_graphs_as_for_a_send(
    adapter: WhatsAppAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A wamid Graph does not know is rejected 1020 with WhatsApp's words; a refused token
    1370 naming the link, not the token; a 5xx is transient; no answer is an unknown outcome."""
    stale = make_link(
        LinkedChannel.WHATSAPP,
        BUSINESS_NUMBER,
        phone_number_id=NUMBER_ID,
        access_token="expired-token",
        app_secret=SECRET,
    )
    wamid = await graph.whatsapp_inbound(NUMBER_ID, CUSTOMER, "hello")
    with pytest.raises(ChannelRejected) as unknown:
        await adapter.mark_read(link, "wamid.NOT-RECEIVED")
    assert unknown.value.code == 1020
    assert "WhatsApp error 100" in unknown.value.reason
    with pytest.raises(ChannelRejected) as refused:
        await adapter.mark_read(stale, wamid)
    assert refused.value.code == 1370
    assert stale.id in refused.value.reason
    assert "expired-token" not in refused.value.reason
    with pytest.raises(ChannelUnavailable) as down:
        await adapter.mark_read(link, "err-131000")
    assert not isinstance(down.value, ChannelOutcomeUnknown)
    with pytest.raises(ChannelOutcomeUnknown):
        await adapter.mark_read(link, "hang")


# --- the fake's callbacks ------------------------------------------------------------------


def statuses(receiver: SignedReceiver) -> list[dict[str, Any]]:
    """Every status entry the receiver accepted, in order."""
    return [
        status
        for body in receiver.bodies("meta")
        for change in body["entry"][0]["changes"]
        for status in change["value"].get("statuses", [])
    ]


async def test_sent_delivered_and_read_statuses_are_signed_callbacks(
    adapter: WhatsAppAdapter, graph: FakeGraph, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """After a send the fake posts sent, delivered and read statuses for the wamid, signed with
    the app secret, in the whatsapp_business_account envelope with the number's metadata."""
    graph.callback_url = receiver.url
    result = await adapter.send(link, outbound("whatsapp", CUSTOMER, BUSINESS_NUMBER, text()))
    await graph.settled()
    assert receiver.refused == []
    assert [(s["id"], s["status"]) for s in statuses(receiver)] == [
        (result.provider_message_id, "sent"),
        (result.provider_message_id, "delivered"),
        (result.provider_message_id, "read"),
    ]
    body = receiver.bodies("meta")[0]
    assert body["object"] == "whatsapp_business_account"
    assert body["entry"][0]["changes"][0]["value"]["metadata"] == {
        "display_phone_number": BUSINESS_NUMBER,
        "phone_number_id": NUMBER_ID,
    }


async def test_a_failing_recipient_reports_failed_with_errors(
    adapter: WhatsAppAdapter, graph: FakeGraph, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """A recipient that fails gets sent, then failed with errors[0].code 131026."""
    graph.callback_url = receiver.url
    graph.behave(CUSTOMER, failing(131026))
    await adapter.send(link, outbound("whatsapp", CUSTOMER, BUSINESS_NUMBER, text()))
    await graph.settled()
    sent, failed = statuses(receiver)
    assert (sent["status"], failed["status"]) == ("sent", "failed")
    assert failed["errors"][0]["code"] == 131026
    assert failed["recipient_id"] == CUSTOMER


async def test_a_recipient_that_never_reads_is_only_delivered(
    adapter: WhatsAppAdapter, graph: FakeGraph, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """With the never-reads behaviour the statuses stop at delivered."""
    graph.callback_url = receiver.url
    graph.behave(CUSTOMER, NEVER_READS)
    await adapter.send(link, outbound("whatsapp", CUSTOMER, BUSINESS_NUMBER, text()))
    await graph.settled()
    assert [s["status"] for s in statuses(receiver)] == ["sent", "delivered"]


async def test_an_inbound_message_is_a_signed_messages_change(
    graph: FakeGraph, receiver: SignedReceiver
) -> None:
    """An inbound text carries the sender's wa_id and profile name, its wamid and text."""
    graph.callback_url = receiver.url
    wamid = await graph.whatsapp_inbound(NUMBER_ID, CUSTOMER, "STOP", name="Ann")
    [body] = receiver.bodies("meta")
    value = body["entry"][0]["changes"][0]["value"]
    assert value["contacts"] == [{"profile": {"name": "Ann"}, "wa_id": CUSTOMER}]
    [message] = value["messages"]
    assert (message["id"], message["from"], message["text"]) == (wamid, CUSTOMER, {"body": "STOP"})
