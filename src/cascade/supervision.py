"""Background work that never dies quietly.

Every long-running task of the service (the engine's job loop, its lease heartbeat, the sandbox's
receipt timer, ...) is a loop whose round may fail: the database restarts, a provider breaks off.
Two pieces keep such loops honest:

- :class:`Setbacks` is what a loop does with a failed round: log the first failure of a streak
  with its traceback and context, count the repeats without logging each, say once when the loop
  works again, and tell how long to back off (doubling, capped, jittered).
- :class:`Supervisor` runs the loops as named tasks and watches them end. A loop is written never
  to end while the service runs; one that ends anyway (a bug, an error its rounds do not catch)
  is reported as fatal: logged at ``critical`` and handed to ``on_fatal``, which in a running
  service stops the process with a non-zero status, so that its service manager restarts it,
  rather than leaving it half alive (answering 202 while nothing is sent).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: what a supervisor calls when a task ended: its name, and the error it ended with (None when it
#: returned)
OnFatal = Callable[[str, BaseException | None], None]


class Setbacks:
    """The failures of one loop's rounds: logged once per streak, with a backoff to wait."""

    def __init__(
        self, name: str, *, first_delay: float = 0.1, max_delay: float = 5.0, **context: Any
    ) -> None:
        self.name = name
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._context = context
        #: failures in the current streak (0 while the loop works)
        self.streak = 0
        self._last_kind: type[BaseException] | None = None

    def failed(self, exc: BaseException, **context: Any) -> float:
        """Record a failed round; returns the seconds to wait before the next one. The first
        failure of a streak, and a failure of another kind than the one before, is logged with
        its traceback; repeats are counted and reported when the loop recovers."""
        self.streak += 1
        if self.streak == 1 or type(exc) is not self._last_kind:
            log.error(
                "task.failing",
                task=self.name,
                error=f"{type(exc).__name__}: {exc}",
                failures=self.streak,
                exc_info=exc,
                **self._context,
                **context,
            )
        self._last_kind = type(exc)
        delay = min(self.max_delay, self.first_delay * 2.0 ** min(self.streak - 1, 30))
        return delay * random.uniform(0.75, 1.0)

    def succeeded(self) -> None:
        """Record a round that worked; ends a streak of failures (and says so)."""
        if self.streak:
            log.info("task.recovered", task=self.name, failures=self.streak, **self._context)
            self.streak = 0
            self._last_kind = None


def log_fatal(name: str, exc: BaseException | None) -> None:
    """The default reaction to a task that ended: log it at ``critical``."""
    log.critical(
        "task.died",
        task=name,
        error="it returned" if exc is None else f"{type(exc).__name__}: {exc}",
        exc_info=exc,
    )


class Supervisor:
    """Runs named loops that must not end while the service runs, and reports any that does."""

    def __init__(self, on_fatal: OnFatal | None = None) -> None:
        self._on_fatal = on_fatal
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        #: the tasks that ended on their own, with what they ended with
        self.died: dict[str, BaseException | None] = {}

    def start(self, name: str, loop: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``loop`` as the task ``name``."""
        task = asyncio.create_task(loop, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))
        return task

    def alive(self) -> dict[str, bool]:
        """Each task's name, and whether it still runs."""
        return {name: not task.done() for name, task in self._tasks.items()}

    @property
    def healthy(self) -> bool:
        """Whether every task still runs."""
        return not self.died

    async def stop(self) -> None:
        """Cancel every task and wait for them to end."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.died[name] = exc
        log_fatal(name, exc)
        if self._on_fatal is not None:
            self._on_fatal(name, exc)
