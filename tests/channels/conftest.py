"""Fixtures for channel tests: the loopback SMSC and SMPP providers bound to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from cascade.channels.smpp import SmppProvider
from cascade.channels.smpp.config import SmppSettings
from tests.channels.support import RecordingSink
from tests.smsc import LoopbackSmsc

#: short delays so that the tests stay fast
FAST = {
    "response_timeout": 1.0,
    "connect_timeout": 1.0,
    "reconnect_min_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "throttle_min_delay": 0.05,
    "throttle_max_delay": 0.2,
}

ProviderFactory = Callable[..., Awaitable[SmppProvider]]


@pytest.fixture
async def smsc() -> AsyncIterator[LoopbackSmsc]:
    """A test SMSC on a free loopback port, stopped after the test."""
    server = LoopbackSmsc()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def sink() -> RecordingSink:
    """A sink recording receipts and inbound messages."""
    return RecordingSink()


def connection(smsc: LoopbackSmsc, **overrides: Any) -> dict[str, Any]:
    """Connection settings for ``smsc`` with fast timings."""
    return {
        "name": "loopback",
        "host": smsc.host,
        "port": smsc.port,
        "system_id": "cascade",
        "password": "secret",
        **FAST,
        **overrides,
    }


@pytest.fixture
async def make_provider(smsc: LoopbackSmsc, sink: RecordingSink) -> AsyncIterator[ProviderFactory]:
    """Start SMPP providers on ``smsc`` (one connection each unless given a list)."""
    started: list[SmppProvider] = []

    async def make(*connections: dict[str, Any], **overrides: Any) -> SmppProvider:
        settings = SmppSettings.from_mapping(
            {"connections": list(connections) or [connection(smsc, **overrides)]}
        )
        provider = SmppProvider(settings)
        await provider.start(sink)
        started.append(provider)
        return provider

    yield make
    for provider in started:
        await provider.stop()


@pytest.fixture
async def provider(make_provider: ProviderFactory) -> SmppProvider:
    """An SMPP provider bound to the test SMSC."""
    started = await make_provider()
    assert await started.ready(2.0)
    return started
