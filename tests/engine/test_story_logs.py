"""Log lines that tell an operator what happened to each workflow: accepted, failed over (from
which step to which, and why), completed or failed, with ids and never a secret; retries at
debug."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore
from tests.engine.harness import step, workflow, world

TEXT = "Your code is 1234"


def _lines(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_a_failover_run_is_told_in_the_log(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Accepted (ids, account, channels, request id), the failover from step 1 to step 2
    with its reason, and the completion, each at info; no text or secret in any line."""
    with capture_logs() as logs:
        async with world(sqlite_store, clock) as w:
            workflow_id = await w.dispatch(
                workflow(
                    step("messenger", "1000003", expiry=15, condition="read", text=TEXT),
                    step("sms", "447700900000", text=TEXT),
                )
            )
            await w.advance(60)
            done = await w.workflow(workflow_id)
    messenger, sms = done.messages
    account = w.tenant.account

    [accepted] = _lines(logs, "workflow.accepted")
    assert accepted["log_level"] == "info"
    assert accepted["workflow"] == workflow_id
    assert accepted["surface"] == "dispatch"
    assert accepted["account"] == account.id
    assert accepted["channels"] == "messenger,sms"
    assert accepted["request_id"]
    [access] = [line for line in _lines(logs, "http.request") if line["method"] == "POST"]
    assert access["request_id"] == accepted["request_id"]

    [failover] = _lines(logs, "workflow.failover")
    assert failover["log_level"] == "info"
    assert failover["workflow"] == workflow_id
    assert (failover["from_step"], failover["to_step"]) == (1, 2)
    assert (failover["from_message"], failover["to_message"]) == (messenger.id, sms.id)
    assert failover["to_channel"] == "sms"
    assert failover["reason"] == "step 1 did not reach read within 15 s"

    [completed] = _lines(logs, "workflow.completed")
    assert completed["log_level"] == "info"
    assert completed["workflow"] == workflow_id
    assert completed["account"] == account.id
    assert completed["reason"] == "step 2 reached delivered"
    assert _lines(logs, "workflow.failed") == []

    everything = repr(logs)
    assert TEXT not in everything
    assert account.signature_secret not in everything
    assert w.tenant.api_secret not in everything


async def test_a_plain_message_that_fails_is_logged_as_failed_not_failed_over(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A rejected plain message logs message.accepted and message.failed with the provider's
    error, and no failover."""
    with capture_logs() as logs:
        async with world(sqlite_store, clock) as w:
            message_id = await w.dispatch(step("sms", "447700900001"), path="/v0.1/messages")
            await w.advance(10)
    [accepted] = _lines(logs, "message.accepted")
    assert accepted["message"] == message_id
    assert accepted["channel"] == "sms"
    assert accepted["account"] == w.tenant.account.id
    [failed] = _lines(logs, "message.failed")
    assert failed["message"] == message_id
    assert failed["reason"] == "rejected: 1300 Not part of the provider network"
    assert _lines(logs, "workflow.failover") == []
    assert _lines(logs, "message.completed") == []


async def test_retries_are_logged_at_debug_with_their_reason(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Each throttled send of a 0006 recipient is one debug line with its error and delay;
    the message's completion is the info line."""
    with capture_logs() as logs:
        async with world(sqlite_store, clock) as w:
            message_id = await w.dispatch(step("sms", "447700900006"), path="/v0.1/messages")
            await w.advance(60)
    retries = _lines(logs, "engine.send_retry")
    assert len(retries) == 2
    assert all(line["log_level"] == "debug" for line in retries)
    assert all(line["message"] == message_id and line["code"] == 1000 for line in retries)
    assert all(line["next_attempt_in"] > 0 for line in retries)
    [completed] = _lines(logs, "message.completed")
    assert completed["message"] == message_id
    assert completed["log_level"] == "info"
