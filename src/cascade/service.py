"""Assembly: the store named by a URL, the first account, the running service."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from cascade.api.auth import hash_secret
from cascade.clock import Clock
from cascade.config import Settings
from cascade.domain.records import Account
from cascade.errors import ConfigError
from cascade.store.base import Store


def open_store(url: str, settings: Settings | None = None) -> Store:
    """The Store for a database URL (not yet opened)."""
    settings = settings or Settings()
    if "://" not in url:
        url = f"sqlite:///{url}"  # a bare path names a SQLite file
    if url.startswith("sqlite:"):
        from cascade.store.sqlite import SqliteStore, sqlite_path

        path = sqlite_path(url)
        if not path or path == ":memory:":
            raise ConfigError("a SQLite URL needs a file: sqlite:///path/to/cascade.db")
        return SqliteStore(path, synchronous=settings.sqlite_synchronous)
    if url.startswith(("postgresql:", "postgres:")):
        from cascade.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=settings.postgres_pool_size)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


@dataclass(frozen=True, slots=True)
class NewAccount:
    """A freshly created account and its API secret, which is shown once and never stored."""

    account: Account
    api_secret: str


def new_account(clock: Clock) -> NewAccount:
    """A new account with generated credentials."""
    api_secret = secrets.token_urlsafe(24)
    account = Account(
        id=str(uuid.uuid4()),
        api_key=secrets.token_hex(4),
        api_secret_sha256=hash_secret(api_secret),
        signature_secret=secrets.token_urlsafe(32),
        status_url=None,
        inbound_url=None,
        created_at=clock.now(),
    )
    return NewAccount(account, api_secret)


async def ensure_default_account(store: Store, clock: Clock) -> NewAccount | None:
    """Create the first account when there is none; return it (with its secret) if created."""
    if await store.list_accounts():
        return None
    created = new_account(clock)
    await store.create_account(created.account)
    return created
