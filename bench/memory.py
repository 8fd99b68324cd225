"""Resident memory of ``cascade serve``: idle on an empty database vs. with pending workflows.

It starts ``cascade serve`` (engine in-process, the built-in sandbox) over a fresh SQLite file and
reads ``VmRSS`` from ``/proc/PID/status``:

1. **empty**: ``--settle`` seconds after ``/health`` first answers, nothing stored;
2. **warm**: after ``--warmup`` requests (every code path the load uses has run once: lazy
   imports, caches, the first allocations of the event loop and SQLite), settled;
3. **loaded**: after ``--n`` more workflows were accepted through the API (``--connections``
   concurrent clients, the same rows any client gets) and the engine has sent every first step,
   settled. The workflows stay pending: step 1 is Messenger to a recipient ending in ``0003``
   (``submitted``, then silence) with ``expiry_time`` 86400 s and ``condition_status: read``,
   step 2 SMS; each leaves a ``step_timeout`` job 24 h out, a sandbox journal row and their
   workflow, message and event rows;
4. **restarted**: a fresh ``cascade serve`` over that database, settled (what a restart with a
   backlog costs: the sandbox re-reads its journal, the engine looks at the job table).

It reports VmRSS (and the peak, VmHWM) at each point and the growth over **empty**. The
target is that ``n = 100,000`` pending workflows add less than 50 MB.

    .venv/bin/python bench/memory.py                       # 100,000 pending workflows
    .venv/bin/python bench/memory.py --n 20000 --json
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import enginelib as lib
import harness

TARGET_MB = 50.0
SENT_SQL = "SELECT count(*) FROM sandbox_messages"


def pending_body() -> bytes:
    return lib.dispatch(
        lib.messenger_step("1234567890120003", expiry_time=86400, condition="read"),
        lib.sms_step(),
    )


def snapshot(server: lib.Server, label: str, settle: float) -> dict[str, Any]:
    time.sleep(settle)
    status = server.status()
    point = {
        "point": label,
        "rss_mb": status["VmRSS"] / 1024,
        "hwm_mb": status["VmHWM"] / 1024,
        "anon_mb": status.get("RssAnon", 0) / 1024,
        "file_mb": status.get("RssFile", 0) / 1024,
    }
    print(
        f"  {label:<10} VmRSS {point['rss_mb']:7.1f} MB (anon {point['anon_mb']:.1f}, "
        f"file {point['file_mb']:.1f}), VmHWM {point['hwm_mb']:.1f} MB",
        flush=True,
    )
    return point


def run(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    server = lib.Server(procs, {"CASCADE_SQLITE_SYNCHRONOUS": args.synchronous}, keep=args.keep)
    points = []
    try:
        server.start()
        points.append(snapshot(server, "empty", args.settle))
        body = pending_body()
        warm = lib.post_many(server.port, server.token, body, args.warmup, args.connections)
        server.wait_for(
            "the warm-up sends", lambda: server.query(SENT_SQL)[0][0] >= len(warm.accepted), 60
        )
        points.append(snapshot(server, "warm", args.settle))
        posted = lib.post_many(server.port, server.token, body, args.n, args.connections)
        print(
            f"  accepted {len(posted.accepted):,} in {posted.finished - posted.started:.1f} s "
            f"({posted.rate:,.0f}/s; statuses {posted.statuses})",
            flush=True,
        )
        total = len(warm.accepted) + len(posted.accepted)
        server.wait_for(
            "every first step to be sent",
            lambda: server.query(SENT_SQL)[0][0] >= total,
            args.timeout,
        )
        points.append(snapshot(server, "loaded", args.settle))
        pending = server.query("SELECT count(*) FROM workflows WHERE state = 'running'")[0][0]
        jobs = server.query("SELECT count(*) FROM jobs")[0][0]
        size = server.db_path.stat().st_size + (
            server.db_path.with_name("cascade.db-wal").stat().st_size
            if server.db_path.with_name("cascade.db-wal").exists()
            else 0
        )
        server.stop()
        server.start()
        points.append(snapshot(server, "restarted", args.settle))
    finally:
        server.cleanup()
    base = points[0]["rss_mb"]
    for point in points:
        point["growth_mb"] = point["rss_mb"] - base
    loaded_growth = max(p["growth_mb"] for p in points if p["point"] in ("loaded", "restarted"))
    return {
        "points": points,
        "pending_workflows": pending,
        "jobs": jobs,
        "database_mb": size / 1048576,
        "accept_rate": posted.rate,
        "n": args.n,
        "target_met": loaded_growth < TARGET_MB,
    }


def print_result(r: dict[str, Any]) -> None:
    print()
    print(
        f"{r['pending_workflows']:,} pending workflows ({r['jobs']:,} jobs; database "
        f"{r['database_mb']:.0f} MB on disk)"
    )
    print(f"{'point':<11} {'VmRSS MB':>9} {'growth MB':>10} {'VmHWM MB':>9}")
    for p in r["points"]:
        print(f"{p['point']:<11} {p['rss_mb']:>9.1f} {p['growth_mb']:>+10.1f} {p['hwm_mb']:>9.1f}")
    verdict = "met" if r["target_met"] else "MISSED"
    print(f"target: loaded and restarted grow < {TARGET_MB:g} MB over empty: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="pending workflows")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up workflows")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each reading")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for sends")
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    return harness.run_benchmark("memory", args, run, print_result)


if __name__ == "__main__":
    sys.exit(main())
