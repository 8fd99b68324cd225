"""Assembly: the store named by a URL, the first account, the running service."""

from __future__ import annotations

import os
import re
import secrets
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from cascade.api.auth import hash_secret
from cascade.clock import Clock
from cascade.config import Settings
from cascade.domain.records import Account
from cascade.errors import ConfigError
from cascade.sealing import Sealer
from cascade.store.base import Store


def open_store(url: str, settings: Settings | None = None, *, existing: bool = False) -> Store:
    """The Store for a database URL (not yet opened). With ``existing``, a SQLite file that is
    not there is an error naming it (opening would create it: a read-only command run from
    another directory must not make an empty database there)."""
    settings = settings or Settings()
    path = sqlite_file(url)
    if existing and path and path != ":memory:" and not Path(path).exists():
        raise ConfigError(
            f"no database at {Path(path).resolve()}: start `cascade serve` there, run "
            "`cascade db upgrade`, or name the database with --database or CASCADE_DATABASE_URL"
        )
    store = _store_of(url, settings)
    store.idempotency_ttl = settings.idempotency_ttl_seconds
    return store


def redacted_url(url: str) -> str:
    """A database URL without its password (in the credentials or a ``password=``
    parameter), to show or log."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and not re.search(r"(?i)(^|&)password=", parts.query):
        return url  # (unsplitting would also turn sqlite:////abs into sqlite://abs)
    netloc = parts.netloc
    if parts.password is not None:
        credentials, _, host = netloc.rpartition("@")
        netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _store_of(url: str, settings: Settings) -> Store:
    path = sqlite_file(url)
    if path is not None:
        from cascade.store.sqlite import SqliteStore

        if not path or path == ":memory:":
            raise ConfigError("a SQLite URL needs a file: sqlite:///path/to/cascade.db")
        return SqliteStore(
            path,
            synchronous=settings.sqlite_synchronous,
            cache_mb=settings.sqlite_cache_mb,
            sealer=channel_sealer(settings),
        )
    if url.startswith(("postgresql:", "postgres:")):
        from cascade.store.postgres import PostgresStore

        return PostgresStore(
            url,
            pool_size=settings.postgres_pool_size,
            command_timeout=settings.postgres_command_timeout,
            sealer=channel_sealer(settings),
        )
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


def channel_sealer(settings: Settings) -> Sealer | None:
    """The sealer of linked channels' credentials, from ``CASCADE_CHANNEL_KEY`` (None when it
    is unset or empty: no channel can be linked)."""
    if settings.channel_key is None:
        return None
    keys = settings.channel_key.get_secret_value()
    return Sealer(keys) if keys.strip() else None


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL (or a bare path) names; None for any other URL."""
    if "://" not in url:
        return url  # a bare path names a SQLite file
    if url.startswith("sqlite:"):
        from cascade.store.sqlite import sqlite_path

        return sqlite_path(url)
    return None


def credentials_path(settings: Settings) -> Path:
    """Where a first start writes the new account's credentials: the configured file, else
    beside the SQLite database, else ``cascade.credentials`` in the working directory."""
    if settings.credentials_file is not None:
        return settings.credentials_file
    database = sqlite_file(settings.database_url)
    if database and database != ":memory:":
        return Path(f"{database}.credentials")
    return Path("cascade.credentials")


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


def write_credentials(path: Path, created: NewAccount) -> None:
    """Write an account's credentials to a new file only its owner can read, as environment
    lines the ``cascade`` command reads (``CASCADE_API_KEY``, ``CASCADE_API_SECRET``). An
    existing file is never overwritten: it may hold the only copy of another secret."""
    text = (
        "# The account Cascade created on its first start. The API secret is stored nowhere\n"
        "# else (the database keeps its hash): keep this file, or copy it somewhere safe.\n"
        f"CASCADE_API_KEY={created.account.api_key}\n"
        f"CASCADE_API_SECRET={created.api_secret}\n"
        f"CASCADE_SIGNATURE_SECRET={created.account.signature_secret}\n"
    )
    try:
        # O_EXCL: never write through a file or link someone else put there; 0600 whatever
        # the umask, which can only take bits away from it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            f"the credentials file {path} exists (from an earlier first start?): move it "
            "away, or set CASCADE_CREDENTIALS_FILE to another path"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot create the credentials file {path}: {exc}; set CASCADE_CREDENTIALS_FILE "
            "to a path this user can write"
        ) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


async def ensure_default_account(
    store: Store, clock: Clock, credentials_file: Path
) -> NewAccount | None:
    """Create the first account when there is none, its credentials written to
    ``credentials_file`` (mode 0600) before it is stored, so that a secret is never lost;
    return it (with its secret) if created."""
    if await store.list_accounts():
        return None
    created = new_account(clock)
    write_credentials(credentials_file, created)
    try:
        await store.create_account(created.account)
    except BaseException:
        _discard(credentials_file)  # they name no account
        raise
    return created


def _discard(path: Path) -> None:
    """Delete a file that may be gone already."""
    path.unlink(missing_ok=True)
