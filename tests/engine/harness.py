"""A deterministic world for engine tests: the API, the engine and the sandbox on one fake clock.

Nothing sleeps: :meth:`World.advance` moves the clock from one due thing to the next (a sandbox
receipt, a job), running everything that falls due on the way, so an ``expiry_time`` of an hour
passes in milliseconds and in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from cascade.api.app import create_app
from cascade.channels.base import ChannelProvider
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import FakeClock
from cascade.domain.records import WorkflowRecord
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.engine.jobs import JobKind
from cascade.store.base import Job, Store
from tests.conftest import Tenant, make_tenant


class FunctionKind:
    """A job kind for tests: its jobs run by a test's function; it notes the refs of each batch
    it was given to prefetch, and how often it was closed."""

    def __init__(self, name: str, run: Callable[[Job], Awaitable[None]]) -> None:
        self.name = name
        self._run = run
        self.prefetched: list[list[str]] = []
        self.closed = 0

    async def run(self, job: Job) -> None:
        """Run the job with the test's function."""
        await self._run(job)

    async def prefetch(self, jobs: Sequence[Job]) -> None:
        """Note the refs of the batch."""
        self.prefetched.append([job.ref for job in jobs])

    async def close(self) -> None:
        """Count the close."""
        self.closed += 1


class World:
    """The service on a fake clock, driven step by step."""

    def __init__(
        self,
        store: Store,
        clock: FakeClock,
        tenant: Tenant,
        http: httpx.AsyncClient,
        engine: Engine,
        sandbox: SandboxProvider,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tenant = tenant
        self.http = http
        self.engine = engine
        self.sandbox = sandbox

    async def settle(self) -> None:
        """Run everything due now until nothing more is."""
        while True:
            emitted = await self.sandbox.emit_due()
            ran = await self.engine.drain()
            if not emitted and not ran:
                return

    async def advance(self, seconds: float) -> None:
        """Move the clock forward, stopping at each due receipt or job on the way."""
        target = self.clock.now() + seconds
        await self.settle()
        while True:
            candidates = [
                t
                for t in (self.sandbox.next_due(), await self.store.next_job_at())
                if t is not None and t <= target
            ]
            if not candidates:
                break
            step = max(0.0, min(candidates) - self.clock.now())
            self.clock.advance(step)
            await self.settle()
        self.clock.advance(max(0.0, target - self.clock.now()))
        await self.settle()

    async def dispatch(self, body: dict[str, Any], path: str = "/v0.1/dispatch") -> str:
        """POST a workflow and return its id; runs what it makes due."""
        response = await self.http.post(path, json=body, headers=self.tenant.bearer())
        assert response.status_code == 202, response.text
        await self.settle()
        return str(next(iter(response.json().values())))

    async def workflow(self, workflow_id: str) -> WorkflowRecord:
        """The workflow as stored, with its timeline."""
        workflow = await self.store.get_workflow(self.tenant.account.id, workflow_id)
        assert workflow is not None
        return workflow


@asynccontextmanager
async def world(
    store: Store,
    clock: FakeClock,
    providers: dict[str, ChannelProvider] | None = None,
    job_kinds: Sequence[JobKind] = (),
    **settings: Any,
) -> AsyncIterator[World]:
    """A World over an opened store; ``providers`` replace the sandbox for some channels, and
    the engine runs ``job_kinds`` besides its own."""
    tenant = await make_tenant(store, clock)
    sandbox = SandboxProvider(store, clock)
    engine = Engine(
        store,
        Providers(sandbox, providers),
        clock,
        EngineSettings(**settings),
        job_kinds=job_kinds,
    )
    await engine.start(run_loop=False)
    app = create_app(store, clock=clock, report_horizon=engine.settings.report_horizon)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cascade.test"
    ) as http:
        try:
            yield World(store, clock, tenant, http, engine, sandbox)
        finally:
            await engine.stop()


def step(
    channel: str,
    to: str,
    *,
    expiry: int | None = None,
    condition: str = "delivered",
    text: str = "hello",
) -> dict[str, Any]:
    """One workflow step to the sandbox; ``expiry`` adds its failover."""
    to_field = "id" if channel == "messenger" else "number"
    from_field = "number" if channel in ("sms", "mms", "whatsapp") else "id"
    body: dict[str, Any] = {
        "to": {"type": channel, to_field: to},
        "from": {"type": channel, from_field: "12025550100" if from_field == "number" else "acme"},
        "message": {"content": {"type": "text", "text": text}},
    }
    if expiry is not None:
        body["failover"] = {"expiry_time": expiry, "condition_status": condition}
    return body


def workflow(*steps: dict[str, Any]) -> dict[str, Any]:
    """A Dispatch body of these steps."""
    return {"template": "failover", "workflow": list(steps)}
