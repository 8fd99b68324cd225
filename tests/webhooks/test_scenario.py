"""The README scenario end to end: a Dispatch sent to the API (Messenger, failing over to SMS)
produces at a real receiver every step's status webhooks and one final report, each verifiable
with vonage-jwt; a receiver that was down gets everything once it is back."""

from __future__ import annotations

import dataclasses
import time
import uuid

from cascade.clock import FakeClock
from cascade.domain.records import Application
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import RETRY_DELAYS
from tests.conftest import public_pem, rsa_key
from tests.engine.harness import step, workflow
from tests.webhooks.conftest import MakeReceiver, delivering, dispatch
from tests.webhooks.receiver import verify

#: the README's first failover: Messenger (…0003 never answers), SMS if unread within 15 s
README_WORKFLOW = {
    "template": "failover",
    "workflow": [
        {
            "to": {"type": "messenger", "id": "1234560003"},
            "from": {"type": "messenger", "id": "my-page"},
            "message": {"content": {"type": "text", "text": "Your code is 1234"}},
            "failover": {"expiry_time": 15, "condition_status": "read"},
        },
        {
            "to": {"type": "sms", "number": "447700900000"},
            "from": {"type": "sms", "number": "Acme"},
            "message": {"content": {"type": "text", "text": "Your code is 1234"}},
        },
    ],
}


async def test_a_dispatch_reports_each_step_and_one_final_report_to_the_receiver(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Messenger submitted, SMS submitted, SMS delivered, final report: in order, signed."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        dispatch_uuid = await dispatch(w, README_WORKFLOW)
        await w.advance(3600)
        done = await w.workflow(dispatch_uuid)
        messenger, sms = (m.id for m in done.messages)
        bodies = [r.json() for r in receiver.requests]
        assert [(b.get("message_uuid"), b.get("status")) for b in bodies] == [
            (messenger, "submitted"),
            (sms, "submitted"),
            (sms, "delivered"),
            (None, "completed"),
        ]
        assert bodies[-1]["dispatch_uuid"] == dispatch_uuid
        assert [m["message_uuid"] for m in bodies[-1]["_links"]["messages"]] == [messenger, sms]
        for request in receiver.requests:
            claims = verify(request, w.tenant.account.signature_secret)
            assert claims["api_key"] == w.tenant.account.api_key
            assert claims["application_id"] == w.tenant.application.id
        # the failover happened when the window closed, and the SMS went at once
        assert receiver.requests[1].at - receiver.requests[0].at == 15


async def test_a_receiver_down_for_a_while_gets_everything_once_it_is_back(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Refused for 12 minutes, then back: each webhook arrives once, at its next attempt."""
    receiver = await receivers(listen=False)
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        dispatch_uuid = await dispatch(w, README_WORKFLOW)
        await w.advance(720)
        hooks = await w.store.list_webhooks(workflow_id=dispatch_uuid)
        assert [h.kind for h in hooks] == ["message-status"] * 3 + ["final-report"]
        assert all(h.state == "pending" and h.attempts >= 2 for h in hooks)
        assert receiver.requests == []
        due = {h.id: h.next_attempt_at for h in hooks}
        await receiver.up()
        await w.advance(sum(RETRY_DELAYS) * 1.1)
        hooks = await w.store.list_webhooks(workflow_id=dispatch_uuid)
        assert all(h.state == "delivered" for h in hooks)
        assert len(receiver.requests) == len(hooks) == 4
        assert len({r.body for r in receiver.requests}) == 4
        assert sorted(r.at for r in receiver.requests) == sorted(
            at for at in due.values() if at is not None
        )
        assert sorted(h.delivered_at or 0 for h in hooks) == sorted(r.at for r in receiver.requests)
        for request in receiver.requests:
            verify(request, w.tenant.account.signature_secret)
        await w.advance(86400)
        assert len(receiver.requests) == 4


async def test_the_applications_status_url_wins_over_the_accounts(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """An application's status URL wins; an application without one uses the account's."""
    account_receiver = await receivers()
    app_receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=account_receiver.url()) as w:
        key = rsa_key()
        application = Application(
            id=str(uuid.uuid4()),
            account_id=w.tenant.account.id,
            name="with-url",
            public_key_pem=public_pem(key),
            status_url=app_receiver.url("/app-status"),
            inbound_url=None,
            created_at=time.time(),
        )
        await w.store.create_application(application)
        plain = w.tenant
        w.tenant = dataclasses.replace(plain, application=application, private_key=key)
        via_app = await dispatch(w, workflow(step("sms", "447700900000")))
        w.tenant = plain
        via_account = await dispatch(w, workflow(step("sms", "447700900000")))
        await w.advance(60)
        assert {r.json().get("dispatch_uuid") for r in app_receiver.requests} == {None, via_app}
        assert {r.json().get("dispatch_uuid") for r in account_receiver.requests} == {
            None,
            via_account,
        }
        assert len(app_receiver.requests) == len(account_receiver.requests) == 3
        assert {r.path for r in app_receiver.requests} == {"/app-status"}
        for request in app_receiver.requests:
            claims = verify(request, plain.account.signature_secret)
            assert claims["application_id"] == application.id
