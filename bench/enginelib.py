"""The Cascade side of the benchmarks, on top of :mod:`harness`:

* :class:`Server`: a fresh data directory, an application and its JWT made with the ``cascade``
  CLI, and ``cascade serve`` (engine in-process) on a free 127.0.0.1 port over a fresh SQLite file;
* :func:`post_many`: a fixed number of POSTs from concurrent keep-alive clients (raw asyncio
  streams, uvloop when installed) in the benchmark's own process, noting when each 202 came;
* request bodies, and readers of the server's ``/metrics`` and ``/proc/PID/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import re
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from loadgen import read_response

PATH = "/v0.1/dispatch"
MESSAGES_PATH = "/v0.1/messages"

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

    procs: harness.Processes
    env_extra: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    #: of the data directory's name, in the temporary folder
    prefix: str = "cascade-engine-bench-"
    #: finished SMS workflows its database holds before it starts (``harness.stored_database``)
    preload: int = 0
    #: where a preloaded database is made once and copied from
    preload_cache: Path | None = None
    workdir: Path = field(init=False)
    port: int = field(init=False)
    token: str = field(init=False)
    proc: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.port = harness.free_port()
        self.env = harness.clean_env()
        self.env.update(
            CASCADE_DATABASE_URL=f"sqlite:///{self.db_path}",
            CASCADE_LOG_LEVEL="warning",
            CASCADE_RUN_WORKER="true",
        )
        self.env.update(self.env_extra)
        if self.preload:
            harness.stored_database(self.db_path, self.preload, self.env, self.preload_cache)
        created = self.cli(
            "app", "create", "bench", "--private-key-file", str(self.workdir / "bench.key")
        )
        match = re.search(r"application_id:\s*(\S+)", created)
        if match is None:
            raise harness.BenchError(f"no application_id in:\n{created}")
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

    def cli(self, *argv: str) -> str:
        """``cascade ARGV`` with the server's settings (before or while it runs)."""
        return harness.cli(list(argv), self.env, self.workdir)

    def start(self) -> None:
        argv = [*harness.cascade_argv(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = self.procs.start(argv, env=self.env, cwd=self.workdir, log=self.log)
        harness.wait_healthy(self.port, self.proc, self.log)

    def worker(self, name: str, *jobs: str, env: dict[str, str] | None = None) -> Any:
        """Start a ``cascade worker`` (``--jobs`` when given) on the server's database."""
        argv = [*harness.cascade_argv(), "worker"] + (["--jobs", ",".join(jobs)] if jobs else [])
        return self.procs.start(
            argv, env=env or self.env, cwd=self.workdir, log=self.workdir / f"{name}.log"
        )

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

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, ``name{labels}`` -> value."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            status, body = response.status, response.read()
        finally:
            conn.close()
        if status != 200:
            raise harness.BenchError(f"/metrics answered {status}")
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
        self,
        what: str,
        done: Callable[[], bool],
        timeout: float,
        interval: float = 0.5,
        progress: Callable[[], str] | None = None,
    ) -> float:
        """Poll ``done`` until true; the seconds waited. Fails if the server dies; prints
        ``progress()`` every 5 s when given."""
        started = last_print = time.monotonic()
        while not done():
            if self.proc is not None and self.proc.poll() is not None:
                raise harness.BenchError(f"the server exited:\n{harness.tail(self.log)}")
            if time.monotonic() - started > timeout:
                note = f" ({progress()})" if progress else ""
                raise harness.BenchError(
                    f"timed out after {timeout:.0f} s waiting for {what}{note}"
                )
            if progress is not None and time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(f"  ... {progress()}", flush=True)
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


# --- the load client ---------------------------------------------------------------------------


@dataclass
class PostResult:
    """What ``post_many`` saw."""

    statuses: dict[int, int]
    #: the id in each 202's answer, with the time.time() it came
    accepted: dict[str, float]
    started: float  # time.time() of the first request
    finished: float  # time.time() of the last answer
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return len(self.accepted) / max(1e-9, self.finished - self.started)

    def line(self, asked: int) -> str:
        """How the accepts went, for the log."""
        return (
            f"accepted {len(self.accepted):,} of {asked:,} in "
            f"{self.finished - self.started:.2f} s ({self.rate:,.0f}/s; statuses "
            f"{self.statuses}, errors {self.errors})"
        )


_ID = re.compile(rb'_uuid":"([^"]+)"')


async def post_many_async(
    port: int,
    token: str,
    body: bytes | Callable[[int], bytes],
    count: int,
    connections: int,
    rate: float,
    path: str,
) -> PostResult:
    """:func:`post_many` on the running event loop (for a driver that runs the service in
    the same loop)."""

    def request(index: int) -> bytes:
        payload = body(index) if callable(body) else body
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    fixed = None if callable(body) else request(0)
    result = PostResult({}, {}, time.time(), 0.0, [], 0)
    numbers = itertools.count()
    begun = time.monotonic()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (index := next(numbers)) < count:
                if rate > 0:  # request number i goes at the start + i / rate
                    wait = begun + index / rate - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                sent = time.monotonic()
                writer.write(fixed or request(index))
                try:
                    status, answer = await asyncio.wait_for(read_response(reader), 60)
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
                        result.accepted[match.group(1).decode()] = time.time()
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(max(1, min(connections, count)))))
    result.finished = time.time()
    return result


def post_many(
    port: int,
    token: str,
    body: bytes | Callable[[int], bytes],
    count: int,
    connections: int,
    rate: float = 0.0,
    path: str = PATH,
) -> PostResult:
    """POST ``body`` (or ``body(i)`` for request i) ``count`` times from ``connections``
    concurrent keep-alive clients, as fast as they are answered or, with ``rate``, at that many
    requests per second at most."""
    return harness.run_loop(post_many_async(port, token, body, count, connections, rate, path))


def accept_or_fail(posted: PostResult, asked: int, server: Server | None = None) -> None:
    """Print how the accepts went; BenchError when none was accepted."""
    print(posted.line(asked), flush=True)
    if not posted.accepted:
        log = f":\n{harness.tail(server.log)}" if server is not None else ""
        raise harness.BenchError("nothing was accepted" + log)


# --- helpers ---------------------------------------------------------------------------------


def start_receiver(procs: harness.Processes, workdir: Path) -> tuple[Any, int]:
    """The webhook receiver (``bench/receiver.py``) on a free port, listening; it and its port."""
    port = harness.free_port()
    log = workdir / "receiver.log"
    proc = procs.helper(harness.BENCH_DIR / "receiver.py", "--port", str(port), log=log)
    harness.wait_port(port, proc, log)
    return proc, port
