"""A module-wide API for the large tables of stateless checks.

Opening a store and creating a tenant costs more than the request a table row checks, so the
validation tables share one per module. Each check asserts what its own request changed (the
row counts before and after), never absolute counts, so the order of tests does not matter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from cascade.api.app import create_app
from cascade.clock import SystemClock
from cascade.store.sqlite import SqliteStore
from tests.api.support import stored_rows
from tests.conftest import Tenant, make_tenant


@dataclass
class SharedApi:
    """The API app on one store with one tenant, shared by a module's tests."""

    store: SqliteStore
    tenant: Tenant
    client: httpx.AsyncClient

    async def send(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[httpx.Response, dict[str, int]]:
        """Send a request (Basic auth unless ``headers`` say otherwise; ``kwargs`` go to httpx);
        the response and how many rows it added to each table."""
        before = stored_rows(self.store)
        auth = self.tenant.basic()
        response = await self.client.request(
            method, path, headers={**auth, **(headers or {})}, **kwargs
        )
        after = stored_rows(self.store)
        return response, {table: after[table] - before[table] for table in after}

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, dict[str, int]]:
        """POST ``body`` as JSON; the response and how many rows it added to each table."""
        return await self.send("POST", path, json=body, headers=headers)


#: runs a test in the module's event loop, where ``shared_api`` lives
IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SharedApi]:
    """One store, tenant and in-process client for a whole module (max_body_bytes 64 KiB)."""
    store = SqliteStore(tmp_path_factory.mktemp("shared") / "cascade.db", synchronous="NORMAL")
    await store.open()
    tenant = await make_tenant(store)
    app = create_app(store, clock=SystemClock(), max_body_bytes=64 * 1024)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as client:
        yield SharedApi(store, tenant, client)
    await store.close()
