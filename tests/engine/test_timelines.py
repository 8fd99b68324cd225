"""Timelines that tell what happened: retries with their reason and next attempt, a step
waiting on a channel it cannot reach, the status each webhook carried, wording that fits a
plain message; and lists that keep dispatches and plain messages apart (the webhooks' part is
in tests/webhooks/test_timeline.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cascade.channels.base import ChannelProvider, OutboundMessage, SendResult
from cascade.channels.sandbox import THROTTLED
from cascade.clock import FakeClock
from cascade.errors import ChannelUnavailable
from cascade.store.sqlite import SqliteStore
from cascade.views import render_timeline, workflow_view
from tests.engine.harness import World, step, workflow, world


def _moment(stamp: str) -> float:
    """The POSIX time of a view's ISO 8601 timestamp."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _get(w: World, path: str) -> dict[str, Any]:
    response = await w.http.get(path, headers=w.tenant.bearer())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _send_plain(w: World, to: str, channel: str = "sms") -> str:
    """POST a plain message; its message_uuid."""
    return await w.dispatch(step(channel, to), path="/v0.1/messages")


class Unreachable(ChannelProvider):
    """A provider whose SMSC cannot be reached: every send is a transient error."""

    name = "smpp:cascade@127.0.0.1:1"

    async def send(self, message: OutboundMessage) -> SendResult:
        """Refuse, as an SMPP connection that is not bound does."""
        raise ChannelUnavailable(
            "SMPP connection primary is not bound: bind failed: connection refused",
            retry_after=5.0,
            code=1100,
        )


async def test_sandbox_throttling_leaves_each_retry_in_the_timeline(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A 0006 recipient is throttled twice: the dispatch's timeline shows both retries, each
    with its error and when the send is tried next, then the delivery."""
    async with world(sqlite_store, clock) as w:
        workflow_id = await w.dispatch(workflow(step("sms", "447700900006")))
        await w.advance(60)
        body = await _get(w, f"/v0.1/dispatch/{workflow_id}")
        retries = [entry for entry in body["timeline"] if entry["event"] == "retry"]
        assert len(retries) == 2
        for entry in retries:
            assert entry["error"] == {"code": THROTTLED[0], "reason": THROTTLED[1]}
            assert entry["source"] == "sandbox"
            assert _moment(entry["next_attempt_at"]) > _moment(entry["timestamp"])
        assert body["steps"][0]["status"] == "delivered"
        shown = render_timeline(await w.workflow(workflow_id))
        assert f"retry error {THROTTLED[0]} {THROTTLED[1]} [sandbox]; next attempt" in shown


async def test_a_plain_message_read_shows_its_retries(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """GET /v0.1/messages/{uuid} of a throttled plain message lists its retries in its
    timeline."""
    async with world(sqlite_store, clock) as w:
        message_id = await _send_plain(w, "447700900006")
        await w.advance(60)
        body = await _get(w, f"/v0.1/messages/{message_id}")
        events = [entry["event"] for entry in body["timeline"]]
        assert events.count("retry") == 2
        assert events[0] == "accepted"
        assert events[-1] == "completed"


async def test_a_step_waiting_on_an_unreachable_channel_says_so(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """With the SMSC down, a running step's timeline shows why it is not sent and when it is
    tried next, rather than only "accepted" and "step_started"."""
    async with world(sqlite_store, clock, providers={"sms": Unreachable()}) as w:
        workflow_id = await w.dispatch(workflow(step("sms", "447700900000")))
        await w.advance(90)
        body = await _get(w, f"/v0.1/dispatch/{workflow_id}")
        assert body["status"] == "running"
        retries = [entry for entry in body["timeline"] if entry["event"] == "retry"]
        assert len(retries) >= 3
        last = retries[-1]
        assert "is not bound" in last["error"]["reason"]
        assert _moment(last["next_attempt_at"]) > clock.now() - 1
        shown = render_timeline(await w.workflow(workflow_id))
        assert "is not bound" in shown


async def test_a_plain_message_that_fails_does_not_claim_a_failover(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A rejected plain message's timeline says it failed, with no failover and no "step 1"
    in its reasons: there was nothing to fail over to."""
    async with world(sqlite_store, clock) as w:
        message_id = await _send_plain(w, "447700900001")
        await w.advance(10)
        message = await _get(w, f"/v0.1/messages/{message_id}")
        workflow = await w.workflow(message["workflow_uuid"])
        kinds = [event.kind for event in workflow.events]
        assert "failover" not in kinds
        assert kinds[-1] == "error"
        assert all("step 1" not in (event.reason or "") for event in workflow.events)
        assert "failover_reason" not in message
        shown = render_timeline(workflow)
        assert "failover" not in shown
        assert f"message {message_id}" in shown


async def test_a_plain_message_does_not_read_back_as_a_failover_template(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A plain message is not a dispatch: it is not in GET /v0.1/dispatch nor readable there,
    and its workflow view (``cascade show --json``) claims no template."""
    async with world(sqlite_store, clock) as w:
        dispatch_id = await w.dispatch(workflow(step("sms", "447700900000")))
        message_id = await _send_plain(w, "447700900000")
        await w.advance(10)
        listed = await _get(w, "/v0.1/dispatch")
        assert [x["dispatch_uuid"] for x in listed["_embedded"]["workflows"]] == [dispatch_id]
        messages = await _get(w, "/v0.1/messages")
        assert message_id in [m["message_uuid"] for m in messages["_embedded"]["messages"]]
        plain = await _get(w, f"/v0.1/messages/{message_id}")
        response = await w.http.get(
            f"/v0.1/dispatch/{plain['workflow_uuid']}", headers=w.tenant.bearer()
        )
        assert response.status_code == 404
        assert f"/v0.1/messages/{message_id}" in response.json()["detail"]
        view = workflow_view(await w.workflow(plain["workflow_uuid"]))
        assert "template" not in view
        assert view["message_uuid"] == message_id
        dispatch = await _get(w, f"/v0.1/dispatch/{dispatch_id}")
        assert dispatch["template"] == "failover"
