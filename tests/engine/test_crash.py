"""The kill test: SIGKILL the worker while a batch of workflows is in flight; nothing is lost.

Real processes on one SQLite file: ``cascade serve`` with the worker off, and a separate
``cascade worker`` with a 2 s lease and a sandbox 20 times faster than documented. The worker is
killed twice, once while the first sends are going out and once while the expired steps fail
over to SMS, and restarted each time; then every workflow must end as the rules say, with one
final report, each message received by the sandbox exactly once, and no work left behind.
Webhooks go to a real receiver: each must arrive, and those a kill sends again must be few
(``max_unrecorded`` per kill at most) and carry the same delivery id.

The scenario runs once per module; one test checks that nothing was lost or done twice in the
workflows, one that the sandbox was handed each message only once, one the webhooks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from cascade.clock import SystemClock
from cascade.webhooks.delivery import DeliverySettings, delivery_id
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

pytestmark = pytest.mark.slow

WORKFLOWS = 200
LEASE = 2.0
SPEED = 20.0
EXPIRY = 15
#: the whole test, start to finish, must stay well under this
DEADLINE = 45.0


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the SQLite file the processes share (WAL lets us read while they write)."""
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def count(db: Path, sql: str) -> int:
    """The single integer a counting query returns."""
    return int(query(db, sql)[0][0])


def bodies() -> list[tuple[str, dict[str, Any]]]:
    """The batch: (kind, body) of silent-messenger, default-messenger and default-whatsapp
    workflows, each failing over to an SMS to a default recipient."""
    batch: list[tuple[str, dict[str, Any]]] = []
    for index in range(WORKFLOWS):
        kind = ("silent", "default", "whatsapp")[index % 3]
        if kind == "silent":
            first = step("messenger", f"9{index:05d}0003", expiry=EXPIRY, condition="read")
        elif kind == "default":
            first = step("messenger", f"9{index:05d}0000", expiry=EXPIRY, condition="read")
        else:
            first = step("whatsapp", f"4478{index:05d}0000", expiry=EXPIRY, condition="read")
        batch.append((kind, workflow(first, step("sms", f"4477{index:05d}0000"))))
    return batch


@dataclass(frozen=True)
class Run:
    """What the scenario left: the database file and what the test saw on the way."""

    db: Path
    #: dispatch_uuid -> "silent" | "default" | "whatsapp"
    kinds: dict[str, str]
    journal_at_kill: int
    sms_at_kill: int
    seconds: float
    #: every webhook request the receiver got
    webhooks: list[Request]

    @property
    def silent(self) -> int:
        """How many workflows fail over to SMS."""
        return sum(1 for kind in self.kinds.values() if kind == "silent")


def child_env() -> dict[str, str]:
    """The environment of the processes: the lease and sandbox speed of the test, and nothing
    CASCADE_* from the developer's shell."""
    env = cascade_env()
    env.update(
        CASCADE_LOG_FORMAT="console",
        CASCADE_JOB_LEASE_SECONDS=str(LEASE),
        CASCADE_SANDBOX_SPEED=str(SPEED),
        CASCADE_SQLITE_SYNCHRONOUS="NORMAL",
    )
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run the kill scenario once; every process it started is gone when this returns."""
    processes = Processes(tmp_path_factory.mktemp("crash"), child_env())
    try:
        return asyncio.run(scenario(processes))
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop_all()


async def scenario(processes: Processes) -> Run:
    """Post the batch, SIGKILL the worker twice on the way, wait until nothing is running."""
    started = time.monotonic()
    until = started + DEADLINE
    db = processes.directory / "x.db"
    url = f"sqlite:///{db}"
    application_id, pem = create_application(processes, url)
    receiver = await Receiver(SystemClock(), default=Respond(204)).up()
    set_status_url(processes, url, receiver.url())
    private_key = serialization.load_pem_private_key(pem, password=None)  # parsed once: slow
    port = free_port()
    processes.start(
        "api", "serve", "--port", str(port), "--database", url, CASCADE_RUN_WORKER="false"
    )
    worker = processes.start("worker", "worker", "--database", url)

    def token() -> str:
        now = int(time.time())
        claims = {
            "application_id": application_id,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "exp": now + 300,
        }
        return jwt.encode(claims, private_key, algorithm="RS256")

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

        async def api_up() -> bool:
            with suppress(httpx.TransportError):
                return (await http.get("/health")).status_code == 200
            return False

        await wait_for(api_up, until, "the API to listen")

        kinds: dict[str, str] = {}
        # paced (at most ~200 posts/s) so the batch is still arriving when the worker is
        # killed, however fast the worker runs on a quiet machine
        gate = asyncio.Semaphore(4)

        async def post(kind: str, body: dict[str, Any]) -> None:
            async with gate:
                response = await http.post(
                    "/v0.1/dispatch", json=body, headers={"Authorization": f"Bearer {token()}"}
                )
                await asyncio.sleep(0.02)
            assert response.status_code == 202, response.text
            kinds[response.json()["dispatch_uuid"]] = kind

        posting = asyncio.gather(*(post(kind, body) for kind, body in bodies()))

        # kill 1: some, but not all, of the first sends have reached the sandbox
        sent = "SELECT count(*) FROM sandbox_messages"
        await wait_for(lambda: count(db, sent) >= WORKFLOWS // 5, until, "the first sends")
        kill(worker)
        journal_at_kill = count(db, sent)
        await posting
        assert len(kinds) == WORKFLOWS
        assert 0 < journal_at_kill < WORKFLOWS, journal_at_kill
        worker = processes.start("worker", "worker", "--database", url)

        # kill 2: the silent steps' windows have closed and some SMS failovers went out
        silent = sum(1 for kind in kinds.values() if kind == "silent")
        sms_sent = "SELECT count(*) FROM sandbox_messages WHERE channel = 'sms'"
        await wait_for(lambda: count(db, sms_sent) >= silent // 4, until, "the SMS failovers")
        kill(worker)
        sms_at_kill = count(db, sms_sent)
        processes.start("worker", "worker", "--database", url)

        running = "SELECT count(*) FROM workflows WHERE state = 'running'"
        await wait_for(lambda: count(db, running) == 0, until, "every workflow to finish")
        pending = "SELECT count(*) FROM webhooks WHERE state != 'delivered'"
        await wait_for(lambda: count(db, pending) == 0, until, "every webhook to be delivered")
    await receiver.down()
    return Run(
        db, kinds, journal_at_kill, sms_at_kill, time.monotonic() - started, receiver.requests
    )


def test_killed_worker_loses_nothing_and_finishes_everything_once(run: Run) -> None:
    """After two SIGKILLs every workflow ended as the rules say, once, with one final report,
    one status webhook per status change, and no job left behind."""
    db, kinds = run.db, run.kinds
    assert run.seconds < DEADLINE

    # nothing lost: every accepted workflow is stored and finished as the rules say
    states = dict(query(db, "SELECT id, state FROM workflows"))
    assert set(states) == set(kinds)
    assert Counter(states.values()) == {"completed": WORKFLOWS}
    steps: dict[str, list[tuple[str, str | None]]] = {}
    for workflow_id, state, status in query(
        db, "SELECT workflow_id, state, status FROM messages ORDER BY workflow_id, step"
    ):
        steps.setdefault(workflow_id, []).append((state, status))
    for workflow_id, kind in kinds.items():
        if kind == "silent":
            assert steps[workflow_id] == [("expired", "submitted"), ("succeeded", "delivered")]
        else:
            assert steps[workflow_id] == [("succeeded", "read"), ("cancelled", None)]

    # one outcome and one final report per workflow
    outcomes = Counter(
        row[0] for row in query(db, "SELECT workflow_id FROM events WHERE kind = 'completed'")
    )
    assert outcomes == Counter(dict.fromkeys(kinds, 1))
    reports = Counter(
        row[0] for row in query(db, "SELECT workflow_id FROM webhooks WHERE kind = 'final-report'")
    )
    assert reports == Counter(dict.fromkeys(kinds, 1))
    # and one status webhook per status change, each change recorded once
    changes = Counter(
        (row[0], row[1])
        for row in query(db, "SELECT message_id, status FROM events WHERE kind = 'status'")
    )
    assert set(changes.values()) == {1}
    hooks = Counter(
        row[0] for row in query(db, "SELECT message_id FROM webhooks WHERE kind = 'message-status'")
    )
    assert hooks == Counter(message_id for message_id, _ in changes.elements())

    # one journal row per sent message, with the provider id the engine recorded for it
    journal = query(db, "SELECT message_id, provider_message_id FROM sandbox_messages")
    sent_messages = query(
        db, "SELECT id, provider_message_id FROM messages WHERE provider_message_id IS NOT NULL"
    )
    assert len(journal) == len(sent_messages) == WORKFLOWS + run.silent
    assert set(journal) == set(sent_messages)
    assert count(db, "SELECT count(*) FROM orphan_receipts") == 0

    # no work is left behind for finished workflows (webhook jobs would be delivery work)
    assert query(db, "SELECT kind, ref, locked_by FROM jobs WHERE kind != 'webhook'") == []


def test_killed_worker_hands_no_message_to_the_sandbox_twice(run: Run) -> None:
    """After two SIGKILLs the sandbox journal counts one attempt for every message."""
    # A SIGKILL after the sandbox journaled a send (SqliteStore.sandbox_receive, its own
    # commit) and before the engine committed that send's `submitted` transition (which deletes
    # the send job) leaves the job to be claimed again when its lease ends; Engine._send then
    # calls the sandbox again (it skips begin_send for a provider that deduplicates), and the
    # sandbox answers with the first provider id but counts a second attempt.
    attempts = [row[0] for row in query(run.db, "SELECT attempts FROM sandbox_messages")]
    resent = [n for n in attempts if n != 1]
    assert resent == [], (
        f"{len(resent)} of {len(attempts)} messages were handed to the sandbox again after a "
        f"kill (the journal held {run.journal_at_kill} sends at kill 1, {run.sms_at_kill} of "
        f"{run.silent} SMS at kill 2)"
    )


def test_killed_worker_delivers_every_webhook_repeating_few_with_the_same_delivery_id(
    run: Run,
) -> None:
    """After two SIGKILLs every webhook arrived; the repeats are at most max_unrecorded per
    kill, and each repeat carries the delivery id (and body) of its first delivery."""
    rows = query(run.db, "SELECT id, body FROM webhooks")
    expected = {delivery_id(row_id, body.encode()): body.encode() for row_id, body in rows}
    assert len(expected) == len(rows)
    received = Counter(request.headers["x-cascade-delivery-id"] for request in run.webhooks)
    assert set(received) == set(expected)
    for request in run.webhooks:
        assert request.body == expected[request.headers["x-cascade-delivery-id"]]
    repeats = sum(received.values()) - len(received)
    assert repeats <= 2 * DeliverySettings().max_unrecorded, received.most_common(5)
