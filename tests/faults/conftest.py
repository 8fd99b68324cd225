"""The fault tests use the contract suite's PostgreSQL fixtures (a fresh schema per test) and a
proxy in front of that PostgreSQL that can cut the line."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator

import pytest

from tests.contract.conftest import postgres_schema, postgres_schemas, postgres_url
from tests.faults.proxy import FaultProxy

__all__ = ["postgres_schema", "postgres_schemas", "postgres_url", "proxy", "through"]


def through(url: str, port: int) -> str:
    """The store URL with its host and port replaced by the proxy's."""
    parts = urllib.parse.urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


@pytest.fixture
async def proxy(postgres_schema: str) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the test PostgreSQL."""
    target = urllib.parse.urlsplit(postgres_schema)
    fault = FaultProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await fault.start()
    yield fault
    await fault.close()
