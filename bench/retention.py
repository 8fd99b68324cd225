"""Retention sweep cost on SQLite: how long one purge transaction holds the event loop (the
SQLite store runs its writes on the loop thread) and how fast a backlog drains.

It fills a fresh SQLite file with ``--n`` finished two-step workflows, each with its timeline,
a delivered final-report webhook and one attempt (the rows a real workflow leaves), then
purges them ``--batch`` workflows per transaction and reports each transaction's time (p50 /
p99 / max) and the rows per second.

    PYTHONPATH=src .venv/bin/python bench/retention.py     # 20,000 workflows, batches of 200
    PYTHONPATH=src .venv/bin/python bench/retention.py --n 50000 --batch 500
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from cascade.domain.records import Account, NewStep, NewWorkflow, Surface
from cascade.store.sqlite import SqliteStore

T0 = 1_800_000_000.0
OWNER = Account("owner", "key", "0" * 64, "signature", "https://hooks.example", None, T0)


def workflow(n: int) -> NewWorkflow:
    """A Messenger-then-SMS workflow (its jobs are deleted before the purge anyway)."""
    steps = tuple(
        NewStep(
            f"m{n}-{step}",
            channel,
            b'{"number":"447700900000"}',
            b'{"id":"acme"}',
            b'{"content":{"type":"text","text":"hello"}}',
            None,
            600,
            None,
        )
        for step, channel in enumerate(("messenger", "sms"))
    )
    return NewWorkflow(f"w{n}", OWNER.id, None, Surface.DISPATCH, steps, T0)


async def fill(path: Path, n: int) -> None:
    """``n`` accepted workflows, then finished with a delivered report, written directly."""
    store = SqliteStore(path, synchronous="NORMAL")
    await store.open()
    await store.create_account(OWNER)
    for start in range(0, n, 1000):
        requests = [workflow(i) for i in range(start, min(n, start + 1000))]
        await asyncio.gather(*(store.accept(r) for r in requests))
    await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE workflows SET state = 'completed', finished_at = ?", (T0 + 60,))
        conn.execute(
            "INSERT INTO events (workflow_id, message_id, at, kind, status, source) "
            "SELECT workflow_id, id, ?, 'status', 'delivered', 'test' FROM messages",
            (T0 + 30,),
        )
        conn.execute(
            "INSERT INTO webhooks (account_id, workflow_id, message_id, kind, url, body, state, "
            "attempts, created_at, delivered_at) SELECT account_id, id, NULL, 'final-report', "
            "'https://hooks.example', '{\"status\":\"completed\"}', 'delivered', 1, ?, ? "
            "FROM workflows",
            (T0 + 60, T0 + 61),
        )
        conn.execute(
            "INSERT INTO webhook_attempts (webhook_id, at, status_code, duration) "
            "SELECT id, ?, 200, 0.01 FROM webhooks",
            (T0 + 61,),
        )
        conn.execute("DELETE FROM jobs")
    conn.close()


async def purge(path: Path, batch: int) -> tuple[list[float], int]:
    """Purge everything in batches; each transaction's seconds and the rows deleted."""
    conn = sqlite3.connect(path)
    rows = sum(
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("workflows", "messages", "events", "webhooks", "webhook_attempts")
    )
    conn.close()
    store = SqliteStore(path)
    await store.open()
    times = []
    while True:
        started = time.perf_counter()
        count = await store.purge_workflows(T0 + 3600, batch)
        times.append(time.perf_counter() - started)
        if count < batch:
            break
    await store.close()
    return times, rows


def main() -> None:
    """Fill, purge, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "retention.db"
        asyncio.run(fill(path, args.n))
        began = time.perf_counter()
        times, rows = asyncio.run(purge(path, args.batch))
        elapsed = time.perf_counter() - began
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{args.n} workflows ({rows} rows) in {len(times)} transactions of {args.batch}: "
        f"p50 {statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms per transaction; {rows / elapsed:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
