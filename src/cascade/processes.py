"""``cascade serve`` on every core: the API and the engine in supervised child processes.

One Python process runs on one core at a time, and the API's accepts, the engine's sends and
receipts, and its webhook deliveries each take a good part of a message's CPU (BENCHMARKS.md),
so ``serve`` runs them apart by default: one engine process (and, when it holds SMPP
connections, one more that delivers the webhooks) and, for every further core, one API process
(``runtime.engine_children``).
The parent binds the API's port and prepares the database (migrations, the first account and
its credentials, the channel links' key check) before any child starts, so each of those fails
once, plainly, with nothing started. Then it forks the children (each API process serves on the
inherited socket; the kernel spreads connections over them) and watches them:

- a child that dies is started again, after a delay that doubles from 1 s to 30 s while it
  keeps dying within a minute of its start, for as long as it takes once it has run a minute
  (a database outage must not need an operator); a child that never could (its first five
  starts each ended within a minute: a broken setting) stops the service with status 1;
- SIGTERM or SIGINT stops every child (SIGTERM, each stops gracefully as ``serve`` does), waits
  up to ``STOP_GRACE`` seconds for them, then kills what remains;
- a child whose parent is gone (killed with SIGKILL) stops itself within a second.

The children share the database as the three-process layout of the README always did: on
SQLite each has its own group-commit writer and waits its turn for the write lock (WAL); on
PostgreSQL the engine hears new work through LISTEN/NOTIFY. ``--processes 1`` keeps everything
in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from cascade.config import Settings

log = structlog.get_logger(__name__)

#: seconds the children get to stop gracefully before they are killed
STOP_GRACE = 30.0
#: a child that ran at least this long before dying is restarted at once (seconds)
STEADY_AFTER = 60.0
#: the longest wait before a restart (seconds)
MAX_RESTART_DELAY = 30.0
#: starts in a row that each ended within STEADY_AFTER before the service gives up
MAX_QUICK_FAILURES = 5
#: how often a child checks that its parent is still there (seconds)
ORPHAN_CHECK = 1.0


#: the bytes of a process's name Linux keeps (``comm``)
NAME_BYTES = 15


def name_process(name: str) -> None:
    """Show this process as ``name`` in ps, top and pidstat (Linux's ``comm``, cut to
    ``NAME_BYTES``), so that an operator can tell ``serve``'s engine from its API processes.
    Elsewhere, or where ``/proc`` refuses it, the process keeps its name: a debug line says so."""
    if not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name.encode()[:NAME_BYTES])
    except OSError as exc:
        log.debug("serve.process_not_named", name=name, error=str(exc))


def process_count(settings: Settings) -> int:
    """How many processes ``serve`` runs: the setting, or one per core (0, the default)."""
    if settings.processes > 0:
        return settings.processes
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(slots=True)
class Child:
    """One supervised process: what it runs and how it has fared."""

    name: str
    run: Callable[[], int]
    pid: int | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    #: whether it ever ran STEADY_AFTER seconds
    was_steady: bool = False
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class ProcessSupervisor:
    """Forks the children, restarts those that die, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, children: list[Child], *, first_delay: float = 1.0) -> None:
        self.children = children
        #: the wait before the second start of a child that died quickly (then doubling)
        self.first_delay = first_delay
        self._stopping = False
        self._failed: str | None = None

    def run(self) -> int:
        """Run until told to stop or a child cannot start; the exit status for the parent."""
        previous = {
            signum: signal.signal(signum, self._on_stop)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                self._start(child)
            while not self._stopping:
                self._reap()
                self._restart_due()
                time.sleep(0.1)
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self._failed is not None:
            log.error("serve.gave_up", reason=self._failed)
            return 1
        return 0

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _start(self, child: Child) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child
            status = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                os.environ["CASCADE_PARENT_PID"] = str(parent)
                name_process(f"cascade {child.name}")
                status = child.run()
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                log.exception("serve.child_failed", process=child.name)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        child.pid = pid
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("serve.process_started", process=child.name, pid=pid)

    def _reap(self) -> None:
        """Note children that ended and plan their restart."""
        for child in self.children:
            if child.pid is None:
                continue
            done, status = os.waitpid(child.pid, os.WNOHANG)
            if done == 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            child.pid = None
            child.exits.append(code)
            ran = time.monotonic() - child.started_at
            child.quick_failures = child.quick_failures + 1 if ran < STEADY_AFTER else 0
            child.was_steady |= ran >= STEADY_AFTER
            if self._stopping:
                continue
            if child.quick_failures >= MAX_QUICK_FAILURES and not child.was_steady:
                self._failed = (
                    f"the {child.name} process ended {child.quick_failures} times in a row "
                    f"within {STEADY_AFTER:g} s of starting (last exit status {code})"
                )
                self._stopping = True
                continue
            delay = 0.0
            if child.quick_failures:
                delay = min(self.first_delay * 2.0 ** (child.quick_failures - 1), MAX_RESTART_DELAY)
            child.restart_at = time.monotonic() + delay
            log.warning(
                "serve.process_exited",
                process=child.name,
                exit_status=code,
                ran_s=round(ran, 1),
                restart_in_s=delay,
            )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.pid is None and child.restart_at is not None and child.restart_at <= now:
                self._start(child)

    def _stop_all(self) -> None:
        """SIGTERM every child, wait for them, then SIGKILL what is left."""
        running = [child for child in self.children if child.pid is not None]
        for child in running:
            assert child.pid is not None
            _signal(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while running and time.monotonic() < deadline:
            time.sleep(0.05)
            self._reap()
            running = [child for child in running if child.pid is not None]
        for child in running:
            assert child.pid is not None
            log.warning("serve.process_killed", process=child.name, pid=child.pid)
            _signal(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            child.pid = None


def _signal(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid`` unless it is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


async def stop_when_orphaned(stop: Callable[[], None]) -> None:
    """In a child of ``serve``: call ``stop`` once the parent process is gone (it was killed
    and could not stop its children); does nothing in a process ``serve`` did not fork."""
    parent = os.environ.get("CASCADE_PARENT_PID")
    if parent is None:
        return
    # no event tells a process its parent died (short of prctl): it is looked at once a second
    while os.getppid() == int(parent):  # noqa: ASYNC110
        await asyncio.sleep(ORPHAN_CHECK)
    log.warning("serve.parent_gone", parent=int(parent))
    stop()
