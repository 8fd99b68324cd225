"""A receipt sink that records what a provider reports, optionally slow or failing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cascade.channels.base import InboundMessage, Receipt
from cascade.errors import StoreUnavailable


class RecordingSink:
    """Keeps every receipt and inbound message; can hold calls at a gate or fail some."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.messages: list[InboundMessage] = []
        #: (what, monotonic time) for each call that returned, in order
        self.returned: list[tuple[str, float]] = []
        #: while cleared, calls wait here (set by default)
        self.gate = asyncio.Event()
        self.gate.set()
        #: calls still to fail with StoreUnavailable
        self.failures = 0

    async def _enter(self) -> None:
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the test store is down")

    async def receipt(self, receipt: Receipt) -> None:
        """Record a receipt."""
        await self._enter()
        self.receipts.append(receipt)
        self.returned.append((f"receipt {receipt.provider_message_id}", time.monotonic()))

    async def inbound(self, message: InboundMessage) -> None:
        """Record an inbound message."""
        await self._enter()
        self.messages.append(message)
        self.returned.append(("inbound", time.monotonic()))

    def receipt_for(self, provider_message_id: str) -> Receipt | None:
        """The latest receipt for a provider id."""
        found = [r for r in self.receipts if r.provider_message_id == provider_message_id]
        return found[-1] if found else None

    async def wait_for(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``condition()`` holds; fails the test after ``within`` seconds."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {within}s")
            await asyncio.sleep(0.005)
