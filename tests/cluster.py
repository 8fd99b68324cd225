"""Many Cascade nodes on one PostgreSQL database, under a mixed sandbox load, with a worker
SIGKILLed mid-run: the scenario of ``tests/test_nodes.py`` (a few hundred workflows) and of
``bench/nodes.py`` (10,000), and what it leaves to check and measure.

API nodes are ``cascade serve --processes 1`` with ``CASCADE_RUN_WORKER=false``, each on its
own port; workers are ``cascade worker``. The load is :data:`MIX` round the API nodes in turn,
on keep-alive connections of raw HTTP (a few tens of µs of client CPU a request, so the client
does not hide the servers' rate), with one application token for all. Every webhook goes to
one local receiver.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import jwt
from cryptography.hazmat.primitives import serialization

from cascade.clock import SystemClock
from tests.engine.harness import step, workflow
from tests.running import (
    Processes,
    cascade_env,
    create_application,
    free_port,
    kill,
    set_status_url,
    wait_for,
)
from tests.webhooks.receiver import Receiver, Request, Respond

#: the failover window of the steps that wait for a receipt (the minimum the API takes)
EXPIRY = 15


@dataclass(frozen=True)
class Kind:
    """One kind of workflow in the mix: how its body is made, and how it must end."""

    name: str
    path: str  # /v0.1/messages or /v0.1/dispatch
    body: Callable[[int], dict[str, Any]]
    state: str  # the workflow's final state: completed | error

    @property
    def dispatch(self) -> bool:
        """Whether it is a Dispatch (which gets a final report)."""
        return self.path == "/v0.1/dispatch"


def _number(index: int, script: str) -> str:
    """A recipient number unique to the workflow, ending in the sandbox script's digits."""
    return f"447{index:06d}{script}"


def _message(channel: str, script: str) -> Callable[[int], dict[str, Any]]:
    return lambda index: step(channel, _number(index, script))


#: the mixed load, by index modulo its length: plain messages that are delivered, rejected,
#: throttled twice and read; dispatches of two and three steps whose windows are timers
MIX = (
    Kind("sms-delivered", "/v0.1/messages", _message("sms", "0000"), "completed"),
    Kind("sms-rejected", "/v0.1/messages", _message("sms", "0001"), "error"),
    Kind("sms-throttled", "/v0.1/messages", _message("sms", "0006"), "completed"),
    Kind("whatsapp-read", "/v0.1/messages", _message("whatsapp", "0000"), "completed"),
    Kind(
        "dispatch-read",
        "/v0.1/dispatch",
        lambda i: workflow(
            step("messenger", f"9{i:06d}0000", expiry=EXPIRY, condition="read"),
            step("sms", _number(i, "0000")),
        ),
        "completed",
    ),
    Kind(
        "dispatch-timer",
        "/v0.1/dispatch",
        lambda i: workflow(
            step("messenger", f"9{i:06d}0003", expiry=EXPIRY),
            step("sms", _number(i, "0000")),
        ),
        "completed",
    ),
    Kind(
        "dispatch-3-error",
        "/v0.1/dispatch",
        lambda i: workflow(
            step("whatsapp", _number(i, "0001"), expiry=EXPIRY),
            step("viber_service_msg", _number(i, "0003"), expiry=EXPIRY),
            step("sms", _number(i, "0001")),
        ),
        "error",
    ),
    Kind(
        "dispatch-undeliverable",
        "/v0.1/dispatch",
        lambda i: workflow(
            step("sms", _number(i, "0004"), expiry=EXPIRY),
            step("sms", _number(i, "0002")),
        ),
        "completed",
    ),
)

#: per expired step: when its window closed and when its failover was stored
LATENESS_SQL = """
SELECT m.started_at + m.expiry_time, e.at
FROM messages m JOIN events e ON e.message_id = m.id AND e.kind = 'failover'
WHERE m.state = 'expired'
"""


@dataclass
class Outcome:
    """What a run left: the workflows accepted, what the database and the receiver hold,
    and the times to measure."""

    #: workflow id -> the name of its kind
    kinds: dict[str, str] = field(default_factory=dict)
    #: time.time() of the first request and of the last answer
    posting: tuple[float, float] = (0.0, 0.0)
    answers: dict[int, int] = field(default_factory=dict)
    #: workflow id -> (state, finished_at)
    workflows: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    #: workflow id -> how many completed/error events it has
    endings: dict[str, int] = field(default_factory=dict)
    #: (due, failover stored) of every expired step
    timers: list[tuple[float, float]] = field(default_factory=list)
    webhooks: list[Request] = field(default_factory=list)
    #: the jobs the killed worker held at the kill, and those of them still held by it (not
    #: taken by another worker) half a lease later; its worker id
    held_at_kill: set[int] = field(default_factory=set)
    held_half_a_lease_later: set[int] = field(default_factory=set)
    killed: str | None = None
    #: ids of the jobs left at the end (none of the killed worker's may remain)
    jobs_left: set[int] = field(default_factory=set)

    @property
    def finished(self) -> float:
        """time.time() when the last workflow finished."""
        return max(at or 0.0 for _, at in self.workflows.values())

    def lateness(self) -> list[float]:
        """How late each expired step's failover was stored after its window closed, sorted."""
        return sorted(stored - due for due, stored in self.timers)


def child_env(lease: float, speed: float, batch: int) -> dict[str, str]:
    """The processes' environment: the lease, sandbox speed and claim batch of the run, and
    nothing CASCADE_* from the developer's shell."""
    env = cascade_env()
    env.update(
        CASCADE_LOG_FORMAT="console",
        CASCADE_LOG_LEVEL="warning",
        CASCADE_JOB_LEASE_SECONDS=str(lease),
        CASCADE_SANDBOX_SPEED=str(speed),
        CASCADE_WORKER_BATCH_SIZE=str(batch),
    )
    return env


async def _post_all(
    ports: list[int], token: str, requests: list[tuple[int, str, bytes]], connections: int
) -> tuple[dict[int, str], dict[int, int], float, float]:
    """POST each (index, path, body) to the API nodes in turn, on ``connections`` keep-alive
    connections per node; the workflow id of each index accepted, the answers by status, and
    the time of the first request and of the last answer."""
    ids: dict[int, str] = {}
    answers: dict[int, int] = {}
    queues: list[list[tuple[int, str, bytes]]] = [
        requests[n :: len(ports)] for n in range(len(ports))
    ]
    found = re.compile(rb'"(?:message|dispatch)_uuid":"([^"]+)"')

    async def client(port: int, queue: list[tuple[int, str, bytes]]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                index, path, body = queue.pop()
                writer.write(
                    (
                        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1])  # type: ignore[index]
                answer = await reader.readexactly(length)
                answers[status] = answers.get(status, 0) + 1
                match = found.search(answer)
                if status == 202 and match:
                    ids[index] = match.group(1).decode()
        finally:
            writer.close()

    started = time.time()
    await asyncio.gather(
        *(
            client(port, queue)
            for port, queue in zip(ports, queues, strict=True)
            for _ in range(connections)
        )
    )
    return ids, answers, started, time.time()


async def run(
    processes: Processes,
    url: str,
    *,
    workflows: int,
    apis: int,
    workers: int,
    kill_worker: bool,
    lease: float,
    deadline: float,
    connections: int = 4,
) -> Outcome:
    """Start ``apis`` API nodes and ``workers`` workers on the (new, empty) database at
    ``url``, post ``workflows`` of :data:`MIX`, SIGKILL one worker (``kill_worker``) once a
    quarter of them is accepted and it holds jobs, and wait until every workflow finished and
    every webhook was delivered; fails after ``deadline`` seconds."""
    until = time.monotonic() + deadline
    outcome = Outcome()
    application_id, pem = create_application(processes, url)
    receiver = await Receiver(SystemClock(), default=Respond(204)).up()
    set_status_url(processes, url, receiver.url())
    ports = [free_port() for _ in range(apis)]
    for port in ports:
        processes.start(
            "api", "serve", "--processes", "1", "--port", str(port), "--database", url,
            CASCADE_RUN_WORKER="false",
        )  # fmt: skip
    started = [processes.start("worker", "worker", "--database", url) for _ in range(workers)]
    key = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    claims = {"application_id": application_id, "iat": now, "jti": str(uuid.uuid4())}
    token = jwt.encode({**claims, "exp": now + 3600}, key, algorithm="RS256")

    async def up(port: int) -> bool:
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.TransportError:
            return False

    for port in ports:
        await wait_for(lambda port=port: up(port), until, f"the API on {port} to listen")
    db = await asyncpg.connect(url)
    try:
        kinds = [MIX[index % len(MIX)] for index in range(workflows)]
        requests = [
            (index, kind.path, json.dumps(kind.body(index)).encode())
            for index, kind in enumerate(kinds)
        ]
        posting = asyncio.ensure_future(_post_all(ports, token, requests, connections))
        if kill_worker:
            await _kill_one(db, started[0], outcome, workflows, lease, until)
        ids, outcome.answers, *times = await posting
        outcome.posting = (times[0], times[1])

        async def count(sql: str) -> int:
            return int(await db.fetchval(sql))

        # twice a second: each count reads every workflow, work beside the run's own
        running = "SELECT count(*) FROM workflows WHERE state = 'running'"
        await wait_for(lambda: _is_zero(count(running)), until, "every workflow to finish", 0.5)
        pending = "SELECT count(*) FROM webhooks WHERE state != 'delivered'"
        await wait_for(lambda: _is_zero(count(pending)), until, "every webhook delivered", 0.5)
        # a message's 202 names the message; a dispatch's, the workflow
        workflow_of = {
            row[0]: row[1] for row in await db.fetch("SELECT id, workflow_id FROM messages")
        }
        outcome.kinds = {workflow_of.get(ids[i], ids[i]): kinds[i].name for i in ids}
        for row in await db.fetch("SELECT id, state, finished_at FROM workflows"):
            outcome.workflows[row["id"]] = (row["state"], row["finished_at"])
        for row in await db.fetch(
            "SELECT workflow_id, count(*) AS n FROM events"
            " WHERE kind IN ('completed', 'error') AND message_id IS NULL GROUP BY workflow_id"
        ):
            outcome.endings[row["workflow_id"]] = row["n"]
        outcome.timers = [(row[0], row[1]) for row in await db.fetch(LATENESS_SQL)]
        outcome.jobs_left = {row["id"] for row in await db.fetch("SELECT id FROM jobs")}
    finally:
        await db.close()
        await receiver.down()
    outcome.webhooks = receiver.requests
    return outcome


async def _is_zero(counting: Any) -> bool:
    return int(await counting) == 0


async def _kill_one(
    db: Any,
    worker: Any,
    outcome: Outcome,
    workflows: int,
    lease: float,
    until: float,
) -> None:
    """SIGKILL ``worker`` once a quarter of the load is stored and it holds jobs; note the
    jobs it held, and which of them it still held half a lease later."""
    mark = f"%:{worker.pid}:%"
    held_sql = "SELECT id FROM jobs WHERE locked_by LIKE $1 AND locked_until > $2"

    async def ready() -> bool:
        stored = int(await db.fetchval("SELECT count(*) FROM workflows"))
        return stored >= workflows // 4 and bool(await db.fetch(held_sql, mark, time.time()))

    await wait_for(ready, until, "a quarter of the load and a busy worker")
    kill(worker)
    outcome.held_at_kill = {row["id"] for row in await db.fetch(held_sql, mark, time.time())}
    locked = await db.fetchval("SELECT locked_by FROM jobs WHERE locked_by LIKE $1 LIMIT 1", mark)
    outcome.killed = locked
    await asyncio.sleep(lease / 2)
    outcome.held_half_a_lease_later = {
        row["id"]
        for row in await db.fetch("SELECT id FROM jobs WHERE locked_by LIKE $1", mark)
        if row["id"] in outcome.held_at_kill
    }
