"""The accept benchmark: durable ``POST /v0.1/dispatch`` per second against ``cascade serve``.

For every configuration (SQLite with ``synchronous=FULL`` and/or ``NORMAL``, PostgreSQL) it makes a
temporary data directory, creates an application and its key with the ``cascade`` CLI, starts
``cascade serve`` on a free 127.0.0.1 port over a fresh database, waits for ``/health``, checks
that one request gets 202, warms up, and then drives ``--connections`` keep-alive clients that
POST a 2-step messenger -> SMS workflow with an RS256 JWT for ``--duration`` seconds.

Alongside, in every round and with the same load generator, it measures the ceiling: a raw ASGI
app (``bench/trivial_app.py``) answering 202 with a JSON body, on uvicorn with uvloop and
httptools like ``cascade serve``. Cascade's figure is reported as a ratio to it.

Durability is checked, not assumed: after the run the server is killed with SIGKILL (no graceful
shutdown, so nothing is flushed on the way out), and the database must hold exactly one workflow
(with its two messages and two jobs) for every 202 received, each 202's id among them. The load
generators never cut a POST off in flight (they stop sending and drain), so the counts must be
equal, not merely close.

With ``--peers kannel`` (or ``kannel,jasmin``) every round also measures each installed peer
relaying to an SMSC of its own (``bench/peers.py``), between Cascade's runs of that round; each
Cascade figure is then also reported as a ratio to the first peer's in the same round, so the
comparison holds whatever the machine does from one minute to the next.

Load generator: ``wrk`` with ``bench/accept.lua`` when it is installed (``apt-get install -y
wrk``), otherwise ``bench/loadgen.py`` (Python, asyncio) in its own process; the output names
the one used. Every subprocess is stopped on the way out, whatever happens.

    .venv/bin/python bench/accept.py                      # SQLite FULL, 15 s, 32 connections
    .venv/bin/python bench/accept.py --synchronous FULL,NORMAL --runs 3 --json
    .venv/bin/python bench/accept.py --database postgres  # needs PostgreSQL on 127.0.0.1:5432
    .venv/bin/python bench/accept.py --engine on --runs 3 --peers kannel  # apt-get install kannel
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

import peers

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LUA_SCRIPT = BENCH_DIR / "accept.lua"
PYTHON_LOADGEN = BENCH_DIR / "loadgen.py"
PATH = "/v0.1/dispatch"

#: a realistic Dispatch request: Messenger first, SMS if it is not read within 10 minutes
BODY: dict[str, Any] = {
    "template": "failover",
    "workflow": [
        {
            "to": {"type": "messenger", "id": "1234567890123456"},
            "from": {"type": "messenger", "id": "9876543210987654"},
            "message": {
                "content": {
                    "type": "text",
                    "text": "Your order #48213 has shipped and arrives on Thursday. "
                    "Track it at https://shop.example.com/t/48213",
                },
                "messenger": {"category": "update"},
            },
            "failover": {"expiry_time": 600, "condition_status": "read"},
            "client_ref": "order-48213",
        },
        {
            "to": {"type": "sms", "number": "447700900000"},
            "from": {"type": "sms", "number": "447700900001"},
            "message": {
                "content": {
                    "type": "text",
                    "text": "Your order #48213 has shipped and arrives on Thursday. "
                    "Track it at https://shop.example.com/t/48213",
                }
            },
            "client_ref": "order-48213",
        },
    ],
}
#: rows one accepted BODY writes besides its workflow (2 steps; a send job and a step timer)
MESSAGES_PER_WORKFLOW = 2
JOBS_PER_WORKFLOW = 2


def post_once(port: int, body: bytes, token: str) -> tuple[int, bytes]:
    """One POST of the benchmark's request, to check the set-up before loading it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            PATH,
            body=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- load generators -----------------------------------------------------------------------


@dataclass(frozen=True)
class Generator:
    """A load generator and how it is run."""

    kind: str  # "wrk" or "python"
    connections: int
    threads: int
    version: str

    def describe(self) -> str:
        """How a reader can reproduce the load."""
        if self.kind == "wrk":
            return (
                f"{self.version}, -t{self.threads} -c{self.connections}, "
                f"script bench/accept.lua (keep-alive, 1 request in flight per connection)"
            )
        return (
            f"bench/loadgen.py (Python {platform.python_version()}, asyncio, "
            f"{self.connections} keep-alive connections, 1 request in flight each)"
        )


def pick_generator(choice: str, connections: int, threads: int) -> Generator:
    """wrk if asked for or found, else the Python generator."""
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise harness.BenchError(
            "wrk is not installed: apt-get install -y wrk (or --generator python)"
        )
    if choice != "python" and wrk is not None:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
        match = re.search(r"wrk\s+(\S+)", first)
        version = f"wrk {match.group(1)}" if match else "wrk"
        return Generator("wrk", connections, max(1, min(threads, connections)), version)
    if choice == "auto":
        print(
            "note: wrk is not installed; using the slower Python load generator "
            "(apt-get install -y wrk for the reference figures)",
            flush=True,
        )
    return Generator("python", connections, 1, "python")


def drive(
    procs: harness.Processes,
    gen: Generator,
    port: int,
    seconds: float,
    workdir: Path,
    tag: str,
    body_file: Path,
    tokens_file: Path,
) -> tuple[dict[str, Any], list[str], float]:
    """Load the server for ``seconds``; the summary, the ids of the 202s, generator CPU s."""
    out = workdir / f"{tag}.json"
    ids = workdir / f"{tag}.ids"
    url = f"http://127.0.0.1:{port}{PATH}"
    env = {**os.environ}
    if gen.kind == "wrk":
        env.update(
            BENCH_BODY_FILE=str(body_file),
            BENCH_TOKENS_FILE=str(tokens_file),
            BENCH_PATH=PATH,
            BENCH_WINDOW=repr(seconds),
            BENCH_OUT=str(out),
            BENCH_IDS=str(ids),
        )
        # wrk's -d is whole seconds; its threads stop by themselves once drained
        argv = [
            "wrk",
            f"-t{gen.threads}",
            f"-c{gen.connections}",
            f"-d{math.ceil(seconds) + 1}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA_SCRIPT),
            url,
        ]
    else:
        argv = [
            sys.executable,
            str(PYTHON_LOADGEN),
            f"--url={url}",
            f"--connections={gen.connections}",
            f"--duration={seconds}",
            f"--body-file={body_file}",
            f"--tokens-file={tokens_file}",
            f"--out={out}",
            f"--ids={ids}",
        ]
    before = harness.children_cpu()
    log = workdir / f"{tag}.log"
    with log.open("wb") as sink:
        try:
            done = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=seconds + 60,
                check=False,
                preexec_fn=harness._niced(procs.nice),
            )
        except subprocess.TimeoutExpired as exc:  # run() has killed it
            raise harness.BenchError(f"the load generator hung:\n{harness.tail(log)}") from exc
    if done.returncode != 0 or not out.exists():
        raise harness.BenchError(
            f"the load generator failed ({done.returncode}):\n{harness.tail(log)}"
        )
    summary: dict[str, Any] = json.loads(out.read_text())
    received = [line for line in ids.read_text().splitlines() if line]
    return summary, received, harness.children_cpu() - before


# --- databases -----------------------------------------------------------------------------


@dataclass
class Counts:
    """What the database holds after the run."""

    workflows: int
    messages: int
    jobs: int
    ids: set[str]


def count_sqlite(path: Path) -> Counts:
    """Rows in the SQLite file (opened afresh, after the server was killed)."""
    conn = sqlite3.connect(path)
    try:
        # (not the rows --preload stored, whose ids sort before any a run makes)
        ids = {
            row[0]
            for row in conn.execute("SELECT id FROM workflows WHERE id > ?", (harness.PRELOADED,))
        }
        messages = conn.execute(
            "SELECT count(*) FROM messages WHERE id > ?", (harness.PRELOADED,)
        ).fetchone()[0]
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()
    return Counts(len(ids), messages, jobs, ids)


def sent_sqlite(path: Path) -> int:
    """Messages the engine has sent so far (those with a status), read while it runs."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sent: int = conn.execute(
            "SELECT count(*) FROM messages WHERE status IS NOT NULL"
        ).fetchone()[0]
    finally:
        conn.close()
    return sent


def count_postgres(url: str) -> Counts:
    """Rows in the PostgreSQL database (a new connection, after the server was killed)."""
    import asyncpg

    async def run() -> Counts:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            ids = {row[0] for row in await conn.fetch("SELECT id::text FROM workflows")}
            messages = await conn.fetchval("SELECT count(*) FROM messages")
            jobs = await conn.fetchval("SELECT count(*) FROM jobs")
        finally:
            await conn.close()
        return Counts(len(ids), int(messages), int(jobs), ids)

    return asyncio.run(run())


# --- one measured run ----------------------------------------------------------------------


@dataclass
class RunResult:
    """One configuration measured once."""

    config: str
    round: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    accepted: int
    server_cpu_us_per_req: float
    loop_cpu_us_per_req: float
    generator_cpu_cores: float
    other_cpu_cores: float
    load_average_1m: float
    socket_errors: int
    durability: dict[str, Any] = field(default_factory=dict)
    #: messages the engine sent per second during the window (an engine on SQLite; else NaN)
    engine_sent_per_s: float = math.nan


@dataclass(frozen=True)
class Config:
    """What to measure: the trivial ceiling, or Cascade over a database."""

    name: str
    database: str  # "trivial", "sqlite" or "postgres"
    synchronous: str = "FULL"
    #: the engine runs in cascade serve too (as the README starts it), not the accept path alone
    engine: bool = False
    #: finished workflows stored before the run (SQLite; ``--preload``)
    preload: int = 0


@dataclass
class Options:
    """The command line, as the runs need it."""

    duration: float
    warmup: float
    tokens: int
    postgres_url: str
    keep: bool
    nice: int = 0
    wait_idle: float = 0.0
    #: settings given to `cascade serve` over the benchmark's own (``--server-env``)
    server_env: dict[str, str] = field(default_factory=dict)
    #: where the databases of ``--preload`` are made once and copied from (``--preload-cache``)
    preload_cache: Path | None = None


def _tokens(workdir: Path, env: dict[str, str], app_id: str, key: Path, count: int) -> Path:
    """A file of ``count`` valid tokens: the first from ``cascade jwt generate``."""
    claims = [f"application_id={app_id}", "exp=7200"]
    first = harness.cli(["jwt", "generate", str(key), *claims], env, workdir)
    tokens = [first.strip()]
    if count > 1:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from cascade.cli import make_jwt

        # read once: each read of the PEM checks the key, about 60 ms on a slow machine
        private = load_pem_private_key(key.read_bytes(), password=None)
        assert isinstance(private, RSAPrivateKey)
        now = int(time.time())
        tokens += [
            make_jwt(private, {"application_id": app_id, "exp": now + 7200, "iat": now})
            for _ in range(count - 1)
        ]
    path = workdir / "tokens.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def trivial_argv(port: int) -> list[str]:
    """The ceiling: the raw ASGI app on uvicorn with cascade serve's server stack."""
    return [
        sys.executable, "-m", "uvicorn", "trivial_app:app", "--app-dir", str(BENCH_DIR),
        "--host", "127.0.0.1", f"--port={port}", "--loop=uvloop", "--http=httptools",
        "--no-access-log", "--log-level=warning",
    ]  # fmt: skip


@dataclass
class Target:
    """What one run loads: its command, settings, tokens and where its rows go."""

    argv: list[str]
    env: dict[str, str]
    tokens_file: Path
    #: the SQLite file or the PostgreSQL URL the durability check reads (None: the ceiling)
    database: Path | str | None


def prepare(
    config: Config, opts: Options, workdir: Path, port: int, postgres_url: str | None
) -> Target:
    """The command, environment and tokens of ``config``, its database made and its account
    created."""
    env = harness.clean_env()
    tokens_file = workdir / "tokens.txt"
    if config.database == "trivial":
        tokens_file.write_text("not-checked\n")
        return Target(trivial_argv(port), env, tokens_file, None)
    database: Path | str
    if config.database == "sqlite":
        database = workdir / "cascade.db"
        url = f"sqlite:///{database}"
        env["CASCADE_SQLITE_SYNCHRONOUS"] = config.synchronous
    else:
        assert postgres_url is not None
        database = url = postgres_url
    # the accept path alone unless the configuration runs the engine beside it
    env.update(
        CASCADE_DATABASE_URL=url,
        CASCADE_LOG_LEVEL="warning",
        CASCADE_RUN_WORKER="true" if config.engine else "false",
    )
    if config.engine:  # as the README starts it: the API and the engine apart, one per core
        del env["CASCADE_PROCESSES"]
    env.update(opts.server_env)
    if config.preload and isinstance(database, Path):
        harness.stored_database(database, config.preload, env, opts.preload_cache)
    key = workdir / "bench.key"
    created = harness.cli(["app", "create", "bench", "--private-key-file", str(key)], env, workdir)
    match = re.search(r"application_id:\s*(\S+)", created)
    if match is None:
        raise harness.BenchError(f"no application_id in:\n{created}")
    _tokens(workdir, env, match.group(1), key, max(1, opts.tokens))
    argv = [*harness.cascade_argv(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Target(argv, env, tokens_file, database)


def run_once(
    config: Config, rnd: int, gen: Generator, opts: Options, procs: harness.Processes
) -> RunResult:
    """Set up ``config`` from nothing, measure it, check durability, tear it down."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cascade-bench-{config.database}-"))
    try:
        with contextlib.ExitStack() as stack:
            postgres_url = None
            if config.database == "postgres":
                postgres_url = stack.enter_context(harness.postgres_database(opts.postgres_url))
            port = harness.free_port()
            target = prepare(config, opts, workdir, port, postgres_url)
            log = workdir / "server.log"
            server = procs.start(target.argv, env=target.env, cwd=workdir, log=log)
            stack.callback(procs.stop, server)
            harness.wait_healthy(port, server, log)
            return measure(config, rnd, gen, opts, procs, server, port, target, workdir)
    finally:
        if opts.keep:
            print(f"  kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(
    config: Config,
    rnd: int,
    gen: Generator,
    opts: Options,
    procs: harness.Processes,
    server: Any,
    port: int,
    target: Target,
    workdir: Path,
) -> RunResult:
    """Check one POST, warm up, load for the window, then (Cascade) kill the server and check
    that every 202 is durable."""
    body_file = workdir / "body.json"
    body = json.dumps(BODY, separators=(",", ":")).encode()
    body_file.write_bytes(body)
    received: list[str] = []
    if target.database is not None:
        token = target.tokens_file.read_text().split("\n", 1)[0]
        status, answer = post_once(port, body, token)
        if status != 202:
            raise harness.BenchError(
                f"the check POST got {status}: {answer.decode('utf-8', 'replace')}"
            )
        received.append(json.loads(answer)["dispatch_uuid"])
    lost_in_flight = False
    if opts.warmup > 0:
        warm, warm_ids, _ = drive(
            procs, gen, port, opts.warmup, workdir, "warmup", body_file, target.tokens_file
        )
        received += warm_ids
        lost_in_flight |= not warm["drained"]
    load_before = os.getloadavg()[0]
    # how fast the engine moves what is accepted meanwhile (a peer's relay rate, for Cascade)
    engine_db = target.database if config.engine and isinstance(target.database, Path) else None
    sent_before = sent_sqlite(engine_db) if engine_db else 0
    usage = harness.Usage({"server": server.pid}, loops=["server"])
    summary, ids, gen_cpu = drive(
        procs, gen, port, opts.duration, workdir, "measure", body_file, target.tokens_file
    )
    measured = usage.stop(own="benchmark")
    engine_sent_per_s = (
        (sent_sqlite(engine_db) - sent_before) / measured["wall_s"] if engine_db else math.nan
    )
    received += ids
    lost_in_flight |= not summary["drained"]
    durability: dict[str, Any] = {}
    if target.database is not None:
        procs.stop(server, signal.SIGKILL)  # a crash, not a shutdown: nothing flushed
        counts = (
            count_sqlite(target.database)
            if isinstance(target.database, Path)
            else count_postgres(target.database)
        )
        durability = verify(received, counts, lost_in_flight, jobs_consumed=config.engine)
    statuses = {int(k): v for k, v in summary["statuses"].items()}
    answered = max(1, summary["answered"])
    cpu, elapsed = measured["cpu_s"], measured["wall_s"]
    latency = summary["latency_us"]
    return RunResult(
        config=config.name,
        round=rnd,
        requests_per_s=summary["in_window"] / summary["window_s"],
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        non_2xx=sum(v for k, v in statuses.items() if not 200 <= k < 300),
        accepted=statuses.get(202, 0),
        server_cpu_us_per_req=cpu["server"] / answered * 1e6,
        loop_cpu_us_per_req=cpu["server: event loop thread"] / answered * 1e6,
        generator_cpu_cores=gen_cpu / elapsed,
        other_cpu_cores=max(0.0, measured["other_load_cores"] - gen_cpu / elapsed),
        load_average_1m=load_before,
        socket_errors=sum(summary["socket_errors"].values()),
        durability=durability,
        engine_sent_per_s=engine_sent_per_s,
    )


def verify(
    received: list[str], counts: Counts, lost_in_flight: bool, jobs_consumed: bool = False
) -> dict[str, Any]:
    """Compare the 202s received with the rows stored; raise if a 202 was not durable
    (``jobs_consumed``: an engine ran, so the jobs are not all still there to count)."""
    missing = [i for i in received if i not in counts.ids]
    result = {
        "received_202": len(received),
        "distinct_ids": len(set(received)),
        "workflows": counts.workflows,
        "messages": counts.messages,
        "jobs": counts.jobs,
        "missing": len(missing),
        "exact": counts.workflows == len(received),
        "lost_in_flight": lost_in_flight,
    }
    problems = []
    if missing:
        problems.append(f"{len(missing)} ids answered 202 are not stored, e.g. {missing[0]}")
    if len(set(received)) != len(received):
        problems.append("the same id was answered twice")
    if counts.workflows != len(received) and not (
        lost_in_flight and counts.workflows > len(received)
    ):
        problems.append(f"{counts.workflows} workflows stored, {len(received)} 202s received")
    if counts.messages != MESSAGES_PER_WORKFLOW * counts.workflows:
        problems.append(f"{counts.messages} messages for {counts.workflows} workflows")
    if counts.jobs != JOBS_PER_WORKFLOW * counts.workflows and not jobs_consumed:
        problems.append(f"{counts.jobs} jobs for {counts.workflows} workflows")
    if problems:
        raise harness.BenchError("durability check failed: " + "; ".join(problems))
    return result


# --- reporting -----------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _trivial_rates(results: list[RunResult]) -> dict[int, float]:
    """The ceiling's rate in each round."""
    return {r.round: r.requests_per_s for r in results if r.config == "trivial"}


def _same_round_ratios(runs: Iterable[tuple[int, float]], rates: dict[int, float]) -> list[float]:
    """Each run's rate (by its round) over the rate measured in the same round, where that
    round has one."""
    return [rate / rates[rnd] for rnd, rate in runs if rates.get(rnd)]


def summarize(
    results: list[RunResult], configs: list[Config], peer_runs: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """One row per configuration: medians over rounds, and the ratios to the trivial endpoint
    and (with peers) to the first peer measured in the same round."""
    trivial = _trivial_rates(results)
    first_peer = peer_runs[0]["peer"] if peer_runs else None
    peer_rates = {p["round"]: p["requests_per_s"] for p in peer_runs if p["peer"] == first_peer}
    rows = []
    for config in configs:
        runs = [r for r in results if r.config == config.name]
        if not runs:
            continue
        rates = [r.requests_per_s for r in runs]
        pairs = [(r.round, r.requests_per_s) for r in runs]
        ratios = _same_round_ratios(pairs, trivial)
        to_peer = _same_round_ratios(pairs, peer_rates) if config.database != "trivial" else []
        rows.append(
            {
                "config": config.name,
                "runs": len(runs),
                "requests_per_s": _median(rates),
                "min": min(rates),
                "max": max(rates),
                "p50_ms": _median([r.p50_ms for r in runs]),
                "p99_ms": _median([r.p99_ms for r in runs]),
                "non_2xx": sum(r.non_2xx for r in runs),
                "server_cpu_us_per_req": _median([r.server_cpu_us_per_req for r in runs]),
                "loop_cpu_us_per_req": _median([r.loop_cpu_us_per_req for r in runs]),
                "generator_cpu_cores": _median([r.generator_cpu_cores for r in runs]),
                "other_cpu_cores": _median([r.other_cpu_cores for r in runs]),
                "ratio_to_trivial": _median(ratios) if ratios else float("nan"),
                "durable": all(r.durability.get("missing", 0) == 0 for r in runs),
                "engine_sent_per_s": _median([r.engine_sent_per_s for r in runs]),
                "ratio_to_peer": _median(to_peer) if to_peer else float("nan"),
                "ratios_to_peer": to_peer,
            }
        )
    return rows


def summarize_peers(
    peer_runs: Sequence[dict[str, Any]], results: list[RunResult]
) -> list[dict[str, Any]]:
    """One row per peer: medians over the rounds it was measured in, and its ratio to the
    trivial endpoint of the same round."""
    trivial = _trivial_rates(results)
    rows = []
    for key in dict.fromkeys(p["peer"] for p in peer_runs):
        runs = [p for p in peer_runs if p["peer"] == key]
        rates = [p["requests_per_s"] for p in runs]
        ratios = _same_round_ratios([(p["round"], p["requests_per_s"]) for p in runs], trivial)
        rows.append(
            {
                "peer": key,
                "name": runs[0]["name"],
                "runs": len(runs),
                "requests_per_s": _median(rates),
                "min": min(rates),
                "max": max(rates),
                "p99_ms": _median([p["p99_ms"] for p in runs]),
                "end_to_end_per_s": _median([p["end_to_end_per_s"] for p in runs]),
                "cpu_us_per_message": _median([p["cpu_us_per_message"] for p in runs]),
                "server_cpu_us_per_req": _median([p["server_cpu_us_per_req"] for p in runs]),
                "ratio_to_trivial": _median(ratios) if ratios else float("nan"),
            }
        )
    return rows


def run_peer(key: str, rnd: int, opts: Options, connections: int) -> dict[str, Any]:
    """One round's run of an installed peer (``bench/peers.py``), in processes of its own
    (which the run stops, whatever happens)."""
    run = peers.PEERS[key][1]
    result = run(harness.Processes(opts.nice), opts.duration, connections, keep=opts.keep)
    return {"peer": key, "round": rnd, **result}


def print_run(result: RunResult) -> None:
    """One line per run as it finishes."""
    line = (
        f"  round {result.round} {result.config:<18} {result.requests_per_s:>9,.0f} req/s  "
        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  non-2xx {result.non_2xx}  "
        f"server {result.server_cpu_us_per_req:5.0f} µs/req "
        f"(loop {result.loop_cpu_us_per_req:.0f})  "
        f"generator {result.generator_cpu_cores:.2f} cores  other {result.other_cpu_cores:.2f}"
    )
    if not math.isnan(result.engine_sent_per_s):
        line += f"\n      engine: {result.engine_sent_per_s:,.0f} messages sent/s meanwhile"
    d = result.durability
    if d:
        line += (
            f"\n      durable: {d['received_202']:,} 202s received, {d['workflows']:,} workflows "
            f"({d['messages']:,} messages, {d['jobs']:,} jobs) after SIGKILL, "
            f"{d['missing']} missing" + (", exact" if d["exact"] else ", NOT exact")
        )
    print(line, flush=True)


def print_peer_run(run: dict[str, Any]) -> None:
    """One line per peer run as it finishes."""
    print(
        f"  round {run['round']} {run['name']}: {run['requests_per_s']:>9,.0f} req/s  "
        f"p99 {run['p99_ms']:6.2f} ms  non-2xx {run['non_2xx']:.0f}  "
        f"{run['end_to_end_per_s']:,.0f} SMS/s end to end  "
        f"{run['cpu_us_per_message']:,.0f} µs/SMS",
        flush=True,
    )


def print_table(
    rows: list[dict[str, Any]],
    gen: Generator,
    opts: Options,
    rounds: int,
    peer_rows: Sequence[dict[str, Any]] = (),
) -> None:
    """The final table."""
    tokens = (
        "one JWT reused (RS256 verified once, then cached)"
        if opts.tokens <= 1
        else f"{opts.tokens} distinct JWTs in rotation"
        + (" (each verified: more than the server caches)" if opts.tokens > 10_000 else "")
    )
    print()
    print(f"POST {PATH}: 2-step messenger -> sms workflow, {tokens}")
    print(f"load generator: {gen.describe()}")
    print(
        f"{opts.warmup:g} s warm-up + {opts.duration:g} s measured per run; "
        f"{rounds} round(s), configurations interleaved; median over rounds"
        + (f"; servers and generator at nice {opts.nice}" if opts.nice else "")
    )
    header = (
        f"{'configuration':<20} {'req/s':>9} {'(min-max)':>17} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'non-2xx':>7} {'srv µs/req':>10} {'(loop)':>6} {'vs trivial':>10} {'durable':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        spread = f"{row['min']:,.0f}-{row['max']:,.0f}" if row["runs"] > 1 else ""
        ratio = row["ratio_to_trivial"]
        durable = "-" if row["config"] == "trivial" else ("yes" if row["durable"] else "NO")
        print(
            f"{row['config']:<20} {row['requests_per_s']:>9,.0f} {spread:>17} "
            f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['non_2xx']:>7} "
            f"{row['server_cpu_us_per_req']:>10.0f} {row['loop_cpu_us_per_req']:>6.0f} "
            f"{ratio:>10.2f} {durable:>8}"
        )
    for peer in peer_rows:
        spread = f"{peer['min']:,.0f}-{peer['max']:,.0f}" if peer["runs"] > 1 else ""
        print(
            f"{'peer: ' + peer['peer']:<20} {peer['requests_per_s']:>9,.0f} {spread:>17} "
            f"{'':>7} {peer['p99_ms']:>7.2f} {'':>7} {peer['server_cpu_us_per_req']:>10.0f} "
            f"{'':>6} {peer['ratio_to_trivial']:>10.2f} {'-':>8}"
        )
    print(
        "srv µs/req: the server process's CPU (all threads) per answered request, (loop) the "
        "event-loop thread's share;\nvs trivial: req/s over the raw ASGI endpoint's in the same "
        "round; durable: every 202 found after SIGKILL, and as many workflows as 202s"
    )
    if peer_rows:
        name = peer_rows[0]["name"]
        print(f"against {name}, measured in the same rounds (median of the rounds' ratios):")
        for row in rows:
            if row["ratios_to_peer"]:
                each = ", ".join(f"{ratio:.2f}" for ratio in row["ratios_to_peer"])
                print(f"  {row['config']:<20} {row['ratio_to_peer']:.2f} ({each})")
    others = [row["other_cpu_cores"] for row in rows]
    if others:
        print(
            f"other load on the machine during the runs: {min(others):.2f}-{max(others):.2f} "
            f"of {os.cpu_count()} cores (median per configuration; not this benchmark's processes)"
        )


# --- main ----------------------------------------------------------------------------------


def _configs(
    databases: list[str], synchronous: list[str], engine: str, preloads: list[int]
) -> list[Config]:
    """The ceiling first, then Cascade on each database: accept path alone (``engine`` off or
    both), with its engine (``engine`` on or both); on SQLite, over each ``preloads`` count of
    stored workflows."""
    configs = [Config("trivial", "trivial")]
    modes = {"off": [False], "on": [True], "both": [False, True]}[engine]
    for database in databases:
        for with_engine in modes:
            suffix = " + engine" if with_engine else ""
            if database == "postgres":
                configs.append(Config(f"postgres{suffix}", "postgres", engine=with_engine))
                continue
            for mode in synchronous:
                for count in preloads:
                    stored = f", {count:,} stored" if count else ""
                    configs.append(
                        Config(f"sqlite {mode}{suffix}{stored}", "sqlite", mode, with_engine, count)
                    )
    return configs


def _counts(value: str) -> list[int]:
    """Comma-separated counts of workflows."""
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("counts: N or N,N,...") from exc
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError("counts: N or N,N,... (not negative)")
    return counts


def _csv(allowed: set[str]) -> Any:
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        wrong = [v for v in items if v not in allowed]
        if wrong or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(allowed))}")
        return items

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Durable accepts per second of POST /v0.1/dispatch against `cascade serve`.",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per run")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--database",
        type=_csv({"sqlite", "postgres"}),
        default=["sqlite"],
        help="sqlite, postgres or both (comma-separated)",
    )
    parser.add_argument(
        "--synchronous",
        type=_csv({"FULL", "NORMAL"}),
        default=["FULL"],
        help="CASCADE_SQLITE_SYNCHRONOUS for the SQLite runs: FULL, NORMAL or FULL,NORMAL",
    )
    parser.add_argument(
        "--engine",
        choices=["off", "on", "both"],
        default="off",
        help="off: the accept path alone (CASCADE_RUN_WORKER=false); on: cascade serve with its "
        "engine, as the README starts it (its processes, one per core; jobs are consumed, so "
        "they are not counted, and the messages sent meanwhile are); both",
    )
    parser.add_argument("--runs", type=int, default=1, help="rounds (the table shows medians)")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "python"], default="auto", help="load generator"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--tokens",
        type=int,
        default=1,
        help="distinct JWTs the clients rotate through (1: one reused token, as SDKs that cache "
        "theirs do; above 10000 every request pays RS256 verification)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CASCADE_BENCH_POSTGRES_URL", harness.DEFAULT_POSTGRES_URL),
        help="an admin connection on 127.0.0.1; each run creates and drops its own database",
    )
    parser.add_argument(
        "--preload",
        type=_counts,
        default=[0],
        metavar="N[,N...]",
        help="store N finished SMS workflows (with their events and webhooks) before each "
        "SQLite run, to see how the accept rate holds as the database grows; several counts "
        "(0,1000000) are configurations of their own, measured in the same rounds",
    )
    harness.add_preload_cache_option(parser)
    harness.add_server_env_option(
        parser, "`cascade serve` (the benchmark's own run it at CASCADE_LOG_LEVEL=warning)"
    )
    parser.add_argument(
        "--peers",
        type=_csv(set(peers.PEERS)),
        default=[],
        metavar="PEER[,PEER]",
        help="also measure these peers (kannel, jasmin), when installed, in every round between "
        "Cascade's runs; Cascade's rates are then also reported over the first peer's of the "
        "same round",
    )
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20 or not 1 <= args.connections <= 1024 or args.duration <= 0:
        parser.error("--runs 1..20, --connections 1..1024 and a positive --duration")
    host = re.sub(r"^[a-z]+://([^@/]*@)?", "", args.postgres_url).split("/", 1)[0].split(":")[0]
    if "postgres" in args.database and host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--postgres-url must point at this machine (127.0.0.1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every configuration ``--runs`` times, round-robin, and report."""
    args = parse_args(argv)
    harness.install_signal_handlers()
    opts = Options(
        duration=args.duration,
        warmup=args.warmup,
        tokens=args.tokens,
        postgres_url=args.postgres_url,
        keep=args.keep,
        nice=args.nice,
        wait_idle=args.wait_idle,
        server_env=dict(args.server_env),
        preload_cache=args.preload_cache,
    )
    print(f"machine: {harness.describe_machine()}", flush=True)
    procs = harness.Processes(args.nice)
    results: list[RunResult] = []
    peer_runs: list[dict[str, Any]] = []
    installed = [key for key in args.peers if peers.PEERS[key][0]()]
    notes = [
        f"{key} not measured, not installed: {peers.PEERS[key][2]}"
        for key in args.peers
        if key not in installed
    ]
    try:
        gen = pick_generator(args.generator, args.connections, args.threads)
        configs = _configs(args.database, args.synchronous, args.engine, args.preload)
        print(f"load generator: {gen.describe()}", flush=True)
        for rnd in range(1, args.runs + 1):
            for config in configs:
                if opts.wait_idle > 0:
                    busy = harness.wait_for_quiet(opts.wait_idle)
                    print(f"  (machine busy {busy:.2f} cores before the run)", flush=True)
                result = run_once(config, rnd, gen, opts, procs)
                results.append(result)
                print_run(result)
            for key in installed:
                try:
                    peer_runs.append(run_peer(key, rnd, opts, args.connections))
                except harness.BenchError as exc:
                    # a peer that fails is a note, not a failed benchmark: Cascade's runs stand
                    notes.append(f"{key} failed in round {rnd}: {str(exc).splitlines()[0][:300]}")
                    print(f"  {notes[-1]}", flush=True)
                    continue
                print_peer_run(peer_runs[-1])
    except harness.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    rows = summarize(results, configs, peer_runs)
    peer_rows = summarize_peers(peer_runs, results)
    print_table(rows, gen, opts, args.runs, peer_rows)
    for note in notes:
        print(f"note: {note}")
    record = {
        "generator": asdict(gen) | {"description": gen.describe()},
        "options": asdict(opts)
        | {"connections": args.connections, "preload": args.preload, "peers": args.peers},
        "summary": rows,
        "runs": [asdict(r) for r in results],
        "peers": {"summary": peer_rows, "runs": peer_runs, "notes": notes},
    }
    record["options"].pop("postgres_url", None)
    harness.write_json("accept", record, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
