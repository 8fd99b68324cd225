"""What every benchmark here needs, written once: processes, ports, CPU samplers, the machine
description and the JSON record.

* :class:`Processes`: every subprocess a benchmark starts, each in its own session, stopped in a
  ``finally`` whatever happens (:func:`install_signal_handlers` makes SIGTERM/SIGHUP unwind
  through it); :func:`exit_on_signals` for the helper processes' own event loops.
* :func:`free_port`, :func:`wait_port`, :func:`wait_healthy`: ports on 127.0.0.1.
* CPU: :func:`process_cpu` (a process with its children, for ``cascade serve`` on several
  processes), :func:`thread_cpu`, :func:`machine_busy`; :class:`Usage` samples named processes,
  this process and the machine between two instants and names the CPU that was *not* ours
  ("other load", on a shared machine); :class:`ThreadSampler` splits one process by thread.
* :func:`machine` and :func:`describe_machine`: cores, CPU, memory, kernel, versions, load.
* :func:`write_json`: the record of a run (command, machine, commit, options, result).
* The ``cascade`` CLI (:func:`cli`), a fresh PostgreSQL database (:func:`postgres_database`),
  py-spy (:func:`start_py_spy`), and the common life of a driver (:func:`run_benchmark`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0

T = TypeVar("T")


class BenchError(RuntimeError):
    """A run could not be carried out (a process failed to start, a check failed)."""


# --- processes -------------------------------------------------------------------------------


def _niced(nice: int) -> Callable[[], None] | None:
    """A preexec_fn that changes a child's scheduling priority (None when 0)."""
    if nice == 0:
        return None

    def apply() -> None:
        os.nice(nice)

    return apply


class Processes:
    """Every subprocess a benchmark started, each in its own session; all stopped at exit."""

    def __init__(self, nice: int = 0) -> None:
        self._running: list[subprocess.Popen[bytes]] = []
        self.nice = nice

    def start(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr to ``log`` (``env``: this one's by default)."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(os.environ if env is None else env),
                cwd=cwd or log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_niced(self.nice),
            )
        self._running.append(proc)
        return proc

    def helper(self, script: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Start one of the benchmarks' helper processes (``python SCRIPT ARGS``)."""
        return self.start([sys.executable, str(script), *args], log=log)

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Signal ``proc``'s process group, wait, and SIGKILL it if it outlives the timeout."""
        if proc in self._running:
            self._running.remove(proc)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the process left in its group

    def stop_all(self) -> None:
        """Stop whatever is still running (the ``finally`` of the whole benchmark)."""
        for proc in list(self._running):
            self.stop(proc)


def _on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally, which stops the processes


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind through every ``finally`` (which stops the subprocesses)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def exit_on_signals(stop: asyncio.Event | None = None) -> None:
    """In a helper process's event loop: SIGTERM/SIGINT set ``stop``, or without one end the
    process at once (a server library may not stop promptly)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        if stop is not None:
            loop.add_signal_handler(signum, stop.set)
        else:
            loop.add_signal_handler(signum, lambda: (sys.stdout.flush(), os._exit(0)))


def run_loop(coroutine: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """Run ``coroutine`` on uvloop (as ``cascade serve`` does) when installed, else asyncio."""
    if loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- ports -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, within: float = 15.0) -> None:
    """Wait until something listens on ``port``; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"a helper exited:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on {port}:\n{tail(log)}")


def wait_healthy(
    port: int, proc: subprocess.Popen[bytes], log: Path, path: str = "/health"
) -> None:
    """Poll ``GET path`` until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.1)
    raise BenchError(f"the server did not answer {path} in {STARTUP_TIMEOUT:.0f} s:\n{tail(log)}")


def get_json(port: int, path: str) -> Any:
    """``GET path`` on 127.0.0.1 and the JSON answer (a helper's statistics)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# --- CPU -------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    return path.read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far, with its child
    processes' (``cascade serve`` on several processes), the running and the ended ones."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except FileNotFoundError:
        return 0.0
    own = sum(int(value) for value in fields[11:15]) / _TICK  # utime stime cutime cstime
    return own + sum(process_cpu(child) for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    """The running child processes of ``pid`` (of any of its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the thread may end while it is read
            found += [int(child) for child in task.read_text().split()]
    return found


def named_children(pid: int) -> dict[str, int]:
    """The child processes of ``pid`` by their names (``cascade serve`` names each of its
    children: ``cascade engine``, ``cascade webhook``, ``cascade api-1``)."""
    named: dict[str, int] = {}
    for child in child_pids(pid):
        with contextlib.suppress(OSError):  # a child may end while it is read
            named[Path(f"/proc/{child}/comm").read_text().strip()] = child
    return named


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``pid``: ``main`` (for a server, the event loop)
    and the others by thread id."""
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = _stat_fields(task / "stat")
            name = "main" if task.name == str(pid) else f"thread {task.name}"
            seconds[name] = (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (for a server: the event loop)."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> float:
    """CPU seconds all cores have spent busy (not idle or waiting for I/O) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    values += [0] * 8
    idle_or_waiting = values[3] + values[4]  # user nice system idle iowait irq softirq steal
    return (sum(values[:8]) - idle_or_waiting) / _TICK


def children_cpu() -> float:
    """CPU seconds of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(limit: float, threshold: float = 0.3) -> float:
    """Wait up to ``limit`` seconds for the machine to be nearly idle (under ``threshold``
    cores busy over one second); the busy cores seen last."""
    deadline = time.monotonic() + limit
    while True:
        busy0, wall0 = machine_busy(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy() - busy0) / (time.monotonic() - wall0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(2.0)


class Usage:
    """The CPU of named processes (each with its children), of their main threads, of this
    process (the load generator) and of the whole machine, between ``__init__`` and
    :meth:`stop`; what the machine spent beyond them is the *other load*."""

    def __init__(
        self,
        pids: Mapping[str, int],
        loops: Iterable[str] = (),
        parts: Mapping[str, int] | None = None,
    ) -> None:
        """``parts``: processes inside the named ones (a server's children), each reported
        on its own but not added again to the total."""
        self.pids = dict(pids)
        self.parts = dict(parts or {})
        self.loops = [name for name in loops if name in self.pids]
        self._cpu = {name: process_cpu(pid) for name, pid in (self.pids | self.parts).items()}
        self._loop = {name: main_thread_cpu(self.pids[name]) for name in self.loops}
        self._own = time.process_time()
        self._busy, self._wall = machine_busy(), time.monotonic()

    def stop(self, own: str = "load generator (this process)") -> dict[str, Any]:
        """``cpu_s`` (seconds of each process, of each named loop thread and the rest of its
        process, and of this one as ``own``), ``wall_s``, ``machine_busy_cores`` and
        ``other_load_cores``."""
        busy, wall = machine_busy() - self._busy, max(1e-9, time.monotonic() - self._wall)
        cpu = {name: process_cpu(pid) - self._cpu[name] for name, pid in self.pids.items()}
        ours = sum(cpu.values())
        cpu.update({name: process_cpu(pid) - self._cpu[name] for name, pid in self.parts.items()})
        for name in self.loops:
            loop = main_thread_cpu(self.pids[name]) - self._loop[name]
            cpu[f"{name}: event loop thread"] = loop
            cpu[f"{name}: other threads"] = cpu[name] - loop
        cpu[own] = time.process_time() - self._own
        ours += cpu[own]
        return {
            "cpu_s": cpu,
            "wall_s": wall,
            "machine_busy_cores": busy / wall,
            "other_load_cores": max(0.0, busy - ours) / wall,
        }


class ThreadSampler:
    """CPU used by each thread of a process and by the whole machine between two instants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._threads = thread_cpu(pid)
        self._busy = machine_busy()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used on average: each thread, ``(process)``, ``(machine)``, ``(seconds)``."""
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


# --- figures ---------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-len(ordered) * pct // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """The median, NaN of nothing."""
    return statistics.median(values) if values else float("nan")


def span(times: Sequence[float]) -> tuple[float, float]:
    """The first and last of some instants."""
    return (min(times), max(times)) if times else (float("nan"), float("nan"))


def rate(times: Sequence[float]) -> float:
    """Events per second over their own span (first to last)."""
    if len(times) < 2:
        return float("nan")
    first, last = span(times)
    return len(times) / max(1e-9, last - first)


# --- the machine -----------------------------------------------------------------------------

PACKAGES = ("cascade", "starlette", "uvicorn", "uvloop", "httptools", "msgspec", "PyJWT")


def machine() -> dict[str, Any]:
    """The machine and versions, for the record: cores, CPU model, memory, kernel, Python,
    SQLite, the server's packages, and the 1-minute load average now."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    packages = {}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            packages[name] = version(name)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kb / 1048576, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": packages,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def describe_machine(facts: Mapping[str, Any] | None = None) -> str:
    """The machine in one line."""
    m = facts or machine()
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (
        f"{m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']:.1f} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}, {packages}; "
        f"load average {m['load_average_1m']:.2f} at start"
    )


def commit() -> str:
    """The commit measured, with ``+changes`` when src/ differs from it ("" outside git)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+changes" if head and git("status", "--porcelain", "--", "src") else "")


def command_line() -> str:
    """This driver's command line, less where its record went (``--json PATH``) and where its
    preloaded databases were copied from (``--preload-cache DIR``): neither changes a figure."""
    shown: list[str] = []
    args = iter(sys.argv[1:])
    for arg in args:
        if arg == "--json":
            following = next(args, "")
            if following.startswith("-"):
                shown.append(following)
        elif arg == "--preload-cache":
            next(args, "")
        elif not arg.startswith(("--json=", "--preload-cache=")):
            shown.append(arg)
    return " ".join([f"bench/{Path(sys.argv[0]).name}", *shown])


def write_json(name: str, record: dict[str, Any], path: str | None) -> Path | None:
    """Write ``record`` with the command, machine and commit to ``path`` (``auto``:
    bench/results/NAME-TIME.json; None: nowhere); the file written."""
    if path is None:
        return None
    target = (
        Path(path)
        if path != "auto"
        else RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    full = {
        "benchmark": name,
        "command": command_line(),
        "machine": machine(),
        "commit": commit(),
        **record,
    }
    target.write_text(json.dumps(full, indent=2, default=str) + "\n")
    print(f"results written to {target}", flush=True)
    return target


# --- the cascade CLI and databases -------------------------------------------------------------


def cascade_argv() -> list[str]:
    """How to run the ``cascade`` command of this Python."""
    script = Path(sys.executable).parent / "cascade"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cascade.cli import main; main()"]


def clean_env() -> dict[str, str]:
    """This environment without CASCADE_* settings, and ``cascade serve`` in one process (the
    CPU figures read one process; a benchmark of several processes sets its own count)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env["CASCADE_PROCESSES"] = "1"
    return env


def cli(argv: list[str], env: Mapping[str, str], cwd: Path) -> str:
    """Run ``cascade ARGV``; its output, or BenchError with it."""
    done = subprocess.run(
        cascade_argv() + argv,
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"cascade {' '.join(argv[:2])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def postgres_admin(url: str, statement: str) -> None:
    """Run one statement on an admin connection."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def with_dbname(url: str, name: str) -> str:
    """``url`` with another database name."""
    return f"{url.rpartition('/')[0]}/{name}"


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new database ``cascade_bench_<random>`` on the server of ``admin_url``, dropped
    afterwards; its URL."""
    name = f"cascade_bench_{uuid.uuid4().hex[:12]}"
    postgres_admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(admin_url, name)
    finally:
        postgres_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- a database that holds what a service that ran for a while holds ---------------------------

#: every id :func:`preload_sqlite` makes sorts at or below this (a run's own ids sort above)
PRELOADED = "00000000-0000-7000-ffff"


def preload_sqlite(db_path: Path, count: int, chunk: int = 500_000) -> None:
    """Store ``count`` finished SMS workflows of the account, as a service that ran for a while
    holds them: each with its message (delivered, with a provider id), three timeline events
    and two delivered status webhooks, created over the 30 days before now, ids ordered by time
    as Cascade's UUIDv7 ids are (older than any id a run makes)."""
    started = time.monotonic()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    (account,) = conn.execute("SELECT id FROM accounts LIMIT 1").fetchone()
    now = time.time()
    span = 30 * 86400.0
    to = '{"type":"sms","number":"447700900000"}'
    sender = '{"type":"sms","number":"447700900001"}'
    content = '{"content":{"type":"text","text":"Your parcel arrives today."}}'
    hook = '{"message_uuid":"%s","status":"delivered","usage":{"price":"0.0333","currency":"EUR"}}'
    for first in range(0, count, chunk):
        last = min(first + chunk, count)
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS n (i INTEGER PRIMARY KEY, at REAL, w TEXT, m TEXT)"
        )
        conn.execute("DELETE FROM n")
        conn.execute(
            "WITH RECURSIVE r(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM r WHERE i + 1 < ?) "
            "INSERT INTO n SELECT i, ? + ? * i / ?, printf('00000000-0000-7000-8000-%012x', i), "
            "printf('00000000-0000-7000-9000-%012x', i) FROM r",
            (first, last, now - span, span, count),
        )
        conn.execute(
            "INSERT INTO workflows (id, account_id, surface, state, created_at, updated_at, "
            "finished_at) SELECT w, ?, 'messages', 'completed', at, at + 2, at + 2 FROM n",
            (account,),
        )
        conn.execute(
            "INSERT INTO messages (id, workflow_id, step, account_id, channel, recipient, sender,"
            " body, state, status, provider, provider_message_id, started_at, created_at, "
            "updated_at, send_attempts, send_started_at, segments) SELECT m, w, 0, ?, 'sms', ?, "
            "?, ?, 'succeeded', 'delivered', 'smpp:bench', printf('%x', i), at, at, at + 2, 1, "
            "at, 1 FROM n",
            (account, to, sender, content),
        )
        for kind, status, offset in (("accepted", None, 0), ("step_started", None, 0),
                                     ("status", "delivered", 2)):  # fmt: skip
            conn.execute(
                "INSERT INTO events (workflow_id, message_id, at, kind, status, source) "
                "SELECT w, m, at + ?, ?, ?, 'smpp' FROM n",
                (offset, kind, status),
            )
        for status, offset in (("submitted", 0.1), ("delivered", 2.0)):
            conn.execute(
                "INSERT INTO webhooks (account_id, workflow_id, message_id, kind, url, body, "
                "state, attempts, created_at, first_attempt_at, last_attempt_at, last_status, "
                "delivered_at) SELECT ?, w, m, 'message-status', 'http://127.0.0.1:9/status', "
                "printf(?, m), 'delivered', 1, at + ?, at + ?, at + ?, 204, at + ? FROM n",
                (account, hook.replace("delivered", status), *(offset,) * 4),
            )
        conn.execute("COMMIT")
        print(f"  preloaded {last:,} workflows ({time.monotonic() - started:.0f} s)", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def stored_database(
    db_path: Path, count: int, env: Mapping[str, str], cache: Path | None = None
) -> None:
    """Make ``db_path`` (not there yet) a Cascade database whose one account holds ``count``
    finished SMS workflows (:func:`preload_sqlite`); the caller's ``cascade app create`` then
    adds its application to that account. With ``cache``, the first database of a count is
    made there and every one is a copy of it: 10 million workflows take about 200 s to write,
    a copy of their 22.7 GB well under a minute (bench/run.py gives its steps one cache a run,
    deleted after). The disk must hold what is written: BenchError first when it cannot."""
    if cache is None:
        _check_room(db_path.parent, count)
        _store_workflows(db_path, count, env)
        return
    template = cache / f"stored-{count}.db"
    if not template.exists():
        _check_room(cache, 2 * count)  # the template, and a run's copy beside it
        partial = cache / f"partial-{count}" / "cascade.db"
        shutil.rmtree(partial.parent, ignore_errors=True)
        partial.parent.mkdir(parents=True)
        _store_workflows(partial, count, env)
        partial.rename(template)
        shutil.rmtree(partial.parent)
    _check_room(db_path.parent, count)
    shutil.copyfile(template, db_path)


#: bytes a stored workflow takes in SQLite with its message, events, webhooks and indexes
#: (10 million took 22.7 GB)
STORED_WORKFLOW_BYTES = 2_300


def _check_room(directory: Path, workflows: int) -> None:
    """BenchError, before anything is written, when ``directory``'s disk cannot hold that many
    stored workflows (with a tenth to spare): a full disk would fail the run halfway."""
    needed = workflows * STORED_WORKFLOW_BYTES * 1.1
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BenchError(
            f"storing {workflows:,} workflows needs about {needed / 1e9:.1f} GB free in "
            f"{directory}; it has {free / 1e9:.1f} GB"
        )


def _store_workflows(db_path: Path, count: int, env: Mapping[str, str]) -> None:
    """A new database at ``db_path`` with its account, then ``count`` workflows of it."""
    env = {**env, "CASCADE_DATABASE_URL": f"sqlite:///{db_path}"}
    key = db_path.parent / "preload.key"
    cli(["app", "create", "preload", "--private-key-file", str(key)], env, db_path.parent)
    preload_sqlite(db_path, count)


# --- profiling -------------------------------------------------------------------------------


def start_py_spy(
    procs: Processes, pid: int, seconds: float, out: Path, log: Path
) -> subprocess.Popen[bytes] | None:
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
    return procs.start(argv, cwd=out.parent, log=log)


# --- the life of a driver ----------------------------------------------------------------------


def _cascade_setting(item: str) -> tuple[str, str]:
    """One ``--server-env`` value: a ``CASCADE_*`` setting and its value."""
    name, sep, value = item.partition("=")
    if not sep or not name.startswith("CASCADE_"):
        raise argparse.ArgumentTypeError(f"takes CASCADE_NAME=VALUE, not {item!r}")
    return name, value


def add_server_env_option(parser: Any, applies_to: str) -> None:
    """``--server-env NAME=VALUE`` (repeatable): a setting for ``applies_to`` over the
    benchmark's own; ``args.server_env`` is then a list of (name, value)."""
    parser.add_argument(
        "--server-env",
        action="append",
        type=_cascade_setting,
        default=[],
        metavar="NAME=VALUE",
        help=f"a CASCADE_* setting for {applies_to}, over the benchmark's own; repeatable, e.g. "
        "--server-env CASCADE_LOG_LEVEL=info --server-env CASCADE_ACCESS_LOG=false",
    )


def add_preload_cache_option(parser: Any) -> None:
    """``--preload-cache DIR``: where databases preloaded with stored workflows are made once
    and copied from (:func:`stored_database`)."""
    parser.add_argument(
        "--preload-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="make each preloaded database once in DIR and copy it for every run (without it, "
        "every run writes its own)",
    )


def add_machine_options(parser: Any) -> None:
    """``--wait-idle``, ``--nice``, ``--json`` and ``--keep``: for every driver."""
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
        help="run the servers and the load generator at this nice value (e.g. -10, as root)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="also write the result as JSON (default path: bench/results/NAME-TIME.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories")


def prepare_machine(args: Any) -> Processes:
    """Apply ``--nice`` to this process (children inherit it), wait for ``--wait-idle``; the
    process registry."""
    if args.nice:
        os.nice(args.nice)
    if args.wait_idle > 0:
        busy = wait_for_quiet(args.wait_idle)
        print(f"machine busy before the run: {busy:.2f} cores", flush=True)
    return Processes()


def run_benchmark(
    name: str,
    args: Any,
    run: Callable[[Any, Processes], dict[str, Any]],
    print_result: Callable[[dict[str, Any]], None],
    failed: Callable[[dict[str, Any]], bool] = lambda result: False,
) -> int:
    """The common life of a driver: describe the machine, prepare it, run, always stop what
    was started, print the result and keep it as JSON; the exit status (1 when ``failed``)."""
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
    options = {k: v for k, v in vars(args).items() if k not in ("postgres_url", "func")}
    write_json(name, {"options": options, "result": result}, args.json)
    return 1 if failed(result) else 0
