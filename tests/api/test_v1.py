"""``POST /v1/messages``: the flat v1 body, failover, v1's answers and problem documents, and
what is stored (the same workflows, steps and jobs as v0.1, readable through the same GETs)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from cascade.clock import FakeClock
from cascade.domain.records import JobKindName, StepState, Surface
from cascade.store.sqlite import SqliteStore
from tests.api.conftest import IN_MODULE_LOOP, SharedApi
from tests.api.support import assert_problem
from tests.conftest import Tenant

V1 = "/v1/messages"


def sms(**overrides: Any) -> dict[str, Any]:
    """A valid v1 SMS body, with ``overrides``."""
    return {
        "channel": "sms",
        "message_type": "text",
        "to": "447700900000",
        "from": "Acme",
        "text": "Your code is 1234",
        **overrides,
    }


def whatsapp(**overrides: Any) -> dict[str, Any]:
    """A valid v1 WhatsApp text body, with ``overrides``."""
    return sms(channel="whatsapp", **{"from": "447700900001", **overrides})


def v1_problem(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    """The v1 problem document of ``response``: type, title, detail and instance, all set."""
    return assert_problem(response, status)


def bad(response: httpx.Response) -> dict[str, str]:
    """``invalid_parameters`` of a 422, as name -> reason."""
    body = v1_problem(response)
    return {p["name"]: p["reason"] for p in body["invalid_parameters"]}


# -- accepted ----------------------------------------------------------------------------------


@IN_MODULE_LOOP
async def test_a_message_answers_202_with_its_message_uuid_only(shared_api: SharedApi) -> None:
    """A v1 message without failover answers 202 {"message_uuid"} and stores one step."""
    response, added = await shared_api.post(V1, sms(client_ref="order-17"))
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"message_uuid"}
    assert str(uuid.UUID(body["message_uuid"])) == body["message_uuid"]
    assert added["workflows"] == 1
    assert added["messages"] == 1
    stored = await shared_api.store.get_message(shared_api.tenant.account.id, body["message_uuid"])
    assert stored is not None
    assert stored.channel == "sms"
    assert stored.to == b'{"type":"sms","number":"447700900000"}'
    assert stored.from_ == b'{"type":"sms","number":"Acme"}'
    assert stored.body == b'{"content":{"type":"text","text":"Your code is 1234"}}'
    assert stored.client_ref == "order-17"
    assert stored.expiry_time is None
    assert stored.condition_status is None


@IN_MODULE_LOOP
async def test_the_trailing_slash_the_spec_implies_is_the_same_endpoint(
    shared_api: SharedApi,
) -> None:
    """The spec's server URL plus its "/" path: POST /v1/messages/ is accepted too."""
    response, _ = await shared_api.post(V1 + "/", sms())
    assert response.status_code == 202


@IN_MODULE_LOOP
async def test_failover_answers_workflow_id_and_reads_back_as_a_dispatch(
    shared_api: SharedApi,
) -> None:
    """With failover, the 202 adds workflow_id; GET /v0.1/dispatch/{workflow_id} shows every
    message as a step, the first started and the others waiting, with the timeline."""
    body = whatsapp(failover=[sms(to="447700900001"), sms(to="447700900002")])
    response, added = await shared_api.post(V1, body)
    assert response.status_code == 202
    answer = response.json()
    assert set(answer) == {"message_uuid", "workflow_id"}
    assert added["messages"] == 3
    read, _ = await shared_api.send("GET", f"/v0.1/dispatch/{answer['workflow_id']}")
    assert read.status_code == 200
    view = read.json()
    assert view["workflow_id"] == answer["workflow_id"]
    steps = view["steps"]
    assert [step["channel"] for step in steps] == ["whatsapp", "sms", "sms"]
    assert steps[0]["message_uuid"] == answer["message_uuid"]
    assert [step["state"] for step in steps] == ["active", "waiting", "waiting"]
    assert [step["to"]["number"] for step in steps] == [
        "447700900000",
        "447700900001",
        "447700900002",
    ]
    assert "failover" not in steps[0]  # no window, no condition: v1's rule
    assert [entry["event"] for entry in view["timeline"]] == ["accepted", "step_started"]


@IN_MODULE_LOOP
async def test_the_first_message_gets_its_send_and_the_horizon_and_no_timer(
    shared_api: SharedApi,
) -> None:
    """A v1 workflow's first step is sent now and bounded by the report horizon, never timed."""
    response, _ = await shared_api.post(V1, whatsapp(failover=[sms()]))
    message_uuid = response.json()["message_uuid"]
    workflow_id = response.json()["workflow_id"]
    jobs = await shared_api.store.pending_jobs(message_uuid)
    assert [job.kind for job in jobs] == [JobKindName.SEND]
    horizon = await shared_api.store.pending_jobs(workflow_id)
    assert [job.kind for job in horizon] == [JobKindName.REPORT_HORIZON]
    workflow = await shared_api.store.get_workflow(shared_api.tenant.account.id, workflow_id)
    assert workflow is not None
    assert workflow.surface is Surface.MESSAGES_V1
    assert [m.state for m in workflow.messages] == [StepState.ACTIVE, StepState.WAITING]


@IN_MODULE_LOOP
async def test_every_channel_and_its_message_types_are_accepted(shared_api: SharedApi) -> None:
    """One request per channel and message type the v1 specification gives it."""
    url = {"url": "https://example.com/a.bin"}
    bodies = [
        {
            "channel": "mms",
            "message_type": kind,
            kind: url,
            "to": "14155550100",
            "from": "14155550101",
        }
        for kind in ("image", "vcard", "audio", "video")
    ]
    bodies += [
        {
            "channel": "whatsapp",
            "message_type": kind,
            kind: url,
            "to": "447700900000",
            "from": "447700900001",
        }
        for kind in ("image", "audio", "video", "file")
    ]
    bodies += [
        whatsapp(
            message_type="template",
            text=None,
            template={"name": "ns:verify", "parameters": ["1234"]},
            whatsapp={"policy": "deterministic", "locale": "en_GB"},
        ),
        whatsapp(message_type="custom", text=None, custom={"type": "interactive"}),
        sms(
            channel="messenger",
            to="psid-1",
            **{"from": "page-1"},
            messenger={"category": "response"},
        ),
        sms(channel="viber_service", **{"from": "acme-bot"}, viber_service={"ttl": 600}),
        {
            "channel": "viber_service",
            "message_type": "image",
            "image": url,
            "to": "447700900000",
            "from": "acme-bot",
        },
    ]
    for body in bodies:
        body = {name: value for name, value in body.items() if value is not None}
        response, _ = await shared_api.post(V1, body)
        assert response.status_code == 202, (body, response.text)


@IN_MODULE_LOOP
async def test_an_idempotency_key_replays_the_first_answer(shared_api: SharedApi) -> None:
    """The same key and body answers the first 202 again and stores nothing more."""
    headers = {"Idempotency-Key": f"v1-{uuid.uuid4()}"}
    body = whatsapp(failover=[sms()])
    first, _ = await shared_api.post(V1, body, headers)
    again, added = await shared_api.post(V1, body, headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert added["workflows"] == 0


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "title", "code", "names"),
    [
        (sms(channel="rcs"), "Unsupported channel", 1400, {"channel"}),
        (sms(message_type="image"), "Invalid message type", 1440, {"message_type", "text"}),
        (sms(to="+447700900000"), "Invalid recipient", 1430, {"to"}),
        (sms(**{"from": "AcmeCorporation"}), "Invalid sender", 1420, {"from"}),
        (
            sms(messenger={"category": "response"}),
            "Invalid channel parameters",
            1410,
            {"messenger"},
        ),
        (sms(client_ref="x" * 101), "Invalid client reference", 1450, {"client_ref"}),
        (sms(text=None), "Invalid params", 1020, {"text"}),
        (sms(ttl=600), "Invalid params", 1020, {"ttl"}),
        (sms(colour="blue"), "Invalid params", 1020, {"colour"}),
        (
            sms(failover=[sms(to="123")]),
            "Invalid recipient",
            1430,
            {"failover[0].to"},
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
@IN_MODULE_LOOP
async def test_validation_answers_422_with_v1s_type_and_title(
    shared_api: SharedApi, body: dict[str, Any], title: str, code: int, names: set[str]
) -> None:
    """Each kind of bad request gets its v1 title and type (a messages-olympus code), names
    every bad field, and stores nothing."""
    body = {name: value for name, value in body.items() if value is not None}
    response, added = await shared_api.post(V1, body)
    problem = v1_problem(response)
    assert problem["title"] == title
    assert problem["type"] == f"https://developer.nexmo.com/api-errors/messages-olympus#{code}"
    assert set(bad(response)) == names
    assert added["workflows"] == 0


@IN_MODULE_LOOP
async def test_the_most_basic_problem_names_the_request_and_every_field_is_listed(
    shared_api: SharedApi,
) -> None:
    """A bad channel outranks a bad recipient and a bad text; all three are listed."""
    response, _ = await shared_api.post(V1, sms(channel="carrier-pigeon", to=1, text=7))
    assert v1_problem(response)["title"] == "Unsupported channel"
    assert set(bad(response)) == {"channel", "to", "text"}


@IN_MODULE_LOOP
async def test_rules_are_checked_on_what_is_valid_when_the_schema_fails(
    shared_api: SharedApi,
) -> None:
    """A wrong type in one field does not hide a rule another field breaks."""
    response, _ = await shared_api.post(V1, sms(client_ref=5, to="+44"))
    assert set(bad(response)) == {"client_ref", "to"}


@IN_MODULE_LOOP
async def test_a_body_that_is_not_json_is_a_422_invalid_json(shared_api: SharedApi) -> None:
    """v1 answers malformed JSON with 422 and its invalid-json type, never 400."""
    response, _ = await shared_api.send(
        "POST", V1, content=b'{"channel": "sms",', headers={"Content-Type": "application/json"}
    )
    problem = v1_problem(response)
    assert problem["type"] == "https://developer.nexmo.com/api-errors#invalid-json"
    assert problem["title"] == "The request body did not contain valid JSON"


@IN_MODULE_LOOP
async def test_wrong_credentials_are_a_v1_401(shared_api: SharedApi) -> None:
    """A wrong secret answers 401 in v1's words, with a WWW-Authenticate challenge."""
    response, added = await shared_api.send(
        "POST", V1, json=sms(), headers={"Authorization": "Basic d3Jvbmc6d3Jvbmc="}
    )
    problem = v1_problem(response, 401)
    assert problem["title"] == "You did not provide correct credentials."
    assert response.headers["www-authenticate"] == "Bearer, Basic"
    assert added["workflows"] == 0


# -- the webhook shape each message is stored with -----------------------------------------------


async def test_a_message_takes_its_applications_webhook_version(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """A JWT-authenticated message is stored with its application's webhook shape; one that
    names its own shape, or URL, keeps that."""
    await sqlite_store.update_application(tenant.application.id, webhook_version="v1")
    plain = await client.post(V1, json=sms(), headers=tenant.bearer())
    own = await client.post(
        V1,
        json=sms(webhook_version="v0.1", webhook_url="https://hooks.example.com/s"),
        headers=tenant.bearer(),
    )
    basic = await client.post(V1, json=sms(), headers=tenant.basic())
    account = tenant.account.id
    first = await sqlite_store.get_message(account, plain.json()["message_uuid"])
    second = await sqlite_store.get_message(account, own.json()["message_uuid"])
    third = await sqlite_store.get_message(account, basic.json()["message_uuid"])
    assert first is not None
    assert second is not None
    assert third is not None
    assert (first.webhook_version, first.webhook_url) == ("v1", None)
    assert (second.webhook_version, second.webhook_url) == (None, "https://hooks.example.com/s")
    assert third.webhook_version is None  # Basic auth has no application: v0.1


async def test_a_v01_request_takes_its_applications_webhook_version(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """The setting is the application's: its v0.1 messages and dispatches report in v1 too."""
    await sqlite_store.update_application(tenant.application.id, webhook_version="v1")
    body = {
        "to": {"type": "sms", "number": "447700900000"},
        "from": {"type": "sms", "number": "Acme"},
        "message": {"content": {"type": "text", "text": "hi"}},
    }
    response = await client.post("/v0.1/messages", json=body, headers=tenant.bearer())
    stored = await sqlite_store.get_message(tenant.account.id, response.json()["message_uuid"])
    assert stored is not None
    assert stored.webhook_version == "v1"


@IN_MODULE_LOOP
async def test_openapi_documents_v1_with_its_422_and_workflow_id(shared_api: SharedApi) -> None:
    """/openapi.json describes POST /v1/messages: the v1 schema, workflow_id, 422 not 400."""
    response, _ = await shared_api.send("GET", "/openapi.json")
    document = response.json()
    operation = document["paths"][V1]["post"]
    responses = operation["responses"]
    assert "400" not in responses
    assert "422" in responses
    accepted = responses["202"]["content"]["application/json"]["schema"]
    assert set(accepted["properties"]) == {"message_uuid", "workflow_id"}
    assert accepted["required"] == ["message_uuid"]
    schema = document["components"]["schemas"]["MessageRequestV1"]
    assert {"channel", "message_type", "to", "from", "failover"} <= set(schema["properties"])
