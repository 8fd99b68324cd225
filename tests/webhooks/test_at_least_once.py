"""At-least-once delivery, honestly: every attempt and replay of a webhook carries one delivery
id (``X-Cascade-Delivery-Id`` and the signed ``delivery_id`` claim), other webhooks other ids,
and what a crash can send again is bounded by ``max_unrecorded`` per sender."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from cascade.clock import FakeClock
from cascade.domain.records import NewWebhook
from cascade.errors import StoreUnavailable
from cascade.store.sqlite import SqliteStore
from cascade.webhooks import payloads
from cascade.webhooks.delivery import DeliverySettings, delivery_id
from tests.engine.harness import World, step, workflow
from tests.webhooks.conftest import MakeReceiver, delivering, dispatch, queue, restart
from tests.webhooks.receiver import Respond, verify


def _ids(w: World, requests: list[Any]) -> list[str]:
    """The delivery id of each request, checked against its signed claim."""
    ids = []
    for request in requests:
        header = request.headers["x-cascade-delivery-id"]
        assert verify(request, w.tenant.account.signature_secret)["delivery_id"] == header
        ids.append(header)
    return ids


async def test_every_retry_restart_and_replay_of_a_webhook_carries_one_delivery_id(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A 500, a restart, a retry, a 410 dead letter, a replay: five POSTs, one delivery id."""
    receiver = await receivers()
    receiver.then(Respond(500), Respond(503), Respond(410), Respond(500))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        await restart(w)
        await w.advance(20)  # the retries after 5 and 10 s: 503, then 410 (dead)
        hook = await w.store.get_webhook(hook_id)
        assert hook is not None
        assert hook.state == "dead"
        assert await w.store.replay_webhooks([hook_id], clock.now()) == 1
        await w.settle()  # the replay: 500
        await w.advance(6)  # its retry: 204
        hook = await w.store.get_webhook(hook_id)
        assert hook is not None
        assert hook.state == "delivered"
        ids = _ids(w, receiver.requests)
        assert len(ids) == 5
        assert set(ids) == {delivery_id(hook_id, hook.body)}


async def test_different_webhooks_have_different_delivery_ids_even_with_the_same_body(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A dispatch's three webhooks, and two webhooks with identical bodies: five ids."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await dispatch(w, workflow(step("sms", "447700900000")))
        await w.advance(60)
        first = await queue(w, b'{"same":"body"}')
        second = await queue(w, b'{"same":"body"}')
        ids = _ids(w, receiver.requests)
        assert len(ids) == len(set(ids)) == 5
        assert delivery_id(first, b'{"same":"body"}') != delivery_id(second, b'{"same":"body"}')


class _Held:
    """Stands in for a store's record_webhook_attempt: every call waits until ``release``,
    as commits would if the process died before they were made."""

    def __init__(self) -> None:
        self.calls = 0
        self.released = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        await self.released.wait()


async def test_a_crash_sends_again_at_most_max_unrecorded_webhooks_each_with_its_id(
    sqlite_store: SqliteStore,
    clock: FakeClock,
    receivers: MakeReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no outcome committed, a sender POSTs max_unrecorded webhooks and no more (the
    rest step aside); after the crash a new engine sends exactly those again, same ids."""
    receiver = await receivers()
    settings = DeliverySettings(timeout=0.3, max_unrecorded=5, queue_wait=0.02)
    count = 40
    async with delivering(sqlite_store, clock, settings, status_url=receiver.url()) as w:
        await w.store.add_webhooks(
            [
                NewWebhook(payloads.STATUS, w.tenant.account.id, None, None, None, None, b"{}")
                for _ in range(count)
            ],
            clock.now(),
        )
        held = _Held()
        deferred = 0
        defer_job = w.store.defer_job

        async def counted_defer(job_id: int, run_at: float) -> None:
            nonlocal deferred
            deferred += 1
            await defer_job(job_id, run_at)

        monkeypatch.setattr(w.store, "record_webhook_attempt", held)
        monkeypatch.setattr(w.store, "defer_job", counted_defer)
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
        sent_before = _ids(w, receiver.requests)

        monkeypatch.undo()
        await restart(w, settings)
        await w.advance(w.engine.settings.lease + 1)  # the dead engine's claims run out
        hooks = await w.store.list_webhooks(limit=1000)
        assert [hook.state for hook in hooks] == ["delivered"] * count
        ids = Counter(_ids(w, receiver.requests))
        assert set(ids) == {delivery_id(hook.id, hook.body) for hook in hooks}
        repeated = {id_ for id_, n in ids.items() if n > 1}
        assert repeated == set(sent_before)
        assert set(ids.values()) <= {1, 2}


async def test_an_outcome_the_store_fails_to_commit_is_retried_not_sent_again(
    sqlite_store: SqliteStore,
    clock: FakeClock,
    receivers: MakeReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two failed commits of a 204's outcome are retried: delivered, POSTed once, even after
    the lease has run out."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        record = w.store.record_webhook_attempt
        failures = 0

        async def flaky(*args: Any, **kwargs: Any) -> None:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise StoreUnavailable("the database is restarting")
            await record(*args, **kwargs)

        monkeypatch.setattr(w.store, "record_webhook_attempt", flaky)
        hook_id = await queue(w)
        await w.advance(w.engine.settings.lease + 60)
        hook = await w.store.get_webhook(hook_id)
        assert hook is not None
        assert (hook.state, hook.attempts) == ("delivered", 1)
        assert failures == 2
        assert len(receiver.requests) == 1
