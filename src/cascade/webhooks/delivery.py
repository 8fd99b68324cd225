"""Delivering customer webhooks: signed, retried on a schedule until delivered, never blocking
one receiver behind another.

- Any 200..205 answer is success.
- 5xx, 429 (honouring ``Retry-After``), timeouts and connection errors are retried after 5, 10,
  20, 40, 80, 160, 320 and 640 s, then every 900 s until 24 h after the first attempt, each
  delay jittered by up to 10 %; then the webhook is a dead letter.
- Any other answer (4xx, a redirect, which is never followed) and a URL no request can go to
  (not http(s), no host, a bad port) make it a dead letter at once: an operator can replay it
  after fixing the receiver. So does a URL whose host resolves to no address ``reach``
  admits (:mod:`cascade.reach`: only public ones where private addresses are not allowed).
- ``timeout`` bounds the whole attempt, connection and a slowly trickled answer included.
- Each attempt is a row, and the next attempt is the webhook's job row, so a restart resumes
  the schedule where it was.
- Each destination (scheme, host, port) gets a few connections at most. A webhook whose
  destination is busy waits in line for a connection (``queue_wait`` at most) while the
  destination answers quickly; when an attempt there has been running longer than that, or
  it answers slowly and the line is long, the webhook steps aside for ``busy_delay`` instead
  of holding an engine slot. So a fast receiver gets its webhooks back to back over its few
  connections, and one slow or dead receiver never delays the webhooks of another.
- A connection goes back to its destination as soon as the answer is read; the attempt is
  recorded after, so the commit's latency never idles a connection.
- Delivery is at least once, and the repeats are bounded: a sender has at most
  ``max_unrecorded`` webhooks between the start of a POST and the commit of its outcome (it
  waits for a free place before it POSTs, and a failed commit is retried while the place is
  held), so a crash, or a store that stops answering, makes at most that many webhooks per
  process go out again. Each one carries :func:`delivery_id`, the same on every attempt and
  replay, for the receiver to deduplicate by (the ``X-Cascade-Delivery-Id`` header, and the
  signed token's ``delivery_id`` claim).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

import structlog
from prometheus_client import Counter

from cascade.clock import Clock
from cascade.domain.records import (
    Account,
    JobKindName,
    WebhookAttempt,
    WebhookRecord,
    WebhookState,
)
from cascade.errors import DestinationRefused, PeerUnreachable, StoreUnavailable
from cascade.httpclient import Destination, HttpClient, Response, Target, parse_url
from cascade.log import HotLogger
from cascade.reach import ANYWHERE, AddressRule
from cascade.store.base import Job, JobQueue, Tenants, Webhooks
from cascade.webhooks.signing import format_uuid, sign

log = structlog.get_logger(__name__)
#: a line per attempt, at debug (a level check otherwise)
story = HotLogger(__name__)

DELIVERIES = Counter("cascade_webhook_attempts", "Webhook delivery attempts", ["outcome"])

#: seconds before each retry, then RETRY_EVERY until RETRY_FOR after the first attempt
RETRY_DELAYS = (5, 10, 20, 40, 80, 160, 320, 640)
RETRY_EVERY = 900
RETRY_FOR = 24 * 3600
USER_AGENT = "Cascade-Webhooks/1"
#: the header carrying a webhook's delivery id
DELIVERY_ID_HEADER = "X-Cascade-Delivery-Id"
#: the namespace of delivery ids (a fixed, random UUID: the ids are Cascade's alone)
_DELIVERY_NAMESPACE = uuid.UUID("5f0c7c1e-3c8a-4d55-9a53-0e6b2b1d7a42")
_DELIVERY_NAMESPACE_BYTES = _DELIVERY_NAMESPACE.bytes


def delivery_id(webhook_id: int, body: bytes, digest: str | None = None) -> str:
    """The id a receiver deduplicates a webhook by: the same on every attempt and replay of
    one webhook, and different for any other. It is derived from what never changes once the
    webhook is stored, its row id and its body (``digest``: its SHA-256 hex digest, when the
    caller has it), so it needs no column: the id tells webhooks of one database apart, and the
    body (which names a message or workflow by its random UUID) those of different databases.

    It is ``uuid.uuid5(namespace, f"{webhook_id}:{digest}")``, computed without the ``UUID``
    objects (a sixth of the cost, at two webhooks per message)."""
    if digest is None:
        digest = hashlib.sha256(body).hexdigest()
    name = f"{webhook_id}:{digest}".encode()
    # SHA-1 is what a version 5 UUID is made with; it is an id, not a signature
    sha1 = hashlib.sha1(_DELIVERY_NAMESPACE_BYTES + name, usedforsecurity=False)
    raw = bytearray(sha1.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return format_uuid(raw.hex())


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Limits of webhook delivery."""

    #: seconds one attempt may take, connection included
    timeout: float = 10.0
    #: response bytes read at most (the body is only kept for the operator's eyes)
    max_response_bytes: int = 4096
    #: connections open to one destination at once
    per_destination: int = 8
    #: connections open in all
    max_connections: int = 256
    #: longest (real) seconds a webhook waits in line for a busy destination
    queue_wait: float = 0.5
    #: seconds a webhook that cannot wait in line steps aside
    busy_delay: float = 0.5
    #: seconds an account's signature secret is used before it is read again (a rotated
    #: secret signs every webhook sent this long after the rotation)
    account_cache: float = 1.0
    #: webhooks at most between the start of their POST and the commit of its outcome: after a
    #: crash, at most this many per process are delivered again
    max_unrecorded: int = 128
    #: (real) seconds a failed commit of an attempt's outcome is retried, holding its place
    #: among ``max_unrecorded``, before the job is left for its lease to run out
    record_patience: float = 30.0
    #: the addresses webhooks may connect to
    reach: AddressRule = ANYWHERE


class _Destination:
    """The connections one destination may use, and how fast it has been answering."""

    __slots__ = ("average", "connections", "gate", "running", "waiting")

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.gate = asyncio.Semaphore(connections)
        #: webhooks waiting in line for a connection
        self.waiting = 0
        #: moving average of recent attempts' durations (real seconds; None: no attempt yet)
        self.average: float | None = None
        #: when each running attempt started (time.monotonic()), by webhook id
        self.running: dict[int, float] = {}

    def may_wait(self, wait: float) -> bool:
        """Whether one more webhook should wait in line (at most ``wait`` seconds) rather than
        step aside: not when an attempt has been running longer than that (the receiver may
        have stopped answering), nor when the destination answers slowly and the line ahead
        would take longer than that. A destination that answers quickly may have a long line:
        it moves fast, so the engine slots its webhooks hold free up quickly."""
        now = time.monotonic()
        if self.running and now - min(self.running.values()) > wait:
            return False
        average = self.average or 0.0
        if average <= wait / 4:
            return True
        return (self.waiting + 1) * average / self.connections <= wait

    def finished(self, webhook_id: int) -> None:
        """An attempt ended: its duration joins the average."""
        started = self.running.pop(webhook_id, None)
        if started is not None:
            took = time.monotonic() - started
            self.average = took if self.average is None else 0.8 * self.average + 0.2 * took


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> Target | str:
    """Where a webhook URL's requests go, or why none can (the same few URLs come back for
    every webhook, so each is parsed once)."""
    try:
        return parse_url(url)
    except ValueError as exc:
        return str(exc)


def next_attempt(
    failures: int, first_attempt_at: float, now: float, retry_after: float | None = None
) -> float | None:
    """When to try again after ``failures`` failed attempts (None: give up)."""
    index = failures - 1
    delay = float(RETRY_DELAYS[index] if index < len(RETRY_DELAYS) else RETRY_EVERY)
    delay *= random.uniform(1.0, 1.1)
    if retry_after is not None:
        delay = max(delay, retry_after)
    at = now + delay
    return at if at <= first_attempt_at + RETRY_FOR else None


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Result:
    status_code: int | None
    error: str | None
    retry: bool
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code <= 205


class WebhookHttp(Protocol):
    """What the sender POSTs webhooks with: :class:`~cascade.httpclient.HttpClient` by
    default; another client (a test's, a benchmark's) can be given to the sender instead."""

    async def post(
        self, target: Target, body: bytes, headers: Iterable[tuple[str, str]]
    ) -> Response:
        """POST ``body`` to ``target`` and read the answer; PeerUnreachable when none came."""
        ...

    async def close(self) -> None:
        """Close whatever connections it keeps."""
        ...


class DeliveryStore(JobQueue, Webhooks, Tenants, Protocol):
    """What delivery uses of the store: the webhooks and their jobs, and the accounts whose
    signature secrets sign them."""


class WebhookSender:
    """Delivers webhooks: the engine's job kind for ``webhook`` jobs
    (:class:`~cascade.engine.jobs.JobKind`)."""

    #: the jobs it runs
    name = JobKindName.WEBHOOK

    def __init__(
        self,
        store: DeliveryStore,
        clock: Clock,
        settings: DeliverySettings | None = None,
        *,
        http: WebhookHttp | None = None,
    ) -> None:
        """``http``: the client to POST with (the caller's: the sender does not close it, and
        ``settings.reach`` is the caller's to give it); by default a pooled
        :class:`~cascade.httpclient.HttpClient` of the sender's own, under ``settings.reach``."""
        self._store = store
        self._clock = clock
        self.settings = settings or DeliverySettings()
        self._given_http = http
        self._http: HttpClient | None = None
        #: the webhooks of claimed jobs, read with their batch (taken by the job)
        self._prefetched: dict[int, WebhookRecord] = {}
        #: accounts as read, with when each was read (the clock's time)
        self._accounts: dict[str, tuple[float, Account]] = {}
        self._destinations: dict[Destination, _Destination] = {}
        #: places for webhooks between the start of their POST and the commit of its outcome
        self._unrecorded = asyncio.Semaphore(self.settings.max_unrecorded)

    def _client(self) -> WebhookHttp:
        """The given HTTP client, or the pooled one made on first use (inside the running
        event loop)."""
        if self._given_http is not None:
            return self._given_http
        if self._http is None:
            self._http = HttpClient(
                user_agent=USER_AGENT,
                max_connections=self.settings.max_connections,
                max_body=self.settings.max_response_bytes,
                reach=self.settings.reach,
            )
        return self._http

    async def close(self) -> None:
        """Close the pooled connections of the sender's own client."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def prefetch(self, jobs: Sequence[Job]) -> None:
        """Read the webhooks of a claimed batch's jobs in one query."""
        self._prefetched.update(await self._store.get_webhooks([int(job.ref) for job in jobs]))

    async def run(self, job: Job) -> None:
        """Deliver the webhook a job names, and record the attempt."""
        webhook_id = int(job.ref)
        webhook = self._prefetched.pop(webhook_id, None) or await self._store.get_webhook(
            webhook_id
        )
        if webhook is None or webhook.state != WebhookState.PENDING or webhook.url is None:
            await self._store.finish_job(job.id)
            return
        target = _target(webhook.url)
        if isinstance(target, str):
            # a URL no request can go to is a dead letter at once, never a crash to retry
            now = self._clock.now()
            await self._record(webhook, job, now, _Result(None, target, retry=False))
            return
        destination = self._destination(target)
        if not await self._wait_for(destination):
            # the destination is slow or its line long: step aside so other receivers keep
            # their pace, instead of holding an engine slot
            await self._store.defer_job(job.id, self._clock.now() + self.settings.busy_delay)
            return
        if not await self._take_place():
            # every place is held by a POST whose outcome is not committed yet: step aside
            # rather than widen what a crash would send again
            destination.gate.release()
            await self._store.defer_job(job.id, self._clock.now() + self.settings.busy_delay)
            return
        try:
            destination.running[webhook.id] = time.monotonic()
            started = self._clock.now()
            try:
                result = await self._attempt(webhook, target, started)
            finally:
                destination.finished(webhook.id)
                destination.gate.release()
            # the connection serves the next webhook while this one's outcome is committed
            await self._record(webhook, job, started, result)
        finally:
            self._unrecorded.release()

    async def _take_place(self) -> bool:
        """Take a place among ``max_unrecorded``, waiting ``queue_wait`` at most."""
        if not self._unrecorded.locked():
            await self._unrecorded.acquire()  # free: does not wait
            return True
        try:
            async with asyncio.timeout(self.settings.queue_wait):
                await self._unrecorded.acquire()
        except TimeoutError:
            return False
        return True

    def _destination(self, target: Target) -> _Destination:
        destination = self._destinations.get(target.destination)
        if destination is None:
            destination = _Destination(self.settings.per_destination)
            self._destinations[target.destination] = destination
        return destination

    async def _wait_for(self, destination: _Destination) -> bool:
        """Take one of the destination's connections, waiting in line only when the wait
        looks short; False when the webhook should step aside instead."""
        gate = destination.gate
        if not gate.locked():
            await gate.acquire()  # free: does not wait
            return True
        wait = self.settings.queue_wait
        if not destination.may_wait(wait):
            return False
        destination.waiting += 1
        try:
            async with asyncio.timeout(wait):
                await gate.acquire()
        except TimeoutError:
            return False
        finally:
            destination.waiting -= 1
        return True

    async def _attempt(self, webhook: WebhookRecord, target: Target, started: float) -> _Result:
        """Sign and POST the webhook once."""
        account = await self._account(webhook.account_id, started)
        if account is None:
            return _Result(None, "the account no longer exists", retry=False)
        return await self._post(webhook, target, account, started)

    async def _account(self, account_id: str, now: float) -> Account | None:
        """The account, read again once ``account_cache`` seconds have passed (two status
        webhooks per message would otherwise read it twice per message)."""
        cached = self._accounts.get(account_id)
        if cached is not None and now - cached[0] < self.settings.account_cache:
            return cached[1]
        account = await self._store.get_account(account_id)
        if account is None:
            self._accounts.pop(account_id, None)
        else:
            self._accounts[account_id] = (now, account)
        return account

    async def _record(
        self, webhook: WebhookRecord, job: Job | None, started: float, result: _Result
    ) -> None:
        """Store one attempt and what follows from it: delivered, a retry, or a dead letter."""
        finished = self._clock.now()
        attempt = WebhookAttempt(
            webhook.id, started, result.status_code, result.error, max(0.0, finished - started)
        )
        first = webhook.first_attempt_at if webhook.first_attempt_at is not None else started
        state: WebhookState
        if result.delivered:
            state, next_at = WebhookState.DELIVERED, None
        elif result.retry:
            next_at = next_attempt(webhook.attempts + 1, first, finished, result.retry_after)
            state = WebhookState.PENDING if next_at is not None else WebhookState.DEAD
        else:
            state, next_at = WebhookState.DEAD, None
        DELIVERIES.labels(state).inc()
        if state is WebhookState.DEAD:
            # what it is about, by id (never its URL: a receiver's URL may hold a token)
            log.warning(
                "webhook.dead_letter",
                webhook=webhook.id,
                kind=webhook.kind.value,
                workflow=webhook.workflow_id,
                message=webhook.message_id,
                account=webhook.account_id,
                attempts=webhook.attempts + 1,
                status=result.status_code,
                error=result.error,
            )
        elif story.is_debug():
            story.debug(
                "webhook.attempt",
                webhook=webhook.id,
                kind=webhook.kind.value,
                workflow=webhook.workflow_id,
                state=state.value,
                status=result.status_code,
                error=result.error,
                next_attempt_in=None if next_at is None else round(next_at - finished, 3),
            )
        await self._commit(attempt, job, state, next_at)

    async def _commit(
        self,
        attempt: WebhookAttempt,
        job: Job | None,
        state: WebhookState,
        next_at: float | None,
    ) -> None:
        """Record the attempt, retrying while the store is unavailable (for up to
        ``record_patience``): the webhook keeps its place among ``max_unrecorded`` meanwhile,
        so a store outage stops new POSTs instead of letting every claimed webhook go out
        unrecorded."""
        give_up = time.monotonic() + self.settings.record_patience
        pause = 0.05
        while True:
            try:
                await self._store.record_webhook_attempt(
                    attempt, job_id=job.id if job else None, state=state, next_attempt_at=next_at
                )
                return
            except StoreUnavailable:
                if time.monotonic() + pause > give_up:
                    raise
                log.warning("webhook.record_retry", webhook=attempt.webhook_id, exc_info=True)
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)

    async def _post(
        self, webhook: WebhookRecord, target: Target, account: Account, now: float
    ) -> _Result:
        digest = hashlib.sha256(webhook.body).hexdigest()
        delivery = delivery_id(webhook.id, webhook.body, digest)
        token = sign(
            webhook.body,
            secret=account.signature_secret,
            api_key=account.api_key,
            application_id=webhook.application_id,
            now=now,
            delivery_id=delivery,
            payload_hash=digest,
        )
        headers = (
            ("Content-Type", "application/json"),
            ("Authorization", f"Bearer {token}"),
            (DELIVERY_ID_HEADER, delivery),
        )
        try:
            # the deadline covers the whole attempt: connecting, sending and a slowly trickled
            # answer alike
            async with asyncio.timeout(self.settings.timeout):
                response = await self._client().post(target, webhook.body, headers)
        except TimeoutError as exc:
            return _Result(None, f"timed out: {type(exc).__name__}", retry=True)
        except DestinationRefused as exc:
            return _Result(None, exc.message, retry=False)
        except PeerUnreachable as exc:
            return _Result(None, f"connection failed: {exc.message}", retry=True)
        code = response.status
        if 200 <= code <= 205:
            return _Result(code, None, retry=False)
        if code == 429 or code >= 500:
            return _Result(
                code,
                f"HTTP {code}",
                retry=True,
                retry_after=_retry_after(response.headers.get("retry-after"), now),
            )
        if 300 <= code < 400:
            location = response.headers.get("location", "?")
            return _Result(code, f"HTTP {code} redirect to {location} (not followed)", retry=False)
        return _Result(code, f"HTTP {code}", retry=False)
