"""The accept path: 202 bodies, what is stored and for whom, and Idempotency-Key replays."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from cascade.clock import FakeClock
from cascade.domain.records import Surface
from cascade.store.sqlite import SqliteStore
from tests.api.support import (
    APIS,
    DISPATCH,
    MESSAGES,
    Api,
    assert_problem,
    bad_names,
    failover_workflow,
    stored_rows,
    text,
)
from tests.conftest import Tenant, make_tenant

SURFACES = {
    "/v0.1/messages": Surface.MESSAGES,
    "/beta/messages": Surface.MESSAGES,
    "/v0.1/dispatch": Surface.DISPATCH,
    "/beta/workflows": Surface.WORKFLOWS,
}


def _body(api: Api) -> dict[str, Any]:
    return failover_workflow() if api.takes_workflow else text("sms", "Hello", client_ref="ref-1")


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_accepted_requests_answer_202_with_their_id(
    api: Api, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Each surface answers 202 application/json holding exactly its id field, a UUID."""
    response = await client.post(api.path, json=_body(api), headers=tenant.bearer())
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {api.id_field}
    assert str(uuid.UUID(body[api.id_field])) == body[api.id_field]


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_accepted_requests_are_stored_for_their_account_only(
    api: Api, client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """The workflow and its messages are stored under the caller's account; others see None."""
    other = await make_tenant(sqlite_store, clock)
    response = await client.post(api.path, json=_body(api), headers=tenant.bearer())
    public_id = response.json()[api.id_field]
    if api.takes_workflow:
        workflow_id = public_id
    else:
        message = await sqlite_store.get_message(tenant.account.id, public_id)
        assert message is not None
        assert message.client_ref == "ref-1"
        assert await sqlite_store.get_message(other.account.id, public_id) is None
        workflow_id = message.workflow_id
    workflow = await sqlite_store.get_workflow(tenant.account.id, workflow_id)
    assert workflow is not None
    assert workflow.surface is SURFACES[api.path]
    assert workflow.application_id == tenant.application.id
    assert workflow.created_at == clock.now()
    expected = ["messenger", "sms"] if api.takes_workflow else ["sms"]
    assert [m.channel for m in workflow.messages] == expected
    assert await sqlite_store.get_workflow(other.account.id, workflow_id) is None


async def test_a_message_keeps_what_the_client_sent(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """The stored message holds the request's to, from and message objects as sent."""
    body = text("viber_service_msg", "Olá", options={"viber_service_msg": {"ttl": 600}})
    response = await client.post("/v0.1/messages", json=body, headers=tenant.bearer())
    message = await sqlite_store.get_message(tenant.account.id, response.json()["message_uuid"])
    assert message is not None
    assert json.loads(message.to) == body["to"]
    assert json.loads(message.from_) == body["from"]
    assert json.loads(message.body) == body["message"]


async def test_dispatch_steps_keep_their_failover(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """Each stored step keeps its expiry_time and condition_status; the last has none."""
    response = await client.post(DISPATCH.path, json=failover_workflow(), headers=tenant.basic())
    workflow = await sqlite_store.get_workflow(tenant.account.id, response.json()["dispatch_uuid"])
    assert workflow is not None
    assert workflow.application_id is None  # Basic auth acts for the account, not an app
    assert [(m.step, m.expiry_time, m.condition_status) for m in workflow.messages] == [
        (0, 600, "read"),
        (1, None, None),
    ]


def _keyed(tenant: Tenant, key: str) -> dict[str, str]:
    return {**tenant.bearer(), "Idempotency-Key": key}


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_a_retry_with_the_same_key_replays_the_first_response(
    api: Api, client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """Same Idempotency-Key and body: the first 202 again, and nothing new stored."""
    body = _body(api)
    first = await client.post(api.path, json=body, headers=_keyed(tenant, "order-1"))
    assert first.status_code == 202
    rows = stored_rows(sqlite_store)
    again = await client.post(api.path + "/", json=body, headers=_keyed(tenant, "order-1"))
    assert again.status_code == 202
    assert again.headers["content-type"] == "application/json"
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert stored_rows(sqlite_store) == rows


@pytest.mark.parametrize(
    ("first_path", "second_path", "second_body"),
    [
        pytest.param(MESSAGES.path, MESSAGES.path, text("sms", "Other"), id="other-body"),
        pytest.param(MESSAGES.path, "/beta/messages", text("sms", "Hello"), id="other-path"),
    ],
)
async def test_the_same_key_with_another_request_is_a_409_problem(
    first_path: str,
    second_path: str,
    second_body: dict[str, Any],
    client: httpx.AsyncClient,
    tenant: Tenant,
    sqlite_store: SqliteStore,
) -> None:
    """Reusing an Idempotency-Key for a different request is refused with 409, storing nothing."""
    first = await client.post(first_path, json=text("sms", "Hello"), headers=_keyed(tenant, "k"))
    assert first.status_code == 202
    rows = stored_rows(sqlite_store)
    conflict = await client.post(second_path, json=second_body, headers=_keyed(tenant, "k"))
    body = assert_problem(conflict, 409)
    assert body["type"].endswith("#idempotency-conflict")
    assert stored_rows(sqlite_store) == rows


async def test_idempotency_keys_belong_to_one_account(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Another account using the same key and body gets its own new workflow."""
    other = await make_tenant(sqlite_store, clock)
    body = failover_workflow()
    mine = await client.post(DISPATCH.path, json=body, headers=_keyed(tenant, "shared"))
    theirs = await client.post(DISPATCH.path, json=body, headers=_keyed(other, "shared"))
    assert theirs.status_code == 202
    assert theirs.json() != mine.json()
    assert "idempotent-replayed" not in theirs.headers
    workflow = await sqlite_store.get_workflow(other.account.id, theirs.json()["dispatch_uuid"])
    assert workflow is not None
    assert stored_rows(sqlite_store)["workflows"] == 2


async def test_a_key_is_shared_by_jwt_and_basic_logins_of_one_account(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """A retry made with Basic auth replays the response first given to a JWT of the account."""
    first = await client.post(MESSAGES.path, json=text("sms", "x"), headers=_keyed(tenant, "b"))
    again = await client.post(
        MESSAGES.path,
        json=text("sms", "x"),
        headers={**tenant.basic(), "Idempotency-Key": "b"},
    )
    assert again.json() == first.json()
    assert stored_rows(sqlite_store)["workflows"] == 1


async def test_concurrent_retries_with_one_key_create_one_workflow(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """Requests racing with the same key all get the one first response."""
    headers = {**tenant.basic(), "Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *(client.post(DISPATCH.path, json=failover_workflow(), headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.text for r in responses}) == 1
    assert stored_rows(sqlite_store)["workflows"] == 1


async def test_a_refused_request_does_not_use_up_its_key(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """A 400 stores no key, so the corrected request with the same key is accepted."""
    invalid = await client.post(MESSAGES.path, json=text("sms", ""), headers=_keyed(tenant, "fix"))
    assert invalid.status_code == 400
    valid = await client.post(MESSAGES.path, json=text("sms", "ok"), headers=_keyed(tenant, "fix"))
    assert valid.status_code == 202
    assert stored_rows(sqlite_store)["idempotency_keys"] == 1


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there"], ids=["empty", "256-chars", "tab"])
async def test_a_malformed_idempotency_key_is_refused(
    key: str, client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """An empty, over-long or unprintable Idempotency-Key is a 400 naming the header."""
    response = await client.post(MESSAGES.path, json=text("sms", "x"), headers=_keyed(tenant, key))
    assert bad_names(response) == {"Idempotency-Key"}
    assert stored_rows(sqlite_store)["workflows"] == 0


async def test_a_key_of_255_characters_is_accepted(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """An Idempotency-Key of 255 printable characters is accepted."""
    response = await client.post(
        MESSAGES.path, json=text("sms", "x"), headers=_keyed(tenant, "k" * 255)
    )
    assert response.status_code == 202
