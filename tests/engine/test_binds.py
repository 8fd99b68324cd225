"""The engine publishes its SMPP bind states to the store only when they change."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.engine.binds import STOPPED, BindPublisher
from cascade.runtime import build_engine, start_bind_publisher, start_throughput_shares
from cascade.store.base import SmppBind
from cascade.store.sqlite import SqliteStore


async def test_a_state_is_written_when_it_changes_and_not_otherwise(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """The first look writes every connection; looks with nothing changed (submits in flight
    moving) write nothing; a lost bind and a new bind are each written once, with their time."""
    states: dict[str, dict[str, Any]] = {
        "a": {"bound": True, "last_error": None, "in_flight": 0},
        "b": {"bound": False, "last_error": "bind failed: refused", "in_flight": 0},
    }
    publisher = BindPublisher(sqlite_store, lambda: states, clock)
    assert await publisher.publish_changes() == 2
    states["a"]["in_flight"] = 7
    assert await publisher.publish_changes() == 0
    clock.advance(30)
    states["a"] = {"bound": False, "last_error": "connection lost: reset", "in_flight": 0}
    assert await publisher.publish_changes() == 1
    assert await publisher.publish_changes() == 0
    assert await sqlite_store.smpp_binds() == [
        SmppBind("a", False, "connection lost: reset", clock.now()),
        SmppBind("b", False, "bind failed: refused", clock.now() - 30),
    ]


async def test_when_the_engine_stops_its_connections_read_as_stopped(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Cancelling the publisher (the engine stopping) writes each connection it published as
    unbound with "the engine stopped", so no row keeps saying "bound" for a gone engine."""
    states = {"a": {"bound": True, "last_error": None}}
    publisher = BindPublisher(sqlite_store, lambda: states, clock)
    task = asyncio.ensure_future(publisher.run())
    for _ in range(100):
        if await sqlite_store.smpp_binds():
            break
        await asyncio.sleep(0.01)
    assert [b.bound for b in await sqlite_store.smpp_binds()] == [True]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await sqlite_store.smpp_binds() == [SmppBind("a", False, STOPPED, clock.now())]


async def test_an_engine_that_does_not_send_publishes_no_binds_and_takes_no_share(
    sqlite_store: SqliteStore, clock: FakeClock, tmp_path: Path
) -> None:
    """Serve's webhooks process (an engine without send jobs) holds the configured SMPP
    connections unbound: it neither publishes them (which would write "unbound" over the
    sending engine's binds) nor shares their throughput; an engine that sends does both."""
    config = tmp_path / "cascade.toml"
    config.write_text(
        '[smpp]\n[[smpp.connections]]\nname = "sink"\nhost = "127.0.0.1"\n'
        'system_id = "cascade"\npassword = "secret"\nthroughput = 10\n'
    )
    for jobs, tasks in (("webhook", set()), ("all", {"smpp-binds", "smpp-shares"})):
        settings = Settings(
            database_url=f"sqlite:///{sqlite_store.path}", config_file=config, engine_jobs=jobs
        )
        engine = build_engine(settings, sqlite_store, clock)
        start_throughput_shares(settings, sqlite_store, engine)
        start_bind_publisher(sqlite_store, engine)
        assert set(engine.supervisor.alive()) == tasks
        await engine.supervisor.stop()
