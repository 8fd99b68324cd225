"""Flow control towards an SMSC: backoff, the token bucket, and the submit window.

These are the timing rules of a connection, free of sockets and PDUs: :class:`Backoff` spaces
reconnect attempts and throttle holds, :class:`TokenBucket` keeps submits to a configured
throughput, and :class:`SubmitFlow` puts them together for submits: at most ``window_size``
awaiting an answer, the throughput, and the throttle episodes (see the package doc,
:mod:`cascade.channels.smpp`). The session asks it before each write and tells it each answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog

from cascade.channels.smpp.config import SmppConnectionSettings
from cascade.channels.smpp.errors import CODE_THROTTLED
from cascade.errors import ChannelUnavailable

log = structlog.get_logger(__name__)


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

    def set_rate(self, rate: float, burst: float) -> None:
        """From now on ``rate`` tokens a second and at most ``burst`` back to back; tokens
        already taken keep their place in the line."""
        self._refill()
        self.rate = rate
        self.capacity = max(1.0, burst)
        self.tokens = min(self.tokens, self.capacity)

    def hold(self, seconds: float) -> None:
        """Give no token for the next ``seconds`` (those already owed stay owed)."""
        self._refill()
        self.tokens = min(self.tokens, 1 - seconds * self.rate)


class SubmitFlow:
    """When a connection may write its next submit: the window, the throughput, the throttle.

    One per connection. A new message (``first``) that would wait too long is refused with a
    ChannelUnavailable (Nexmo 1000) instead; a later part of a message already started waits.
    """

    def __init__(self, settings: SmppConnectionSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._window = asyncio.Semaphore(settings.window_size)
        self._bucket = (
            TokenBucket(settings.throughput, settings.throughput_burst)
            if settings.throughput > 0
            else None
        )
        self._throttle = Backoff(settings.throttle_min_delay, settings.throttle_max_delay)
        #: set while this node may use its share of ``throughput``; cleared while it waits
        #: for its share among the nodes holding the connection (see :meth:`await_share`)
        self._shared = asyncio.Event()
        self._shared.set()
        #: the current throttle episode: when its hold began and ends, and how many new
        #: messages it has turned away (each is told a later time, so they resume spread out)
        self._hold_started = 0.0
        self._throttled_until = 0.0
        self._held = 0

    def accepted(self, written_at: float) -> None:
        """Note an accepted submit: one written after the last hold began ends the episode."""
        if written_at >= self._hold_started:
            self._throttle.reset()

    def throttled(self, written_at: float) -> float:
        """Note a throttled submit; returns the seconds left of the hold.

        One backoff step per episode: the answers to submits written before the current hold
        began (the rest of the window) belong to it and leave it as it is; a submit written
        after the hold and throttled again starts the next, longer one.
        """
        now = time.monotonic()
        if written_at < self._hold_started:
            return max(self._throttled_until - now, 0.0)
        delay = self._throttle.next()
        self._hold_started = now
        self._throttled_until = now + delay
        self._held = 0
        log.info("smpp throttled; holding submits", connection=self.name, hold=delay)
        return delay

    def resume_after(self, remaining: float) -> float:
        """When a message turned away during a hold should come back: after the hold, each
        one ``1 / throughput`` after the one before (jittered over the hold without a
        throughput), so the messages held do not all resume in the same instant."""
        self._held += 1
        if self._bucket is not None:
            return remaining + self._held / self._bucket.rate
        return remaining + random.uniform(0.0, self._throttle.current)

    async def wait_throttle(self, first: bool) -> None:
        """Hold back after a throttle: refuse a new message, delay a message already started."""
        remaining = self._throttled_until - time.monotonic()
        if remaining <= 0:
            return
        if first:
            retry_after = self.resume_after(remaining)
            raise ChannelUnavailable(
                f"SMSC {self.name} is throttling; try again in {retry_after:.2f}s",
                retry_after=retry_after,
                code=CODE_THROTTLED,
            )
        await asyncio.sleep(remaining)

    @asynccontextmanager
    async def window_slot(self) -> AsyncIterator[None]:
        """One of ``window_size`` outstanding submits; waits up to ``response_timeout``."""
        timeout = self.settings.response_timeout
        try:
            if not self._window.locked():
                await self._window.acquire()  # a free slot: taken at once, no timer needed
            else:
                async with asyncio.timeout(timeout):
                    await self._window.acquire()
        except TimeoutError as exc:
            raise ChannelUnavailable(
                f"SMSC {self.name}: all {self.settings.window_size} window slots stayed busy "
                f"for {timeout}s",
                retry_after=timeout,
                code=CODE_THROTTLED,
            ) from exc
        try:
            yield
        finally:
            self._window.release()

    def await_share(self) -> None:
        """Hold submits until :meth:`share` says this node's part of ``throughput`` (the
        connection's limit is the account's across every node holding it; see
        :mod:`cascade.engine.shares`)."""
        if self._bucket is not None:
            self._shared.clear()

    def share(self, nodes: int, hold: float = 0.0) -> None:
        """Send at ``1 / nodes`` of ``throughput`` (and of ``throughput_burst``) from now on,
        after holding submits for ``hold`` seconds."""
        if self._bucket is None:
            return
        rate, burst = share_of(self.settings.throughput, self.settings.throughput_burst, nodes)
        self._bucket.set_rate(rate, burst)
        if hold > 0:
            self._bucket.hold(hold)
        self._shared.set()

    async def take_token(self, first: bool) -> None:
        """Keep to ``throughput``; a new message that would wait too long is refused instead."""
        if self._bucket is None:
            return
        if not self._shared.is_set():
            await self._wait_for_share()
        wait = self._bucket.wait_time()
        if first and wait > self.settings.response_timeout:
            raise ChannelUnavailable(
                f"SMSC {self.name}: throughput limit of {self.settings.throughput}/s reached",
                retry_after=wait,
                code=CODE_THROTTLED,
            )
        delay = self._bucket.take()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _wait_for_share(self) -> None:
        """Wait (up to ``response_timeout``) until this node knows its share of throughput."""
        timeout = self.settings.response_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._shared.wait()
        except TimeoutError as exc:
            raise ChannelUnavailable(
                f"SMSC {self.name}: this node's share of the throughput is not known yet",
                retry_after=timeout,
                code=CODE_THROTTLED,
            ) from exc


def share_of(throughput: float, burst: int, nodes: int) -> tuple[float, float]:
    """One node's rate and burst when ``nodes`` hold a connection of ``throughput`` per second
    and ``burst``: an equal part of each (the burst at least one submit), so that together
    they never exceed what the account allows."""
    nodes = max(1, nodes)
    return throughput / nodes, max(1.0, burst / nodes)
