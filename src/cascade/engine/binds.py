"""Publishing the engine's SMPP bind states to the store, so that processes holding no SMPP
connection (the API processes of ``serve``) can show them.

The connections keep their state in memory; :class:`BindPublisher` looks at it every
``interval`` seconds (a dictionary read, no I/O) and writes a connection's row only when its
state (bound, last error) differs from what it last wrote: a write per change, never per
message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from cascade.clock import Clock
from cascade.store.base import SmppBind, SmppBinds

log = structlog.get_logger(__name__)

#: how often the in-memory states are compared with the last published ones, in seconds
INTERVAL = 1.0
#: the first wait after a failed write, doubled up to INTERVAL * 30
RETRY_FIRST = 1.0
#: the last error a connection is written with when its engine stops
STOPPED = "the engine stopped"


class BindPublisher:
    """Writes each SMPP connection's state to the store when it changes (see the module)."""

    def __init__(
        self,
        store: SmppBinds,
        status: Callable[[], dict[str, dict[str, Any]]],
        clock: Clock,
        *,
        interval: float = INTERVAL,
    ) -> None:
        self.store = store
        self.status = status
        self.clock = clock
        self.interval = interval
        #: what was last written for each connection: (bound, last error)
        self._published: dict[str, tuple[bool, str | None]] = {}

    async def publish_changes(self) -> int:
        """Write the connections whose state changed since the last write; how many."""
        written = 0
        for name, state in sorted(self.status().items()):
            seen = (bool(state["bound"]), state.get("last_error"))
            if self._published.get(name) == seen:
                continue
            await self.store.put_smpp_bind(SmppBind(name, *seen, changed_at=self.clock.now()))
            self._published[name] = seen
            written += 1
        return written

    async def publish_stopped(self) -> None:
        """Write every connection this publisher wrote as unbound ("the engine stopped"): the
        engine is going, and a row left "bound" would say what no longer is."""
        for name in sorted(self._published):
            stopped = (False, STOPPED)
            await self.store.put_smpp_bind(SmppBind(name, *stopped, changed_at=self.clock.now()))
            self._published[name] = stopped

    async def run(self) -> None:
        """Publish changes every ``interval`` seconds until cancelled (the engine stops), then
        the connections as stopped. A failed write is logged and tried again after a backoff,
        so the task never ends on an error."""
        try:
            await self._publish_forever()
        except asyncio.CancelledError:
            try:
                await self.publish_stopped()
            except Exception:  # the store may be going too: the rows then say their last state
                log.exception("smpp_binds.publish_stopped_failed")
            raise

    async def _publish_forever(self) -> None:
        retry = RETRY_FIRST
        while True:
            try:
                await self.publish_changes()
            except Exception:  # logged with its traceback; the next look writes it again
                log.exception("smpp_binds.publish_failed", retry_in=retry)
                delay, retry = retry, min(retry * 2, self.interval * 30)
            else:
                delay, retry = self.interval, RETRY_FIRST
            await self.clock.sleep(delay)
