"""Webhooks in a timeline: the status each one carried, and a pending one's attempts and next
attempt; and the log line of a dead letter."""

from __future__ import annotations

from datetime import datetime

from structlog.testing import capture_logs

from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore
from cascade.views import render_timeline, webhook_views
from tests.engine.harness import step, workflow
from tests.webhooks.conftest import MakeReceiver, delivering, dispatch, get
from tests.webhooks.receiver import Respond


def _moment(stamp: str) -> float:
    """The POSIX time of a view's ISO 8601 timestamp."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_each_webhook_shows_the_status_it_carried_and_a_pending_one_its_next_attempt(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Every webhook line names the status it reported; while the receiver is down each is
    pending with its attempts and next attempt, and once delivered it says delivered."""
    receiver = await receivers(listen=False)
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        workflow_id = await dispatch(w, workflow(step("sms", "447700900000")))
        await w.advance(30)
        body = await get(w, f"/v0.1/dispatch/{workflow_id}")
        hooks = body["webhooks"]
        assert [(h["kind"], h["reported_status"]) for h in hooks] == [
            ("message-status", "submitted"),
            ("message-status", "delivered"),
            ("final-report", "completed"),
        ]
        for hook in hooks:
            assert hook["state"] == "pending"
            assert len(hook["attempts"]) >= 2
            assert _moment(hook["next_attempt_at"]) > clock.now() - 1
        shown = render_timeline(await w.workflow(workflow_id), hooks)
        assert "status webhook (submitted)" in shown
        assert "final report (completed)" in shown
        assert "next attempt" in shown

        await receiver.up()
        await w.advance(3600)
        hooks = (await get(w, f"/v0.1/dispatch/{workflow_id}"))["webhooks"]
        assert [h["state"] for h in hooks] == ["delivered"] * 3
        assert all("next_attempt_at" not in h for h in hooks)
        shown = render_timeline(await w.workflow(workflow_id), hooks)
        assert "status webhook (delivered) ->" in shown
        assert shown.count(": delivered") >= 3
        # the same from the stored records, without the HTTP layer
        stored = await w.store.list_webhooks(workflow_id=workflow_id)
        views = webhook_views(stored, await w.store.webhook_attempts([h.id for h in stored]))
        assert [v["reported_status"] for v in views] == ["submitted", "delivered", "completed"]


async def test_a_dead_letter_is_logged_with_the_ids_it_is_about(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A webhook refused with a 400 is logged as a dead letter naming its webhook, workflow,
    message, kind and account, and not its URL (which may hold a token)."""
    receiver = await receivers(Respond(400))
    with capture_logs() as logs:
        async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
            workflow_id = await dispatch(w, workflow(step("sms", "447700900000")))
            await w.advance(30)
    dead = [entry for entry in logs if entry["event"] == "webhook.dead_letter"]
    assert [line["kind"] for line in dead] == ["message-status", "message-status", "final-report"]
    hooks = await sqlite_store.list_webhooks(workflow_id=workflow_id)
    for line, hook in zip(dead, hooks, strict=True):
        assert line["webhook"] == hook.id
        assert line["workflow"] == workflow_id
        assert line["message"] == hook.message_id
        assert line["account"] == w.tenant.account.id
        assert line["status"] == 400
    assert receiver.url() not in repr(dead)
