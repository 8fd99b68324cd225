"""Hostile input: bodies built to be slow to validate, and strings the store cannot hold.

Every request is validated on the event loop, so the work must be bounded by the schema, not by
the body, and the answer must stay small. The tests count the validator's steps and the size of
the answer rather than timing anything.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec.inspect
import pytest
import pytest_asyncio
from starlette.exceptions import HTTPException
from starlette.requests import Request

from cascade.api import validation
from cascade.api.app import create_app
from cascade.api.messages import read_json_body
from cascade.clock import SystemClock
from cascade.store.sqlite import SqliteStore
from tests.api.conftest import SharedApi
from tests.api.support import (
    APIS,
    WORKFLOW_APIS,
    Api,
    assert_problem,
    bad_names,
    failover,
    message,
    reasons,
    stored_rows,
    text,
    workflow,
)
from tests.conftest import make_tenant

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: the most a 400 of a hostile body may weigh (50 listed parameters of clipped length)
MAX_PROBLEM_BYTES = 30_000
#: more steps of the schema walker than any body the schema allows can take
WALKER_STEPS_BOUND = 2_000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def big_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SharedApi]:
    """The API with the service's default body limit (1 MiB), for bodies over 64 KiB."""
    store = SqliteStore(tmp_path_factory.mktemp("big") / "cascade.db", synchronous="NORMAL")
    await store.open()
    tenant = await make_tenant(store)
    app = create_app(store, clock=SystemClock(), max_body_bytes=1_048_576)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as client:
        yield SharedApi(store, tenant, client)
    await store.close()


@pytest.fixture
def walker_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the schema walker (it calls itself through the module global)."""
    calls = [0]
    walk = validation.schema_violations

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return walk(*args)

    monkeypatch.setattr(validation, "schema_violations", counted)
    return calls


async def _post_raw(api: SharedApi, path: str, body: bytes) -> tuple[httpx.Response, bool]:
    """POST raw bytes as JSON; the response and whether any row was stored."""
    before = stored_rows(api.store)
    response, _ = await api.send(
        "POST", path, content=body, headers={"Content-Type": "application/json"}
    )
    return response, stored_rows(api.store) != before


def _assert_bounded(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 400)
    assert len(response.content) < MAX_PROBLEM_BYTES
    assert len(body.get("invalid_parameters", [])) <= 50
    return body


@pytest.mark.parametrize("api", WORKFLOW_APIS, ids=str)
async def test_30000_empty_steps_are_refused_without_walking_them(
    big_api: SharedApi, api: Api, walker_steps: list[int]
) -> None:
    """30,000 empty steps get one small 400 about the step count, without a walk per step."""
    body = json.dumps(workflow(*[{} for _ in range(30_000)])).encode()
    response, stored = await _post_raw(big_api, api.path, body)
    problem = _assert_bounded(response)
    assert not stored
    assert reasons(response)["workflow"] == "must have at most 10 items, not 30,000"
    assert len(problem["invalid_parameters"]) == 1
    assert walker_steps[0] < WALKER_STEPS_BOUND


async def test_100000_numbers_as_steps_are_refused_without_walking_them(
    big_api: SharedApi, walker_steps: list[int]
) -> None:
    """100,000 numbers in place of steps get one small 400, without a walk per number."""
    body = b'{"template":"failover","workflow":[' + b",".join([b"0"] * 100_000) + b"]}"
    response, stored = await _post_raw(big_api, "/v0.1/dispatch", body)
    _assert_bounded(response)
    assert not stored
    assert bad_names(response) == {"workflow"}
    assert walker_steps[0] < WALKER_STEPS_BOUND


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_100000_template_parameters_are_refused_without_walking_them(
    big_api: SharedApi, api: Api, walker_steps: list[int]
) -> None:
    """A template of 100,000 numbers as parameters gets a small 400 naming the parameters."""
    content = {"type": "template", "template": {"name": "t", "parameters": [0] * 100_000}}
    single = message("whatsapp", content, options={"whatsapp": {"locale": "en"}})
    response, _ = await big_api.post(api.path, api.body(single))
    _assert_bounded(response)
    assert reasons(response)[api.name("message.content.template.parameters")] == (
        "must have at most 100 items, not 100,000"
    )
    assert walker_steps[0] < WALKER_STEPS_BOUND


async def test_a_workflow_of_bad_steps_derives_the_types_once(
    shared_api: SharedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walker reads what msgspec.inspect derives from the types once, not once per step."""
    steps = [{**text("sms", ""), "failover": failover(1)} for _ in range(10)]
    response, _ = await shared_api.post("/v0.1/dispatch", workflow(*steps))
    assert_problem(response, 400)  # the first bad workflow may derive them
    calls = [0]
    type_info = msgspec.inspect.type_info

    def counted(kind: Any) -> Any:
        calls[0] += 1
        return type_info(kind)

    monkeypatch.setattr(msgspec.inspect, "type_info", counted)
    response, _ = await shared_api.post("/v0.1/dispatch", workflow(*steps))
    assert "workflow[9].message.content.text" in bad_names(response)
    assert calls[0] == 0


async def test_many_unknown_fields_list_fifty_and_count_the_rest(big_api: SharedApi) -> None:
    """10,000 unknown fields: the first 50 are named, the detail counts the other 9,950."""
    body = {**text("sms", "hi"), **{f"k{i}": 0 for i in range(10_000)}}
    response, stored = await big_api.post("/v0.1/messages", body)
    problem = _assert_bounded(response)
    assert sum(stored.values()) == 0
    assert [p["name"] for p in problem["invalid_parameters"]] == [f"k{i}" for i in range(50)]
    assert "9,950 more" in problem["detail"]


async def test_any_problem_lists_fifty_parameters_at_most(shared_api: SharedApi) -> None:
    """Any 400 (here 60 unknown query parameters) lists 50 and counts the other 10."""
    params = {f"q{i}": "1" for i in range(60)}
    response, _ = await shared_api.send("GET", "/v0.1/dispatch", params=params)
    problem = _assert_bounded(response)
    assert len(problem["invalid_parameters"]) == 50
    assert "10 more" in problem["detail"]


async def test_a_long_unknown_field_name_is_clipped(shared_api: SharedApi) -> None:
    """A 60,000-character field name is echoed clipped, so the 400 stays small."""
    response, _ = await shared_api.post("/v0.1/messages", {**text("sms", "hi"), "k" * 60_000: 1})
    problem = _assert_bounded(response)
    (parameter,) = problem["invalid_parameters"]
    assert parameter["name"].startswith("kkk")
    assert len(parameter["name"]) <= 200
    assert len(response.content) < 1_000


@pytest.mark.parametrize(
    "page_size", ["²", "٣", "1" * 4301, "9" * 5000, "-1", "0", "101", "1.5", "", " 5", "0x10"]
)
@pytest.mark.parametrize("path", ["/v0.1/dispatch", "/v0.1/messages"])
async def test_a_page_size_that_is_not_a_small_number_is_a_400(
    shared_api: SharedApi, path: str, page_size: str
) -> None:
    """page_size of non-ASCII digits, thousands of digits, negatives... is a 400 naming it."""
    response, _ = await shared_api.send("GET", path, params={"page_size": page_size})
    assert bad_names(response) == {"page_size"}


@pytest.mark.parametrize("path", ["/v0.1/dispatch", "/v0.1/messages"])
async def test_a_page_size_with_leading_zeros_still_reads(shared_api: SharedApi, path: str) -> None:
    """page_size=007 is seven: the bound on digits does not refuse what int() reads."""
    response, _ = await shared_api.send("GET", path, params={"page_size": "007"})
    assert response.status_code == 200, response.text


async def test_a_cursor_naming_an_id_the_store_cannot_hold_is_a_400(shared_api: SharedApi) -> None:
    """A forged cursor whose id holds U+0000, or whose time is not finite, is a 400."""
    for raw in (b"1.0|a\x00b", b"nan|0192f1a4-7c3e-7d21-9b5e-3f0c2a61d8e4"):
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        response, _ = await shared_api.send("GET", "/v0.1/dispatch", params={"cursor": cursor})
        assert bad_names(response) == {"cursor"}


@pytest.mark.parametrize("path", ["/v0.1/dispatch/a%00b", "/v0.1/messages/a%00b"])
async def test_an_id_the_store_cannot_hold_is_not_looked_up(
    shared_api: SharedApi, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading an id holding U+0000 (PostgreSQL refuses it in a query) is a 404 without asking
    the store."""
    asked: list[str] = []
    for method in ("get_workflow", "get_message"):
        original = getattr(shared_api.store, method)

        async def spy(account_id: str, row_id: str, original: Any = original) -> Any:
            asked.append(row_id)
            return await original(account_id, row_id)

        monkeypatch.setattr(shared_api.store, method, spy)
    response, _ = await shared_api.send("GET", path)
    assert_problem(response, 404)
    assert asked == []


#: (field path in a single message, the body with U+0000 there)
NUL_BODIES: list[Any] = [
    pytest.param("client_ref", text("sms", "hi", client_ref="ref\x00"), id="client_ref"),
    pytest.param("message.content.text", text("sms", "a\x00b"), id="text"),
    pytest.param(
        "to.id", text("messenger", "hi", to={"type": "messenger", "id": "12\x0034"}), id="to.id"
    ),
    pytest.param(
        "from.number", text("sms", "hi", from_={"type": "sms", "number": "4\x00"}), id="from"
    ),
    pytest.param(
        "message.content.custom.a.b[1]",
        message("whatsapp", {"type": "custom", "custom": {"a": {"b": ["x", "\x00"]}}}),
        id="custom-value",
    ),
    pytest.param(
        "message.content.custom.k\x00",
        message("whatsapp", {"type": "custom", "custom": {"k\x00": 1}}),
        id="custom-key",
    ),
    pytest.param(
        "message.content.template.parameters[0]",
        message(
            "whatsapp",
            {"type": "template", "template": {"name": "t", "parameters": ["\x00"]}},
            options={"whatsapp": {"locale": "en"}},
        ),
        id="template-parameter",
    ),
]


@pytest.mark.parametrize(("name", "single"), NUL_BODIES)
@pytest.mark.parametrize("api", APIS, ids=str)
async def test_a_string_holding_nul_is_a_400_naming_it(
    shared_api: SharedApi, api: Api, name: str, single: dict[str, Any]
) -> None:
    """U+0000 anywhere in a string of the body (PostgreSQL cannot store it) is a 400 naming it."""
    response, stored = await shared_api.post(api.path, api.body(single))
    assert api.name(name) in bad_names(response)
    assert "U+0000" in reasons(response)[api.name(name)]
    assert sum(stored.values()) == 0


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_nul_is_named_beside_the_schema_errors(shared_api: SharedApi, api: Api) -> None:
    """A body that fails its schema too gets U+0000 named among the other problems."""
    single = text("sms", "a\x00b", client_ref=7)
    response, _ = await shared_api.post(api.path, api.body(single))
    assert {api.name("message.content.text"), api.name("client_ref")} <= bad_names(response)


@pytest.mark.parametrize("api", APIS, ids=str)
async def test_an_escaped_backslash_before_u0000_is_text(shared_api: SharedApi, api: Api) -> None:
    """The six characters \\u0000 written as text (the backslash escaped) are accepted."""
    response, stored = await shared_api.post(api.path, api.body(text("sms", "a\\u0000b")))
    assert response.status_code == 202, response.text
    assert stored["messages"] == 1


BACKSLASH = b"\\"


@pytest.mark.parametrize(
    ("body", "holds"),
    [
        (b'"' + BACKSLASH + b'u0000"', True),
        (b'"' + BACKSLASH * 2 + b'u0000"', False),
        (b'"' + BACKSLASH * 3 + b'u0000"', True),
        (b'"' + BACKSLASH * 4 + b'u0000"', False),
        (b'["' + BACKSLASH * 2 + b'u0000","' + BACKSLASH + b'u0000"]', True),
        (b'{"' + BACKSLASH + b'u0000":1}', True),
        (b'"' + BACKSLASH + b'u00000"', True),
        (b'"u0000"', False),
    ],
)
async def test_nul_is_found_by_its_escape_not_by_its_text(body: bytes, holds: bool) -> None:
    """U+0000 is an escape after an even run of backslashes; after an odd one it is text."""
    assert validation.holds_nul(body) is holds


@pytest.mark.parametrize("escape", [rb"\ud800", rb"\udc00", rb"\ud800x", rb"\ud800\u0041"])
@pytest.mark.parametrize("api", APIS, ids=str)
async def test_a_lone_surrogate_is_refused_as_invalid_json(
    shared_api: SharedApi, api: Api, escape: bytes
) -> None:
    """A lone UTF-16 surrogate (no store can hold it) is a 400 and nothing is stored."""
    marker = "MARKER"
    body = json.dumps(api.body(text("sms", marker))).encode().replace(marker.encode(), escape)
    response, stored = await _post_raw(shared_api, api.path, body)
    problem = assert_problem(response, 400)
    assert problem["title"] == "Invalid JSON"
    assert not stored


async def test_an_idempotency_key_holding_nul_is_a_400(shared_api: SharedApi) -> None:
    """The Idempotency-Key is stored, so one holding U+0000 is a 400 naming it."""
    response, stored = await shared_api.post(
        "/v0.1/messages", text("sms", "hi"), headers={"Idempotency-Key": "key\x00"}
    )
    assert bad_names(response) == {"Idempotency-Key"}
    assert sum(stored.values()) == 0


def _request(content_length: bytes) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v0.1/messages",
        "headers": [(b"content-type", b"application/json"), (b"content-length", content_length)],
    }
    return Request(scope, receive)


async def test_a_content_length_of_other_digits_is_judged_by_the_bytes() -> None:
    """A Content-Length of "²" (a digit to isdigit(), not to int()) is not a 500."""
    assert await read_json_body(_request("²".encode()), 1024) == b"{}"


async def test_a_content_length_of_thousands_of_digits_is_a_413() -> None:
    """A Content-Length of 4,400 digits (more than int() reads) is too large, not a 500."""
    with pytest.raises(HTTPException) as raised:
        await read_json_body(_request(b"1" * 4400), 1024)
    assert raised.value.status_code == 413
