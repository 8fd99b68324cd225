"""``PATCH /v1/messages/{uuid}`` over HTTP: the app on uvicorn on 127.0.0.1 with a linked
WhatsApp number, the fake Graph posting users' messages to Cascade's intake and taking the
read marks; and the v1 problem documents of everything else under ``/v1/messages``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio

from cascade.api.app import create_app
from cascade.channels.http import ChannelHttp
from cascade.channels.whatsapp import WhatsAppAdapter
from cascade.clock import SystemClock
from cascade.domain.records import (
    ChannelLink,
    InboundKeys,
    LinkedChannel,
    NewWebhook,
    WebhookKind,
)
from cascade.sealing import Sealer
from cascade.store.sqlite import SqliteStore
from tests.api.support import assert_problem
from tests.conftest import Tenant, make_tenant
from tests.peers.graph import FakeGraph, Received
from tests.peers.server import LoopbackServer

WA_NUMBER = "15550783881"
WA_NUMBER_ID = "106540352242922"
WA_TOKEN = "EAAG-whatsapp-system-user-token"
WA_SECRET = "whatsapp-app-secret"
PAGE = "104116062535871"
PAGE_SECRET = "messenger-app-secret"
CUSTOMER = "447700900123"
OLYMPUS = "https://developer.nexmo.com/api-errors/messages-olympus"

#: one service and one fake Graph for the module (starting uvicorn twice a test costs time)
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Service:
    """Cascade on loopback with a linked WhatsApp number and page, and the fake Graph."""

    store: SqliteStore
    tenant: Tenant
    other: Tenant
    graph: FakeGraph
    url: str
    http: httpx.AsyncClient
    link: ChannelLink

    async def whatsapp_inbound(self, text: str = "Is my order on its way?") -> tuple[str, str]:
        """A user's WhatsApp text posted by the fake Graph to the intake: the uuid its inbound
        webhook carried, and its wamid."""
        self.graph.callback_url = f"{self.url}/channels/whatsapp"
        wamid = await self.graph.whatsapp_inbound(WA_NUMBER_ID, CUSTOMER, text)
        return await self.inbound_uuid(text), wamid

    async def messenger_inbound(self, text: str) -> str:
        """A user's Messenger text posted to the intake: the uuid its webhook carried."""
        self.graph.callback_url = f"{self.url}/channels/messenger"
        await self.graph.messenger_inbound(PAGE, "6783241905021357", text)
        return await self.inbound_uuid(text)

    async def inbound_uuid(self, text: str) -> str:
        """The message_uuid of the inbound webhook whose text is ``text``."""
        hooks = await self.store.list_webhooks(account_id=self.tenant.account.id)
        bodies = [msgspec.json.decode(h.body) for h in hooks if h.kind == WebhookKind.INBOUND]
        (body,) = [b for b in bodies if b["message"]["content"].get("text") == text]
        return str(body["message_uuid"])

    async def patch(
        self, message_uuid: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """PATCH /v1/messages/{uuid} as the SDK does (a JWT unless ``headers`` say otherwise),
        with ``body`` as JSON (status read by default)."""
        return await self.http.patch(
            f"{self.url}/v1/messages/{message_uuid}",
            json={"status": "read"} if body is None else body,
            headers=headers if headers is not None else self.tenant.bearer(),
        )

    def read_marks(self) -> list[Received]:
        """The mark-as-read requests the fake Graph received."""
        return [r for r in self.graph.received if r.api == "whatsapp_read"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """The app on uvicorn on one store, with two accounts; the first has linked the WhatsApp
    number and the page the fake Graph knows."""
    directory = tmp_path_factory.mktemp("v1-update")
    store = SqliteStore(
        directory / "cascade.db", synchronous="NORMAL", sealer=Sealer(Sealer.generate_key())
    )
    await store.open()
    tenant, other = await make_tenant(store), await make_tenant(store)
    await store.update_account(tenant.account.id, inbound_url="https://hooks.example/in")
    link = ChannelLink(
        id=str(uuid.uuid4()),
        account_id=tenant.account.id,
        channel=LinkedChannel.WHATSAPP,
        address=WA_NUMBER,
        credentials={
            "phone_number_id": WA_NUMBER_ID,
            "business_account_id": "WABA",
            "access_token": WA_TOKEN,
            "app_secret": WA_SECRET,
            "verify_token": "w-verify",
        },
        created_at=0.0,
    )
    await store.add_channel_link(link)
    await store.add_channel_link(
        ChannelLink(
            id=str(uuid.uuid4()),
            account_id=tenant.account.id,
            channel=LinkedChannel.MESSENGER,
            address=PAGE,
            credentials={"page_access_token": "page-token", "app_secret": PAGE_SECRET},
            created_at=0.0,
        )
    )
    async with FakeGraph() as graph:
        graph.add_number(WA_NUMBER_ID, WA_NUMBER, WA_TOKEN, WA_SECRET)
        graph.add_page(PAGE, "page-token", PAGE_SECRET)
        adapter = WhatsAppAdapter(
            ChannelHttp(timeout=0.5, max_connections=10),
            base_url=graph.url,
            api_version=graph.version,
        )
        app = create_app(store, clock=SystemClock(), max_body_bytes=64 * 1024, whatsapp=adapter)
        server = LoopbackServer(app)  # its lifespan is off: the adapter is started here
        await server.start()
        await adapter.start()
        try:
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
                yield Service(store, tenant, other, graph, server.url, http, link)
        finally:
            await adapter.stop()
            await server.stop()
            await store.close()


@pytest_asyncio.fixture(loop_scope="module")
async def service(running: Service) -> Service:
    """The service, the fake Graph as new."""
    await running.graph.reset()
    running.graph.add_number(WA_NUMBER_ID, WA_NUMBER, WA_TOKEN, WA_SECRET)
    return running


async def test_a_read_mark_goes_to_graph_with_the_numbers_token(service: Service) -> None:
    """{"status": "read"} on an inbound WhatsApp message's uuid answers 200 {} once Graph
    marked its wamid read, asked at the number's messages endpoint with the link's token."""
    message_uuid, wamid = await service.whatsapp_inbound("Where is my parcel?")
    response = await service.patch(message_uuid)
    assert response.status_code == 200, response.text
    assert response.json() == {}
    (mark,) = service.read_marks()
    assert mark.status == 200
    assert mark.path == f"/{service.graph.version}/{WA_NUMBER_ID}/messages"
    assert mark.headers["authorization"] == f"Bearer {WA_TOKEN}"
    assert mark.body == {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}


async def test_basic_auth_and_the_replying_indicator(service: Service) -> None:
    """Basic auth is taken as on POST /v1/messages; a replying indicator that shows adds
    WhatsApp's typing indicator, one that does not show adds nothing."""
    message_uuid, _ = await service.whatsapp_inbound("Can I change the address?")
    shown = {"status": "read", "replying_indicator": {"show": True, "type": "text"}}
    hidden = {"status": "read", "replying_indicator": {"show": False}}
    for body in (shown, hidden):
        response = await service.patch(message_uuid, body, headers=service.tenant.basic())
        assert response.status_code == 200, response.text
    first, second = service.read_marks()
    assert first.body["typing_indicator"] == {"type": "text"}
    assert "typing_indicator" not in second.body


async def test_wrong_credentials_are_v1s_401_and_reach_no_platform(service: Service) -> None:
    """No or wrong credentials: v1's 401 problem, and Graph hears nothing."""
    message_uuid, _ = await service.whatsapp_inbound("Hello?")
    for headers in ({}, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}):
        problem = assert_problem(await service.patch(message_uuid, headers=headers), 401)
        assert problem["title"] == "You did not provide correct credentials."
    assert service.read_marks() == []


async def test_an_unknown_uuid_or_another_accounts_message_is_not_found(
    service: Service,
) -> None:
    """A uuid no message of the account has, or another account's inbound message: 404."""
    message_uuid, _ = await service.whatsapp_inbound("Mine, not yours")
    for uuid_, headers in (
        (str(uuid.uuid4()), service.tenant.bearer()),
        (message_uuid, service.other.bearer()),
    ):
        problem = assert_problem(await service.patch(uuid_, headers=headers), 404)
        assert uuid_ in problem["detail"]
    assert service.read_marks() == []


async def test_only_an_inbound_whatsapp_message_can_be_marked_read(service: Service) -> None:
    """A message the account sent, an inbound Messenger message and an inbound SMS are each a
    422 v1 problem saying only inbound WhatsApp messages can be marked read."""
    sent = await service.http.post(
        f"{service.url}/v1/messages",
        json={
            "channel": "sms",
            "message_type": "text",
            "to": "447700900000",
            "from": "Acme",
            "text": "Your code is 1234",
        },
        headers=service.tenant.bearer(),
    )
    assert sent.status_code == 202, sent.text
    messenger = await service.messenger_inbound("Hi from Messenger")
    sms = str(uuid.uuid4())
    await service.store.add_inbound_webhook(
        _hook(service.tenant), None, 0.0, InboundKeys(sms, "sms", "447700900100")
    )
    for message_uuid, what in (
        (sent.json()["message_uuid"], "a message this account sent"),
        (messenger, "an inbound messenger message"),
        (sms, "an inbound sms message"),
    ):
        problem = assert_problem(await service.patch(message_uuid), 422)
        assert problem["type"] == f"{OLYMPUS}#1020"
        assert problem["detail"].startswith("Only an inbound WhatsApp message can be marked read")
        assert what in problem["detail"]
        assert [p["name"] for p in problem["invalid_parameters"]] == ["message_uuid"]
    assert service.read_marks() == []


async def test_revoking_is_not_offered_and_says_so_whatever_the_uuid(service: Service) -> None:
    """{"status": "revoked"} (the SDK's revoke_rcs_message) is a 422 "Unsupported channel"
    saying Cascade has no RCS, for a message it knows or not; never a 404."""
    message_uuid, _ = await service.whatsapp_inbound("Revoke me")
    for uuid_ in (message_uuid, str(uuid.uuid4())):
        problem = assert_problem(await service.patch(uuid_, {"status": "revoked"}), 422)
        assert (problem["type"], problem["title"]) == (f"{OLYMPUS}#1400", "Unsupported channel")
        assert "RCS" in problem["detail"]
        assert [p["name"] for p in problem["invalid_parameters"]] == ["status"]
    assert service.read_marks() == []


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"status": "delivered"}, "status"),
        ({"status": "read", "colour": "blue"}, "colour"),
        ({"status": "read", "replying_indicator": {"show": "yes"}}, "replying_indicator.show"),
        (
            {"status": "read", "replying_indicator": {"show": True, "type": "voice"}},
            "replying_indicator.type",
        ),
        ({}, "status"),
    ],
    ids=["other-status", "unknown-field", "indicator-not-bool", "indicator-type", "no-status"],
)
async def test_a_body_that_does_not_validate_is_v1s_422(
    service: Service, body: dict[str, Any], name: str
) -> None:
    """Another status, an unknown field, a wrong type or value, or no status: 422 Invalid
    params naming the field, and Graph hears nothing."""
    message_uuid, _ = await service.whatsapp_inbound(f"Validate {body}")
    problem = assert_problem(await service.patch(message_uuid, body), 422)
    assert (problem["type"], problem["title"]) == (f"{OLYMPUS}#1020", "Invalid params")
    assert [p["name"] for p in problem["invalid_parameters"]] == [name]
    if body.get("status") == "delivered":
        assert "must be 'read'" in problem["invalid_parameters"][0]["reason"]
    assert service.read_marks() == []


async def test_a_body_that_is_not_json_is_v1s_invalid_json(service: Service) -> None:
    """A body that is not JSON: 422 as POST /v1/messages answers it."""
    message_uuid, _ = await service.whatsapp_inbound("Not JSON")
    response = await service.http.patch(
        f"{service.url}/v1/messages/{message_uuid}",
        content=b'{"status": "read"',
        headers={**service.tenant.bearer(), "Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422)
    assert problem["title"] == "The request body did not contain valid JSON"


@pytest.mark.parametrize(
    ("code", "status", "nexmo"),
    [(100, 422, 1020), (131026, 422, 1300), (190, 502, 1370), (130429, 429, 1000), (2, 503, 1331)],
    ids=["bad-parameter", "not-a-user", "token", "rate-limit", "graph-down"],
)
async def test_graphs_refusals_are_v1_problems_tried_once(
    service: Service, code: int, status: int, nexmo: int
) -> None:
    """Graph's error for the read mark becomes a problem with the Nexmo code as its type and
    title and WhatsApp's code in the detail: a refusal 422, a refused token 502, a rate limit
    429, Graph's own failure 503; Graph is asked once, and no token is in the answer."""
    message_uuid, wamid = await service.whatsapp_inbound(f"Graph says {code}")
    service.graph.fail(wamid, code)
    response = await service.patch(message_uuid)
    problem = assert_problem(response, status)
    assert (problem["type"], problem["title"]) == (f"{OLYMPUS}#{nexmo}", str(nexmo))
    assert f"WhatsApp error {code}" in problem["detail"]
    assert WA_TOKEN not in response.text
    assert len(service.read_marks()) == 1


async def test_no_answer_from_graph_is_a_502_that_says_marking_again_is_harmless(
    service: Service,
) -> None:
    """Graph not answering within the client's timeout: a 502 saying the outcome is unknown
    and that marking again is harmless."""
    message_uuid = str(uuid.uuid4())
    keys = InboundKeys(message_uuid, "whatsapp", WA_NUMBER)
    await service.store.add_inbound_webhook(_hook(service.tenant), "whatsapp:hang", 0.0, keys)
    problem = assert_problem(await service.patch(message_uuid), 502)
    assert "marking it again is harmless" in problem["detail"]


async def test_a_number_no_longer_linked_cannot_mark_its_messages(service: Service) -> None:
    """Once the number that a message came in on is unlinked, marking it read is a 422 that
    says so (1120), and no other link is used."""
    message_uuid = str(uuid.uuid4())
    keys = InboundKeys(message_uuid, "whatsapp", "15550000000")
    await service.store.add_inbound_webhook(_hook(service.tenant), "whatsapp:wamid.X", 0.0, keys)
    problem = assert_problem(await service.patch(message_uuid), 422)
    assert problem["type"] == f"{OLYMPUS}#1120"
    assert "15550000000" in problem["detail"]
    assert "no longer linked" in problem["detail"]
    assert service.read_marks() == []


async def test_without_a_whatsapp_client_the_answer_is_503(service: Service) -> None:
    """An app built without a WhatsApp client says it cannot mark the message read (503)."""
    message_uuid, _ = await service.whatsapp_inbound("No client here")
    app = create_app(service.store, clock=SystemClock())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cascade.test"
    ) as http:
        response = await http.patch(
            f"/v1/messages/{message_uuid}",
            json={"status": "read"},
            headers=service.tenant.bearer(),
        )
    assert "no WhatsApp client" in assert_problem(response, 503)["detail"]
    assert service.read_marks() == []


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v1/messages", 405, "POST"),
        ("DELETE", "/v1/messages/", 405, "POST"),
        ("PATCH", "/v1/messages", 405, "POST"),
        ("GET", "/v1/messages/0192f1a4-7c3e-7d21-9b5e-3f0c2a61d8e4", 405, "PATCH"),
        ("POST", "/v1/messages/0192f1a4-7c3e-7d21-9b5e-3f0c2a61d8e4", 405, "PATCH"),
        ("DELETE", "/v1/messages/0192f1a4-7c3e-7d21-9b5e-3f0c2a61d8e4", 405, "PATCH"),
        ("GET", "/v1/messages/0192f1a4-7c3e-7d21-9b5e-3f0c2a61d8e4/status", 404, None),
    ],
)
async def test_the_rest_of_v1_messages_answers_a_problem_naming_what_is_offered(
    service: Service, method: str, path: str, status: int, allow: str | None
) -> None:
    """Another method on /v1/messages or /v1/messages/{uuid} is a 405 naming the one the path
    takes; a deeper path a 404: each a problem document naming Cascade's v1 surfaces."""
    response = await service.http.request(
        method, service.url + path, headers=service.tenant.bearer()
    )
    problem = assert_problem(response, status)
    assert "PATCH /v1/messages/{message_uuid}" in problem["detail"]
    assert response.headers.get("allow") == allow


def _hook(tenant: Tenant) -> NewWebhook:
    """An inbound webhook of the tenant's account (a stored message, without intake)."""
    return NewWebhook(
        kind=WebhookKind.INBOUND,
        account_id=tenant.account.id,
        application_id=None,
        workflow_id=None,
        message_id=None,
        url=None,
        body=b'{"message":{"content":{"type":"text","text":"stored"}}}',
    )


async def test_openapi_documents_the_read_mark(service: Service) -> None:
    """/openapi.json describes PATCH /v1/messages/{message_uuid} with its body schema, its
    200 and its problems."""
    document = (await service.http.get(f"{service.url}/openapi.json")).json()
    operation = document["paths"]["/v1/messages/{message_uuid}"]["patch"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/MessageUpdateV1")
    schema = document["components"]["schemas"]["MessageUpdateV1"]
    assert set(schema["properties"]) == {"status", "replying_indicator"}
    assert {"200", "401", "404", "422", "429", "502", "503"} <= set(operation["responses"])
