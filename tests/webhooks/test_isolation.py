"""One dead receiver never delays another's webhooks: the engine built as the service builds it
(runtime.build_engine), running its own job loop on the real clock."""

from __future__ import annotations

import asyncio
import time

from cascade.clock import FakeClock, SystemClock
from cascade.config import Settings
from cascade.domain.records import NewWebhook, WebhookKind
from cascade.runtime import build_engine
from cascade.store.sqlite import SqliteStore
from tests.conftest import make_tenant
from tests.webhooks.conftest import MakeReceiver, delivering
from tests.webhooks.receiver import Hang, Respond, verify

#: how late a webhook to the healthy receiver may arrive after it was queued (real seconds;
#: the dead receiver holds each attempt for the whole 1 s timeout)
BOUND = 0.4


async def test_a_hanging_receiver_does_not_delay_another_receivers_webhooks(
    sqlite_store: SqliteStore, receivers: MakeReceiver
) -> None:
    """With 40 webhooks stuck on a hanging receiver, a healthy one gets each within 400 ms."""
    clock = SystemClock()
    tenant = await make_tenant(sqlite_store)
    dead = await receivers(Hang())
    alive = await receivers()
    engine = build_engine(
        Settings(_env_file=None, webhook_timeout_seconds=1.0), sqlite_store, clock
    )
    await engine.start()

    def hook(url: str, body: bytes) -> NewWebhook:
        return NewWebhook(WebhookKind.STATUS, tenant.account.id, None, None, None, url, body)

    try:
        await sqlite_store.add_webhooks(
            [hook(dead.url(), b'{"dead":%d}' % i) for i in range(40)], clock.now()
        )
        engine.wake()
        await dead.wait_for(8)  # every connection to it is now held
        queued: dict[bytes, float] = {}
        for i in range(12):
            body = b'{"alive":%d}' % i
            await sqlite_store.add_webhooks(
                [hook(dead.url(), b'{"dead":%d}' % (100 + i)), hook(alive.url(), body)],
                clock.now(),
            )
            queued[body] = time.monotonic()
            engine.wake()
            await asyncio.sleep(0.03)
        await alive.wait_for(12, within=2.0)
        lateness = [request.real_at - queued[request.body] for request in alive.requests]
        assert max(lateness) < BOUND, lateness
        assert sorted(queued) == sorted(r.body for r in alive.requests)
        for request in alive.requests:
            verify(request, tenant.account.signature_secret)
        # the dead receiver never had more than its share of connections
        assert len(dead.requests) <= 8 * 2
    finally:
        await engine.stop()


async def test_a_slow_receiver_does_not_delay_another_receivers_webhooks(
    sqlite_store: SqliteStore, receivers: MakeReceiver
) -> None:
    """A receiver taking 200 ms per answer with a backlog of 100 does not hold up another."""
    clock = SystemClock()
    tenant = await make_tenant(sqlite_store)
    slow = await receivers(Respond(204, delay=0.2))
    alive = await receivers()
    engine = build_engine(
        Settings(_env_file=None, webhook_timeout_seconds=1.0), sqlite_store, clock
    )
    await engine.start()

    def hook(url: str, body: bytes) -> NewWebhook:
        return NewWebhook(WebhookKind.STATUS, tenant.account.id, None, None, None, url, body)

    try:
        await sqlite_store.add_webhooks(
            [hook(slow.url(), b'{"slow":%d}' % i) for i in range(100)], clock.now()
        )
        engine.wake()
        await slow.wait_for(16)  # it has answered a few: its pace is known
        queued: dict[bytes, float] = {}
        for i in range(10):
            body = b'{"alive":%d}' % i
            await sqlite_store.add_webhooks([hook(alive.url(), body)], clock.now())
            queued[body] = time.monotonic()
            engine.wake()
            await asyncio.sleep(0.03)
        await alive.wait_for(10, within=2.0)
        lateness = [request.real_at - queued[request.body] for request in alive.requests]
        assert max(lateness) < BOUND, lateness
        assert slow.peak_connections <= 8
    finally:
        await engine.stop()


async def test_a_fast_receiver_takes_a_burst_over_its_few_connections_at_once(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """60 webhooks to one quick receiver go in one pass over 8 connections, none stepping aside."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        created = clock.now()
        await w.store.add_webhooks(
            [
                NewWebhook(
                    WebhookKind.STATUS, w.tenant.account.id, None, None, None, None, b"%d" % i
                )
                for i in range(60)
            ],
            created,
        )
        await w.engine.drain()
        assert len(receiver.requests) == 60
        assert {r.at for r in receiver.requests} == {created}
        assert receiver.peak_connections <= 8
        hooks = await w.store.list_webhooks()
        assert {(h.state, h.attempts) for h in hooks} == {("delivered", 1)}
