"""The webhook delivery benchmark: customer webhooks delivered per second to a local receiver.

It queues ``--count`` message-status webhooks (a realistic ~450-byte v0.1 body, a URL on the
receiver) in a fresh database with ``store.add_webhooks``, then starts the engine exactly as
``cascade serve`` builds it (``runtime.build_engine``: the real WebhookSender, signed JWTs, one
attempt row per delivery) and measures the time from the engine's start until the last webhook
is ``delivered`` (its ``delivered_at``). The receiver is ``bench/receiver.py``, a process of its
own answering ``204`` to every POST.

With ``--client raw`` (the ceiling, like the accept benchmark's trivial app) the sender is given
(``build_engine(webhook_http=...)``) a minimal keep-alive HTTP/1.1 client over asyncio streams
(plain http, ``Content-Length`` answers: enough for this receiver, not for production) in place
of its own; everything else is the same, so the two figures show what the HTTP client costs.

Every run is checked, not assumed: each webhook must be delivered exactly once (the receiver's
request count equals ``--count``, as does the number of distinct ``X-Cascade-Delivery-Id``
headers it saw, and the store holds one attempt per webhook), and a sample of the requests
received is verified with the official ``vonage_jwt`` package against the account's signature
secret. It also reports the most webhooks that were, at any moment, POSTed (or being POSTed)
without their outcome committed yet: what a crash at that moment would have delivered again.

    .venv/bin/python bench/webhooks.py                       # 20,000 webhooks, SQLite FULL
    .venv/bin/python bench/webhooks.py --runs 3 --loop asyncio,uvloop
    .venv/bin/python bench/webhooks.py --client sender,raw   # with the ceiling
    .venv/bin/python bench/webhooks.py --profile webhooks.prof   # cProfile of the engine side
    .venv/bin/python bench/webhooks.py --database postgres   # PostgreSQL on 127.0.0.1:5432

With ``--database postgres`` the webhooks are queued in a new database ``cascade_bench_<random>``
on the server of ``--postgres-url`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
dropped afterwards; the commits column then shows ``-``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import enginelib as lib
import harness
from loadgen import read_response

#: a message-status webhook as a Dispatch step produces it
BODY: dict[str, Any] = {
    "message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
    "to": {"type": "messenger", "id": "1234567890123456"},
    "from": {"type": "messenger", "id": "9876543210987654"},
    "timestamp": "2026-01-01T14:00:00.000Z",
    "status": "delivered",
    "usage": {"currency": "EUR", "price": "0.0333"},
    "client_ref": "order-48213",
    "_links": {
        "workflow": {
            "dispatch_uuid": "11111111-2222-4333-8444-555555555555",
            "href": "https://cascade.example.com/v0.1/dispatch/11111111-2222-4333-8444-555555555555",
        }
    },
}


@dataclass
class RunResult:
    """One measured run."""

    run: int
    loop: str
    client: str
    count: int
    seconds: float
    per_second: float
    received: int
    attempts: int
    #: SQLite commits (None on PostgreSQL)
    commits: int | None
    verified: int
    #: the most webhooks POSTed (or being POSTed) at one moment whose outcome was not committed
    unrecorded: int
    #: how many times a webhook stepped aside rather than wait (each a write)
    deferred: int
    #: this process's CPU (every thread: the loop and SQLite's commits) a delivery, in µs
    cpu_us_per_delivery: float


# --- the HTTP clients given to the sender ------------------------------------------------------


class RawClient:
    """The ceiling's client: keep-alive HTTP/1.1 over bare asyncio streams (see above)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[Any, Any]]] = {}

    async def post(self, target: Any, body: bytes, headers: Iterable[tuple[str, str]]) -> Any:
        from cascade.errors import PeerUnreachable
        from cascade.httpclient import Response
        from cascade.webhooks.delivery import USER_AGENT

        key = (target.destination.host, target.destination.port)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        request = (
            f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        idle = self._idle.setdefault(key, [])
        try:
            reader, writer = idle.pop() if idle else await asyncio.open_connection(*key)
            writer.write(request)
            status, _ = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise PeerUnreachable(f"connection failed: {exc!r}", request_sent=True) from exc
        idle.append((reader, writer))
        return Response(status)

    async def close(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()


class Window:
    """Counts the webhooks between the start of their POST and the commit of its outcome: the
    sender's HTTP client is given wrapped (:meth:`client`), and the store's
    ``record_webhook_attempt`` and ``defer_job`` are counted on the store object."""

    def __init__(self, store: Any) -> None:
        self.open = 0
        self.peak = 0
        #: webhooks that stepped aside (deferred) rather than wait
        self.deferred = 0
        record, defer = store.record_webhook_attempt, store.defer_job

        async def counted_defer(*args: Any, **kwargs: Any) -> Any:
            self.deferred += 1
            return await defer(*args, **kwargs)

        async def counted_record(*args: Any, **kwargs: Any) -> Any:
            try:
                return await record(*args, **kwargs)
            finally:
                self.open -= 1

        store.record_webhook_attempt = counted_record
        store.defer_job = counted_defer

    def client(self, inner: Any) -> Any:
        """``inner``, counting each POST as it starts."""
        window = self

        class Counted:
            async def post(self, target: Any, body: bytes, headers: Any) -> Any:
                window.open += 1
                window.peak = max(window.peak, window.open)
                return await inner.post(target, body, headers)

            async def close(self) -> None:
                await inner.close()

        return Counted()


def http_client(kind: str) -> Any:
    """The client the sender is given: its own kind (``sender``) or the ceiling (``raw``)."""
    if kind == "raw":
        return RawClient()
    from cascade.httpclient import HttpClient
    from cascade.webhooks.delivery import USER_AGENT, DeliverySettings

    settings = DeliverySettings()
    return HttpClient(
        user_agent=USER_AGENT,
        max_connections=settings.max_connections,
        max_body=settings.max_response_bytes,
    )


# --- the measured side ----------------------------------------------------------------------


async def _queue(store: Any, account_id: str, url: str, count: int) -> None:
    from cascade.domain.records import NewWebhook, WebhookKind

    body = json.dumps(BODY, separators=(",", ":")).encode()
    now = time.time()
    chunk = 2000
    for start in range(0, count, chunk):
        hooks = [
            NewWebhook(WebhookKind.STATUS, account_id, None, None, None, url, body)
            for _ in range(start, min(count, start + chunk))
        ]
        await store.add_webhooks(hooks, now)


class _Postgres:
    """Reads of the benchmark's PostgreSQL database, on a connection of its own."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def delivered(self) -> tuple[int, float | None]:
        row = await self.conn.fetchrow(
            "SELECT count(*), max(delivered_at) FROM webhooks WHERE state = 'delivered'"
        )
        return int(row[0]), row[1]

    async def outcome(self) -> tuple[int, dict[str, int]]:
        attempts = await self.conn.fetchval("SELECT count(*) FROM webhook_attempts")
        rows = await self.conn.fetch("SELECT state, count(*) FROM webhooks GROUP BY state")
        return int(attempts), {row[0]: int(row[1]) for row in rows}


class _Sqlite:
    """Reads of the benchmark's SQLite file, each on a connection of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def delivered(self) -> tuple[int, float | None]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as conn:
            row = conn.execute(
                "SELECT count(*), max(delivered_at) FROM webhooks WHERE state = 'delivered'"
            ).fetchone()
        return int(row[0]), row[1]

    async def outcome(self) -> tuple[int, dict[str, int]]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            attempts = conn.execute("SELECT count(*) FROM webhook_attempts").fetchone()[0]
            states = dict(conn.execute("SELECT state, count(*) FROM webhooks GROUP BY state"))
        return int(attempts), states


@dataclass
class _Measured:
    seconds: float
    commits: int | None
    secret: str
    unrecorded: int
    deferred: int
    attempts: int
    states: dict[str, int]
    #: this process's CPU from the engine's start to the last delivery recorded, seconds
    cpu: float


async def _open_store(
    args: argparse.Namespace, database_url: str
) -> tuple[Any, _Postgres | _Sqlite]:
    """The store the engine uses, opened, and the benchmark's own reads of its database."""
    from cascade.store.sqlite import SqliteStore

    if args.database == "postgres":
        import asyncpg  # type: ignore[import-untyped]

        from cascade.store.postgres import PostgresStore

        store: Any = PostgresStore(database_url)
        reads: _Postgres | _Sqlite = _Postgres(await asyncpg.connect(database_url))
    else:
        path = Path(database_url.removeprefix("sqlite:///"))
        store = SqliteStore(path, synchronous=args.synchronous)
        reads = _Sqlite(path)
    await store.open()
    return store, reads


async def _measure(
    database_url: str,
    url: str,
    client: str,
    args: argparse.Namespace,
    profile: cProfile.Profile | None,
) -> _Measured:
    """Queue, run the engine until every webhook is delivered, read what the store holds."""
    from cascade.clock import SystemClock
    from cascade.config import Settings
    from cascade.log import configure_logging
    from cascade.runtime import build_engine
    from cascade.service import new_account

    configure_logging("warning")  # as the other benchmarks run cascade serve
    clock = SystemClock()
    store, reads = await _open_store(args, database_url)
    http = http_client(client)
    try:
        created = new_account(clock)
        await store.create_account(created.account)
        await _queue(store, created.account.id, url, args.count)
        settings = Settings(
            _env_file=None,
            database_url=database_url,
            sqlite_synchronous=args.synchronous,
            worker_batch_size=args.batch_size,
        )
        window = Window(store)
        engine = build_engine(settings, store, clock, webhook_http=window.client(http))
        commits_before = getattr(store, "commits", 0)
        if profile is not None:
            profile.enable()
        started = clock.now()
        cpu_started = time.process_time()
        await engine.start()
        try:
            while True:
                # polled rarely (it runs in the measured process); the end is the time the
                # last webhook was recorded delivered, not the time of the poll
                await asyncio.sleep(0.25)
                delivered, last = await reads.delivered()
                if delivered >= args.count and last is not None:
                    elapsed = last - started
                    cpu = time.process_time() - cpu_started
                    break
                if clock.now() - started > args.timeout:
                    raise harness.BenchError(f"not all delivered after {args.timeout} s")
        finally:
            if profile is not None:
                profile.disable()
            await engine.stop()
        attempts, states = await reads.outcome()
        return _Measured(
            elapsed,
            None if args.database == "postgres" else getattr(store, "commits", 0) - commits_before,
            created.account.signature_secret,
            window.peak,
            window.deferred,
            attempts,
            states,
            cpu,
        )
    finally:
        await http.close()
        await store.close()
        if isinstance(reads, _Postgres):
            await reads.conn.close()


def run_once(
    index: int, loop: str, client: str, args: argparse.Namespace, procs: harness.Processes
) -> RunResult:
    """One run: a receiver process, a fresh database, the engine until all are delivered."""
    with (
        tempfile.TemporaryDirectory(prefix="cascade-webhooks-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        if args.database == "postgres":
            database_url = stack.enter_context(harness.postgres_database(args.postgres_url))
        else:
            database_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        receiver, port = lib.start_receiver(procs, Path(tmp))
        try:
            profile = cProfile.Profile() if args.profile else None
            measured = harness.run_loop(
                _measure(database_url, f"http://127.0.0.1:{port}/status", client, args, profile),
                loop,
            )
            if profile is not None:
                profile.dump_stats(args.profile)
            seen = harness.get_json(port, "/dump")
        finally:
            procs.stop(receiver)
    received, distinct = seen["requests"], seen["delivery_ids"]
    verified = _verify(seen["samples"], measured.secret)
    attempts, states = measured.attempts, measured.states
    if (
        received != args.count
        or distinct != args.count
        or attempts != args.count
        or states != {"delivered": args.count}
    ):
        raise harness.BenchError(
            f"exactly-once check failed: {args.count} queued, {received} received with "
            f"{distinct} distinct delivery ids, {attempts} attempts, states {states}"
        )
    return RunResult(
        index,
        loop,
        client,
        args.count,
        measured.seconds,
        args.count / measured.seconds,
        received,
        attempts,
        measured.commits,
        verified,
        measured.unrecorded,
        measured.deferred,
        measured.cpu / args.count * 1e6,
    )


def _verify(samples: list[dict[str, str]], secret: str) -> int:
    """Verify the sampled requests as a Vonage receiver does; how many were checked."""
    import jwt
    from vonage_jwt import verify_signature

    checked = 0
    for sample in samples:
        token, body = sample["token"], sample["body"].encode()
        if not verify_signature(token, secret):
            raise harness.BenchError("a webhook failed vonage_jwt verification")
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        if claims["payload_hash"] != hashlib.sha256(body).hexdigest():
            raise harness.BenchError("a webhook's payload_hash does not match its body")
        checked += 1
    return checked


NAMES = {"sender": "WebhookSender (its httptools client)", "raw": "ceiling: minimal asyncio client"}


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per client and event loop: medians over the runs."""
    rows = []
    for client, loop in dict.fromkeys((r.client, r.loop) for r in results):
        mine = [r for r in results if r.loop == loop and r.client == client]
        rates = [r.per_second for r in mine]
        commits = [r.commits for r in mine if r.commits is not None]
        rows.append(
            {
                "client": client,
                "loop": loop,
                "runs": len(mine),
                "per_second": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "seconds": statistics.median(r.seconds for r in mine),
                "commits": statistics.median(commits) if commits else None,
                "unrecorded_max": max(r.unrecorded for r in mine),
                "cpu_us_per_delivery": statistics.median(r.cpu_us_per_delivery for r in mine),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The table of the runs."""
    store = "PostgreSQL" if args.database == "postgres" else f"SQLite {args.synchronous}"
    print(f"\n{args.count:,} status webhooks queued in {store}, delivered to bench/receiver.py")
    print(
        f"{'HTTP client':<40} {'loop':<8} {'runs':>4} {'per s':>8} {'min':>8} {'max':>8} "
        f"{'s':>6} {'commits':>8} {'unrecorded':>10} {'CPU µs':>7}"
    )
    for r in rows:
        commits = f"{r['commits']:,.0f}" if r["commits"] is not None else "-"
        print(
            f"{NAMES[r['client']]:<40} {r['loop']:<8} {r['runs']:>4} {r['per_second']:>8,.0f} "
            f"{r['min']:>8,.0f} {r['max']:>8,.0f} {r['seconds']:>6.2f} {commits:>8} "
            f"{r['unrecorded_max']:>10} {r['cpu_us_per_delivery']:>7,.0f}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="webhooks queued per run")
    parser.add_argument("--runs", type=int, default=1, help="runs per event loop")
    parser.add_argument(
        "--loop", default="uvloop", help="uvloop (as cascade serve), asyncio, or both: a,b"
    )
    parser.add_argument(
        "--client", default="sender", help="sender (the real one), raw (the ceiling), or both"
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CASCADE_BENCH_POSTGRES_URL", harness.DEFAULT_POSTGRES_URL),
        help="a server on 127.0.0.1 where a database may be created (with --database postgres)",
    )
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--batch-size", type=int, default=200, help="engine batch size")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after seconds")
    parser.add_argument("--profile", default=None, help="write a cProfile of the engine here")
    harness.add_machine_options(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    """Every client and loop, ``--runs`` times; the runs and the table's rows."""
    results = []
    for index in range(1, args.runs + 1):
        for client in args.client.split(","):
            for loop in args.loop.split(","):
                result = run_once(index, loop, client, args, procs)
                print(
                    f"run {index} {client} {loop}: {result.count} delivered in "
                    f"{result.seconds:.2f} s = {result.per_second:,.0f}/s "
                    f"({result.commits or '-'} commits, {result.verified} verified with "
                    f"vonage_jwt, at most {result.unrecorded} unrecorded, "
                    f"{result.deferred} stepped aside, {result.cpu_us_per_delivery:,.0f} µs CPU "
                    "a delivery)",
                    flush=True,
                )
                results.append(result)
    return {"summary": summarize(results), "runs": [asdict(r) for r in results]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    return harness.run_benchmark(
        "webhooks", args, run, lambda result: print_table(result["summary"], args)
    )


if __name__ == "__main__":
    sys.exit(main())
