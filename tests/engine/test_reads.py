"""Reading workflows and messages back through the API: timelines, scoping, lists, cursors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from typer.testing import CliRunner

from cascade.cli import app as cli
from cascade.clock import FakeClock
from cascade.store.sqlite import SqliteStore
from tests.conftest import make_tenant
from tests.engine.harness import step, workflow, world


async def test_dispatch_reads_back_with_its_timeline(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """GET /v0.1/dispatch/{uuid} shows states, statuses with times, the failover reason, cost."""
    async with world(sqlite_store, clock) as w:
        workflow_id = await w.dispatch(
            workflow(step("messenger", "1000003", expiry=30), step("sms", "447700900000"))
        )
        await w.advance(60)
        response = await w.http.get(f"/v0.1/dispatch/{workflow_id}", headers=w.tenant.bearer())
        assert response.status_code == 200
        body = response.json()
        assert body["dispatch_uuid"] == workflow_id
        assert body["status"] == "completed"
        first, second = body["steps"]
        assert first["state"] == "expired"
        assert first["failover_reason"] == "step 1 did not reach delivered within 30 s"
        assert [s["status"] for s in second["statuses"]] == ["submitted", "delivered"]
        assert body["usage"] == {"price": "0.0333", "currency": "EUR"}
        events = [entry["event"] for entry in body["timeline"]]
        assert events[0] == "accepted"
        assert events[-1] == "completed"

        message = await w.http.get(
            f"/v0.1/messages/{second['message_uuid']}", headers=w.tenant.bearer()
        )
        assert message.status_code == 200
        assert message.json()["status"] == "delivered"


async def test_another_accounts_ids_are_not_found(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A workflow or message of another account is a 404 problem, like an unknown id."""
    async with world(sqlite_store, clock) as w:
        workflow_id = await w.dispatch(workflow(step("sms", "447700900000")))
        stranger = await make_tenant(sqlite_store, clock)
        for path in (f"/v0.1/dispatch/{workflow_id}", "/v0.1/dispatch/nope"):
            response = await w.http.get(path, headers=stranger.bearer())
            assert response.status_code == 404
            assert response.json()["title"] == "Not Found"


async def test_lists_filter_and_page_with_a_cursor(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Lists are newest first, filter by status and channel, and page with a stable cursor."""
    async with world(sqlite_store, clock) as w:
        ids = []
        for _ in range(5):
            ids.append(await w.dispatch(workflow(step("sms", "447700900000"))))
            clock.advance(1)
        await w.advance(10)
        first = await w.http.get("/v0.1/dispatch?page_size=2", headers=w.tenant.bearer())
        page = first.json()
        assert [x["dispatch_uuid"] for x in page["_embedded"]["workflows"]] == ids[::-1][:2]
        assert page["page_size"] == 2
        second = await w.http.get(page["_links"]["next"]["href"], headers=w.tenant.bearer())
        assert [x["dispatch_uuid"] for x in second.json()["_embedded"]["workflows"]] == ids[::-1][
            2:4
        ]
        done = await w.http.get("/v0.1/dispatch?status=completed", headers=w.tenant.bearer())
        assert len(done.json()["_embedded"]["workflows"]) == 5
        # the size asked for (the default), not how many came back
        assert done.json()["page_size"] == 50
        sms = await w.http.get(
            "/v0.1/messages?channel=sms&status=delivered", headers=w.tenant.bearer()
        )
        assert len(sms.json()["_embedded"]["messages"]) == 5
        bad = await w.http.get("/v0.1/dispatch?page_size=0&bogus=1", headers=w.tenant.bearer())
        assert bad.status_code == 400
        assert {p["name"] for p in bad.json()["invalid_parameters"]} == {"page_size", "bogus"}


def test_cascade_show_prints_the_timeline(tmp_path: Path) -> None:
    """`cascade show UUID` prints each step and the failover for a person to read."""

    async def scenario() -> str:
        store = SqliteStore(tmp_path / "show.db")
        await store.open()
        try:
            async with world(store, FakeClock(time.time())) as w:
                workflow_id = await w.dispatch(
                    workflow(step("messenger", "1000003", expiry=15), step("sms", "447700900000"))
                )
                await w.advance(30)
                return workflow_id
        finally:
            await store.close()

    workflow_id = asyncio.run(scenario())
    result = CliRunner().invoke(cli, ["show", workflow_id, "--database", str(tmp_path / "show.db")])
    assert result.exit_code == 0, result.output
    assert "did not reach delivered within 15 s" in result.output
    assert "succeeded status=delivered" in result.output
    # no status URL is set: no webhook was stored, and the listing says why in words
    assert "webhooks: none (a status webhook is stored only where" in result.output
    assert "None" not in result.output
