"""Shared by the engine benchmarks (``timers.py``, ``memory.py``, ``throughput.py``).

It reuses the accept benchmark's helpers (``bench/accept.py``: the subprocess registry that
always stops what it started, ``free_port``, ``wait_healthy``, the ``cascade`` CLI wrapper, the
machine description) and adds what the engine benchmarks need on top:

* :class:`Server`: a fresh data directory, an application and its JWT made with the ``cascade``
  CLI, and ``cascade serve`` (engine in-process) on a free 127.0.0.1 port over a fresh SQLite file;
* :func:`post_many`: a fixed number of POSTs from concurrent keep-alive clients (raw asyncio
  streams, uvloop when installed) running in the benchmark's own process;
* readers of the server's ``/metrics`` and ``/proc/PID/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import accept  # noqa: E402  (bench/accept.py: the helpers are reused, not copied)

BenchError = accept.BenchError
Processes = accept.Processes
environment = accept.environment
process_cpu = accept.process_cpu
machine_busy = accept.machine_busy
PATH = "/v0.1/dispatch"


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind through every ``finally`` (which stops the subprocesses)."""
    signal.signal(signal.SIGTERM, accept._on_signal)
    signal.signal(signal.SIGHUP, accept._on_signal)


# --- request bodies --------------------------------------------------------------------------


def text(value: str) -> dict[str, Any]:
    return {"content": {"type": "text", "text": value}}


def messenger_step(
    recipient: str, *, expiry_time: int | None = None, condition: str = "delivered"
) -> dict[str, Any]:
    step: dict[str, Any] = {
        "to": {"type": "messenger", "id": recipient},
        "from": {"type": "messenger", "id": "9876543210987654"},
        "message": {**text("Your parcel arrives today."), "messenger": {"category": "update"}},
    }
    if expiry_time is not None:
        step["failover"] = {"expiry_time": expiry_time, "condition_status": condition}
    return step


def sms_step(number: str = "447700900000") -> dict[str, Any]:
    return {
        "to": {"type": "sms", "number": number},
        "from": {"type": "sms", "number": "447700900001"},
        "message": text("Your parcel arrives today."),
    }


def dispatch(*steps: dict[str, Any]) -> bytes:
    return json.dumps({"template": "failover", "workflow": list(steps)}).encode()


# --- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    """``cascade serve`` over a fresh SQLite file in its own temporary directory."""

    procs: accept.Processes
    env_extra: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    workdir: Path = field(init=False)
    port: int = field(init=False)
    token: str = field(init=False)
    proc: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="cascade-engine-bench-"))
        self.port = accept.free_port()
        self.env = accept._clean_env()
        self.env.update(
            CASCADE_DATABASE_URL=f"sqlite:///{self.db_path}",
            CASCADE_LOG_LEVEL="warning",
            CASCADE_RUN_WORKER="true",
        )
        self.env.update(self.env_extra)
        created = accept._cli(
            ["app", "create", "bench", "--private-key-file", str(self.workdir / "bench.key")],
            self.env,
            self.workdir,
        )
        match = re.search(r"application_id:\s*(\S+)", created)
        if match is None:
            raise BenchError(f"no application_id in:\n{created}")
        from cascade.cli import make_jwt

        now = int(time.time())
        self.token = make_jwt(
            (self.workdir / "bench.key").read_bytes(),
            {"application_id": match.group(1), "exp": now + 7200, "iat": now},
        )

    @property
    def db_path(self) -> Path:
        return self.workdir / "cascade.db"

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def start(self) -> None:
        argv = [*accept._cascade_argv(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = self.procs.start(argv, env=self.env, cwd=self.workdir, log=self.log)
        accept.wait_healthy(self.port, self.proc, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, sig)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.keep:
            print(f"  kept {self.workdir}", flush=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        pid: int = self.proc.pid
        return pid

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, ``name{labels}`` -> value."""
        status, body = self.get("/metrics")
        if status != 200:
            raise BenchError(f"/metrics answered {status}")
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    samples[name] = float(value)
        return samples

    def status(self) -> dict[str, int]:
        """``/proc/PID/status`` memory lines in kB (VmRSS, VmHWM, RssAnon, ...)."""
        values: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[name] = int(parts[0])
        return values

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read on the SQLite file (WAL: fine while the server writes)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, tuple(params)).fetchall()
        finally:
            conn.close()

    def wait_for(
        self, what: str, done: Callable[[], bool], timeout: float, interval: float = 0.5
    ) -> float:
        """Poll ``done`` until true; the seconds waited. Fails if the server dies."""
        started = time.monotonic()
        while not done():
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"the server exited:\n{accept._tail(self.log)}")
            if time.monotonic() - started > timeout:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)
        return time.monotonic() - started


def histogram(samples: dict[str, float], name: str) -> dict[float, float]:
    """The cumulative buckets of a Prometheus histogram: upper bound -> count."""
    buckets: dict[float, float] = {}
    pattern = re.compile(re.escape(name) + r'_bucket\{le="([^"]+)"\}')
    for key, value in samples.items():
        match = pattern.fullmatch(key)
        if match:
            buckets[float(match.group(1))] = value
    return dict(sorted(buckets.items()))


def labelled_sum(samples: dict[str, float], name: str) -> float:
    """The sum of a counter over its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


# --- the load generator ----------------------------------------------------------------------


@dataclass
class PostResult:
    """What ``post_many`` saw."""

    statuses: dict[int, int]
    ids: list[str]
    started: float  # time.time() of the first request
    finished: float  # time.time() of the last answer
    latencies: list[float]
    errors: int

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def rate(self) -> float:
        return self.accepted / max(1e-9, self.finished - self.started)


_ID = re.compile(rb'_uuid":"([^"]+)"')


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _post_many(
    port: int, token: str, body: bytes, count: int, connections: int, rate: float = 0.0
) -> PostResult:
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    result = PostResult({}, [], time.time(), 0.0, [], 0)
    remaining = [count]
    begun = time.monotonic()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                if rate > 0:  # request number i goes at started + i / rate
                    wait = begun + (count - remaining[0] - 1) / rate - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                sent = time.monotonic()
                writer.write(request)
                try:
                    status, answer = await asyncio.wait_for(_read_response(reader), 30)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                result.latencies.append(time.monotonic() - sent)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 202:
                    match = _ID.search(answer)
                    if match:
                        result.ids.append(match.group(1).decode())
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(max(1, min(connections, count)))))
    result.finished = time.time()
    return result


def post_many(
    port: int, token: str, body: bytes, count: int, connections: int, rate: float = 0.0
) -> PostResult:
    """POST ``body`` ``count`` times from ``connections`` concurrent keep-alive clients, as
    fast as they are answered or, with ``rate``, at that many requests per second at most."""
    try:
        import uvloop

        runner: Callable[[Any], PostResult] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_post_many(port, token, body, count, connections, rate))


# --- reporting -------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-len(ordered) * pct // 100))))
    return ordered[rank - 1]


def describe_machine() -> str:
    env = environment()
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return (
        f"{env['nproc']} CPUs ({env['cpu']}), {mem_kb / 1048576:.1f} GiB, "
        f"Python {env['python']}, SQLite {env['sqlite']}, {packages}; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )


def write_json(name: str, record: dict[str, Any], path: str | None) -> None:
    """Write ``record`` to ``path`` (``auto``: bench/results/NAME-TIME.json)."""
    if path is None:
        return
    target = Path(path) if path != "auto" else None
    if target is None:
        accept.RESULTS_DIR.mkdir(exist_ok=True)
        target = accept.RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {"command": " ".join([f"bench/{name}.py", *sys.argv[1:]]), **record}
    record["environment"] = environment()
    target.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results written to {target}")


# --- profiling -------------------------------------------------------------------------------


def start_py_spy(
    procs: accept.Processes, pid: int, seconds: float, out: Path, log: Path
) -> Any | None:
    """Sample ``pid`` with py-spy for ``seconds`` into ``out`` (collapsed stacks, one line per
    stack with its count, threads named); None (and a note) if py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("note: py-spy is not installed (pip install py-spy); not profiling", flush=True)
        return None
    argv = [
        spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", "200", "--format", "raw", "--threads", "--output", str(out), "--nonblocking",
    ]  # fmt: skip
    argv += os.environ.get("BENCH_PY_SPY_ARGS", "").split()  # e.g. --gil, --idle
    return procs.start(argv, env=dict(os.environ), cwd=out.parent, log=log)


def top_frames(collapsed: Path, limit: int = 25) -> list[tuple[str, int, int]]:
    """From py-spy's collapsed stacks: (frame, samples with it on the stack, samples with it on
    top), most inclusive first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])[:limit]
    return [(frame, count, own.get(frame, 0)) for frame, count in ranked] + [("(total)", total, 0)]


# --- CPU by thread -----------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid``: ``main`` (the event loop) and the others
    by thread id (in ``cascade serve`` the busy one is the SQLite writer)."""
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = "main" if task.name == str(pid) else f"thread {task.name}"
            seconds[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


class CpuSampler:
    """CPU used by each thread of a process and by the whole machine between two instants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start()

    def start(self) -> None:
        self._threads = thread_cpu(self.pid)
        self._busy = machine_busy()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used on average since ``start``: each thread, the process, the machine; and
        the seconds measured (``(seconds)``)."""
        wall = max(1e-9, time.monotonic() - self._wall)
        threads = thread_cpu(self.pid)
        cores = {
            name: (used - self._threads.get(name, 0.0)) / wall for name, used in threads.items()
        }
        cores = {name: value for name, value in cores.items() if value >= 0.005}
        cores["(process)"] = sum(cores.values())
        cores["(machine)"] = (machine_busy() - self._busy) / wall
        cores["(seconds)"] = wall
        return cores


# --- shared command line -----------------------------------------------------------------------


def add_machine_options(parser: Any) -> None:
    """``--wait-idle`` and ``--nice``, for a machine shared with other work."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be nearly idle (< 0.3 cores busy)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server and this load generator at this nice value (e.g. -10, as root)",
    )


def prepare_machine(args: Any) -> accept.Processes:
    """Apply ``--nice`` to this process, wait for ``--wait-idle``; the process registry."""
    if args.nice:
        os.nice(args.nice)
    if args.wait_idle > 0:
        busy = accept.wait_for_quiet(args.wait_idle)
        print(f"machine busy before the run: {busy:.2f} cores", flush=True)
    return accept.Processes()


def run_benchmark(
    name: str,
    args: Any,
    run: Callable[[Any, accept.Processes], dict[str, Any]],
    print_result: Callable[[dict[str, Any]], None],
) -> int:
    """The common life of an engine benchmark: describe the machine, prepare it, run, always
    stop what was started, print the result and keep it as JSON; the exit status."""
    install_signal_handlers()
    print(f"machine: {describe_machine()}", flush=True)
    procs = prepare_machine(args)
    try:
        result = run(args, procs)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    print_result(result)
    write_json(name, {"options": vars(args), "result": result}, args.json)
    return 0
