"""Flow control towards an SMSC: exponential backoff and the throughput token bucket.

These are the timing rules, free of sockets and PDUs: :class:`Backoff` spaces reconnect
attempts and throttle holds, :class:`TokenBucket` keeps submits to a configured throughput. The
session decides when to use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Truncated exponential backoff: ``minimum``, then doubling up to ``maximum``."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.current = 0.0

    def next(self) -> float:
        """The next delay, one step longer than the last."""
        self.current = self.minimum if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        """Start again from ``minimum``."""
        self.current = 0.0


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` of them back to back after a pause.

    With ``burst`` 1 it is a minimum gap of ``1 / rate`` between tokens: what a gateway that
    enforces its quota as a gap between submits (Jasmin) accepts. :meth:`take` always succeeds
    and says how long to wait before using the token, so waiting callers are served in the
    order they took their tokens, each ``1 / rate`` after the one before.
    """

    def __init__(
        self, rate: float, burst: int = 1, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self._now = now
        self._updated = now()

    def _refill(self) -> None:
        now = self._now()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self) -> float:
        """Seconds until a token taken now could be used."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> float:
        """Take a token; returns the seconds to wait before using it."""
        self._refill()
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
