"""At-least-once delivery, honestly: every attempt and replay of a webhook carries one delivery
id (``X-Cascade-Delivery-Id`` and the signed ``delivery_id`` claim), other webhooks other ids,
and a failed commit of an outcome is retried rather than leaving the webhook to be sent again.
(What a crash sends again, at most ``max_unrecorded`` per sender, is checked on every store in
``tests/contract/test_webhook_window.py``.)"""

from __future__ import annotations

from typing import Any

import pytest

from cascade.clock import FakeClock
from cascade.errors import StoreUnavailable
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import delivery_id
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
