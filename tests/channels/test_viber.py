"""The Viber adapter against the fake Viber server over loopback: request bodies, the sender,
message tokens, status mapping, timeouts; and the fake's webhook probe and signed callbacks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from cascade.channels.http import ChannelHttp
from cascade.channels.viber import ViberAdapter
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelOutcomeUnknown, ChannelRejected, ChannelUnavailable
from tests.peers.receiver import SignedReceiver
from tests.peers.support import make_link, media, outbound, text
from tests.peers.viber import SEES, SILENT, FakeViber, failing

TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"
BOT = "pa:5551234567890"
USER = "01234567890A="

#: one fake Viber server and one receiver serve the whole module (starting uvicorn takes time)
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers() -> AsyncIterator[tuple[FakeViber, SignedReceiver]]:
    """The fake Viber server with one bot whose webhook is the receiver."""
    async with FakeViber() as viber, SignedReceiver() as receiver:
        viber.add_bot(TOKEN, BOT, "Acme", webhook=receiver.url)
        yield viber, receiver


@pytest_asyncio.fixture(loop_scope="module")
async def viber(servers: tuple[FakeViber, SignedReceiver]) -> FakeViber:
    """The fake Viber server, as new (callbacks silent unless a test asks)."""
    await servers[0].reset()
    servers[0].default = SILENT
    return servers[0]


@pytest_asyncio.fixture(loop_scope="module")
async def receiver(servers: tuple[FakeViber, SignedReceiver]) -> SignedReceiver:
    """The receiver, as new, knowing the bot's token."""
    servers[1].reset()
    servers[1].viber_tokens = {TOKEN}
    return servers[1]


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[ChannelHttp]:
    """A started shared client with a short timeout."""
    client = ChannelHttp(timeout=0.5, max_connections=10)
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
def adapter(viber: FakeViber, http: ChannelHttp) -> ViberAdapter:
    """The adapter pointed at the fake."""
    return ViberAdapter(http, base_url=viber.url)


@pytest.fixture
def link() -> ChannelLink:
    """The bot's link, with a sender avatar."""
    return make_link(
        LinkedChannel.VIBER,
        BOT,
        auth_token=TOKEN,
        sender_name="Acme",
        sender_avatar="https://example.com/acme.png",
    )


def message(content: dict[str, Any], recipient: str = USER, **options: Any) -> Any:
    """A viber_service_msg message from the bot."""
    return outbound("viber_service_msg", recipient, BOT, content, **options)


async def test_a_text_goes_with_the_token_header_and_the_links_sender(
    adapter: ViberAdapter, viber: FakeViber, link: ChannelLink
) -> None:
    """A text is POSTed to /pa/send_message with X-Viber-Auth-Token, the link's sender name
    and avatar; the message_token comes back as its exact decimal string."""
    result = await adapter.send(link, message(text("hello")))
    [request] = viber.received
    assert request.path == "/pa/send_message"
    assert request.headers["x-viber-auth-token"] == TOKEN
    assert request.body == {
        "min_api_version": 1,
        "type": "text",
        "text": "hello",
        "receiver": USER,
        "sender": {"name": "Acme", "avatar": "https://example.com/acme.png"},
    }
    assert request.status == 0
    assert result.provider == "viber_service_msg"
    assert result.provider_message_id.isdigit()
    assert int(result.provider_message_id) >= 0


@pytest.mark.parametrize(
    ("caption", "expected_text"), [("our new shoes", "our new shoes"), (None, "")]
)
async def test_an_image_is_a_picture_with_its_caption_as_text(
    adapter: ViberAdapter,
    viber: FakeViber,
    link: ChannelLink,
    caption: str | None,
    expected_text: str,
) -> None:
    """An image is a picture message: media is the URL, text the caption (empty without)."""
    await adapter.send(link, message(media("image", "https://example.com/p.jpg", caption)))
    request = viber.received[-1]
    assert (request.body["type"], request.body["media"], request.body["text"]) == (
        "picture",
        "https://example.com/p.jpg",
        expected_text,
    )
    assert request.status == 0


async def test_a_long_sender_name_is_cut_to_vibers_28_characters(
    adapter: ViberAdapter, viber: FakeViber
) -> None:
    """A sender name over 28 characters is cut to 28 (Viber refuses longer), no avatar sent
    when the link has none."""
    name = "Acme Widgets International Holdings"
    link = make_link(LinkedChannel.VIBER, BOT, auth_token=TOKEN, sender_name=name)
    await adapter.send(link, message(text()))
    assert viber.received[-1].body["sender"] == {"name": name[:28]}
    assert viber.received[-1].status == 0


async def test_ttl_and_category_are_not_sent_and_custom_is_the_message(
    adapter: ViberAdapter, viber: FakeViber, link: ChannelLink
) -> None:
    """viber_service_msg ttl and category have no Bot API field and are not sent; a custom
    content is the message, with receiver and sender set by the adapter."""
    custom = {"type": "url", "media": "https://example.com", "receiver": "someone-else"}
    await adapter.send(
        link,
        message(
            {"type": "custom", "custom": custom},
            viber_service_msg={"category": "transaction", "ttl": 600},
        ),
    )
    body = viber.received[-1].body
    assert body["receiver"] == USER
    assert body["type"] == "url"
    assert "ttl" not in json.dumps(body)
    assert "category" not in json.dumps(body)


async def test_a_template_is_rejected_unsent(
    adapter: ViberAdapter, viber: FakeViber, link: ChannelLink
) -> None:
    """Bots have no templates: rejected 1040 and nothing reaches Viber."""
    with pytest.raises(ChannelRejected) as caught:
        await adapter.send(link, message({"type": "template", "template": {"name": "x"}}))
    assert caught.value.code == 1040
    assert viber.received == []


@pytest.mark.parametrize(
    ("receiver_id", "error", "code", "words"),
    [
        ("err-5", ChannelRejected, 1300, "receiverNotRegistered"),
        ("err-6", ChannelRejected, 1260, "receiverNotSubscribed"),
        ("err-7", ChannelRejected, 1060, "publicAccountBlocked"),
        ("err-11", ChannelRejected, 1310, "receiverNoSuitableDevice"),
        ("err-3", ChannelRejected, 1020, "badData"),
        ("err-99", ChannelRejected, 1331, "generalError"),
        ("err-12", ChannelUnavailable, 1000, "tooManyRequests"),
        ("err-http-500", ChannelUnavailable, 1331, "HTTP 500"),
        ("err-http-429", ChannelUnavailable, 1000, "HTTP 429"),
        ("err-http-404", ChannelRejected, 1331, "HTTP 404"),
    ],
)
async def test_viber_statuses_map_to_rejected_or_transient_with_their_names(
    adapter: ViberAdapter,
    link: ChannelLink,
    receiver_id: str,
    error: type[Exception],
    code: int,
    words: str,
) -> None:
    """Receiver not registered/subscribed and a blocked account are rejected with documented
    codes, too many requests and 5xx are transient; the reason names Viber's status."""
    with pytest.raises(error) as caught:
        await adapter.send(link, message(text(), recipient=receiver_id))
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert words in caught.value.message  # type: ignore[attr-defined]


async def test_a_refused_token_is_rejected_and_logged_once(
    adapter: ViberAdapter, link: ChannelLink
) -> None:
    """Status 2 (invalid auth token) is rejected 1370 naming the link; two sends, one warning,
    and the token in no log line."""
    stale = make_link(LinkedChannel.VIBER, BOT, auth_token="revoked-token", sender_name="Acme")
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(ChannelRejected) as caught:
                await adapter.send(stale, message(text()))
            assert caught.value.code == 1370
            assert stale.id in caught.value.reason
    warnings = [entry for entry in logs if entry["event"] == "channel.token_refused"]
    assert [entry["link"] for entry in warnings] == [stale.id]
    assert "revoked-token" not in json.dumps(logs, default=str)


async def test_a_bot_without_a_webhook_cannot_send(adapter: ViberAdapter, viber: FakeViber) -> None:
    """Viber refuses sends until the bot set its webhook (status 10): rejected 1140."""
    viber.add_bot("no-hook-token", "pa:2", "Other")
    link = make_link(LinkedChannel.VIBER, "pa:2", auth_token="no-hook-token", sender_name="O")
    with pytest.raises(ChannelRejected) as caught:
        await adapter.send(link, message(text()))
    assert caught.value.code == 1140
    assert "webhookNotSet" in caught.value.reason


async def test_no_answer_in_time_is_an_unknown_outcome(
    adapter: ViberAdapter, link: ChannelLink
) -> None:
    """A send Viber does not answer in time is ChannelOutcomeUnknown."""
    with pytest.raises(ChannelOutcomeUnknown):
        await adapter.send(link, message(text(), recipient="hang"))


# --- the fake's webhook probe and callbacks ------------------------------------------------


async def test_set_webhook_probes_the_url_with_a_signed_webhook_event(
    viber: FakeViber, receiver: SignedReceiver
) -> None:
    """set_webhook posts a signed ``webhook`` event to the URL and answers status 0 when it
    got 200; a URL that refuses the probe gets status 1 and is not set."""
    viber.add_bot("new-bot-token", "pa:3", "New")
    receiver.viber_tokens = {TOKEN, "new-bot-token"}
    async with httpx.AsyncClient(base_url=viber.url) as client:
        answer = await client.post(
            "/pa/set_webhook",
            json={"url": receiver.url, "event_types": ["delivered", "seen", "failed"]},
            headers={"X-Viber-Auth-Token": "new-bot-token"},
        )
        assert answer.json()["status"] == 0
        assert [body["event"] for body in receiver.bodies("viber")] == ["webhook"]
        receiver.viber_tokens = {TOKEN}  # the probe is now signed with a token it does not know
        viber.add_bot("other-token", "pa:4", "Other")
        refused = await client.post(
            "/pa/set_webhook",
            json={"url": receiver.url},
            headers={"X-Viber-Auth-Token": "other-token"},
        )
    assert refused.json() == {"status": 1, "status_message": "invalidUrl"}
    assert viber.bots["other-token"].webhook is None
    assert viber.bots["new-bot-token"].webhook == receiver.url


async def test_delivered_and_seen_callbacks_are_signed_with_the_auth_token(
    adapter: ViberAdapter, viber: FakeViber, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """After a send a recipient that reads gets delivered then seen callbacks naming the
    message token, each signed X-Viber-Content-Signature with the bot's token."""
    viber.behave(USER, SEES)
    result = await adapter.send(link, message(text()))
    await viber.settled()
    assert receiver.refused == []
    events = receiver.bodies("viber")
    assert [(event["event"], str(event["message_token"])) for event in events] == [
        ("delivered", result.provider_message_id),
        ("seen", result.provider_message_id),
    ]
    assert {event["user_id"] for event in events} == {USER}


async def test_a_failing_recipient_reports_failed_with_a_description(
    adapter: ViberAdapter, viber: FakeViber, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """A recipient that fails gets one failed callback with desc."""
    viber.behave(USER, failing("the user's device is off"))
    result = await adapter.send(link, message(text()))
    await viber.settled()
    [event] = receiver.bodies("viber")
    assert (event["event"], str(event["message_token"]), event["desc"]) == (
        "failed",
        result.provider_message_id,
        "the user's device is off",
    )


async def test_an_inbound_message_is_a_signed_message_event(
    viber: FakeViber, receiver: SignedReceiver
) -> None:
    """An inbound text carries the sender's id and name and the text."""
    token = await viber.inbound(TOKEN, USER, "hi there", name="Jane")
    [event] = receiver.bodies("viber")
    assert event["event"] == "message"
    assert event["message_token"] == token
    assert (event["sender"]["id"], event["sender"]["name"]) == (USER, "Jane")
    assert event["message"] == {"type": "text", "text": "hi there"}
