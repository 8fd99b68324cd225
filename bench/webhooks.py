"""The webhook delivery benchmark: customer webhooks delivered per second to a local receiver.

It queues ``--count`` message-status webhooks (a realistic ~450-byte v0.1 body, a URL on the
receiver) in a fresh SQLite file with ``store.add_webhooks``, then starts the engine exactly as
``cascade serve`` builds it (``runtime.build_engine``: the real WebhookSender, signed JWTs, one
attempt row per delivery) and measures the time from the engine's start until the last webhook
is ``delivered`` (its ``delivered_at``). The receiver is a separate process (``bench/webhooks.py
receive``): a raw asyncio HTTP/1.1 server with keep-alive answering ``204`` to every POST, on
uvloop when installed.

With ``--client raw`` (the ceiling, like the accept benchmark's trivial app) the sender's HTTP
client is replaced, for the run only, by a minimal keep-alive HTTP/1.1 client over asyncio
streams (plain http, ``Content-Length`` answers: enough for this receiver, not for production);
everything else is the same, so the two figures show what the HTTP client costs.

Every run is checked, not assumed: each webhook must be delivered exactly once (the receiver's
request count equals ``--count``, as does the number of distinct ``X-Cascade-Delivery-Id``
headers it saw, and the store holds one attempt per webhook), and a sample of the requests
received is verified with the official ``vonage_jwt`` package against the account's signature
secret.

It also reports the most webhooks that were, at any moment, POSTed (or being POSTed) without
their outcome committed yet: what a crash at that moment would have delivered again.

    .venv/bin/python bench/webhooks.py                       # 20,000 webhooks, SQLite FULL
    .venv/bin/python bench/webhooks.py --runs 3 --loop asyncio,uvloop
    .venv/bin/python bench/webhooks.py --client sender,raw      # with the ceiling
    .venv/bin/python bench/webhooks.py --profile webhooks.prof   # cProfile of the engine side
    .venv/bin/python bench/webhooks.py --runs 3 --append         # add the table to BENCHMARKS.md
    .venv/bin/python bench/webhooks.py --database postgres       # PostgreSQL on 127.0.0.1:5432

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
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
HEADING = "## Webhook delivery"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

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


# --- the receiver (a separate process) ---------------------------------------------------------


async def _receive(port: int) -> tuple[int, int, list[dict[str, str]]]:
    """Answer 204 to every request until SIGTERM; how many came, how many distinct delivery
    ids they carried, and a sample of them."""
    count = 0
    delivery_ids: set[bytes] = set()
    samples: list[dict[str, str]] = []
    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                token = ""
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    lowered = name.lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"authorization":
                        token = value.strip().decode().removeprefix("Bearer ")
                    elif lowered == b"x-cascade-delivery-id":
                        delivery_ids.add(value.strip())
                body = await reader.readexactly(length)
                count += 1
                if len(samples) < 20 and count % 997 == 1:
                    samples.append({"token": token, "body": body.decode()})
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    return count, len(delivery_ids), samples


def receive_main(port: int, sample_path: str | None) -> None:
    """Entry point of ``bench/webhooks.py receive``: prints how many requests came."""
    try:
        import uvloop

        count, distinct, samples = uvloop.run(_receive(port))
    except ImportError:
        count, distinct, samples = asyncio.run(_receive(port))
    if sample_path:
        Path(sample_path).write_text(json.dumps(samples))
    print(count, distinct, flush=True)


# --- the measured side ----------------------------------------------------------------------


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


_IDLE: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}


async def _raw_post(self: Any, webhook: Any, target: Any, account: Any, now: float) -> Any:
    """The ceiling's client: WebhookSender._post over bare asyncio streams (see above)."""
    from urllib.parse import urlsplit

    from cascade.webhooks.delivery import USER_AGENT, _Result, delivery_id
    from cascade.webhooks.signing import sign

    delivery = delivery_id(webhook.id, webhook.body)
    token = sign(
        webhook.body,
        secret=account.signature_secret,
        api_key=account.api_key,
        application_id=webhook.application_id,
        now=now,
        delivery_id=delivery,
    )
    parts = urlsplit(webhook.url)
    key = (parts.hostname or "127.0.0.1", parts.port or 80)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nX-Cascade-Delivery-Id: {delivery}\r\n"
        f"Content-Length: {len(webhook.body)}\r\n\r\n"
    ).encode()
    idle = _IDLE.setdefault(key, [])
    try:
        async with asyncio.timeout(self.settings.timeout):
            reader, writer = idle.pop() if idle else await asyncio.open_connection(*key)
            writer.write(head + webhook.body)
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            code = int(lines[0].split()[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            idle.append((reader, writer))
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        return _Result(None, f"connection failed: {exc!r}", retry=True)
    if 200 <= code <= 205:
        return _Result(code, None, retry=False)
    return _Result(code, f"HTTP {code}", retry=code == 429 or code >= 500)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _outcome(path: Path) -> tuple[int, dict[str, int]]:
    """How many attempt rows there are, and how many webhooks in each state (SQLite)."""
    conn = sqlite3.connect(path)
    try:
        attempts = conn.execute("SELECT count(*) FROM webhook_attempts").fetchone()[0]
        states = dict(conn.execute("SELECT state, count(*) FROM webhooks GROUP BY state"))
    finally:
        conn.close()
    return int(attempts), states


def _delivered(path: Path) -> tuple[int, float | None]:
    """How many webhooks are delivered, and when the last one was."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute(
            "SELECT count(*), max(delivered_at) FROM webhooks WHERE state = 'delivered'"
        ).fetchone()
        return int(row[0]), row[1]
    finally:
        conn.close()


def _sender(engine: Any) -> Any:
    """The engine's webhook sender: its job kind ``webhook``, or its handler of ``webhook`` jobs
    in trees from before the engine was built with its job kinds (so they compare)."""
    if hasattr(engine, "job_kind"):
        return engine.job_kind("webhook")
    return engine.handlers["webhook"].__self__


class _Window:
    """Counts the webhooks between the start of their POST and the commit of its outcome, by
    wrapping the sender's ``_post`` and the store's ``record_webhook_attempt`` (both are there
    in every version of the sender, so trees before and after a change compare)."""

    def __init__(self, sender: Any, store: Any) -> None:
        self.open = 0
        self.peak = 0
        #: webhooks that stepped aside (deferred) rather than wait
        self.deferred = 0
        post, record, defer = sender._post, store.record_webhook_attempt, store.defer_job

        async def counted_defer(*args: Any, **kwargs: Any) -> Any:
            self.deferred += 1
            return await defer(*args, **kwargs)

        async def counted_post(*args: Any, **kwargs: Any) -> Any:
            self.open += 1
            self.peak = max(self.peak, self.open)
            return await post(*args, **kwargs)

        async def counted_record(*args: Any, **kwargs: Any) -> Any:
            try:
                return await record(*args, **kwargs)
            finally:
                self.open -= 1

        sender._post = counted_post
        store.record_webhook_attempt = counted_record
        store.defer_job = counted_defer


@dataclass
class _Measured:
    seconds: float
    commits: int | None
    secret: str
    unrecorded: int
    deferred: int
    attempts: int
    states: dict[str, int]


async def _measure(
    path: Path,
    database_url: str,
    url: str,
    args: argparse.Namespace,
    profile: cProfile.Profile | None,
) -> _Measured:
    """Queue, run the engine until every webhook is delivered, read what the store holds."""
    from cascade.clock import SystemClock
    from cascade.config import Settings
    from cascade.runtime import build_engine
    from cascade.service import new_account
    from cascade.store.base import Store
    from cascade.store.sqlite import SqliteStore

    clock = SystemClock()
    store: Store
    postgres: _Postgres | None = None
    if args.database == "postgres":
        import asyncpg  # type: ignore[import-untyped]

        from cascade.store.postgres import PostgresStore

        store = PostgresStore(database_url)
        postgres = _Postgres(await asyncpg.connect(database_url))
    else:
        store = SqliteStore(path, synchronous=args.synchronous)
    await store.open()
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
        engine = build_engine(settings, store, clock)
        window = _Window(_sender(engine), store)
        commits_before = getattr(store, "commits", 0)
        if profile is not None:
            profile.enable()
        started = clock.now()
        await engine.start()
        try:
            while True:
                # polled rarely (it runs in the measured process); the end is the time the
                # last webhook was recorded delivered, not the time of the poll
                await asyncio.sleep(0.25)
                delivered, last = await postgres.delivered() if postgres else _delivered(path)
                if delivered >= args.count and last is not None:
                    elapsed = last - started
                    break
                if clock.now() - started > args.timeout:
                    raise SystemExit(f"not all delivered after {args.timeout} s")
        finally:
            if profile is not None:
                profile.disable()
            await engine.stop()
        attempts, states = await postgres.outcome() if postgres else _outcome(path)
        return _Measured(
            elapsed,
            None if postgres else getattr(store, "commits", 0) - commits_before,
            created.account.signature_secret,
            window.peak,
            window.deferred,
            attempts,
            states,
        )
    finally:
        await store.close()
        if postgres is not None:
            await postgres.conn.close()


def _run_loop(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def run_once(index: int, loop: str, client: str, args: argparse.Namespace) -> RunResult:
    """One run: a receiver process, a fresh database, the engine until all are delivered."""
    from cascade.webhooks.delivery import WebhookSender

    real_post = WebhookSender._post
    if client == "raw":
        WebhookSender._post = _raw_post  # type: ignore[method-assign]
    try:
        return _run_once(index, loop, client, args)
    finally:
        WebhookSender._post = real_post  # type: ignore[method-assign]
        _IDLE.clear()


async def _postgres_admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _run_once(index: int, loop: str, client: str, args: argparse.Namespace) -> RunResult:
    if args.database != "postgres":
        return _run_on(index, loop, client, args, None)
    name = f"cascade_bench_{os.urandom(6).hex()}"
    asyncio.run(_postgres_admin(args.postgres_url, f'CREATE DATABASE "{name}"'))
    try:
        return _run_on(index, loop, client, args, args.postgres_url.rsplit("/", 1)[0] + "/" + name)
    finally:
        asyncio.run(
            _postgres_admin(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


def _run_on(
    index: int, loop: str, client: str, args: argparse.Namespace, postgres_url: str | None
) -> RunResult:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cascade-webhooks-") as tmp:
        path = Path(tmp) / "bench.db"
        database_url = postgres_url or f"sqlite:///{path}"
        samples = Path(tmp) / "samples.json"
        receiver = subprocess.Popen(
            [sys.executable, __file__, "receive", "--port", str(port), "--samples", str(samples)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None
            if receiver.stdout.readline().strip() != "ready":
                raise SystemExit("the receiver did not start")
            profile = cProfile.Profile() if args.profile else None
            measured = _run_loop(
                _measure(path, database_url, f"http://127.0.0.1:{port}/status", args, profile),
                loop,
            )
            if profile is not None:
                profile.dump_stats(args.profile)
        finally:
            receiver.send_signal(signal.SIGTERM)
            out, _ = receiver.communicate(timeout=30)
        received, distinct = (int(word) for word in out.split()[-2:])
        attempts, states = measured.attempts, measured.states
        verified = _verify(samples, measured.secret)
    from cascade.webhooks import delivery

    # (a tree from before delivery ids, measured for comparison, sends none)
    ids_expected = args.count if hasattr(delivery, "delivery_id") else 0
    if (
        received != args.count
        or distinct != ids_expected
        or attempts != args.count
        or states != {"delivered": args.count}
    ):
        raise SystemExit(
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
    )


def _verify(samples: Path, secret: str) -> int:
    """Verify the sampled requests as a Vonage receiver does; how many were checked."""
    import jwt
    from vonage_jwt import verify_signature

    checked = 0
    for sample in json.loads(samples.read_text()):
        token, body = sample["token"], sample["body"].encode()
        if not verify_signature(token, secret):
            raise SystemExit("a webhook failed vonage_jwt verification")
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        if claims["payload_hash"] != hashlib.sha256(body).hexdigest():
            raise SystemExit("a webhook's payload_hash does not match its body")
        checked += 1
    return checked


def machine() -> str:
    """The CPU, cores, memory, OS and Python, in one line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def report(
    results: list[RunResult], args: argparse.Namespace, command: str, load: tuple[float, float]
) -> str:
    """The results as a Markdown section (``load``: the 1-minute load average before and after
    the runs; other work on the machine shows there)."""

    def paragraph(text: str) -> str:
        return textwrap.fill(text, width=100, break_on_hyphens=False)

    lines = [
        HEADING,
        "",
        paragraph(
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; 1-minute load average "
            f"{load[0]:.2f} before the runs, {load[1]:.2f} after (the machine is shared: other "
            "work shows there)."
        ),
        "",
        "```bash",
        f".venv/bin/{command}",
        "```",
        "",
        paragraph(
            f"{args.count:,} message-status webhooks queued in "
            + (
                "PostgreSQL"
                if args.database == "postgres"
                else f"SQLite (synchronous={args.synchronous})"
            )
            + ", delivered by the engine as `cascade serve` "
            "builds it (`runtime.build_engine`: WebhookSender, HS256-signed, one attempt row "
            "each) to a receiver process on 127.0.0.1 answering 204; timed from the engine's "
            "start to the last `delivered_at`. Every run is checked: each webhook received "
            "exactly once with its own `X-Cascade-Delivery-Id`, one attempt row each, a sample "
            "verified with `vonage_jwt`. `unrecorded (max)` is the most webhooks POSTed at one "
            "moment whose outcome was not committed yet (what a crash then would send again). "
            "The ceiling rows replace only the sender's HTTP client, for the run, by a minimal "
            "asyncio one (`--client raw`)."
        ),
        "",
        "| HTTP client | event loop | runs | deliveries/s (median) | min | max "
        "| seconds (median) | SQLite commits | unrecorded (max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "sender": "WebhookSender (its httptools client)",
        "raw": "ceiling: minimal asyncio client",
    }
    for client, loop in dict.fromkeys((r.client, r.loop) for r in results):
        mine = [r for r in results if r.loop == loop and r.client == client]
        rates = [r.per_second for r in mine]
        lines.append(
            f"| {names[client]} | {loop} | {len(mine)} | {statistics.median(rates):,.0f} "
            f"| {min(rates):,.0f} | {max(rates):,.0f} "
            f"| {statistics.median(r.seconds for r in mine):.2f} "
            f"| {_commits(mine)} "
            f"| {max(r.unrecorded for r in mine)} |"
        )
    return "\n".join(lines) + "\n"


def _commits(results: list[RunResult]) -> str:
    """The median of the runs' SQLite commits (none on PostgreSQL)."""
    commits = [r.commits for r in results if r.commits is not None]
    return f"{statistics.median(commits):,.0f}" if commits else "-"


def append(section: str) -> None:
    """Add (or replace) the webhook section of BENCHMARKS.md, leaving every other section
    alone, and keeping the notes written under ``###`` headings inside this one."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    start = text.find(HEADING + "\n")
    if start < 0:
        BENCHMARKS.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + len(HEADING))
    end = end + 1 if end >= 0 else len(text)
    old = text[start:end]
    notes = old.find("\n### ")
    kept = old[notes + 1 :].rstrip("\n") + "\n" if notes >= 0 else ""
    rest = text[end:]
    new = section + ("\n" + kept if kept else "")
    BENCHMARKS.write_text(text[:start] + new + ("\n" + rest if rest else ""))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    receive = sub.add_parser("receive", help="run the receiver (used by the benchmark)")
    receive.add_argument("--port", type=int, required=True)
    receive.add_argument("--samples", default=None)
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
        default=os.environ.get("CASCADE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a server on 127.0.0.1 where a database may be created (with --database postgres)",
    )
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--batch-size", type=int, default=200, help="engine batch size")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after seconds")
    parser.add_argument("--profile", default=None, help="write a cProfile of the engine here")
    parser.add_argument(
        "--append", action="store_true", help=f"write the table into {BENCHMARKS.name}"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    if args.command == "receive":
        receive_main(args.port, args.samples)
        return 0
    sys.path.insert(0, str(REPO / "src"))
    command = "python bench/webhooks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    load_before = os.getloadavg()[0]
    for run in range(1, args.runs + 1):
        for client in args.client.split(","):
            for loop in args.loop.split(","):
                result = run_once(run, loop, client, args)
                print(
                    f"run {run} {client} {loop}: {result.count} delivered in "
                    f"{result.seconds:.2f} s = {result.per_second:,.0f}/s "
                    f"({result.commits or '-'} commits, {result.verified} verified with "
                    "vonage_jwt, "
                    f"at most {result.unrecorded} unrecorded, {result.deferred} stepped aside)",
                    flush=True,
                )
                results.append(result)
    section = report(results, args, command.strip(), (load_before, os.getloadavg()[0]))
    print()
    print(section)
    if args.append:
        append(section)
        print(f"written to {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
