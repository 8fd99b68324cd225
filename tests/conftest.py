"""Shared fixtures: stores, a tenant with keys, and the API app on an in-process client."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cascade.api.app import create_app
from cascade.clock import FakeClock
from cascade.domain.records import Account, Application
from cascade.service import new_account
from cascade.store.base import Store
from cascade.store.sqlite import SqliteStore

_KEY_CACHE: list[rsa.RSAPrivateKey] = []


def rsa_key() -> rsa.RSAPrivateKey:
    """An RSA key; the first few are reused across tests because generating one is slow."""
    if len(_KEY_CACHE) < 4:
        _KEY_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEY_CACHE[-1]
    _KEY_CACHE.append(_KEY_CACHE.pop(0))
    return _KEY_CACHE[-1]


def public_pem(key: rsa.RSAPrivateKey) -> str:
    """The PEM of a private key's public half."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass
class Tenant:
    """An account with its API secret, and one application with its private key."""

    account: Account
    api_secret: str
    application: Application
    private_key: rsa.RSAPrivateKey

    def token(self, **claims: Any) -> str:
        """A valid RS256 JWT for the application; ``claims`` override or add (None removes)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "application_id": self.application.id,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "exp": now + 900,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, self.private_key, algorithm="RS256")

    def bearer(self, **claims: Any) -> dict[str, str]:
        """Authorization header with a fresh JWT."""
        return {"Authorization": f"Bearer {self.token(**claims)}"}

    def basic(self) -> dict[str, str]:
        """Authorization header with the account's api_key:api_secret."""
        raw = f"{self.account.api_key}:{self.api_secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def make_tenant(store: Store, clock: FakeClock | None = None) -> Tenant:
    """Create an account and an application in ``store``."""
    created = new_account(clock or FakeClock(time.time()))
    await store.create_account(created.account)
    key = rsa_key()
    application = Application(
        id=str(uuid.uuid4()),
        account_id=created.account.id,
        name="test-app",
        public_key_pem=public_pem(key),
        status_url=None,
        inbound_url=None,
        created_at=time.time(),
    )
    await store.create_application(application)
    return Tenant(created.account, created.api_secret, application, key)


@pytest.fixture(autouse=True, scope="session")
def _loggers_never_cached() -> Any:
    """Keep structlog from caching loggers in tests (``configure_logging`` caches them for
    speed), so a test that captures logs sees them whatever test configured logging before."""
    configure = structlog.configure

    def uncached(*args: Any, **kwargs: Any) -> None:
        kwargs["cache_logger_on_first_use"] = False
        configure(*args, **kwargs)

    structlog.configure = uncached  # type: ignore[assignment]
    yield
    structlog.configure = configure


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened SQLite store in a fresh file."""
    store = SqliteStore(tmp_path / "cascade.db", synchronous="NORMAL")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def clock() -> FakeClock:
    """A clock at the real current time that moves only when told."""
    return FakeClock(time.time())


@pytest.fixture
async def tenant(sqlite_store: SqliteStore, clock: FakeClock) -> Tenant:
    """An account and application in the SQLite store."""
    return await make_tenant(sqlite_store, clock)


ClientFactory = Callable[[], httpx.AsyncClient]


@pytest.fixture
async def client(sqlite_store: SqliteStore, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the API app in-process (store already open)."""
    app = create_app(sqlite_store, clock=clock, max_body_bytes=64 * 1024)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as http:
        yield http
