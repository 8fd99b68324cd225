"""The Store contract for ``cascade status``: a store opened without migrating changes
nothing, and its overview tells the schema versions applied and what the database holds."""

from __future__ import annotations

import time

from cascade.domain.records import NewWebhook, WebhookKind
from cascade.store.base import Store
from cascade.store.migrations import migrations
from tests.contract.conftest import Backend
from tests.contract.factories import tenant


async def test_an_unmigrated_database_reports_no_schema_and_stays_unmigrated(
    backend: Backend,
) -> None:
    """Opened without migrating, an empty database has no schema version and no counts, and
    opening it again finds it still empty."""
    for _ in range(2):
        store = backend.make()
        await store.open(migrate=False)
        try:
            overview = await store.overview()
        finally:
            await store.close()
        assert overview.applied == ()
        assert overview.missing == overview.expected
        assert overview.expected
        assert overview.accounts is None


async def test_a_migrated_database_reports_its_versions_and_counts(store: Store) -> None:
    """After migrating, every expected version is applied, and the accounts, jobs (due or
    not) and undelivered webhooks are counted."""
    owner = await tenant(store)
    now = time.time()
    await store.add_webhooks(
        [
            NewWebhook(WebhookKind.STATUS, owner.id, None, None, None, "https://h.test/", b"{}"),
            NewWebhook(WebhookKind.STATUS, owner.id, None, None, None, "https://h.test/", b"{}"),
        ],
        now - 10,
    )
    overview = await store.overview()
    dialect = type(store).dialect  # type: ignore[attr-defined]
    assert overview.expected == tuple(m.version for m in migrations(dialect))
    assert overview.applied == overview.expected
    assert overview.missing == overview.unknown == ()
    assert overview.accounts == 1
    assert (overview.jobs, overview.jobs_due) == (2, 2)
    assert (overview.pending_webhooks, overview.dead_webhooks) == (2, 0)
