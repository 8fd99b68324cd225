"""End-to-end SMS over SMPP: HTTP accept -> submit_sm -> DLR -> ``delivered`` status webhook.

Three processes besides this one, all on 127.0.0.1, all stopped in a ``finally``:

* an SMSC (``bench/smsc_sink.py``): accepts every ``submit_sm`` and sends a ``DELIVRD`` receipt
  ``--receipt-delay`` seconds later (``--smsc raw``, lean, or ``smpp34``, the tests' server);
* a webhook receiver (``bench/receiver.py``): answers ``204`` to every POST and notes when each
  status webhook arrived, its ``message_uuid`` and ``status``;
* ``cascade serve`` (engine in-process) over a fresh SQLite file, with a TOML config whose
  ``[smpp]`` table has ``--binds`` connections to the SMSC (``throughput = 0``: no limit,
  ``window_size = --window``) and the account's status URL on the receiver; with ``--workers``
  or ``--webhook-worker``, ``cascade worker`` processes beside it.

This process POSTs ``--n`` single SMS (``POST /v0.1/messages``, or with ``--surface dispatch``
one-step dispatches) from ``--connections`` keep-alive clients, as fast as they are answered or
at ``--rate`` per second, noting when each 202 came; then waits until the receiver has had a
``delivered`` webhook for every accepted message. It reports

* accepted/s (client side), submitted/s and DLRs/s (the SMSC's clock: first to last
  ``submit_sm``, first to last receipt answered ``ESME_ROK``), delivered webhooks/s (the
  receiver's clock), each over its own span;
* end to end: N / (first request sent -> last ``delivered`` webhook received);
* p50/p99/max of (``delivered`` webhook received - 202 received), per message;
* CPU seconds of each process, and per message; a per-second timeline of the four stages.

Checks: every accepted message got exactly one ``delivered`` webhook, the SMSC saw exactly one
submit per message, and the database holds every message as ``delivered``.

``--profile`` samples ``cascade serve`` with py-spy (``pip install py-spy``) over the whole run
and prints its CPU by pipeline stage (accept, send job, SMPP submit, receipt, webhook,
SQLite writer, ...). ``--provider-only`` measures ``SmppProvider.send`` alone, in this process.

    .venv/bin/python bench/sms.py                            # 20,000 SMS, 2 binds, window 200
    .venv/bin/python bench/sms.py --n 10000 --rate 1000      # a paced load: latency at 1,000/s
    .venv/bin/python bench/sms.py --profile --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import enginelib as lib
import harness
from smsc_sink import Smsc

MESSAGES_PATH = lib.MESSAGES_PATH
DISPATCH_PATH = lib.PATH
METRICS = (
    "cascade_jobs_run_total",
    "cascade_webhook_attempts_total",
    "cascade_smpp_",
    "cascade_receipts_total",
    "cascade_sends_total",
)


def sms_body(surface: str) -> tuple[str, bytes]:
    """The request path and body of one single SMS."""
    if surface == "dispatch":
        return DISPATCH_PATH, lib.dispatch(lib.sms_step())
    body = {
        "to": {"type": "sms", "number": "447700900000"},
        "from": {"type": "sms", "number": "447700900001"},
        "message": {"content": {"type": "text", "text": "Your parcel arrives today."}},
    }
    return MESSAGES_PATH, json.dumps(body).encode()


def config_toml(port: int, binds: int, window: int) -> str:
    """The ``[smpp]`` table: ``binds`` connections to the SMSC, no throughput limit."""
    tables = ["[smpp]\n"]
    for number in range(binds):
        tables.append(
            f"""
[[smpp.connections]]
name = "sink{number + 1}"
host = "127.0.0.1"
port = {port}
system_id = "cascade"
password = "secret"
window_size = {window}
throughput = 0
enquire_link_interval = 30
response_timeout = 30
"""
        )
    return "".join(tables)


# --- the SMPP provider alone ----------------------------------------------------------------------


async def _provider_only(
    smsc_port: int, count: int, concurrency: int, binds: int, window: int, profile: str | None
) -> dict[str, Any]:
    """``SmppProvider.send`` ``count`` times (``concurrency`` at once) with a sink that only
    counts receipts: the provider's own cost and rate, without the API, engine or store."""
    import tomllib

    from cascade.channels.base import OutboundMessage
    from cascade.channels.smpp import SmppProvider
    from cascade.channels.smpp.config import SmppSettings
    from cascade.log import configure_logging

    configure_logging("warning")  # as the benchmark runs cascade serve
    settings = SmppSettings.from_mapping(
        tomllib.loads(config_toml(smsc_port, binds, window))["smpp"]
    )
    receipts: list[float] = []
    done = asyncio.Event()

    class Sink:
        async def receipt(self, receipt: Any) -> None:
            receipts.append(time.time())
            if len(receipts) >= count:
                done.set()

        async def inbound(self, message: Any) -> None:
            pass

    provider = SmppProvider(settings)
    await provider.start(Sink())
    if not await provider.ready(10):
        raise harness.BenchError(f"the provider did not bind: {provider.status()}")
    to = {"type": "sms", "number": "447700900000"}
    from_ = {"type": "sms", "number": "447700900001"}
    content = {"content": {"type": "text", "text": "Your parcel arrives today."}}
    submitted: list[float] = []
    errors: Counter[str] = Counter()
    numbers = itertools.count()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0, started = time.process_time(), time.time()

    async def sender() -> None:
        while (number := next(numbers)) < count:
            message = OutboundMessage(f"m{number}", "sms", to, from_, content)
            try:
                await provider.send(message)
            except Exception as exc:
                errors[type(exc).__name__] += 1
            else:
                submitted.append(time.time())

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 120)
    finished, cpu = time.time(), time.process_time() - cpu0
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    await provider.stop()
    return {
        "n": count,
        "submitted": len(submitted),
        "receipts": len(receipts),
        "errors": dict(errors),
        "submitted_per_s": harness.rate(submitted),
        "receipts_per_s": harness.rate(receipts),
        "end_to_end_per_s": len(receipts) / max(1e-9, finished - started),
        "cpu_us_per_message": cpu / count * 1e6,
    }


def run_provider_only(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    """The SMSC in its own process, the provider in this one."""
    workdir = Path(tempfile.mkdtemp(prefix="cascade-sms-bench-"))
    try:
        smsc = Smsc.start(procs, workdir, args.receipt_delay, args.smsc)
        try:
            cpu0 = harness.process_cpu(smsc.proc.pid)
            result: dict[str, Any] = harness.run_loop(
                _provider_only(
                    smsc.port, args.n, args.concurrency, args.binds, args.window,
                    args.provider_profile,
                )
            )  # fmt: skip
            smsc_cpu = harness.process_cpu(smsc.proc.pid) - cpu0
            result["smsc_cpu_us_per_message"] = smsc_cpu / args.n * 1e6
        finally:
            procs.stop(smsc.proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- the pipeline ----------------------------------------------------------------------------


def _sends(jobs: str) -> bool:
    """Whether an engine of these job kinds (CASCADE_ENGINE_JOBS) sends, and so binds."""
    return jobs == "all" or "send" in jobs.split(",")


@dataclass
class Layout:
    """Which process runs which jobs, from the command line."""

    serve_env: dict[str, str]
    worker_jobs: str
    workers: int
    webhook_worker: bool

    @classmethod
    def of(cls, args: argparse.Namespace) -> Layout:
        env = {
            "CASCADE_SQLITE_SYNCHRONOUS": args.synchronous,
            "CASCADE_PROCESSES": str(args.processes),
        }
        if args.batch_size:
            env["CASCADE_WORKER_BATCH_SIZE"] = str(args.batch_size)
        if args.stop_at == "accept" or (args.workers and not args.serve_jobs):
            env["CASCADE_RUN_WORKER"] = "false"
        worker_jobs = args.worker_jobs or "all"
        if args.webhook_worker:
            # serve's engine, or the workers', run everything but webhooks
            env["CASCADE_ENGINE_JOBS"] = worker_jobs = "send,step_timeout,report_horizon"
        if args.serve_jobs:
            env["CASCADE_ENGINE_JOBS"] = args.serve_jobs
        env.update(args.server_env)
        engines = args.stop_at != "accept"
        return cls(
            env, worker_jobs, args.workers if engines else 0, engines and args.webhook_worker
        )

    def binds(self, per_engine: int) -> int:
        """The binds the SMSC should see: every engine that runs send jobs binds."""
        senders = self.workers if _sends(self.worker_jobs) else 0
        if self.serve_env.get("CASCADE_RUN_WORKER") != "false":
            senders += _sends(self.serve_env.get("CASCADE_ENGINE_JOBS", "all"))
        return per_engine * senders


@dataclass
class Pipeline:
    """The processes of one run."""

    server: lib.Server
    smsc: Smsc
    receiver: Any
    receiver_port: int
    workers: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> dict[str, int]:
        """Every process whose CPU counts, by name."""
        pids = {"cascade serve": self.server.pid}
        pids.update({name: proc.pid for name, proc in self.workers.items()})
        pids.update({"smsc": self.smsc.proc.pid, "receiver": self.receiver.pid})
        return pids

    def cascades(self) -> list[str]:
        return [name for name in self.pids() if name.startswith("cascade")]


def start_pipeline(args: argparse.Namespace, procs: harness.Processes) -> Pipeline:
    """The SMSC, the receiver, ``cascade serve`` and its workers, bound and ready."""
    layout = Layout.of(args)
    server = lib.Server(procs, layout.serve_env, keep=args.keep, prefix="cascade-sms-bench-")
    try:
        workdir = server.workdir
        smsc = Smsc.start(procs, workdir, args.receipt_delay, args.smsc)
        receiver, receiver_port = lib.start_receiver(procs, workdir)
        pipe = Pipeline(server, smsc, receiver, receiver_port)
        config = workdir / "cascade.toml"
        config.write_text(config_toml(smsc.port, args.binds, args.window))
        server.env["CASCADE_CONFIG_FILE"] = str(config)
        if args.stop_at == "webhook":
            server.cli("account", "set", "--status-url", f"http://127.0.0.1:{receiver_port}/status")
        server.start()
        for number in range(layout.workers):
            name = f"cascade worker {number + 1}"
            pipe.workers[name] = server.worker(f"worker{number + 1}", layout.worker_jobs)
        if layout.webhook_worker:
            env = {k: v for k, v in server.env.items() if k != "CASCADE_ENGINE_JOBS"}
            pipe.workers["cascade webhook worker"] = server.worker(
                "webhook-worker", "webhook", env=env
            )
        binds = 0 if args.stop_at == "accept" else layout.binds(args.binds)
        smsc.wait_binds(binds, server.log)
    except BaseException:
        server.cleanup()
        raise
    return pipe


def wait_done(args: argparse.Namespace, pipe: Pipeline, count: int) -> None:
    """Wait until every accepted message reached the stage the run stops at."""
    if args.stop_at == "accept":
        return

    def progress() -> int:
        if args.stop_at == "webhook":
            counts = harness.get_json(pipe.receiver_port, "/stats")["counts"]
            return int(counts.get("delivered", 0))
        rows = pipe.server.query("SELECT count(*) FROM messages WHERE status = 'delivered'")
        return int(rows[0][0])

    pipe.server.wait_for(
        f"{count:,} delivered",
        lambda: progress() >= count,
        timeout=args.timeout,
        interval=0.05 if args.stop_at == "webhook" else 0.2,
        progress=lambda: f"{progress():,} delivered; SMSC {pipe.smsc.stats()['counts']}",
    )


@dataclass
class Collected:
    """What the run left: the receiver's and the SMSC's records, the server's counters and the
    database (read after the server stopped)."""

    seen: dict[str, Any]
    smsc: dict[str, Any]
    metrics: dict[str, float]
    messages: dict[str, int]
    webhooks: dict[str, int]
    delivered_rows: list[tuple[Any, ...]]


def collect(pipe: Pipeline) -> Collected:
    """Read what each process saw; stops the server (so the database is complete)."""
    seen = harness.get_json(pipe.receiver_port, "/dump")
    smsc = pipe.smsc.stats(dump=True)
    metrics = pipe.server.metrics()
    pipe.server.stop()
    query = pipe.server.query
    return Collected(
        seen,
        smsc,
        metrics,
        dict(query("SELECT coalesce(status, '-'), count(*) FROM messages GROUP BY 1")),
        dict(query("SELECT state, count(*) FROM webhooks GROUP BY 1")),
        query("SELECT id, updated_at FROM messages WHERE status = 'delivered'"),
    )


def run(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    """Start the pipeline, load it, wait for the end, read and check what happened."""
    pipe = start_pipeline(args, procs)
    try:
        path, body = sms_body(args.surface)
        profiled = next(
            (n for n in pipe.workers if n.startswith("cascade worker")), "cascade serve"
        )
        profile_file = pipe.server.workdir / "profile.txt"
        spy = None
        if args.profile:
            spy = harness.start_py_spy(
                procs, pipe.pids()[profiled], args.profile_seconds, profile_file,
                pipe.server.workdir / "py-spy.log",
            )  # fmt: skip
        # each of serve's processes on its own too, by the part it names itself after (engine,
        # webhook, api-1), besides their sum
        parts = {
            name.removeprefix("cascade "): pid
            for name, pid in harness.named_children(pipe.server.pid).items()
        }
        usage = harness.Usage(pipe.pids(), loops=pipe.cascades(), parts=parts)
        posted = lib.post_many(
            pipe.server.port, pipe.server.token, body, args.n, args.connections, args.rate, path
        )
        lib.accept_or_fail(posted, args.n, pipe.server)
        wait_done(args, pipe, len(posted.accepted))
        measured = usage.stop()
        measured["serve_parts_cpu_s"] = {part: measured["cpu_s"].pop(part) for part in parts}
        time.sleep(max(0.0, args.settle))  # late duplicates, if any, would show up now
        if spy is not None:
            spy.wait(args.profile_seconds + 60)
        collected = collect(pipe)
        profile = None
        if spy is not None and profile_file.exists():
            profile = classify_profile(profile_file)
            if args.profile_out:
                shutil.copyfile(profile_file, args.profile_out)
            loop = measured["cpu_s"][f"{profiled}: event loop thread"]
            other = measured["cpu_s"][profiled] - loop
            profile["process"] = profiled
            profile["us_per_message"] = _profile_cost(profile, loop, other, len(posted.accepted))
    finally:
        for proc in [pipe.smsc.proc, pipe.receiver, *pipe.workers.values()]:
            procs.stop(proc)
        pipe.server.cleanup()
    return summarize(args, posted, measured, collected, profile)


def _done_times(args: argparse.Namespace, collected: Collected) -> dict[str, list[float]]:
    """When each message reached the end: its delivered webhooks, or (no webhooks) when its
    delivered status was stored."""
    if args.stop_at == "webhook":
        times: dict[str, list[float]] = {}
        for at, uuid, status in collected.seen["seen"]:
            if status == "delivered":
                times.setdefault(uuid, []).append(at)
        return times
    if args.stop_at == "dlr" and args.surface == "messages":
        return {uuid: [at] for uuid, at in collected.delivered_rows}
    return {}


def _checks(
    args: argparse.Namespace, n: int, done: dict[str, list[float]], missing: int, c: Collected
) -> dict[str, int]:
    """Each check's count of failures (all 0: passed)."""
    checks: dict[str, int] = {}
    if args.stop_at != "accept":
        checks = {
            "submits beyond one per message": len(c.smsc["submit_times"]) - n,
            "messages not delivered in the database": n - c.messages.get("delivered", 0),
        }
    if done:
        checks["messages without a delivered status"] = missing
    if args.stop_at == "webhook":
        checks["duplicate delivered webhooks"] = sum(len(v) - 1 for v in done.values())
    return checks


def summarize(
    args: argparse.Namespace,
    posted: lib.PostResult,
    measured: dict[str, Any],
    c: Collected,
    profile: dict[str, Any] | None,
) -> dict[str, Any]:
    """The figures and checks of one run."""
    accepted = posted.accepted
    n = len(accepted)
    done = _done_times(args, c)
    missing = [uuid for uuid in accepted if uuid not in done]
    latencies = sorted(min(done[u]) - at for u, at in accepted.items() if u in done)
    done_times = sorted(min(v) for v in done.values())
    submit_times, receipt_times = c.smsc["submit_times"], c.smsc["receipt_times"]
    accept_times = sorted(accepted.values())
    last = max(done_times) if done_times else posted.finished
    cpu = measured["cpu_s"]
    return {
        "n": n,
        "surface": args.surface,
        "stop_at": args.stop_at,
        "statuses": posted.statuses,
        "accepted_per_s": posted.rate,
        "submitted_per_s": harness.rate(submit_times),
        "dlrs_per_s": harness.rate(receipt_times),
        "done_per_s": harness.rate(done_times),
        "end_to_end_s": last - posted.started,
        "end_to_end_per_s": n / max(1e-9, last - posted.started),
        "latency_p50": harness.percentile(latencies, 50),
        "latency_p99": harness.percentile(latencies, 99),
        "latency_max": latencies[-1] if latencies else float("nan"),
        "spans": {
            "accepts": harness.span(accept_times),
            "submits": harness.span(submit_times),
            "receipts": harness.span(receipt_times),
            "done": harness.span(done_times),
            "origin": posted.started,
        },
        "timeline": timeline(posted.started, accept_times, submit_times, receipt_times, done_times),
        "checks": _checks(args, n, done, len(missing), c),
        "smsc_counts": c.smsc["counts"],
        "receiver_counts": c.seen["counts"],
        "database": {"messages": c.messages, "webhooks": c.webhooks},
        # receipts are labelled by SMSC account (smpp:<system_id>@<host>:<port>)
        "orphan_receipts": sum(
            value
            for name, value in c.metrics.items()
            if name.startswith('cascade_receipts_total{matched="no",provider="smpp')
        ),
        "metrics": {
            name: value
            for name, value in c.metrics.items()
            if name.startswith(METRICS) and "_created" not in name and "smpp_binds" not in name
        },
        **measured,
        "cascade_cpu_us_per_message": sum(
            cpu[name] for name in cpu if name.startswith("cascade") and ":" not in name
        )
        / max(1, n)
        * 1e6,
        "cpu_us_per_message": {name: value / max(1, n) * 1e6 for name, value in cpu.items()},
        "serve_parts_cpu_us_per_message": {
            part: value / max(1, n) * 1e6
            for part, value in measured.get("serve_parts_cpu_s", {}).items()
        },
        "commit": harness.commit(),
        "profile": profile,
    }


def timeline(origin: float, *series: list[float]) -> list[list[int]]:
    """Counts per second since ``origin`` of each series (accepts, submits, DLRs, webhooks)."""
    end = max((max(s) for s in series if s), default=origin)
    seconds = int(end - origin) + 1
    rows = [[0] * len(series) for _ in range(seconds)]
    for column, times in enumerate(series):
        for at in times:
            rows[max(0, min(seconds - 1, int(at - origin)))][column] += 1
    return rows


# --- profile -----------------------------------------------------------------------------------

#: event-loop stages, by a frame on the stack (the first marker found wins)
LOOP_STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "webhook delivery",
        (
            "webhooks/",
            "SqliteStore.get_webhook ",
            "SqliteStore.get_account ",  # per attempt; the API's is cached with the token
        ),
    ),
    (
        "receipt: deliver_sm -> stored",
        (
            "SmppConnection._deliver ",
            "DeliverSmHandler.",
            "Engine.receipt ",
            "channels/receipts.py",
        ),
    ),
    (
        "SMPP submit (provider.send, responses)",
        (
            "SmppProvider.send ",
            "SmppConnection.submit ",
            "SmppConnection._submit_part ",
            "SmppConnection._exchange ",
            "SubmitFlow.",
            "channels/smpp/framing.py",
            "channels/gsm.py",
            "SmppConnection._read_loop ",
            "channels/smpp/link.py",
        ),
    ),
    ("send job (engine, store calls)", ("Engine._send ",)),
    ("engine loop, claims, timers", ("cascade/engine/engine.py",)),
    ("accept (uvicorn, starlette, API)", ("uvicorn/protocols/", "starlette/", "cascade/api/")),
    ("store futures settled", ("_settle ",)),
    ("event loop itself (uvloop, GC)", ("Runner.run ",)),
]
#: SQLite writer stages, by the write function on the stack
WRITER_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("accept", ("_insert_workflows", "_Accept", "idempotency", "accept_plan", "_accept_run")),
    ("send job", ("begin_send", "claim_jobs", "matched_orphan_receipts", "add_message_parts")),
    (
        "transitions (submitted, delivered)",
        ("transitions_plan", "transitions_read_plan", "TransitionBatches"),
    ),
    ("webhook delivery", ("record_webhook_attempt", "defer_job")),
    # a store of plans (since issue 10) runs every statement through one `run`/`_execute`, so
    # a statement's caller is not on the stack: these are the writes the markers above miss
    ("statements of other plans", ("run (cascade/store/sqlite.py", "_execute (")),
    ("COMMIT, BEGIN", ("_commit (", "_flush (")),
]
_WAITS = ("Condition.wait ", "select (selectors.py")


def _stage(frames: list[str], stages: list[tuple[str, tuple[str, ...]]]) -> str:
    for name, markers in stages:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return "other"


def classify_profile(collapsed: Path) -> dict[str, Any]:
    """py-spy raw output -> busy samples by thread (the event loop, the others) and stage.

    SQLite writes are counted by the write function on the stack, whichever thread runs them
    (the event loop's since 7365e37, a writer thread of their own before)."""
    stages: dict[str, Counter[str]] = {"loop": Counter(), "other threads": Counter()}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(wait in frames[-1] for wait in _WAITS):
            continue  # waiting, not working
        thread = "loop" if "MainThread" in frames[0] else "other threads"
        if any("_GroupCommitWriter" in frame or "_commit (" in frame for frame in frames):
            stage = "SQLite writes: " + _stage(frames[1:], WRITER_STAGES)
        elif thread == "loop":
            stage = _stage(frames[1:], LOOP_STAGES)
        else:
            stage = "other"
        stages[thread][stage] += int(count_text)
    return {thread: dict(counter.most_common()) for thread, counter in stages.items()}


def _profile_cost(
    profile: dict[str, Any], loop_cpu: float, other_cpu: float, n: int
) -> dict[str, dict[str, float]]:
    """Each thread's measured CPU per message, split in proportion to its samples by stage."""
    costs: dict[str, dict[str, float]] = {}
    for thread, cpu in (("loop", loop_cpu), ("other threads", other_cpu)):
        samples = profile[thread]
        total = sum(samples.values()) or 1
        costs[thread] = {stage: cpu * count / total / n * 1e6 for stage, count in samples.items()}
    return costs


# --- reporting -------------------------------------------------------------------------------


def print_result(r: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures, the CPU by process, the timeline and the checks."""
    print()
    rate = f"{args.rate:g}/s" if args.rate else "max"
    print(
        f"{r['n']:,} SMS ({r['surface']}), {args.binds} bind(s), window {args.window}, "
        f"{args.workers or 'no'} separate worker(s)"
        f"{', webhooks in a worker of their own' if args.webhook_worker else ''}, "
        f"{args.connections} clients, rate {rate}, "
        f"receipt delay {args.receipt_delay:g} s, SQLite {args.synchronous}, "
        f"up to: {args.stop_at}"
    )
    done = {"webhook": "delivered webhook", "dlr": "delivered stored", "accept": "202"}[
        r["stop_at"]
    ]
    rows = [
        ("accepted / s (client)", f"{r['accepted_per_s']:,.0f}"),
        ("submitted / s (SMSC)", f"{r['submitted_per_s']:,.0f}"),
        ("DLRs answered / s (SMSC)", f"{r['dlrs_per_s']:,.0f}"),
        (f"{done}s / s", f"{r['done_per_s']:,.0f}"),
        (f"end to end / s (N / first POST -> last {done})", f"{r['end_to_end_per_s']:,.0f}"),
        (f"first POST -> last {done} (s)", f"{r['end_to_end_s']:.2f}"),
        (f"{done} - 202, p50 (ms)", f"{r['latency_p50'] * 1000:,.0f}"),
        (f"{done} - 202, p99 (ms)", f"{r['latency_p99'] * 1000:,.0f}"),
        (f"{done} - 202, max (ms)", f"{r['latency_max'] * 1000:,.0f}"),
        ("receipts kept as orphans", f"{r['orphan_receipts']:,.0f}"),
        ("machine busy (cores, avg)", f"{r['machine_busy_cores']:.2f}"),
        ("  of which not this benchmark's processes", f"{r['other_load_cores']:.2f}"),
    ]
    for name, value in rows:
        print(f"  {name:<50} {value:>10}")
    print("  CPU (s, and µs per message):")
    for name, seconds in r["cpu_s"].items():
        print(f"    {name:<46} {seconds:>7.2f} s {r['cpu_us_per_message'][name]:>8,.0f} µs")
    for part, seconds in r.get("serve_parts_cpu_s", {}).items():
        us, name = r["serve_parts_cpu_us_per_message"][part], f"cascade serve, its {part} process"
        print(f"    {name:<46} {seconds:>7.2f} s {us:>8,.0f} µs")
    print("  per second since the first POST: accepts / submits / DLRs / " + done + "s")
    for second, row in enumerate(r["timeline"]):
        print(f"    {second:>3}s  " + "  ".join(f"{v:>6,}" for v in row))
    print(f"  SMSC: {r['smsc_counts']}; receiver: {r['receiver_counts']}")
    print(f"  database: {r['database']}")
    print(
        "  cascade serve counters: "
        + ", ".join(
            f"{name.removeprefix('cascade_')} {value:,.0f}" for name, value in r["metrics"].items()
        )
    )
    problems = {k: v for k, v in r["checks"].items() if v}
    print(f"  checks: {problems or 'all passed'}; commit {r['commit']}")
    if r["profile"]:
        costs = r["profile"]["us_per_message"]
        for thread, title in (("loop", "event loop"), ("other threads", "other threads")):
            print(f"  {r['profile']['process']} {title}, µs per message by stage (py-spy samples):")
            for stage, us in sorted(costs[thread].items(), key=lambda item: -item[1]):
                print(f"    {stage:<46} {us:>8,.0f} µs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="SMS to send")
    parser.add_argument("--connections", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--rate", type=float, default=0.0, help="POSTs per second (0: max)")
    parser.add_argument(
        "--stop-at",
        choices=["webhook", "dlr", "accept"],
        default="webhook",
        help="webhook: the whole pipeline; dlr: no status URL, done when delivered is stored; "
        "accept: API only (CASCADE_RUN_WORKER=false)",
    )
    parser.add_argument("--surface", choices=["messages", "dispatch"], default="messages")
    parser.add_argument("--binds", type=int, default=2, help="[[smpp.connections]] to the SMSC")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="cascade serve --processes (0: one per core; the CPU of `cascade serve` then sums "
        "its processes, and its event-loop figure is the parent's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the engine in this many `cascade worker` processes (API-only serve)",
    )
    parser.add_argument(
        "--webhook-worker",
        action="store_true",
        help="deliver webhooks in a `cascade worker --jobs webhook` process of their own "
        "(serve, or the --workers, run the other jobs)",
    )
    parser.add_argument(
        "--serve-jobs",
        help="CASCADE_ENGINE_JOBS of serve (its engine runs even with --workers), e.g. webhook",
    )
    parser.add_argument("--worker-jobs", help="--jobs of each --workers process (default all)")
    parser.add_argument("--window", type=int, default=200, help="window_size of each bind")
    parser.add_argument(
        "--smsc",
        choices=["raw", "smpp34"],
        default="raw",
        help="the SMSC: raw (bench/rawsmsc.py, lean) or smpp34 (the tests' server)",
    )
    parser.add_argument("--receipt-delay", type=float, default=0.1, help="SMSC: DLR after (s)")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--batch-size", type=int, default=0, help="CASCADE_WORKER_BATCH_SIZE")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds for late duplicates")
    parser.add_argument(
        "--provider-only",
        action="store_true",
        help="no API, engine or store: SmppProvider.send in this process, receipts counted",
    )
    parser.add_argument("--concurrency", type=int, default=400, help="--provider-only sends")
    parser.add_argument("--provider-profile", metavar="PATH", help="--provider-only: cProfile")
    parser.add_argument("--profile", action="store_true", help="py-spy the server")
    parser.add_argument("--profile-seconds", type=float, default=30.0)
    parser.add_argument("--profile-out", metavar="PATH", help="keep py-spy's raw samples here")
    harness.add_server_env_option(parser, "every Cascade process")
    harness.add_machine_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.provider_only:
        return harness.run_benchmark(
            "sms", args, run_provider_only, lambda r: print(json.dumps(r, indent=2))
        )
    return harness.run_benchmark(
        "sms",
        args,
        run,
        lambda r: print_result(r, args),
        failed=lambda r: any(r["checks"].values()),
    )


if __name__ == "__main__":
    sys.exit(main())
