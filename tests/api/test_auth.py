"""Authentication of the accept API: RS256 JWTs of an application, or Basic api_key:secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cascade.api.auth import Authenticator
from cascade.clock import FakeClock
from cascade.errors import Unauthorized
from cascade.store.sqlite import SqliteStore
from tests.api.support import APIS, Api, assert_nothing_stored, assert_problem, stored_rows, text
from tests.conftest import Tenant, make_tenant

UNAUTHORIZED = {
    "type": "https://developer.nexmo.com/api-errors#unauthorized",
    "title": "Invalid Credentials",
    "detail": "You did not provide correct credentials.",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


#: a JWT segment whose bytes are not UTF-8
NOT_UTF8 = _b64(b'{"alg\x80": 1}')


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(tenant: Tenant, clock: FakeClock, **changes: Any) -> dict[str, Any]:
    now = int(clock.now())
    claims: dict[str, Any] = {
        "application_id": tenant.application.id,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "exp": now + 900,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def _basic(api_key: str, secret: str) -> list[tuple[str, str]]:
    raw = base64.b64encode(f"{api_key}:{secret}".encode()).decode()
    return [("Authorization", f"Basic {raw}")]


def _signed(tenant: Tenant, clock: FakeClock, **changes: Any) -> list[tuple[str, str]]:
    """A Bearer header with an RS256 token at the fake clock's time; a None claim is left out."""
    now = int(clock.now())
    claims: dict[str, Any] = {"iat": now, "exp": now + 900}
    claims.update(changes)
    return _bearer(tenant.token(**claims))


def _alg_none(tenant: Tenant, other: Tenant, clock: FakeClock) -> list[tuple[str, str]]:
    header = _segment({"alg": "none", "typ": "JWT"})
    return _bearer(f"{header}.{_segment(_claims(tenant, clock))}.")


def _hs256_with_public_key(
    tenant: Tenant, other: Tenant, clock: FakeClock
) -> list[tuple[str, str]]:
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_segment(_claims(tenant, clock))}"
    secret = tenant.application.public_key_pem.encode()
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return _bearer(f"{signing_input}.{_b64(signature)}")


def _tampered(tenant: Tenant, other: Tenant, clock: FakeClock) -> list[tuple[str, str]]:
    header, _, signature = tenant.token(**_claims(tenant, clock)).split(".")
    forged = _segment(_claims(tenant, clock, exp=int(clock.now()) + 3600))
    return _bearer(f"{header}.{forged}.{signature}")


def _other_accounts_application(
    tenant: Tenant, other: Tenant, clock: FakeClock
) -> list[tuple[str, str]]:
    return _bearer(tenant.token(**_claims(tenant, clock, application_id=other.application.id)))


def _bearer_and_basic(tenant: Tenant, other: Tenant, clock: FakeClock) -> list[tuple[str, str]]:
    return _signed(tenant, clock) + _basic(tenant.account.api_key, tenant.api_secret)


HeaderFactory = Callable[[Tenant, Tenant, FakeClock], list[tuple[str, str]]]

REFUSED: list[Any] = [
    pytest.param(lambda t, o, c: [], id="no-authorization-header"),
    pytest.param(_bearer_and_basic, id="bearer-and-basic-at-once"),
    pytest.param(lambda t, o, c: [("Authorization", "Token abc")], id="unknown-scheme"),
    pytest.param(lambda t, o, c: [("Authorization", "Bearer")], id="bearer-without-token"),
    pytest.param(lambda t, o, c: _bearer("not.a.jwt"), id="garbage-token"),
    pytest.param(
        lambda t, o, c: _bearer(f"{NOT_UTF8}.{_segment(_claims(t, c))}.c2ln"),
        id="header-not-utf8",
    ),
    pytest.param(_alg_none, id="alg-none"),
    pytest.param(_hs256_with_public_key, id="hs256-signed-with-public-key"),
    pytest.param(_tampered, id="tampered-payload"),
    pytest.param(
        lambda t, o, c: _signed(t, c, iat=int(c.now()) - 7200, exp=int(c.now()) - 3600),
        id="expired",
    ),
    pytest.param(lambda t, o, c: _signed(t, c, nbf=int(c.now()) + 3600), id="not-yet-valid"),
    pytest.param(
        lambda t, o, c: _signed(t, c, iat=int(c.now()) + 3600, exp=int(c.now()) + 4000),
        id="issued-in-the-future",
    ),
    pytest.param(
        lambda t, o, c: _signed(t, c, application_id=str(uuid.uuid4())), id="unknown-application"
    ),
    pytest.param(_other_accounts_application, id="another-accounts-application"),
    pytest.param(lambda t, o, c: _signed(t, c, application_id=None), id="no-application_id"),
    pytest.param(lambda t, o, c: _signed(t, c, iat=None), id="no-iat"),
    pytest.param(lambda t, o, c: _signed(t, c, jti=None), id="no-jti"),
    pytest.param(lambda t, o, c: _signed(t, c, jti=""), id="empty-jti"),
    pytest.param(lambda t, o, c: _signed(t, c, iat="now"), id="iat-not-a-number"),
    pytest.param(
        lambda t, o, c: _signed(t, c, exp=int(c.now()) + 86401), id="lifetime-over-24-hours"
    ),
    pytest.param(
        lambda t, o, c: _basic(t.account.api_key, t.api_secret + "x"), id="wrong-basic-secret"
    ),
    pytest.param(lambda t, o, c: _basic("unknown1", t.api_secret), id="unknown-api-key"),
    pytest.param(lambda t, o, c: _basic(o.account.api_key, t.api_secret), id="other-accounts-key"),
    pytest.param(lambda t, o, c: [("Authorization", "Basic !!!")], id="basic-not-base64"),
    pytest.param(
        lambda t, o, c: [("Authorization", "Basic " + base64.b64encode(b"nocolon").decode())],
        id="basic-without-colon",
    ),
]


@pytest.mark.parametrize("headers", REFUSED)
async def test_refused_credentials_get_one_uniform_401(
    headers: HeaderFactory,
    client: httpx.AsyncClient,
    tenant: Tenant,
    sqlite_store: SqliteStore,
    clock: FakeClock,
) -> None:
    """Every bad credential gets the same 401 problem, naming no check, and stores nothing."""
    other = await make_tenant(sqlite_store, clock)
    response = await client.post(
        "/v0.1/messages",
        content=json.dumps(text("sms", "hi")),
        headers=[("Content-Type", "application/json"), *headers(tenant, other, clock)],
    )
    body = assert_problem(response, 401)
    assert {name: body[name] for name in UNAUTHORIZED} == UNAUTHORIZED
    assert "invalid_parameters" not in body
    assert response.headers["www-authenticate"] == "Bearer, Basic"
    assert_nothing_stored(sqlite_store)


ACCEPTED: list[Any] = [
    pytest.param(lambda t, c: _signed(t, c), id="rs256-jwt"),
    pytest.param(lambda t, c: _signed(t, c, exp=None), id="jwt-without-exp"),
    pytest.param(lambda t, c: _signed(t, c, nbf=int(c.now()) - 10), id="jwt-with-past-nbf"),
    pytest.param(lambda t, c: _signed(t, c, exp=int(c.now()) + 86400), id="jwt-lifetime-24h"),
    pytest.param(lambda t, c: _basic(t.account.api_key, t.api_secret), id="basic"),
]


@pytest.mark.parametrize("headers", ACCEPTED)
@pytest.mark.parametrize("api", APIS, ids=str)
async def test_valid_credentials_are_accepted(
    headers: Callable[[Tenant, FakeClock], list[tuple[str, str]]],
    api: Api,
    client: httpx.AsyncClient,
    tenant: Tenant,
    clock: FakeClock,
) -> None:
    """A valid JWT (with or without exp) or Basic login is accepted on every surface."""
    response = await client.post(
        api.path, json=api.body(text("sms", "hi")), headers=headers(tenant, clock)
    )
    assert response.status_code == 202, response.text


async def test_a_cached_token_is_refused_once_the_clock_passes_its_exp(
    client: httpx.AsyncClient, tenant: Tenant, clock: FakeClock, sqlite_store: SqliteStore
) -> None:
    """A token that worked is refused after its exp, by the injected clock, despite caching."""
    headers = _signed(tenant, clock, exp=int(clock.now()) + 120)
    first = await client.post("/v0.1/messages", json=text("sms", "one"), headers=headers)
    assert first.status_code == 202
    clock.advance(3600)
    second = await client.post("/v0.1/messages", json=text("sms", "two"), headers=headers)
    assert_problem(second, 401)
    assert stored_rows(sqlite_store)["messages"] == 1


async def test_a_token_without_exp_is_refused_24_hours_after_iat(
    client: httpx.AsyncClient, tenant: Tenant, clock: FakeClock
) -> None:
    """A token without exp lives at most 24 hours from its iat."""
    headers = _signed(tenant, clock, exp=None)
    assert (await client.post("/v0.1/messages", json=text("sms", "a"), headers=headers)).is_success
    clock.advance(86400 + 120)
    refused = await client.post("/v0.1/messages", json=text("sms", "b"), headers=headers)
    assert_problem(refused, 401)


async def test_a_jwt_acts_for_its_own_account_only(
    client: httpx.AsyncClient, tenant: Tenant, clock: FakeClock, sqlite_store: SqliteStore
) -> None:
    """A message sent with an application's JWT belongs to that application's account."""
    other = await make_tenant(sqlite_store, clock)
    response = await client.post(
        "/v0.1/messages", json=text("sms", "hi"), headers=_signed(other, clock)
    )
    message_id = response.json()["message_uuid"]
    assert await sqlite_store.get_message(tenant.account.id, message_id) is None
    stored = await sqlite_store.get_message(other.account.id, message_id)
    assert stored is not None
    workflow = await sqlite_store.get_workflow(other.account.id, stored.workflow_id)
    assert workflow is not None
    assert workflow.application_id == other.application.id


async def test_unknown_credentials_are_not_remembered(
    sqlite_store: SqliteStore, tenant: Tenant, clock: FakeClock
) -> None:
    """Unknown api_keys and application ids leave nothing cached, so they cannot fill memory."""
    authenticator = Authenticator(sqlite_store, clock)
    for n in range(20):
        for header in (
            _basic(f"nokey{n}", "secret"),
            _signed(tenant, clock, application_id=f"no-app-{n}"),
        ):
            with pytest.raises(Unauthorized):
                await authenticator.authenticate([header[0][1]])
    assert authenticator._basic == {}
    assert authenticator._applications == {}
    await authenticator.authenticate([tenant.basic()["Authorization"]])
    await authenticator.authenticate([tenant.bearer()["Authorization"]])
    assert list(authenticator._basic) == [tenant.account.api_key]
    assert list(authenticator._applications) == [tenant.application.id]
