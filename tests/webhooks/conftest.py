"""Fixtures for webhook delivery tests: real receivers on 127.0.0.1, and the World harness with
the real WebhookSender as the engine's ``webhook`` handler.

The fake clock starts three days in the past, so a test can move it a day or more forward and
every token it signs still has an ``iat`` that ``vonage_jwt`` (which checks ``iat`` against the
real time) accepts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from cascade.clock import FakeClock
from cascade.domain.records import NewWebhook, WebhookKind
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.store.base import Store
from cascade.webhooks.delivery import DeliverySettings, WebhookSender
from tests.engine.harness import World, world
from tests.webhooks.receiver import Action, Receiver, Respond

#: short enough that a hanging receiver costs a test little real time
FAST = DeliverySettings(timeout=0.3)

MakeReceiver = Callable[..., Awaitable[Receiver]]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The HTTP client's tests run on asyncio's loop and on uvloop (the service's, whose
    transports differ); the others on asyncio's."""
    if item.path.name == "test_http.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock three days behind the real time (see the module docstring)."""
    return FakeClock(time.time() - 3 * 86400)


@pytest.fixture
async def receivers(clock: FakeClock) -> AsyncIterator[MakeReceiver]:
    """Makes listening receivers (``default`` answers unscripted requests); stops them all."""
    made: list[Receiver] = []

    async def make(default: Action | None = None, *, listen: bool = True) -> Receiver:
        receiver = Receiver(clock, default=default or Respond(204))
        made.append(receiver)
        if listen:
            await receiver.up()
        return receiver

    yield make
    for receiver in made:
        await receiver.down()


def sender(store: Store, clock: FakeClock, settings: DeliverySettings = FAST) -> WebhookSender:
    """A real WebhookSender, for an engine's job kinds as build_engine gives it."""
    return WebhookSender(store, clock, settings)


@asynccontextmanager
async def delivering(
    store: Store,
    clock: FakeClock,
    settings: DeliverySettings = FAST,
    *,
    status_url: str | None = None,
    **engine_settings: Any,
) -> AsyncIterator[World]:
    """A World whose engine delivers webhooks, with the account's status URL set."""
    async with world(
        store, clock, job_kinds=[sender(store, clock, settings)], **engine_settings
    ) as w:
        if status_url is not None:
            account = await store.update_account(w.tenant.account.id, status_url=status_url)
            w.tenant.account = account
        yield w


async def restart(w: World, settings: DeliverySettings = FAST) -> None:
    """Stop the engine (closing its sender) and put a new engine and sender over the same
    store in its place, as a restarted process would have."""
    await w.engine.stop()
    engine = Engine(
        w.store,
        Providers(w.sandbox),
        w.clock,
        EngineSettings(**_engine_settings(w.engine)),
        job_kinds=[sender(w.store, w.clock, settings)],
    )
    await engine.start(run_loop=False)
    w.engine = engine


def _engine_settings(engine: Engine) -> dict[str, Any]:
    settings = engine.settings
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


async def queue(w: World, body: bytes = b'{"hello":"world"}', *, url: str | None = None) -> int:
    """Queue one status webhook of the tenant (to the account's status URL unless ``url``
    names one), run what is due, and return its id."""
    before = {hook.id for hook in await w.store.list_webhooks(limit=100_000)}
    await w.store.add_webhooks(
        [
            NewWebhook(
                kind=WebhookKind.STATUS,
                account_id=w.tenant.account.id,
                application_id=w.tenant.application.id,
                workflow_id=None,
                message_id=None,
                url=url,
                body=body,
            )
        ],
        w.clock.now(),
    )
    after = await w.store.list_webhooks(limit=100_000)
    (new,) = [hook.id for hook in after if hook.id not in before]
    await w.settle()
    return new


async def dispatch(w: World, body: dict[str, Any]) -> str:
    """POST a Dispatch workflow with a token issued on the fake clock; its dispatch_uuid."""
    now = int(w.clock.now())
    response = await w.http.post(
        "/v0.1/dispatch", json=body, headers=w.tenant.bearer(iat=now, exp=now + 900)
    )
    assert response.status_code == 202, response.text
    await w.settle()
    return str(response.json()["dispatch_uuid"])


async def get(w: World, path: str) -> Any:
    """GET a read endpoint with a token issued on the fake clock; the JSON answer."""
    now = int(w.clock.now())
    response = await w.http.get(path, headers=w.tenant.bearer(iat=now, exp=now + 900))
    assert response.status_code == 200, response.text
    return response.json()
