"""The accept path end to end through the ASGI app on SQLite."""

from __future__ import annotations

import httpx

from cascade.store.sqlite import SqliteStore
from tests.conftest import Tenant

DISPATCH = {
    "template": "failover",
    "workflow": [
        {
            "to": {"type": "messenger", "id": "1234560003"},
            "from": {"type": "messenger", "id": "page"},
            "message": {"content": {"type": "text", "text": "Hi"}},
            "failover": {"expiry_time": 600, "condition_status": "read"},
        },
        {
            "to": {"type": "sms", "number": "447700900000"},
            "from": {"type": "sms", "number": "Acme"},
            "message": {"content": {"type": "text", "text": "Hi by SMS"}},
        },
    ],
}


async def test_dispatch_is_stored_with_its_first_send_job(
    client: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """A valid dispatch gets 202 and its workflow, both steps and the send job are stored."""
    response = await client.post("/v0.1/dispatch", json=DISPATCH, headers=tenant.bearer())
    assert response.status_code == 202
    workflow_id = response.json()["dispatch_uuid"]
    workflow = await sqlite_store.get_workflow(tenant.account.id, workflow_id)
    assert workflow is not None
    assert [m.channel for m in workflow.messages] == ["messenger", "sms"]
    jobs = await sqlite_store.pending_jobs(workflow.messages[0].id)
    assert sorted(job.kind for job in jobs) == ["send", "step_timeout"]
