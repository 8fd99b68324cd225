"""Delivering customer webhooks: signed, retried on a schedule until delivered, never blocking
one receiver behind another.

- Any 200..205 answer is success.
- 5xx, 429 (honouring ``Retry-After``), timeouts and connection errors are retried after 5, 10,
  20, 40, 80, 160, 320 and 640 s, then every 900 s until 24 h after the first attempt, each
  delay jittered by up to 10 %; then the webhook is a dead letter.
- Any other answer (4xx, a redirect, which is never followed) and a URL no request can go to
  (not http(s), no host, a bad port) make it a dead letter at once: an operator can replay it
  after fixing the receiver.
- ``timeout`` bounds the whole attempt, connection and a slowly trickled answer included.
- Each attempt is a row, and the next attempt is the webhook's job row, so a restart resumes
  the schedule where it was.
- Each destination (scheme, host, port) gets a few connections at most; a webhook whose
  destination is busy steps aside for half a second instead of holding an engine slot, so one
  slow or dead receiver never delays the webhooks of another.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import structlog
from prometheus_client import Counter

from cascade.clock import Clock
from cascade.domain.records import Account, WebhookAttempt, WebhookRecord
from cascade.store.base import Job, Store
from cascade.webhooks.signing import sign

log = structlog.get_logger(__name__)

DELIVERIES = Counter("cascade_webhook_attempts", "Webhook delivery attempts", ["outcome"])

#: seconds before each retry, then RETRY_EVERY until RETRY_FOR after the first attempt
RETRY_DELAYS = (5, 10, 20, 40, 80, 160, 320, 640)
RETRY_EVERY = 900
RETRY_FOR = 24 * 3600
USER_AGENT = "Cascade-Webhooks/1"


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
    #: seconds a webhook steps aside when its destination is busy
    busy_delay: float = 0.5


def _url_problem(url: str) -> str | None:
    """Why no request can go to ``url`` (None: one can)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port out of range or not a number
    except ValueError as exc:
        return f"the URL is malformed: {exc}"
    if parts.scheme not in ("http", "https"):
        return "the URL is not http(s)"
    if not parts.hostname:
        return "the URL has no host"
    return None


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


class WebhookSender:
    """Delivers webhook jobs for the engine (its handler for ``webhook`` jobs)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: DeliverySettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.settings = settings or DeliverySettings()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.timeout),
            limits=httpx.Limits(
                max_connections=self.settings.max_connections,
                max_keepalive_connections=self.settings.max_connections,
            ),
            follow_redirects=False,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._destinations: dict[str, asyncio.Semaphore] = {}

    async def close(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    async def run_job(self, job: Job) -> None:
        """Deliver the webhook a job names, and record the attempt."""
        webhook = await self._store.get_webhook(int(job.ref))
        if webhook is None or webhook.state != "pending" or webhook.url is None:
            await self._store.finish_job(job.id)
            return
        problem = _url_problem(webhook.url)
        if problem is not None:
            # a URL no request can go to is a dead letter at once, never a crash to retry
            now = self._clock.now()
            await self._record(webhook, job, now, _Result(None, problem, retry=False))
            return
        gate = self._gate(webhook.url)
        if gate.locked():
            # the destination is busy: step aside so other receivers keep their pace
            await self._store.defer_job(job.id, self._clock.now() + self.settings.busy_delay)
            return
        async with gate:
            await self._attempt(webhook, job)

    def _gate(self, url: str) -> asyncio.Semaphore:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.hostname}:{parts.port}"
        gate = self._destinations.get(key)
        if gate is None:
            gate = self._destinations[key] = asyncio.Semaphore(self.settings.per_destination)
        return gate

    async def _attempt(self, webhook: WebhookRecord, job: Job | None) -> None:
        assert webhook.url is not None
        started = self._clock.now()
        # read at every attempt (not cached): a rotated signature secret signs the next one
        account = await self._store.get_account(webhook.account_id)
        if account is None:
            result = _Result(None, "the account no longer exists", retry=False)
        else:
            result = await self._post(webhook, account, started)
        await self._record(webhook, job, started, result)

    async def _record(
        self, webhook: WebhookRecord, job: Job | None, started: float, result: _Result
    ) -> None:
        """Store one attempt and what follows from it: delivered, a retry, or a dead letter."""
        finished = self._clock.now()
        attempt = WebhookAttempt(
            webhook.id, started, result.status_code, result.error, max(0.0, finished - started)
        )
        first = webhook.first_attempt_at if webhook.first_attempt_at is not None else started
        if result.delivered:
            state, next_at = "delivered", None
        elif result.retry:
            next_at = next_attempt(webhook.attempts + 1, first, finished, result.retry_after)
            state = "pending" if next_at is not None else "dead"
        else:
            state, next_at = "dead", None
        DELIVERIES.labels(state).inc()
        if state == "dead":
            log.warning(
                "webhook.dead_letter",
                webhook=webhook.id,
                status=result.status_code,
                error=result.error,
            )
        await self._store.record_webhook_attempt(
            attempt, job_id=job.id if job else None, state=state, next_attempt_at=next_at
        )

    async def _post(self, webhook: WebhookRecord, account: Account, now: float) -> _Result:
        assert webhook.url is not None
        token = sign(
            webhook.body,
            secret=account.signature_secret,
            api_key=account.api_key,
            application_id=webhook.application_id,
            now=now,
        )
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            # httpx's timeout bounds each read and write, not the whole attempt: a receiver
            # trickling its answer a byte at a time would hold the connection for ever
            async with (
                asyncio.timeout(self.settings.timeout),
                self._client.stream(
                    "POST", webhook.url, content=webhook.body, headers=headers
                ) as response,
            ):
                await self._read_capped(response)
        except (httpx.TimeoutException, TimeoutError) as exc:
            return _Result(None, f"timed out: {type(exc).__name__}", retry=True)
        except httpx.TransportError as exc:
            return _Result(None, f"connection failed: {type(exc).__name__}: {exc}", retry=True)
        except httpx.InvalidURL as exc:
            return _Result(None, f"the URL is malformed: {exc}", retry=False)
        code = response.status_code
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
            where = response.headers.get("location", "?")
            return _Result(code, f"HTTP {code} redirect to {where} (not followed)", retry=False)
        return _Result(code, f"HTTP {code}", retry=False)

    async def _read_capped(self, response: httpx.Response) -> None:
        """Read at most ``max_response_bytes`` of the answer, so a huge one costs nothing."""
        seen = 0
        async for chunk in response.aiter_raw():
            seen += len(chunk)
            if seen >= self.settings.max_response_bytes:
                break
