"""Many nodes on PostgreSQL: one node (an API process and a worker) against two (two API
processes and two workers, one worker SIGKILLed mid-run), each taking ``--workflows`` mixed
sandbox workflows on a fresh schema of the local PostgreSQL.

The scenario is the multi-node test's (``tests/cluster.py``): plain messages delivered,
rejected, throttled twice and read, and dispatches of two and three steps whose 15 s windows
are timers, posted round the API processes on keep-alive connections; every webhook goes to a
local receiver. It reports, per layout:

* accept: 202s per second while posting;
* end to end: workflows per second from the first post to the last workflow finished, and how
  long after the last accept the last one finished (15 s of it is the last windows' expiry);
* timer lateness: how long after its window closed each expired step's failover was stored
  (p50, p99, max; a killed worker's timers wait for its lease);
* final once: every workflow ended as its script says with one ending, and every dispatch got
  one final report (a repeat after the kill has the same delivery id);
* the CPU the machine spent during the run, and how much of it was this run's processes
  (the rest is PostgreSQL and whatever else ran: the other load).

It needs the repository root on ``sys.path`` (it borrows the tests' scenario)::

    PYTHONPATH=src:. .venv/bin/python bench/nodes.py                  # 10,000 workflows
    PYTHONPATH=src:. .venv/bin/python bench/nodes.py --workflows 2000 --json out.json

The suite (``bench/run.py``) runs it as its ``nodes`` step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import harness
from tests import cluster
from tests.running import Processes

LAYOUTS = {"one": (1, 1, False), "two": (2, 2, True)}


def own_seconds() -> float:
    """CPU seconds of this process and of its children that ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def final_once(outcome: cluster.Outcome) -> dict[str, int]:
    """How many workflows broke the "final once" rule, by way (all 0 when none did)."""
    expected = {kind.name: kind for kind in cluster.MIX}
    finals: dict[str, set[str]] = defaultdict(set)
    for request in outcome.webhooks:
        body = request.json()
        if "dispatch_uuid" in body:
            finals[body["dispatch_uuid"]].add(request.headers["x-cascade-delivery-id"])
    return {
        "wrong_state": sum(
            1
            for w, kind in outcome.kinds.items()
            if outcome.workflows.get(w, ("", None))[0] != expected[kind].state
        ),
        "not_one_ending": sum(1 for w in outcome.kinds if outcome.endings.get(w) != 1),
        "not_one_final_report": sum(
            1
            for w, kind in outcome.kinds.items()
            if expected[kind].dispatch and len(finals.get(w, ())) != 1
        ),
        "jobs_left": len(outcome.jobs_left),
    }


async def fresh_schema(base: str, drop: str | None = None) -> str:
    """Create a new schema (dropping ``drop`` first); its name."""
    conn = await asyncpg.connect(base)
    try:
        if drop:
            await conn.execute(f'DROP SCHEMA "{drop}" CASCADE')
            return drop
        name = f"cascade_bench_nodes_{uuid.uuid4().hex[:12]}"
        await conn.execute(f'CREATE SCHEMA "{name}"')
        return name
    finally:
        await conn.close()


def run_layout(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One layout on a fresh schema; its figures."""
    apis, workers, kill = LAYOUTS[name]
    schema = asyncio.run(fresh_schema(args.database))
    directory = Path(tempfile.mkdtemp(prefix=f"bench-nodes-{name}-"))
    processes = Processes(directory, cluster.child_env(args.lease, args.speed, args.batch))
    load = os.getloadavg()[0]
    busy, own, began = harness.machine_busy(), own_seconds(), time.time()
    try:
        outcome = asyncio.run(
            cluster.run(
                processes,
                f"{args.database}?search_path={schema}",
                workflows=args.workflows,
                apis=apis,
                workers=workers,
                kill_worker=kill,
                lease=args.lease,
                deadline=args.deadline,
                connections=max(1, args.connections // apis),
            )
        )
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop_all()
        asyncio.run(fresh_schema(args.database, drop=schema))
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    wall = time.time() - began
    busy, own = harness.machine_busy() - busy, own_seconds() - own
    first, last_answer = outcome.posting
    lateness = outcome.lateness()
    return {
        "layout": f"{apis} API + {workers} worker{'s' if workers > 1 else ''}"
        + (", one worker SIGKILLed" if kill else ""),
        "workflows": len(outcome.kinds),
        "accept_per_s": round(outcome.answers.get(202, 0) / (last_answer - first)),
        "end_to_end_per_s": round(len(outcome.kinds) / (outcome.finished - first)),
        "last_final_after_last_accept_s": round(outcome.finished - last_answer, 1),
        "timer_lateness_ms": {
            "n": len(lateness),
            "p50": round(harness.percentile(lateness, 50) * 1000, 1),
            "p99": round(harness.percentile(lateness, 99) * 1000, 1),
            "max": round(lateness[-1] * 1000, 1),
        },
        "final_once_violations": final_once(outcome),
        "killed_worker_jobs": len(outcome.held_at_kill),
        "cpu_s": {"machine": round(busy, 1), "this_run": round(own, 1), "wall": round(wall, 1)},
        "load_average_at_start": load,
    }


def run(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    """Each layout in turn (``procs`` stays empty: the scenario starts its own processes)."""
    runs = []
    for name in args.layouts.split(","):
        runs.append(run_layout(name, args))
        print(json.dumps(runs[-1]), flush=True)
    return {"runs": runs}


def print_result(result: dict[str, Any]) -> None:
    print(
        f"{'layout':<42} {'accept/s':>9} {'e2e/s':>6} {'drain s':>8} "
        f"{'timer p50':>10} {'p99':>7} {'max ms':>8} {'final once':>11}"
    )
    for run in result["runs"]:
        late = run["timer_lateness_ms"]
        once = "yes" if final_once_kept(run) else "NO"
        print(
            f"{run['layout']:<42} {run['accept_per_s']:>9} {run['end_to_end_per_s']:>6} "
            f"{run['last_final_after_last_accept_s']:>8} {late['p50']:>10} {late['p99']:>7} "
            f"{late['max']:>8} {once:>11}"
        )


def final_once_kept(run: dict[str, Any]) -> bool:
    """Whether every workflow of a layout's run ended once, as its script says."""
    return not any(run["final_once_violations"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--layouts", default="one,two", help="one, two, or both (one,two)")
    parser.add_argument("--lease", type=float, default=5.0, help="CASCADE_JOB_LEASE_SECONDS")
    parser.add_argument("--speed", type=float, default=10.0, help="CASCADE_SANDBOX_SPEED")
    parser.add_argument("--batch", type=int, default=100, help="CASCADE_WORKER_BATCH_SIZE")
    parser.add_argument("--connections", type=int, default=8, help="clients, over the APIs")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds per layout")
    parser.add_argument(
        "--database",
        default=os.environ.get("CASCADE_BENCH_POSTGRES_URL", harness.DEFAULT_POSTGRES_URL),
        help="the PostgreSQL each layout makes a schema of its own in (127.0.0.1)",
    )
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    if set(args.layouts.split(",")) - set(LAYOUTS):
        parser.error(f"--layouts: choose from {', '.join(LAYOUTS)}")
    return harness.run_benchmark(
        "nodes",
        args,
        run,
        print_result,
        failed=lambda result: not all(final_once_kept(run) for run in result["runs"]),
    )


if __name__ == "__main__":
    sys.exit(main())
