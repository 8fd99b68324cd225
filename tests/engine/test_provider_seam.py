"""What the engine asks of a channel provider through the attributes ``ChannelProvider``
declares: whether it deduplicates a message sent to it again."""

from __future__ import annotations

import pytest

from cascade.channels.base import ChannelProvider, OutboundMessage, SendResult
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore
from tests.engine.harness import step, workflow, world


class Recording(ChannelProvider):
    """A provider that takes every message and remembers which it was handed."""

    name = "recording"
    ids_can_repeat = False

    def __init__(self, *, deduplicates: bool) -> None:
        self.deduplicates = deduplicates
        self.sent: list[str] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        """Take the message; its provider id is derived from Cascade's."""
        self.sent.append(message.message_id)
        return SendResult(f"r-{message.message_id}")


def test_a_provider_does_not_deduplicate_unless_it_says_so() -> None:
    """The declared default is False (the safe answer); the sandbox says True."""
    assert ChannelProvider.deduplicates is False
    assert SandboxProvider.deduplicates is True


@pytest.mark.parametrize(
    ("deduplicates", "sent", "outcome"),
    [
        # it recognises a resend: the engine simply sends again
        (True, 1, ("submitted", None)),
        # it would send twice: the interrupted attempt fails the step, nothing is resent
        (False, 0, ("undeliverable", 1330)),
    ],
)
async def test_a_send_whose_earlier_attempt_was_interrupted(
    sqlite_store: SqliteStore,
    clock: FakeClock,
    deduplicates: bool,
    sent: int,
    outcome: tuple[str, int | None],
) -> None:
    """A send job whose message already had an attempt begun (a crash mid-send) is sent again
    only to a provider that deduplicates."""
    provider = Recording(deduplicates=deduplicates)
    async with world(sqlite_store, clock, providers={"sms": provider}) as w:
        response = await w.http.post(
            "/v0.1/dispatch",
            json=workflow(step("sms", "447700900001")),
            headers=w.tenant.bearer(),
        )
        assert response.status_code == 202, response.text
        (message,) = (await w.workflow(response.json()["dispatch_uuid"])).messages
        await sqlite_store.begin_send(message.id, clock.now())  # the attempt a crash cut off
        await w.settle()
        (after,) = (await w.workflow(message.workflow_id)).messages
    assert len(provider.sent) == sent
    assert (after.status, after.error_code) == outcome
