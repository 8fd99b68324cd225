"""Start-up with linked channels: no key is fine until links exist; links that the key cannot
open stop serve and the worker from starting, with an error naming CASCADE_CHANNEL_KEY."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from cascade.config import Settings
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ConfigError, SealError
from cascade.runtime import build_app, run_worker
from cascade.sealing import Sealer
from cascade.service import open_store
from tests.contract.factories import account

KEY = Sealer.generate_key()


def _settings(database: Path, key: str | None) -> Settings:
    """Settings on this SQLite file with this channel key (None: unset), the engine off."""
    return Settings(
        database_url=f"sqlite:///{database}",
        channel_key=None if key is None else SecretStr(key),
        run_worker=False,
        credentials_file=database.parent / "credentials",
    )


async def _start(
    settings: Settings, sent: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Drive the app's lifespan (start, then stop if it started); the messages it sent (to
    ``sent`` as they go: a failed start raises its error after sending one)."""
    app = build_app(settings)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = [] if sent is None else sent

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


async def _link_one(database: Path) -> None:
    """Store one Messenger link sealed with KEY (and the account it belongs to)."""
    store = open_store(f"sqlite:///{database}", _settings(database, KEY))
    await store.open()
    try:
        owner = account()
        await store.create_account(owner)
        await store.add_channel_link(
            ChannelLink(
                str(uuid.uuid4()),
                owner.id,
                LinkedChannel.MESSENGER,
                "1234567890",
                {"page_access_token": "t", "app_secret": "s"},
                0.0,
            )
        )
    finally:
        await store.close()


async def test_without_a_key_or_links_it_starts_and_says_linking_is_off(tmp_path: Path) -> None:
    """No key and no links: start-up completes and logs once that channel links are off."""
    with capture_logs() as logs:
        sent = await _start(_settings(tmp_path / "x.db", None))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    off = [entry for entry in logs if entry["event"] == "cascade.channel_links_off"]
    assert len(off) == 1
    assert off[0]["log_level"] == "info"
    assert "CASCADE_CHANNEL_KEY" in off[0]["reason"]


async def test_with_a_key_that_opens_every_link_it_starts(tmp_path: Path) -> None:
    """The key the links were sealed with: start-up completes and counts them, the key in
    no log line."""
    database = tmp_path / "x.db"
    await _link_one(database)
    with capture_logs() as logs:
        sent = await _start(_settings(database, KEY))
    assert sent[0]["type"] == "lifespan.startup.complete"
    assert {"event": "cascade.channel_links", "links": 1, "log_level": "info"} in logs
    assert KEY not in repr(logs)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, "channel links are stored but CASCADE_CHANNEL_KEY is not set"),
        (Sealer.generate_key(), "do not open with any of the 1 key(s) in CASCADE_CHANNEL_KEY"),
    ],
    ids=["no-key", "wrong-key"],
)
async def test_links_the_key_cannot_open_stop_serve_starting(
    tmp_path: Path, key: str | None, expected: str
) -> None:
    """Links stored and no key, or another key: start-up fails with an error naming the
    setting, and the API never answers."""
    database = tmp_path / "x.db"
    await _link_one(database)
    sent: list[dict[str, Any]] = []
    with pytest.raises(ConfigError, match=re.escape(expected)):
        await _start(_settings(database, key), sent)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert expected in sent[0]["message"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and structlog back as they were (run_worker configures them)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("key", [None, Sealer.generate_key()], ids=["no-key", "wrong-key"])
def test_links_the_key_cannot_open_stop_the_worker_starting(
    tmp_path: Path, key: str | None
) -> None:
    """``cascade worker`` refuses to start the same way, before its engine runs."""
    database = tmp_path / "x.db"
    asyncio.run(_link_one(database))
    with pytest.raises(ConfigError, match="CASCADE_CHANNEL_KEY") as raised:
        asyncio.run(run_worker(_settings(database, key)))
    assert isinstance(raised.value, SealError) is (key is not None)
