"""End-to-end sandbox throughput: workflows completed per second by ``cascade serve``.

It starts ``cascade serve`` (engine in-process, the built-in sandbox with
``CASCADE_SANDBOX_SPEED=--speed``, so receipts come ``--speed`` times sooner than documented)
over a fresh SQLite file, POSTs ``--n`` workflows from ``--connections`` concurrent clients as
fast as the API takes them, and polls the database (every 0.1 s, a read-only connection) until
every workflow has finished. It reports, on the wall clock

* workflows completed per second, from the first accept to the last completion;
* jobs run per second over the same span (the engine's ``cascade_jobs_run`` counter: sends,
  step timers, report horizons, webhooks) and receipts applied per second;
* how long the last workflow took after the last accept (the engine's backlog at the end).

Modes (``--mode``): ``live`` (the default) runs the engine while the API accepts, so the
figure is bounded by the accept rate when the engine keeps up; ``backlog`` accepts everything
with the engine off (``CASCADE_RUN_WORKER=false``), then restarts ``cascade serve`` with it and
times the drain from the engine start: the engine alone.

Shapes (``--shape``), default recipients only (every message is delivered):

* ``sms``: one SMS step, complete on ``delivered`` (the sandbox delivers after 1 s / speed);
* ``failover``: Messenger with ``condition_status: read`` and ``expiry_time: 600`` then SMS; it
  completes when the Messenger message is read (2 s / speed), so the SMS step is cancelled.

No webhook URL is configured, so no status or final-report webhook is stored or delivered.

    .venv/bin/python bench/throughput.py                      # 10,000 sms, speed 100
    .venv/bin/python bench/throughput.py --shape failover --n 5000 --json
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import enginelib as lib
import harness

FINISHED_SQL = "SELECT count(*) FROM workflows WHERE state != 'running'"
COUNT_SQL = "SELECT count(*), sum(state = 'completed') FROM workflows"


def body(shape: str) -> bytes:
    if shape == "sms":
        return lib.dispatch(lib.sms_step())
    return lib.dispatch(
        lib.messenger_step("1234567890123456", expiry_time=600, condition="read"), lib.sms_step()
    )


def accept_all(server: lib.Server, args: argparse.Namespace) -> lib.PostResult:
    posted = lib.post_many(server.port, server.token, body(args.shape), args.n, args.connections)
    lib.accept_or_fail(posted, args.n, server)
    return posted


def run(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    env = {"CASCADE_SANDBOX_SPEED": str(args.speed), "CASCADE_SQLITE_SYNCHRONOUS": args.synchronous}
    if args.batch_size:
        env["CASCADE_WORKER_BATCH_SIZE"] = str(args.batch_size)
    live = args.mode == "live"
    if not live:
        env["CASCADE_RUN_WORKER"] = "false"  # accept everything first, with no engine
    server = lib.Server(procs, env, keep=args.keep)
    try:
        server.start()
        startup_cpu = harness.process_cpu(server.pid)  # imports and start-up, no engine work yet
        if not live:
            posted = accept_all(server, args)
            server.stop()
            server.env["CASCADE_RUN_WORKER"] = "true"
            server.start()  # the engine finds the whole backlog due
        engine_started = time.time()
        # backlog: a fresh process, whose counters start at zero (its engine is already busy)
        before = server.metrics() if live else {}
        # (the restarted process's own start-up is taken to cost what the first one's did)
        cpu0 = harness.process_cpu(server.pid) if live else startup_cpu
        busy0, wall0 = harness.machine_busy(), time.monotonic()
        if live:
            posted = accept_all(server, args)
        server.wait_for(
            "every workflow to finish",
            lambda: server.query(FINISHED_SQL)[0][0] >= len(posted.accepted),
            timeout=args.timeout,
            interval=0.1,
        )
        all_finished = time.time()  # the wall clock (finished_at is when a receipt was due)
        cpu1 = harness.process_cpu(server.pid)
        busy1, wall1 = harness.machine_busy(), time.monotonic()
        after = server.metrics()
        server.stop()
        workflows, completed = server.query(COUNT_SQL)[0]
    finally:
        server.cleanup()
    # live: from the first POST; backlog: from the engine's start
    first = posted.started if live else engine_started
    last_accept, last_finish = posted.finished, all_finished
    span = last_finish - first
    jobs = lib.labelled_sum(after, "cascade_jobs_run_total") - lib.labelled_sum(
        before, "cascade_jobs_run_total"
    )
    receipts = lib.labelled_sum(after, "cascade_receipts_total") - lib.labelled_sum(
        before, "cascade_receipts_total"
    )
    return {
        "mode": args.mode,
        "shape": args.shape,
        "speed": args.speed,
        "workflows": workflows,
        "completed": completed,
        "accept_rate": posted.rate,
        "span_s": span,
        "workflows_per_s": workflows / span,
        "jobs": jobs,
        "jobs_per_s": jobs / span,
        "receipts": receipts,
        "receipts_per_s": receipts / span,
        "tail_s": last_finish - last_accept,
        "server_cpu_s": cpu1 - cpu0,
        "server_cpu_us_per_workflow": (cpu1 - cpu0) / workflows * 1e6,
        "server_cpu_cores": (cpu1 - cpu0) / (wall1 - wall0),
        "machine_busy_cores": (busy1 - busy0) / (wall1 - wall0),
    }


def print_result(r: dict[str, Any]) -> None:
    print()
    print(
        f"{r['mode']}, shape {r['shape']}, sandbox speed {r['speed']:g}: "
        f"{r['workflows']:,} workflows, {r['completed']:,} completed"
    )
    print(f"{'':<34} {'value':>10}")
    start = "first accept" if r["mode"] == "live" else "engine start"
    rows = [
        ("accepted / s (API)", f"{r['accept_rate']:,.0f}"),
        (f"{start} -> last finished (s)", f"{r['span_s']:.2f}"),
        ("workflows completed / s", f"{r['workflows_per_s']:,.0f}"),
        ("jobs run / s", f"{r['jobs_per_s']:,.0f}"),
        ("receipts applied / s", f"{r['receipts_per_s']:,.0f}"),
        (
            "last accept -> last finished (s, live)",
            f"{r['tail_s']:.2f}" if r["mode"] == "live" else "-",
        ),
        ("server CPU (cores, avg)", f"{r['server_cpu_cores']:.2f}"),
        ("server CPU per workflow (µs)", f"{r['server_cpu_us_per_workflow']:,.0f}"),
        ("machine busy (cores, avg)", f"{r['machine_busy_cores']:.2f}"),
    ]
    for name, value in rows:
        print(f"{name:<42} {value:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="workflows")
    parser.add_argument("--shape", choices=["sms", "failover"], default="sms")
    parser.add_argument(
        "--mode",
        choices=["live", "backlog"],
        default="live",
        help="live: the engine runs while the API accepts; backlog: accept everything with the "
        "engine off, then start it and time the drain",
    )
    parser.add_argument("--speed", type=float, default=100.0, help="CASCADE_SANDBOX_SPEED")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--batch-size", type=int, default=0, help="CASCADE_WORKER_BATCH_SIZE")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait in all")
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    return harness.run_benchmark("throughput", args, run, print_result)


if __name__ == "__main__":
    sys.exit(main())
