"""What a receiver gets from Messages v1: a v1 request with failover run by the engine on the
sandbox, its status webhooks in the v1 shape (signed, verified with vonage_jwt), no final
report, a message's own webhook URL, and inbound messages in the account's shape."""

from __future__ import annotations

import re
from typing import Any

from cascade.channels.base import InboundMessage
from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore
from tests.engine.harness import World, step, workflow
from tests.webhooks.conftest import MakeReceiver, delivering, dispatch, get
from tests.webhooks.receiver import verify

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
V1_STATUS_FIELDS = {"message_uuid", "to", "from", "timestamp", "status", "channel"}
V1_OPTIONAL_FIELDS = {"error", "usage", "client_ref", "workflow", "sms"}
OLYMPUS = "https://developer.nexmo.com/api-errors/messages-olympus"


def sms(to: str, **extra: Any) -> dict[str, Any]:
    """A v1 SMS to the sandbox recipient ``to``."""
    return {
        "channel": "sms",
        "message_type": "text",
        "to": to,
        "from": "Acme",
        "text": "Your code is 1234",
        **extra,
    }


async def send_v1(w: World, body: dict[str, Any]) -> dict[str, str]:
    """POST /v1/messages with a token issued on the fake clock; the 202's body."""
    now = int(w.clock.now())
    response = await w.http.post(
        "/v1/messages", json=body, headers=w.tenant.bearer(iat=now, exp=now + 900)
    )
    assert response.status_code == 202, response.text
    await w.settle()
    answer: dict[str, str] = response.json()
    return answer


async def test_failover_reports_each_message_in_the_v1_shape_and_no_final_report(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """WhatsApp undeliverable, then SMS rejected, then SMS delivered: every status webhook is
    v1 (flat addresses, channel, v1 error, usage, client_ref, the workflow it belongs to),
    verifies with vonage_jwt, and nothing else is sent."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await w.store.update_application(w.tenant.application.id, webhook_version="v1")
        body = {
            **sms("447700900004", client_ref="order-9"),
            "channel": "whatsapp",
            "from": "447700900100",
            "failover": [sms("447700900001"), sms("447700900000")],
        }
        answer = await send_v1(w, body)
        await w.advance(5)
        statuses = [request.json() for request in receiver.requests]
        done = await w.workflow(answer["workflow_id"])
        ids = [m.id for m in done.messages]
        assert ids[0] == answer["message_uuid"]
        assert [(s["message_uuid"], s["status"]) for s in statuses] == [
            (ids[0], "undeliverable"),
            (ids[1], "rejected"),
            (ids[2], "submitted"),
            (ids[2], "delivered"),
        ]
        for number, status in enumerate(statuses):
            assert V1_STATUS_FIELDS <= set(status) <= V1_STATUS_FIELDS | V1_OPTIONAL_FIELDS
            assert TIMESTAMP.match(status["timestamp"])
            assert status["workflow"] == {
                "id": answer["workflow_id"],
                "item_number": str(min(number, 2) + 1),
                "items_number": "3",
            }
        whatsapp, rejected, submitted, delivered = statuses
        assert whatsapp["channel"] == "whatsapp"
        assert whatsapp["to"] == "447700900004"
        assert whatsapp["from"] == "447700900100"
        assert whatsapp["client_ref"] == "order-9"
        assert whatsapp["error"]["type"] == f"{OLYMPUS}#1100"
        assert whatsapp["error"]["title"] == "1100"
        assert whatsapp["error"]["detail"] == "Communication failed"
        assert re.fullmatch(r"[0-9a-f]{32}", whatsapp["error"]["instance"])
        assert rejected["error"]["title"] == "1300"
        assert (rejected["channel"], rejected["to"], rejected["from"]) == (
            "sms",
            "447700900001",
            "Acme",
        )
        assert "client_ref" not in rejected
        assert "error" not in submitted
        assert submitted["usage"] == {"currency": "EUR", "price": "0.0333"}
        assert submitted["sms"] == {"count_total": "1"}
        assert delivered["status"] == "delivered"
        for request in receiver.requests:
            verify(request, w.tenant.account.signature_secret)
        view = await get(w, f"/v0.1/dispatch/{answer['workflow_id']}")
        assert view["status"] == "completed"
        assert [step["state"] for step in view["steps"]] == ["failed", "failed", "succeeded"]
        assert [e["event"] for e in view["timeline"]].count("failover") == 2


async def test_a_message_without_failover_has_no_workflow_object(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A single v1 message's webhooks name no workflow."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await w.store.update_application(w.tenant.application.id, webhook_version="v1")
        answer = await send_v1(w, sms("447700900000"))
        await w.advance(2)
        statuses = [request.json() for request in receiver.requests]
        assert [s["status"] for s in statuses] == ["submitted", "delivered"]
        assert all(s["message_uuid"] == answer["message_uuid"] for s in statuses)
        assert all("workflow" not in s for s in statuses)


async def test_a_messages_own_webhook_url_and_version_win(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """webhook_url sends that message's statuses there instead of the status URL, and
    webhook_version v1 gives the v1 shape under a v0.1 application."""
    account_url = await receivers()
    own = await receivers()
    async with delivering(sqlite_store, clock, status_url=account_url.url()) as w:
        await send_v1(w, sms("447700900002", webhook_url=own.url("/mine"), webhook_version="v1"))
        await send_v1(w, sms("447700900002"))
        await w.advance(2)
        assert [request.path for request in own.requests] == ["/mine", "/mine"]
        assert all(request.json()["to"] == "447700900002" for request in own.requests)
        # the other message follows its application: v0.1, to the account's status URL
        assert [request.json()["to"] for request in account_url.requests] == [
            {"type": "sms", "number": "447700900002"}
        ] * 2


async def test_inbound_is_v1_once_every_application_of_the_account_is(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """An inbound message goes to the account in the v0.1 shape while any application is
    v0.1, and in the v1 shape once all are v1."""
    inbound = await receivers()
    async with delivering(sqlite_store, clock) as w:
        await w.store.update_account(w.tenant.account.id, inbound_url=inbound.url("/in"))
        message = InboundMessage(
            provider="sandbox",
            channel="sms",
            to={"type": "sms", "number": "447700900500"},
            from_={"type": "sms", "number": "447700900123"},
            content={"type": "text", "text": "STOP"},
            at=clock.now(),
            extra={"num_messages": 2},
        )
        await w.engine.inbound(message)
        await w.store.update_application(w.tenant.application.id, webhook_version="v1")
        await w.engine.inbound(message)
        await w.settle()
        old, new = (request.json() for request in inbound.requests)
        assert old["message"]["content"] == {"type": "text", "text": "STOP"}
        assert set(new) == {
            "channel",
            "message_uuid",
            "to",
            "from",
            "timestamp",
            "message_type",
            "text",
            "sms",
            "usage",
        }
        assert (new["channel"], new["to"], new["from"]) == ("sms", "447700900500", "447700900123")
        assert (new["message_type"], new["text"]) == ("text", "STOP")
        assert new["sms"] == {"num_messages": "2"}
        for request in inbound.requests:
            verify(request, w.tenant.account.signature_secret)


async def test_a_dispatch_of_a_v1_application_reports_statuses_in_v1_and_its_final_report(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """The setting is the application's: a Dispatch it sends reports statuses in v1 (with the
    workflow object) and still ends with its one final report, which has no v1 shape."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await w.store.update_application(w.tenant.application.id, webhook_version="v1")
        dispatch_uuid = await dispatch(
            w, workflow(step("sms", "447700900001", expiry=60), step("sms", "447700900000"))
        )
        await w.advance(3)
        bodies = [request.json() for request in receiver.requests]
        statuses = [b for b in bodies if "message_uuid" in b]
        reports = [b for b in bodies if "dispatch_uuid" in b]
        assert [s["status"] for s in statuses] == ["rejected", "submitted", "delivered"]
        assert all(s["workflow"]["id"] == dispatch_uuid for s in statuses)
        assert len(reports) == 1
