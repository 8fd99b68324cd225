"""The window between a webhook's POST and the commit of its outcome, on every store: a sender
POSTs at most ``max_unrecorded`` webhooks whose outcome is not committed, so a crash sends at
most that many again, each with the delivery id of its first delivery."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from cascade.clock import FakeClock
from cascade.domain.records import NewWebhook, WebhookKind
from cascade.store.base import Store
from cascade.webhooks.delivery import DeliverySettings, delivery_id
from tests.webhooks.conftest import delivering, restart
from tests.webhooks.receiver import Receiver, Respond


class _Held:
    """Stands in for a store's record_webhook_attempt: every call waits, as commits would
    that the process died before making."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        await asyncio.Event().wait()


async def test_a_crash_sends_again_at_most_max_unrecorded_webhooks_each_with_its_id(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no outcome committed, a sender POSTs max_unrecorded webhooks and no more (the
    rest step aside); after the crash a new engine sends exactly those again, same ids."""
    clock = FakeClock(time.time() - 3 * 86400)  # vonage_jwt accepts iat days old, not ahead
    receiver = await Receiver(clock, default=Respond(204)).up()
    settings = DeliverySettings(timeout=5.0, max_unrecorded=5, queue_wait=0.02)
    count = 40
    try:
        async with delivering(store, clock, settings, status_url=receiver.url()) as w:
            await store.add_webhooks(
                [
                    NewWebhook(
                        WebhookKind.STATUS, w.tenant.account.id, None, None, None, None, b"{}"
                    )
                    for _ in range(count)
                ],
                clock.now(),
            )
            held = _Held()
            deferred = 0
            defer_job = store.defer_job

            async def counted_defer(job_id: int, run_at: float) -> None:
                nonlocal deferred
                deferred += 1
                await defer_job(job_id, run_at)

            monkeypatch.setattr(store, "record_webhook_attempt", held)
            monkeypatch.setattr(store, "defer_job", counted_defer)
            running = asyncio.create_task(w.engine.drain())
            # every claimed webhook either POSTed and waits for its commit, or stepped aside
            until = time.monotonic() + 10
            while held.calls + deferred < count:
                assert time.monotonic() < until, (held.calls, deferred)
                await asyncio.sleep(0.01)
            running.cancel()  # the crash: none of the held outcomes is committed
            with pytest.raises(asyncio.CancelledError):
                await running
            assert held.calls == len(receiver.requests) == 5
            sent_before = [r.headers["x-cascade-delivery-id"] for r in receiver.requests]

            monkeypatch.undo()
            await restart(w, settings)
            await w.advance(w.engine.settings.lease + 1)  # the dead engine's claims run out
            hooks = await store.list_webhooks(limit=1000)
            for _ in range(20):  # on a busy machine a few step aside (queue_wait) and come back
                if all(hook.state == "delivered" for hook in hooks):
                    break
                await w.advance(1)
                hooks = await store.list_webhooks(limit=1000)
            assert [hook.state for hook in hooks] == ["delivered"] * count
            ids = Counter(r.headers["x-cascade-delivery-id"] for r in receiver.requests)
            assert set(ids) == {delivery_id(hook.id, hook.body) for hook in hooks}
            assert {id_ for id_, n in ids.items() if n > 1} == set(sent_before)
            assert set(ids.values()) <= {1, 2}
    finally:
        await receiver.down()
