"""Retries and dead letters against real receivers, on the documented schedule (5, 10, 20 … s,
then every 900 s for 24 h, each delay jittered up to +10 %), moved through on the fake clock."""

from __future__ import annotations

import itertools
import time
from email.utils import formatdate

import pytest

from cascade.clock import FakeClock
from cascade.domain.records import NewWebhook, WebhookKind, WebhookRecord
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import RETRY_DELAYS, RETRY_EVERY, RETRY_FOR, DeliverySettings
from tests.engine.harness import World
from tests.webhooks.conftest import MakeReceiver, delivering, queue, restart
from tests.webhooks.receiver import Close, Hang, Respond, verify

JITTER = 1.1


async def _hook(w: World, webhook_id: int) -> WebhookRecord:
    hook = await w.store.get_webhook(webhook_id)
    assert hook is not None
    return hook


async def test_500_twice_then_200_is_retried_after_5_and_10_seconds_then_never_again(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Each failure brings exactly one more request, 5 s then 10 s later (+jitter); then none."""
    receiver = await receivers()
    receiver.then(Respond(500), Respond(500), Respond(200))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        created = clock.now()
        hook_id = await queue(w)
        assert len(receiver.requests) == 1
        assert receiver.requests[0].at == created
        await w.advance(4.99)
        assert len(receiver.requests) == 1
        await w.advance(5 * JITTER - 4.99)
        assert len(receiver.requests) == 2
        second = receiver.requests[1].at
        assert created + 5 <= second <= created + 5 * JITTER
        await w.advance(second + 9.99 - clock.now())
        assert len(receiver.requests) == 2
        await w.advance(second + 10 * JITTER - clock.now())
        assert len(receiver.requests) == 3
        assert second + 10 <= receiver.requests[2].at <= second + 10 * JITTER
        await w.advance(2 * RETRY_FOR)
        assert len(receiver.requests) == 3
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.attempts, hook.last_status) == ("delivered", 3, 200)
        assert hook.delivered_at == receiver.requests[2].at
        attempts = await w.store.webhook_attempts([hook_id])
        assert [a.status_code for a in attempts] == [500, 500, 200]
        assert [a.at for a in attempts] == [r.at for r in receiver.requests]
        assert len({r.body for r in receiver.requests}) == 1
        for request in receiver.requests:
            verify(request, w.tenant.account.signature_secret)
        assert await w.store.next_job_at() is None


@pytest.mark.parametrize("status", [200, 201, 202, 203, 204, 205])
async def test_any_status_from_200_to_205_is_success(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver, status: int
) -> None:
    """200..205 deliver the webhook at the first attempt."""
    receiver = await receivers(Respond(status))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        await w.advance(RETRY_FOR)
        assert len(receiver.requests) == 1
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_a_hanging_receiver_is_cut_off_by_the_timeout_and_retried(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A receiver that never answers costs one timeout, then the retry 5 s later succeeds."""
    receiver = await receivers()
    receiver.then(Hang())
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        started = time.monotonic()
        hook_id = await queue(w)
        assert time.monotonic() - started < 1.5  # the 0.3 s timeout, with room for a busy CI
        hook = await _hook(w, hook_id)
        assert hook.state == "pending"
        assert hook.last_error is not None
        assert hook.last_error.startswith("timed out")
        await w.advance(5 * JITTER)
        assert len(receiver.requests) == 2
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_an_answer_trickled_past_the_timeout_is_cut_off(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """The timeout bounds the whole attempt: a 204 sent a byte every 100 ms does not hold it."""
    receiver = await receivers()
    receiver.then(Respond(204, trickle=0.1))  # ~40 bytes: 4 s in all
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        started = time.monotonic()
        hook_id = await queue(w)
        assert time.monotonic() - started < 1.5  # the 0.3 s timeout, with room for a busy CI
        hook = await _hook(w, hook_id)
        assert hook.state == "pending"
        assert hook.last_error is not None
        assert hook.last_error.startswith("timed out")
        await w.advance(5 * JITTER)
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_a_slow_answer_within_the_timeout_is_delivered(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A 204 that takes 100 ms (under the 300 ms timeout) is a delivery, not a retry."""
    receiver = await receivers(Respond(204, delay=0.1))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.attempts, hook.last_status) == ("delivered", 1, 204)


async def test_a_closed_connection_is_retried(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A receiver that reads the request and closes without answering gets it again."""
    receiver = await receivers()
    receiver.then(Close(), Close())
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        hook = await _hook(w, hook_id)
        assert hook.state == "pending"
        assert hook.last_status is None
        assert hook.last_error is not None
        assert hook.last_error.startswith("connection failed")
        await w.advance(15 * JITTER)
        assert len(receiver.requests) == 3
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_a_refused_connection_is_retried(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Nothing listening: connection refused is retried, and delivered once it listens."""
    receiver = await receivers(listen=False)
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        hook = await _hook(w, hook_id)
        assert hook.state == "pending"
        assert hook.last_error is not None
        assert "connection failed" in hook.last_error
        await receiver.up()
        await w.advance(5 * JITTER)
        assert len(receiver.requests) == 1
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_a_redirect_is_not_followed_and_is_a_dead_letter(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """301 with a Location: one request, nothing to the Location, a dead letter at once."""
    receiver = await receivers()
    receiver.then(Respond(301, headers=(("Location", receiver.url("/elsewhere")),)))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        await w.advance(RETRY_FOR)
        assert [r.path for r in receiver.requests] == ["/hook"]
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.attempts, hook.last_status) == ("dead", 1, 301)
        assert hook.last_error is not None
        assert "/elsewhere" in hook.last_error
        assert "not followed" in hook.last_error
        assert hook.next_attempt_at is None


@pytest.mark.parametrize("status", [400, 401, 404, 410])
async def test_a_4xx_answer_is_a_dead_letter_at_once(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver, status: int
) -> None:
    """410 (and any 4xx but 429) is never retried: a dead letter after one request."""
    receiver = await receivers()
    receiver.then(Respond(status))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        await w.advance(RETRY_FOR)
        assert len(receiver.requests) == 1
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.last_status, hook.last_error) == ("dead", status, f"HTTP {status}")
        assert await w.store.next_job_at() is None


async def test_429_honours_retry_after_seconds(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """429 with Retry-After: 120 is retried no sooner than 120 s, not after 5 s."""
    receiver = await receivers()
    receiver.then(Respond(429, headers=(("Retry-After", "120"),)))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        created = clock.now()
        hook_id = await queue(w)
        await w.advance(119.9)
        assert len(receiver.requests) == 1
        await w.advance(0.2)
        assert len(receiver.requests) == 2
        assert receiver.requests[1].at == pytest.approx(created + 120)
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_429_honours_retry_after_as_an_http_date(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Retry-After as an HTTP date (one minute ahead of the clock) delays the retry to then."""
    receiver = await receivers()
    when = formatdate(clock.now() + 60, usegmt=True)
    receiver.then(Respond(429, headers=(("Retry-After", when),)))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        created = clock.now()
        hook_id = await queue(w)
        await w.advance(58)
        assert len(receiver.requests) == 1
        await w.advance(4)
        assert len(receiver.requests) == 2
        assert created + 59 <= receiver.requests[1].at <= created + 61
        assert (await _hook(w, hook_id)).state == "delivered"


async def test_429_without_retry_after_follows_the_schedule(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """429 alone (or with a Retry-After shorter than the schedule) waits the 5 s step."""
    receiver = await receivers()
    receiver.then(Respond(429), Respond(429, headers=(("Retry-After", "1"),)))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        await w.advance(4.9)
        assert len(receiver.requests) == 1
        await w.advance(15 * JITTER)
        assert len(receiver.requests) == 3
        first, second, third = (r.at for r in receiver.requests)
        assert 5 <= second - first <= 5 * JITTER
        assert 10 <= third - second <= 10 * JITTER
        assert (await _hook(w, hook_id)).state == "delivered"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:{port}/hook",
        "mailto:ops@example.com",
        "127.0.0.1:{port}/hook",
        "http:///hook",
        "http://127.0.0.1:99999/hook",
        "http://[::1/hook",
    ],
)
async def test_a_url_that_is_not_http_is_a_dead_letter_without_a_request(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver, url: str
) -> None:
    """A non-http(s) or malformed URL is a dead letter at once; no request is ever made."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock) as w:
        hook_id = await queue(w, url=url.format(port=receiver.port))
        await w.advance(RETRY_FOR)
        assert receiver.requests == []
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.attempts, hook.last_status) == ("dead", 1, None)
        assert hook.last_error is not None
        assert await w.store.next_job_at() is None


async def test_a_restart_between_attempts_loses_nothing(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Stopping engine and sender after a failure: new ones over the store retry on time."""
    receiver = await receivers()
    receiver.then(Respond(503))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        created = clock.now()
        hook_id = await queue(w)
        await restart(w)
        await w.advance(4.9)
        assert len(receiver.requests) == 1
        await w.advance(5 * JITTER - 4.9)
        assert len(receiver.requests) == 2
        assert created + 5 <= receiver.requests[1].at <= created + 5 * JITTER
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.attempts) == ("delivered", 2)
        verify(receiver.requests[1], w.tenant.account.signature_secret)


async def test_a_restart_mid_attempt_tries_again_when_the_lease_runs_out(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A claimed webhook whose worker died is claimed again after the lease and delivered."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url(), lease=30.0) as w:
        await w.store.add_webhooks(
            [NewWebhook(WebhookKind.STATUS, w.tenant.account.id, None, None, None, None, b"{}")],
            clock.now(),
        )
        # a worker claims it and dies before delivering it
        held = await w.store.claim_jobs("dead-worker", clock.now(), 10, 30.0)
        assert len(held) == 1
        await w.advance(29)
        assert receiver.requests == []
        await w.advance(2)
        (request,) = receiver.requests
        assert request.body == b"{}"
        (hook,) = await w.store.list_webhooks()
        assert (hook.state, hook.attempts) == ("delivered", 1)


async def test_the_24_hour_limit_makes_a_webhook_that_never_succeeds_a_dead_letter(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """500 forever: 5, 10 … 640 s, then every 900 s, the last within 24 h; then dead."""
    receiver = await receivers(Respond(500))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        await w.advance(RETRY_FOR + 3600)
        times = [r.at for r in receiver.requests]
        first = times[0]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for gap, delay in zip(gaps, RETRY_DELAYS, strict=False):
            assert delay <= gap <= delay * JITTER
        assert all(RETRY_EVERY <= gap <= RETRY_EVERY * JITTER for gap in gaps[len(RETRY_DELAYS) :])
        assert times[-1] <= first + RETRY_FOR
        # the next one would have fallen beyond 24 h
        assert times[-1] + RETRY_EVERY > first + RETRY_FOR - RETRY_EVERY * 0.1
        hook = await _hook(w, hook_id)
        assert (hook.state, hook.attempts, hook.last_status) == ("dead", len(times), 500)
        assert hook.next_attempt_at is None
        assert len(await w.store.webhook_attempts([hook_id])) == len(times)
        await w.advance(RETRY_FOR)
        assert len(receiver.requests) == len(times)
        assert await w.store.next_job_at() is None


async def test_the_per_attempt_timeout_is_a_setting(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """With a 1 s timeout, a 500 ms answer is delivered where the 300 ms default cuts off."""
    receiver = await receivers(Respond(204, delay=0.5))
    async with delivering(sqlite_store, clock, DeliverySettings(timeout=1.0)) as w:
        hook_id = await queue(w, url=receiver.url())
        assert (await _hook(w, hook_id)).state == "delivered"
