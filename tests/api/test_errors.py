"""Errors outside validation: bad JSON, media type, size, routing, and the operations pages."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cascade.api.app import create_app
from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.domain.records import Account
from cascade.errors import StoreRejected, StoreUnavailable
from cascade.runtime import build_app
from cascade.store.sqlite import SqliteStore
from tests.api.conftest import IN_MODULE_LOOP, SharedApi
from tests.api.support import (
    APIS,
    Api,
    assert_problem,
    bad_names,
    failover_workflow,
    stored_rows,
    text,
)
from tests.conftest import Tenant

LIMIT = 64 * 1024  # max_body_bytes of the ``client`` and ``shared_api`` fixtures
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"to": {"type": "sms"', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"to=447700900000", id="form-encoded"),
        pytest.param(b'{"to": 1,}', id="trailing-comma"),
        pytest.param(b'{"text": "\xff\xfe"}', id="not-utf8"),
        pytest.param(b'{"template": "\xff\xfe"}', id="not-utf8-in-a-known-field"),
        pytest.param(b"[" * 30_000 + b"]" * 30_000, id="nested-too-deeply"),
    ],
)
@pytest.mark.parametrize("api", APIS, ids=str)
@IN_MODULE_LOOP
async def test_malformed_json_is_an_invalid_json_problem(
    api: Api, raw: bytes, shared_api: SharedApi
) -> None:
    """A body that is not JSON gets a 400 invalid-json problem and stores nothing."""
    response, added = await shared_api.send("POST", api.path, content=raw, headers=JSON)
    body = assert_problem(response, 400)
    assert body["type"].endswith("#invalid-json")
    assert body["title"] == "Invalid JSON"
    assert set(added.values()) == {0}


@pytest.mark.parametrize("api", APIS, ids=str)
@IN_MODULE_LOOP
async def test_a_deeply_nested_custom_payload_is_invalid_json(
    api: Api, shared_api: SharedApi
) -> None:
    """JSON nested deeper than the decoder goes, inside a valid field, is a 400, not a 500."""
    nested = "[" * 30_000 + "]" * 30_000
    single = text("whatsapp", "x")
    single["message"]["content"] = {"type": "custom", "custom": {"a": "PLACEHOLDER"}}
    raw = json.dumps(api.body(single)).replace('"PLACEHOLDER"', nested).encode()
    response, added = await shared_api.send("POST", api.path, content=raw, headers=JSON)
    body = assert_problem(response, 400)
    assert body["type"].endswith("#invalid-json")
    assert set(added.values()) == {0}


@pytest.mark.parametrize("document", [b"[1, 2]", b'"hello"', b"null", b"42"])
@IN_MODULE_LOOP
async def test_json_that_is_not_an_object_names_the_body(
    document: bytes, shared_api: SharedApi
) -> None:
    """Valid JSON that is not an object is refused as an invalid body, naming ``body``."""
    response, _ = await shared_api.send("POST", "/v0.1/dispatch", content=document, headers=JSON)
    assert bad_names(response) == {"body"}


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json"],
)
@pytest.mark.parametrize("api", APIS, ids=str)
@IN_MODULE_LOOP
async def test_a_body_that_is_not_json_gets_415(
    api: Api, content_type: str | None, shared_api: SharedApi
) -> None:
    """Any media type but application/json is refused with 415, storing nothing."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    content = json.dumps(api.body(text("sms", "hi"))).encode()
    response, added = await shared_api.send("POST", api.path, content=content, headers=headers)
    assert response.request.headers.get("content-type") == content_type
    body = assert_problem(response, 415)
    assert body["type"].endswith("#content-type-header")
    assert set(added.values()) == {0}


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json "]
)
@IN_MODULE_LOOP
async def test_json_media_type_parameters_and_case_are_accepted(
    content_type: str, shared_api: SharedApi
) -> None:
    """application/json is recognised whatever its case and with a charset parameter."""
    response, _ = await shared_api.send(
        "POST",
        "/v0.1/messages",
        content=json.dumps(text("sms", "hi")),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nowhere"),
        ("POST", "/v0.1/nowhere"),
        ("POST", "/v0.2/messages"),
        ("POST", "/v0.1/messages/a/b"),
        ("GET", "/v0.1/dispatch/a/b"),
        ("GET", "/health/extra"),
    ],
)
@IN_MODULE_LOOP
async def test_an_unknown_path_is_a_404_problem(
    method: str, path: str, shared_api: SharedApi
) -> None:
    """A path Cascade does not serve answers a 404 problem."""
    response, _ = await shared_api.send(method, path)
    body = assert_problem(response, 404)
    assert body["type"].endswith("#not-found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v0.1/dispatch"),
        ("DELETE", "/v0.1/dispatch/"),
        ("PUT", "/v0.1/messages"),
        ("DELETE", "/beta/workflows"),
        ("PATCH", "/beta/messages"),
        ("POST", "/health"),
        ("POST", "/openapi.json"),
    ],
)
@IN_MODULE_LOOP
async def test_a_wrong_method_is_a_405_problem(
    method: str, path: str, shared_api: SharedApi
) -> None:
    """A known path with a method it does not take answers a 405 problem saying what it takes."""
    response, _ = await shared_api.send(method, path)
    body = assert_problem(response, 405)
    assert body["type"].endswith("#wrong-verb")
    assert "allow" in response.headers


def _padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON, padded with trailing whitespace to exactly ``size`` bytes."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 4096):
        yield data[start : start + 4096]


@pytest.mark.parametrize("api", APIS, ids=str)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@IN_MODULE_LOOP
async def test_a_body_over_the_limit_is_a_413_problem(
    api: Api, declared: bool, shared_api: SharedApi
) -> None:
    """One byte over max_body_bytes is refused with 413, with or without Content-Length."""
    raw = _padded(api.body(text("sms", "hi")), LIMIT + 1)
    content: bytes | AsyncIterator[bytes] = raw if declared else _chunks(raw)
    response, added = await shared_api.send("POST", api.path, content=content, headers=JSON)
    assert ("content-length" in response.request.headers) is declared
    body = assert_problem(response, 413)
    assert body["type"].endswith("#payload-too-large")
    assert set(added.values()) == {0}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@IN_MODULE_LOOP
async def test_a_body_of_exactly_the_limit_is_accepted(
    declared: bool, shared_api: SharedApi
) -> None:
    """A body of exactly max_body_bytes is read and accepted."""
    raw = _padded(failover_workflow(), LIMIT)
    content: bytes | AsyncIterator[bytes] = raw if declared else _chunks(raw)
    response, added = await shared_api.send("POST", "/v0.1/dispatch", content=content, headers=JSON)
    assert response.status_code == 202, response.text
    assert added["workflows"] == 1


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_a_trailing_slash_routes_as_if_absent(
    api: Api, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """POST to the path with a trailing / reaches the same endpoint (SDKs build such URLs)."""
    response = await client.post(
        api.path + "/", json=api.body(text("sms", "hi")), headers=tenant.bearer()
    )
    assert response.status_code == 202, response.text
    assert set(response.json()) == {api.id_field}


def _failing_client(
    sqlite_store: SqliteStore, clock: FakeClock, error: Exception
) -> httpx.AsyncClient:
    async def accept(*args: object, **kwargs: object) -> None:
        raise error

    app = create_app(sqlite_store, clock=clock)
    sqlite_store.accept = accept  # type: ignore[method-assign]  # the object the endpoints hold
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://cascade.test")


async def test_an_unexpected_failure_is_a_500_problem_without_a_traceback(
    sqlite_store: SqliteStore, clock: FakeClock, tenant: Tenant
) -> None:
    """A bug on the accept path answers a 500 problem that shows no traceback or internals."""
    secret = "internal detail: /srv/cascade/secret.py line 42"
    async with _failing_client(sqlite_store, clock, RuntimeError(secret)) as client:
        response = await client.post(
            "/v0.1/messages", json=text("sms", "hi"), headers=tenant.basic()
        )
    body = assert_problem(response, 500)
    assert secret not in response.text
    assert body["type"].endswith("#internal-error")


async def test_an_unavailable_store_is_a_503_problem_with_retry_after(
    sqlite_store: SqliteStore, clock: FakeClock, tenant: Tenant
) -> None:
    """When the store cannot take the write, the client gets 503 and Retry-After."""
    error = StoreUnavailable("database is locked at /var/lib/cascade.db")
    async with _failing_client(sqlite_store, clock, error) as client:
        response = await client.post(
            "/v0.1/messages", json=text("sms", "hi"), headers=tenant.basic()
        )
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert "/var/lib" not in response.text


async def test_a_value_the_store_cannot_hold_is_a_400_not_a_503(
    sqlite_store: SqliteStore, clock: FakeClock, tenant: Tenant
) -> None:
    """A permanent store refusal of the request's data is the client's 400, never a 503 that
    a polite client would retry forever."""
    error = StoreRejected("DataError: invalid byte sequence for encoding UTF8: 0x00")
    async with _failing_client(sqlite_store, clock, error) as client:
        response = await client.post(
            "/v0.1/messages", json=text("sms", "hi"), headers=tenant.basic()
        )
    body = assert_problem(response, 400)
    assert "retry-after" not in response.headers
    assert "0x00" not in body["detail"]


async def test_health_answers_ok(client: httpx.AsyncClient) -> None:
    """/health answers 200 JSON without credentials."""
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


async def test_openapi_documents_the_four_accept_paths(client: httpx.AsyncClient) -> None:
    """/openapi.json is valid JSON describing each POST path with its 202 id field."""
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    for api in APIS:
        operation = document["paths"][api.path]["post"]
        accepted = operation["responses"]["202"]["content"]["application/json"]["schema"]
        assert accepted["required"] == [api.id_field]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert {"MessageRequest", "WorkflowRequest"} <= document["components"]["schemas"].keys()


async def test_openapi_declares_errors_with_the_media_type_they_are_sent_with(
    client: httpx.AsyncClient,
) -> None:
    """Every documented error response has the Content-Type the server really sends."""
    document = (await client.get("/openapi.json")).json()
    for api in APIS:
        responses = document["paths"][api.path]["post"]["responses"]
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/json"], (api.path, status)


async def test_docs_is_an_html_page(client: httpx.AsyncClient) -> None:
    """/docs is a self-contained HTML page listing the accept paths."""
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!doctype html>")
    for api in APIS:
        assert api.path in response.text


async def test_metrics_are_exposed(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """/metrics serves Prometheus text including the accepted-requests counter."""
    await client.post("/v0.1/messages", json=text("sms", "hi"), headers=tenant.basic())
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "cascade_requests_accepted" in response.text


# --- a real server, for what an in-process client cannot send -------------------------------


@dataclass
class LiveServer:
    """A uvicorn server on 127.0.0.1 and the Basic credentials of its first account."""

    port: int
    authorization: str
    store_path: Path

    async def raw(self, request_line: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one raw HTTP/1.1 request; the status code and body of the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [
            request_line,
            "Host: 127.0.0.1",
            f"Authorization: {self.authorization}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        await writer.wait_closed()
        head, _, payload = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), payload


@pytest.fixture
async def live_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """Cascade on uvicorn on a free port, with a fresh SQLite file and its default account."""
    announced: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def announce(account: Account, api_secret: str) -> None:
        raw = base64.b64encode(f"{account.api_key}:{api_secret}".encode()).decode()
        announced.set_result(f"Basic {raw}")

    database = tmp_path / "live.db"
    app = build_app(Settings(database_url=f"sqlite:///{database}"), announce=announce)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        authorization = await asyncio.wait_for(asyncio.shield(announced), timeout=10)
        yield LiveServer(sock.getsockname()[1], authorization, database)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_a_bare_trailing_question_mark_routes_as_if_absent(
    live_server: LiveServer,
) -> None:
    """POST path? and path/? (an empty query string, as some clients send) reach the endpoint."""
    sent = 0
    for api in APIS:
        for suffix in ("?", "/?"):
            body = json.dumps(api.body(text("sms", "hi"))).encode()
            status, payload = await live_server.raw(f"POST {api.path}{suffix} HTTP/1.1", body)
            assert status == 202, (api.path + suffix, payload)
            assert set(json.loads(payload)) == {api.id_field}
            sent += 1
    assert stored_rows(SqliteStore(live_server.store_path))["workflows"] == sent


async def test_a_real_server_answers_errors_as_json_problems(live_server: LiveServer) -> None:
    """Over a real socket, 404, 405 and 400 answers are JSON problem documents."""
    for request_line, expected in [
        ("GET /nowhere? HTTP/1.1", 404),
        ("PUT /v0.1/dispatch? HTTP/1.1", 405),
        ("POST /v0.1/dispatch? HTTP/1.1", 400),
        ("POST /v0.1/messages/? HTTP/1.1", 400),
    ]:
        status, payload = await live_server.raw(request_line, b"{")
        assert status == expected, (request_line, payload)
        assert {"type", "title", "detail", "instance"} <= json.loads(payload).keys()
