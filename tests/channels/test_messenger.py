"""The Messenger adapter against the fake Graph server over loopback: request bodies, ids,
error mapping, timeouts; and the fake's signed callbacks."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from cascade.channels.http import ChannelHttp
from cascade.channels.messenger import MessengerAdapter
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import (
    ChannelOutcomeUnknown,
    ChannelRejected,
    ChannelUnavailable,
)
from tests.peers.graph import NEVER_READS, FakeGraph
from tests.peers.receiver import SignedReceiver
from tests.peers.support import make_link, media, outbound, text

PAGE = "104500000000001"
TOKEN = "EAAG-page-token-1"
SECRET = "app-secret-1"
PSID = "6543210987654321"


#: one fake Graph server and one receiver serve the whole module (starting uvicorn takes time)
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers() -> AsyncIterator[tuple[FakeGraph, SignedReceiver]]:
    """The fake Graph server with one page, and a callback receiver."""
    async with FakeGraph() as graph, SignedReceiver() as receiver:
        graph.add_page(PAGE, TOKEN, SECRET)
        yield graph, receiver


@pytest_asyncio.fixture(loop_scope="module")
async def graph(servers: tuple[FakeGraph, SignedReceiver]) -> FakeGraph:
    """The fake Graph server, as new."""
    await servers[0].reset()
    return servers[0]


@pytest_asyncio.fixture(loop_scope="module")
async def receiver(servers: tuple[FakeGraph, SignedReceiver]) -> SignedReceiver:
    """The receiver, as new, knowing the page's app secret."""
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
def adapter(graph: FakeGraph, http: ChannelHttp) -> MessengerAdapter:
    """The adapter pointed at the fake."""
    return MessengerAdapter(http, base_url=graph.url, api_version="v25.0")


@pytest.fixture
def link() -> ChannelLink:
    """The page's link."""
    return make_link(LinkedChannel.MESSENGER, PAGE, page_access_token=TOKEN, app_secret=SECRET)


async def test_a_text_goes_to_the_send_api_with_the_page_token(
    adapter: MessengerAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A text is POSTed to /v25.0/me/messages with the page token as a bearer header, and
    the answer's message_id is the result's id in the messenger id space."""
    result = await adapter.send(link, outbound("messenger", PSID, PAGE, text("hello")))
    [request] = graph.received
    assert request.path == "/v25.0/me/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "access_token" not in request.path
    assert request.body == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "hello"},
    }
    assert request.status == 200
    assert result.provider_message_id.startswith("m_")
    assert result.provider == "messenger"


@pytest.mark.parametrize("kind", ["image", "audio", "video", "file"])
async def test_media_goes_as_an_attachment_of_its_type(
    adapter: MessengerAdapter, graph: FakeGraph, link: ChannelLink, kind: str
) -> None:
    """Image, audio, video and file become an attachment of that type with the URL (no
    caption: Messenger attachments have none)."""
    url = f"https://example.com/{kind}.bin"
    await adapter.send(link, outbound("messenger", PSID, PAGE, media(kind, url, "a caption")))
    assert graph.received[-1].body["message"] == {
        "attachment": {"type": kind, "payload": {"url": url, "is_reusable": False}}
    }
    assert graph.received[-1].status == 200


async def test_custom_content_is_the_message_object(
    adapter: MessengerAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A custom content is sent as the Send API's message object as it is."""
    custom = {"attachment": {"type": "template", "payload": {"template_type": "button"}}}
    await adapter.send(
        link, outbound("messenger", PSID, PAGE, {"type": "custom", "custom": custom})
    )
    assert graph.received[-1].body["message"] == custom
    assert graph.received[-1].status == 200


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"category": "response"}, {"messaging_type": "RESPONSE"}),
        ({"category": "update"}, {"messaging_type": "UPDATE"}),
        (
            {"category": "message_tag", "tag": "ACCOUNT_UPDATE"},
            {"messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE"},
        ),
    ],
)
async def test_the_category_and_tag_become_messaging_type_and_tag(
    adapter: MessengerAdapter,
    graph: FakeGraph,
    link: ChannelLink,
    options: dict[str, str],
    expected: dict[str, str],
) -> None:
    """messenger.category response/update/message_tag is messaging_type RESPONSE/UPDATE/
    MESSAGE_TAG, and the tag goes with MESSAGE_TAG only."""
    await adapter.send(link, outbound("messenger", PSID, PAGE, text(), messenger=options))
    body = graph.received[-1].body
    assert {key: body[key] for key in ("messaging_type", "tag") if key in body} == expected
    assert graph.received[-1].status == 200


async def test_content_messenger_cannot_carry_is_rejected_unsent(
    adapter: MessengerAdapter, graph: FakeGraph, link: ChannelLink
) -> None:
    """A template content is rejected with 1040 and nothing reaches Graph."""
    content = {"type": "template", "template": {"name": "x"}}
    with pytest.raises(ChannelRejected) as caught:
        await adapter.send(link, outbound("messenger", PSID, PAGE, content))
    assert caught.value.code == 1040
    assert graph.received == []


@pytest.mark.parametrize(
    ("recipient", "error", "code", "words"),
    [
        ("err-10-2018278", ChannelRejected, 1340, "outside of allowed window"),
        ("err-551", ChannelRejected, 1260, "isn't available"),
        ("err-100-2018001", ChannelRejected, 1300, "No matching user"),
        ("err-368", ChannelRejected, 1060, "(#368)"),
        ("err-99999", ChannelRejected, 1331, "(#99999)"),
        ("err-4", ChannelUnavailable, 1000, "request limit"),
        ("err-613", ChannelUnavailable, 1000, "rate limit"),
        ("err-80006", ChannelUnavailable, 1000, "too many messages"),
        ("err-2", ChannelUnavailable, 1331, "unexpected error"),
        ("err-http-500", ChannelUnavailable, 1331, "HTTP 500"),
        ("err-http-502", ChannelUnavailable, 1331, "HTTP 502"),
    ],
)
async def test_graph_errors_map_to_rejected_or_transient_with_the_platforms_words(
    adapter: MessengerAdapter,
    link: ChannelLink,
    recipient: str,
    error: type[Exception],
    code: int,
    words: str,
) -> None:
    """Policy and recipient errors are rejected with their documented code, rate limits and
    5xx are transient; the reason keeps Graph's code and words."""
    with pytest.raises(error) as caught:
        await adapter.send(link, outbound("messenger", recipient, PAGE, text()))
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert words in caught.value.message  # type: ignore[attr-defined]


async def test_a_429_is_throttled_for_as_long_as_retry_after_says(
    adapter: MessengerAdapter, link: ChannelLink
) -> None:
    """HTTP 429 with Retry-After: 7 is ChannelUnavailable 1000 with retry_after 7."""
    with pytest.raises(ChannelUnavailable) as caught:
        await adapter.send(link, outbound("messenger", "err-http-429", PAGE, text()))
    assert caught.value.code == 1000
    assert caught.value.retry_after == 7.0


async def test_a_refused_token_is_rejected_clearly_and_logged_once_without_the_token(
    adapter: MessengerAdapter, link: ChannelLink
) -> None:
    """Graph 190 is rejected 1370 naming the link; two sends log one warning naming the link
    and never the token."""
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(ChannelRejected) as caught:
                await adapter.send(link, outbound("messenger", "err-190", PAGE, text()))
            assert caught.value.code == 1370
            assert link.id in caught.value.reason
            assert "link it again" in caught.value.reason
    warnings = [entry for entry in logs if entry["event"] == "channel.token_refused"]
    assert len(warnings) == 1
    assert warnings[0]["link"] == link.id
    assert warnings[0]["log_level"] == "warning"
    assert TOKEN not in json.dumps(logs, default=str)


async def test_a_token_graph_does_not_know_is_a_refused_token(
    adapter: MessengerAdapter, graph: FakeGraph
) -> None:
    """A link whose token is no page's gets Graph's 190 and is rejected 1370."""
    wrong = make_link(LinkedChannel.MESSENGER, PAGE, page_access_token="stale", app_secret="s")
    with pytest.raises(ChannelRejected) as caught:
        await adapter.send(wrong, outbound("messenger", PSID, PAGE, text()))
    assert caught.value.code == 1370
    assert graph.received[-1].status == 401


async def test_no_answer_in_time_is_an_unknown_outcome(
    adapter: MessengerAdapter, link: ChannelLink
) -> None:
    """A request sent but not answered within the timeout may have gone out:
    ChannelOutcomeUnknown, so the engine does not send it twice."""
    with pytest.raises(ChannelOutcomeUnknown) as caught:
        await adapter.send(link, outbound("messenger", "hang", PAGE, text()))
    assert caught.value.code == 1100
    assert "no answer from http://127.0.0.1" in caught.value.message


async def test_a_refused_connection_is_unavailable_not_unknown(
    http: ChannelHttp, link: ChannelLink
) -> None:
    """Nothing listening: ChannelUnavailable 1100 (nothing was sent, a retry is safe)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = MessengerAdapter(http, base_url=f"http://127.0.0.1:{port}", api_version="v25.0")
    with pytest.raises(ChannelUnavailable) as caught:
        await adapter.send(link, outbound("messenger", PSID, PAGE, text()))
    assert not isinstance(caught.value, ChannelOutcomeUnknown)
    assert caught.value.code == 1100


async def test_a_stopped_client_is_unavailable(graph: FakeGraph, link: ChannelLink) -> None:
    """A send before the shared client started is ChannelUnavailable, not a crash."""
    adapter = MessengerAdapter(
        ChannelHttp(timeout=1, max_connections=1), base_url=graph.url, api_version="v25.0"
    )
    with pytest.raises(ChannelUnavailable):
        await adapter.send(link, outbound("messenger", PSID, PAGE, text()))
    assert graph.received == []


# --- the fake's callbacks ------------------------------------------------------------------


async def test_delivery_and_read_callbacks_are_signed_with_the_app_secret(
    adapter: MessengerAdapter, graph: FakeGraph, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """After a send the fake posts message_deliveries (the mid and a watermark) then
    message_reads, each signed X-Hub-Signature-256 with the page's app secret."""
    graph.callback_url = receiver.url
    result = await adapter.send(link, outbound("messenger", PSID, PAGE, text()))
    await graph.settled()
    assert receiver.refused == []
    delivery, read = (body["entry"][0]["messaging"][0] for body in receiver.bodies("meta"))
    assert receiver.bodies("meta")[0]["object"] == "page"
    assert receiver.bodies("meta")[0]["entry"][0]["id"] == PAGE
    assert delivery["sender"] == {"id": PSID}
    assert delivery["delivery"]["mids"] == [result.provider_message_id]
    assert read["read"]["watermark"] == delivery["delivery"]["watermark"]


async def test_a_recipient_that_never_reads_gets_only_a_delivery(
    adapter: MessengerAdapter, graph: FakeGraph, receiver: SignedReceiver, link: ChannelLink
) -> None:
    """With the never-reads behaviour only message_deliveries comes back."""
    graph.behave(PSID, NEVER_READS)
    graph.callback_url = receiver.url
    await adapter.send(link, outbound("messenger", PSID, PAGE, text()))
    await graph.settled()
    events = [body["entry"][0]["messaging"][0] for body in receiver.bodies("meta")]
    assert [("delivery" in event, "read" in event) for event in events] == [(True, False)]


async def test_inbound_messages_and_the_handshake_reach_the_receiver(
    graph: FakeGraph, receiver: SignedReceiver
) -> None:
    """An inbound message is a signed messages event with text and attachments; the GET
    handshake gets the challenge back from a receiver that knows the verify token."""
    graph.callback_url = receiver.url
    mid = await graph.messenger_inbound(
        PAGE, PSID, "hi", attachments=(("image", "https://example.com/a.png"),)
    )
    assert await graph.subscribe("verify-me") == (200, True)
    assert (await graph.subscribe("wrong"))[0] == 403
    [body] = receiver.bodies("meta")
    message = body["entry"][0]["messaging"][0]["message"]
    assert message["mid"] == mid
    assert message["text"] == "hi"
    assert message["attachments"] == [
        {"type": "image", "payload": {"url": "https://example.com/a.png"}}
    ]


async def test_a_receiver_without_the_secret_refuses_and_the_fake_retries(
    graph: FakeGraph, receiver: SignedReceiver
) -> None:
    """A callback signed with another secret is refused (403) three times; one answered 500
    once is posted again and then accepted."""
    graph.callback_url = receiver.url
    receiver.app_secrets = {"another"}
    assert await graph.messenger_read(PAGE, PSID) == 403
    assert len(receiver.refused) == 3
    assert receiver.accepted == []
    receiver.app_secrets = {SECRET}
    receiver.fail_next = 1
    assert await graph.messenger_read(PAGE, PSID) == 200
    assert len(receiver.accepted) == 1
    assert [callback.status for callback in graph.callbacks.sent[-2:]] == [500, 200]
