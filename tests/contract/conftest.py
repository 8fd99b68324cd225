"""Back ends for the storage contract suite: one ``store`` fixture over SQLite and
PostgreSQL, so every contract test runs against each.

PostgreSQL is the server on 127.0.0.1:5432 (database ``test``, trust auth, as the current OS
user or ``postgres``). Each test gets a fresh schema, selected through ``search_path`` in the
store's URL and dropped afterwards. When no server answers, the PostgreSQL cases are skipped
locally but fail when ``CI=true``, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest

from cascade.store.base import Store
from cascade.store.postgres import PostgresStore
from cascade.store.sqlite import SqliteStore

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DATABASE = "test"

T = TypeVar("T")


def run_private(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private event loop that never becomes the current one."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def postgres_missing(reason: str) -> NoReturn:
    """Skip the test for want of PostgreSQL, or fail it when running in CI."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true and PostgreSQL is required, but it is not usable: {reason}")
    pytest.skip(f"no PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DATABASE} ({reason})")


async def _probe(url: str) -> None:
    """Connect once and disconnect."""
    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the test PostgreSQL database, as the first role that can connect."""
    failures = []
    for user in dict.fromkeys((getpass.getuser(), "postgres")):
        url = f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
        try:
            run_private(_probe(url))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failures.append(f"as {user}: {type(exc).__name__}: {exc}")
        else:
            return url
    postgres_missing("; ".join(failures))


async def _admin(url: str, sql: str) -> None:
    """Run one statement on its own connection."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


SchemaFactory = Callable[[], Awaitable[str]]


@pytest.fixture
async def postgres_schemas(postgres_url: str) -> AsyncIterator[SchemaFactory]:
    """Makes fresh, empty schemas (returning the store URL that selects each); drops them after."""
    made: list[str] = []

    async def make() -> str:
        """Create one more schema."""
        name = f"cascade_test_{uuid.uuid4().hex[:16]}"
        await _admin(postgres_url, f'CREATE SCHEMA "{name}"')
        made.append(name)
        return f"{postgres_url}?search_path={name}"

    yield make
    for name in made:
        await _admin(postgres_url, f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
async def postgres_schema(postgres_schemas: SchemaFactory) -> str:
    """A fresh, empty schema for one test: the store URL that selects it."""
    return await postgres_schemas()


@dataclass(frozen=True)
class Backend:
    """A back end under test: its name and how to make a store on this test's database."""

    name: str
    #: a new, unopened store on the same database
    make: Callable[[], Store]


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each storage back end in turn, on an empty database of its own."""
    name: str = request.param
    if name == "sqlite":
        path = tmp_path / "cascade.db"
        return Backend(name, lambda: SqliteStore(path, synchronous="NORMAL"))
    url: str = request.getfixturevalue("postgres_schema")
    return Backend(name, lambda: PostgresStore(url, pool_size=8))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An opened store of each back end in turn, closed after the test."""
    opened = backend.make()
    await opened.open()
    yield opened
    await opened.close()
