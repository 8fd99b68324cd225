"""Retention: the engine's periodic sweep that deletes what is no longer needed.

Expired Idempotency-Keys go after their time to live; with a retention period, finished
workflows (and everything that hangs off them), settled inbound webhooks and receipts that
never matched a message go once they are older than it. Each store call deletes one small batch
in its own transaction and the sweep rests between batches as long as the batch took, so a
backlog of millions of rows never holds the write lock (or the loop) for long, nor most of the
time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from cascade.clock import Clock
from cascade.store.base import Purging

log = structlog.get_logger(__name__)

DAY = 86_400.0
#: seconds to wait after a failed sweep before the next, doubling up to the interval
RETRY_FIRST = 5.0

Purge = Callable[[float, int], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """What to keep and how to sweep."""

    #: seconds an Idempotency-Key is kept (and deduplicates)
    idempotency_ttl: float = DAY
    #: days finished workflows, settled inbound webhooks and orphan receipts are kept (0: ever)
    days: float = 30.0
    #: seconds between sweeps
    interval: float = 300.0
    #: rows one transaction deletes at most
    batch_size: int = 200


class Retention:
    """The sweep over one store; ``run`` is the long-lived task, ``purge_once`` one sweep."""

    def __init__(self, store: Purging, clock: Clock, settings: RetentionSettings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings

    async def purge_once(self) -> int:
        """Delete everything due now, batch by batch; returns how many rows (workflows for
        the workflow purge) went."""
        now = self.clock.now()
        sweeps: list[tuple[str, Purge, float]] = [
            (
                "idempotency_keys",
                self.store.purge_idempotency_keys,
                now - self.settings.idempotency_ttl,
            )
        ]
        if self.settings.days > 0:
            before = now - self.settings.days * DAY
            sweeps += [
                ("workflows", self.store.purge_workflows, before),
                ("webhooks", self.store.purge_webhooks, before),
                ("orphan_receipts", self.store.purge_orphan_receipts, before),
            ]
        total = 0
        for name, purge, before in sweeps:
            purged = 0
            while True:
                started = time.monotonic()
                count = await purge(before, self.settings.batch_size)
                purged += count
                if count < self.settings.batch_size:
                    break
                # rest as long as the batch took: a backlog takes at most about half of the
                # database's (and, on SQLite, the event loop's) time from requests and jobs
                await asyncio.sleep(time.monotonic() - started)
            if purged:
                log.info("retention.purged", kind=name, rows=purged)
            total += purged
        return total

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled. A failed sweep is logged and
        tried again after a backoff, so the task never ends on an error."""
        retry = RETRY_FIRST
        while True:
            try:
                await self.purge_once()
            except Exception:  # logged with its traceback; the next sweep tries again
                log.exception("retention.failed", retry_in=retry)
                delay, retry = retry, min(retry * 2, self.settings.interval)
            else:
                delay, retry = self.settings.interval, RETRY_FIRST
            await self.clock.sleep(delay)
