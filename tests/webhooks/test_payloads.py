"""What a receiver gets from a Dispatch: v0.1 message-status bodies with the workflow link,
exactly one final report per dispatch, and the attempts shown by GET /v0.1/dispatch/{uuid}."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cascade.channels.base import InboundMessage
from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.payloads import timestamp
from tests.engine.harness import step, workflow
from tests.webhooks.conftest import MakeReceiver, delivering, dispatch, get
from tests.webhooks.receiver import Request, Respond, verify

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STATUS_FIELDS = {"message_uuid", "to", "from", "timestamp", "status"}
OPTIONAL_STATUS_FIELDS = {"error", "usage", "client_ref", "_links"}


def _split(requests: list[Request]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(message statuses, final reports) among the bodies received."""
    bodies = [r.json() for r in requests]
    return (
        [b for b in bodies if "message_uuid" in b],
        [b for b in bodies if "dispatch_uuid" in b],
    )


def _with_ref(body: dict[str, Any], client_ref: str) -> dict[str, Any]:
    return {**body, "client_ref": client_ref}


async def test_message_status_webhooks_have_the_v01_fields_and_the_dispatch_link(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Statuses carry the v0.1 fields, client_ref when given and _links.workflow; no more."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        first = _with_ref(step("messenger", "1000003", expiry=600, condition="read"), "order-7")
        second = step("sms", "447700900000")
        dispatch_uuid = await dispatch(w, workflow(first, second))
        await w.advance(700)
        statuses, reports = _split(receiver.requests)
        done = await w.workflow(dispatch_uuid)
        ids = [m.id for m in done.messages]
        assert [(s["message_uuid"], s["status"]) for s in statuses] == [
            (ids[0], "submitted"),
            (ids[1], "submitted"),
            (ids[1], "delivered"),
        ]
        for status in statuses:
            assert STATUS_FIELDS <= set(status) <= STATUS_FIELDS | OPTIONAL_STATUS_FIELDS
            assert TIMESTAMP.match(status["timestamp"])
            assert status["_links"] == {
                "workflow": {
                    "dispatch_uuid": dispatch_uuid,
                    "href": f"/v0.1/dispatch/{dispatch_uuid}",
                }
            }
            assert set(status["usage"]) <= {"currency", "price", "segments"}
            assert status["usage"]["currency"] == "EUR"
            assert isinstance(status["usage"]["price"], str)
            assert "error" not in status
        messenger, sms, _ = statuses
        assert messenger["to"] == first["to"]
        assert messenger["from"] == first["from"]
        assert messenger["client_ref"] == "order-7"
        assert sms["to"] == {"type": "sms", "number": "447700900000"}
        assert sms["from"] == second["from"]
        assert "client_ref" not in sms
        assert sms["usage"] == {"currency": "EUR", "price": "0.0333", "segments": 1}
        assert len(reports) == 1
        for request in receiver.requests:
            verify(request, w.tenant.account.signature_secret)


async def test_a_rejected_step_reports_its_error(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A rejected status carries error{code, reason}; the workflow fails over to SMS."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await dispatch(
            w,
            workflow(
                step("whatsapp", "447700900001", expiry=600),
                step("sms", "447700900000"),
            ),
        )
        await w.advance(700)
        statuses, reports = _split(receiver.requests)
        rejected = [s for s in statuses if s["status"] == "rejected"]
        assert len(rejected) == 1
        assert rejected[0]["error"] == {"code": 1300, "reason": "Not part of the provider network"}
        assert reports[0]["status"] == "completed"


async def test_exactly_one_final_report_per_dispatch_lists_its_messages(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Completed, failed-over and error dispatches: one report each, listing their steps."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        completed = await dispatch(w, workflow(step("sms", "447700900000")))
        failed_over = await dispatch(
            w,
            workflow(
                step("messenger", "1000003", expiry=600, condition="read"),
                step("sms", "447700900002"),
            ),
        )
        errored = await dispatch(w, workflow(step("sms", "447700900004")))
        await w.advance(80 * 3600)  # past the report horizon of any step
        _, reports = _split(receiver.requests)
        by_id = {r["dispatch_uuid"]: r for r in reports}
        assert len(reports) == len(by_id) == 3
        assert set(by_id) == {completed, failed_over, errored}
        assert by_id[completed]["status"] == "completed"
        assert by_id[failed_over]["status"] == "completed"
        assert by_id[errored]["status"] == "error"
        for dispatch_uuid, report in by_id.items():
            stored = await w.workflow(dispatch_uuid)
            assert set(report) == {
                "dispatch_uuid",
                "template",
                "status",
                "timestamp",
                "usage",
                "_links",
            }
            assert report["template"] == "failover"
            assert TIMESTAMP.match(report["timestamp"])
            links = report["_links"]["messages"]
            assert [link["message_uuid"] for link in links] == [m.id for m in stored.messages]
            for link, message in zip(links, stored.messages, strict=True):
                assert link["channel"] == message.channel
                assert link["status"] == message.status
                assert link["href"] == f"/v0.1/messages/{message.id}"
                if message.price is not None:
                    segments = {"segments": 1} if message.channel == "sms" else {}
                    assert link["usage"] == {"currency": "EUR", "price": message.price, **segments}
        assert by_id[failed_over]["usage"] == {"price": "0.0333", "currency": "EUR"}
        assert [link["status"] for link in by_id[failed_over]["_links"]["messages"]] == [
            "submitted",
            "delivered",
        ]


async def test_the_dispatch_view_lists_every_webhook_attempt_with_its_result(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """GET /v0.1/dispatch/{uuid} shows each webhook's state and every attempt's result."""
    receiver = await receivers()
    receiver.then(Respond(500), Respond(503))  # the first two requests fail
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        dispatch_uuid = await dispatch(w, workflow(step("sms", "447700900000")))
        await w.advance(60)
        view = await get(w, f"/v0.1/dispatch/{dispatch_uuid}")
        hooks = view["webhooks"]
        assert [h["kind"] for h in hooks] == ["message-status", "message-status", "final-report"]
        assert all(h["state"] == "delivered" for h in hooks)
        assert all(h["url"] == receiver.url() for h in hooks)
        codes = [[a["status_code"] for a in h["attempts"]] for h in hooks]
        assert codes[0] == [500, 204]  # "submitted" went first, alone
        assert sorted(codes[1:]) == [[204], [503, 204]]
        for hook in hooks:
            times = [a["timestamp"] for a in hook["attempts"]]
            assert times == sorted(times)
            assert all(a["duration_ms"] >= 0 for a in hook["attempts"])
        total = sum(len(h["attempts"]) for h in hooks)
        assert total == len(receiver.requests) == 5


async def test_the_dispatch_view_shows_dead_letters_and_connection_errors(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A refused connection shows its error; a 410 shows a dead letter."""
    receiver = await receivers(Respond(410), listen=False)
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        dispatch_uuid = await dispatch(w, workflow(step("sms", "447700900001")))
        view = await get(w, f"/v0.1/dispatch/{dispatch_uuid}")
        attempts = [a for h in view["webhooks"] for a in h["attempts"]]
        assert attempts
        assert all("connection failed" in a["error"] for a in attempts)
        assert all("status_code" not in a for a in attempts)
        await receiver.up()
        await w.advance(10)
        view = await get(w, f"/v0.1/dispatch/{dispatch_uuid}")
        for hook in view["webhooks"]:
            assert hook["state"] == "dead"
            assert hook["attempts"][-1]["status_code"] == 410
            assert hook["attempts"][-1]["error"] == "HTTP 410"


async def test_an_inbound_sms_goes_signed_to_the_inbound_url_in_the_v01_shape(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """An MO SMS reaches the account's inbound URL (not the status URL) as a v0.1 inbound,
    and is kept by the uuid it carried."""
    status = await receivers()
    inbound = await receivers()
    async with delivering(sqlite_store, clock, status_url=status.url()) as w:
        w.tenant.account = await w.store.update_account(
            w.tenant.account.id, inbound_url=inbound.url("/inbound")
        )
        await w.engine.inbound(
            InboundMessage(
                provider="sandbox",
                channel="sms",
                to={"type": "sms", "number": "447700900500"},
                from_={"type": "sms", "number": "447700900123"},
                content={"type": "text", "text": "STOP"},
                at=clock.now(),
                extra={"num_messages": 2},
            )
        )
        await w.settle()
        assert status.requests == []
        (request,) = inbound.requests
        assert request.path == "/inbound"
        claims = verify(request, w.tenant.account.signature_secret)
        assert "application_id" not in claims
        body = request.json()
        assert set(body) == {"message_uuid", "to", "from", "timestamp", "message", "usage"}
        assert body["to"] == {"type": "sms", "number": "447700900500"}
        assert body["from"] == {"type": "sms", "number": "447700900123"}
        assert TIMESTAMP.match(body["timestamp"])
        assert body["message"] == {
            "content": {"type": "text", "text": "STOP"},
            "sms": {"num_messages": "2"},
        }
        assert body["usage"] == {"currency": "EUR", "price": "0.0000"}
        # kept by the uuid it carried, so a request naming it finds what it is
        found = await w.store.find_inbound_message(w.tenant.account.id, body["message_uuid"])
        assert found is not None
        assert (found.channel, found.to, found.ref) == ("sms", "447700900500", None)


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_a_timestamp_is_the_datetime_of_the_moment_cut_to_the_millisecond(at: float) -> None:
    """timestamp() writes what datetime.fromtimestamp makes of the moment (its rounding to the
    microsecond included), cut to the millisecond, for any moment up to 2100."""
    moment = datetime.fromtimestamp(at, tz=UTC)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert timestamp(at) == expected


def test_a_timestamp_rounding_up_to_the_next_second_carries() -> None:
    """A moment a fraction of a microsecond before a whole second is that second."""
    assert timestamp(1_577_887_199.9999993) == "2020-01-01T13:59:59.999Z"
    assert timestamp(1_577_887_199.9999995) == "2020-01-01T14:00:00.000Z"
    assert TIMESTAMP.match(timestamp(0.0))


def test_a_timestamp_before_1970_borrows_from_the_second_before() -> None:
    """A moment before the epoch (a negative fraction) is written as datetime writes it."""
    assert timestamp(-1.5) == "1969-12-31T23:59:58.500Z"
    assert timestamp(-0.0004) == "1969-12-31T23:59:59.999Z"
