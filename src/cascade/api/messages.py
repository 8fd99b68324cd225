"""The accept endpoints: Messages v0.1 / beta, Dispatch v0.1 and the 2018 Workflows preview.

A request is authenticated, decoded strictly, turned into a NewWorkflow and stored in one
transaction; the 202 goes out after the commit that holds it. An ``Idempotency-Key`` makes a
retried POST return the first response instead of creating a second workflow.

Workflow and message ids are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random
bits. They are as unguessable as UUIDv4 for a client, but ids made close in time sort close
together, so the store's primary keys and the indexes on them grow at their right edge instead
of touching a random page per insert; on SQLite that halves the writer's work per request
(BENCHMARKS.md). The random bits come from ``os.urandom`` in blocks, because each call is a
system call that lets another thread (SQLite's commit thread) take the GIL in the middle of a
request.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from cascade.api.access import current_request
from cascade.api.auth import Authenticator, Principal
from cascade.api.validation import RequestDecoder
from cascade.clock import Clock
from cascade.domain.failover import step_jobs
from cascade.domain.message import MessageRequest, WorkflowRequest, WorkflowStep, encode
from cascade.domain.records import (
    IdempotencyClaim,
    NewStep,
    NewWorkflow,
    StoredResponse,
    Surface,
    WebhookVersion,
)
from cascade.domain.rules import request_violations, workflow_violations
from cascade.errors import InvalidParameter, InvalidRequest
from cascade.log import HotLogger
from cascade.reach import ANYWHERE, AddressRule
from cascade.store.base import Accepting

#: one line per accepted request, at info (a workflow's story starts here)
story = HotLogger(__name__)

ACCEPTED = Counter("cascade_requests_accepted", "Requests durably accepted", ["surface"])
IDEMPOTENT_REPLAYS = Counter(
    "cascade_idempotent_replays", "POSTs answered from an earlier Idempotency-Key"
)

_message_decoder = RequestDecoder(MessageRequest, request_violations)
_workflow_decoder = RequestDecoder(WorkflowRequest, workflow_violations)

MAX_IDEMPOTENCY_KEY = 255

#: random bytes fetched per os.urandom call (10 per id: 12 bits of rand_a, 62 of rand_b)
_RANDOM_BLOCK = 10 * 512


class _IdSource:
    """UUIDv7 strings from the clock and a buffer of ``os.urandom`` bytes (thread-safe, and a
    forked child never reuses its parent's buffer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._random = b""
        self._next = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._random, self._next = b"", 0

    def new(self) -> str:
        """A new UUIDv7, e.g. ``0192f1a4-7c3e-7d21-9b5e-3f0c2a61d8e4``."""
        with self._lock:
            start = self._next
            if start + 10 > len(self._random):
                self._random, start = os.urandom(_RANDOM_BLOCK), 0
            self._next = start + 10
            random = int.from_bytes(self._random[start : start + 10], "big")
        millis = time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF
        value = (
            millis << 80
            | 0x7 << 76  # version 7
            | (random >> 68) << 64  # rand_a, 12 bits
            | 0b10 << 62  # the RFC 9562 variant
            | random & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
        )
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_id = _IdSource().new


@dataclass(frozen=True, slots=True)
class AcceptContext:
    """What the accept endpoints need from the running service."""

    store: Accepting
    authenticator: Authenticator
    clock: Clock
    max_body_bytes: int
    report_horizon: float
    #: called after a request is stored (wakes an in-process engine)
    on_accepted: Callable[[], None] | None = None
    #: where webhooks may go (a v1 request's ``webhook_url`` that it refuses is a 422)
    webhook_reach: AddressRule = ANYWHERE


async def read_json_body(request: Request, limit: int) -> bytes:
    """The raw body of a JSON request, refusing other content types (415) and big bodies (413)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(415)
    declared = request.headers.get("content-length")
    # only ASCII digits are a length (isdigit() also takes "²", which int() refuses), and of
    # those only the significant ones are read: int() refuses more than 4,300 digits
    if declared is not None and declared.isascii() and declared.isdigit():
        significant = declared.lstrip("0")
        if len(significant) > 18 or int(significant or "0") > limit:
            raise HTTPException(413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413)
        chunks.append(chunk)
    return b"".join(chunks)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequest(
            invalid_parameters=[
                InvalidParameter(
                    "Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
                )
            ]
        )
    return key


def webhook_version(principal: Principal, asked: str | None = None) -> str | None:
    """The shape of a message's status webhooks as stored: the one the message asks for, else
    its application's (Basic auth has none); None for v0.1, the shape of every older row."""
    version = asked
    if version is None and principal.application is not None:
        version = principal.application.webhook_version
    return None if version in (None, WebhookVersion.V0_1) else version


def _step(step: MessageRequest | WorkflowStep, version: str | None) -> NewStep:
    failover = step.failover if isinstance(step, WorkflowStep) else None
    return NewStep(
        message_id=new_id(),
        channel=step.to.type,
        to=encode(step.to),
        from_=encode(step.from_),
        body=encode(step.message),
        client_ref=step.client_ref,
        expiry_time=failover.expiry_time if failover else None,
        condition_status=failover.condition_status if failover else None,
        webhook_version=version,
    )


class AcceptEndpoint:
    """One POST endpoint that accepts a message or a workflow."""

    def __init__(
        self,
        context: AcceptContext,
        surface: Surface,
        id_field: str,
    ) -> None:
        self._context = context
        self._surface = surface
        self._id_field = id_field
        self._accepted = ACCEPTED.labels(surface.value)

    async def handle(self, request: Request) -> Response:
        """Accept one request."""
        ctx = self._context
        principal = await ctx.authenticator.authenticate(request.headers.getlist("authorization"))
        key = _idempotency_key(request)
        body = await read_json_body(request, ctx.max_body_bytes)
        digest = _request_digest(request, body) if key is not None else None
        return await self.submit(principal, body, key, digest)

    async def submit(
        self,
        principal: Principal,
        body: bytes,
        key: str | None = None,
        digest: str | None = None,
    ) -> Response:
        """Accept one request body for ``principal`` (with an Idempotency-Key, the key and
        the request's digest): what the endpoint and the dashboard's "Try it" both do."""
        ctx = self._context
        steps = self.steps(body, principal)
        workflow_id = new_id()
        response_body = self.response_body(steps, workflow_id)
        claim = None
        if key is not None and digest is not None:
            claim = IdempotencyClaim(
                key=key,
                request_sha256=digest,
                response=StoredResponse(202, response_body),
            )
        now = ctx.clock.now()
        first = steps[0]
        jobs = step_jobs(
            workflow_id,
            first.message_id,
            first.expiry_time,
            len(steps) == 1,
            now,
            ctx.report_horizon,
        )
        accepted = await ctx.store.accept(
            NewWorkflow(
                id=workflow_id,
                account_id=principal.account.id,
                application_id=principal.application.id if principal.application else None,
                surface=self._surface,
                steps=tuple(steps),
                accepted_at=now,
                jobs=tuple(jobs),
                idempotency=claim,
            )
        )
        if not accepted.created and accepted.response is not None:
            IDEMPOTENT_REPLAYS.inc()
            return Response(
                accepted.response.body,
                status_code=accepted.response.status_code,
                media_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        self._accepted.inc()
        if ctx.on_accepted is not None:
            ctx.on_accepted()
        self._tell(workflow_id, principal.account.id, steps)
        return Response(response_body, status_code=202, media_type="application/json")

    def _tell(self, workflow_id: str, account_id: str, steps: list[NewStep]) -> None:
        """Log the request accepted: its ids, account and channels, and the request id that
        ties the line to the access log (no addresses or content)."""
        if not story.is_info():
            return  # (at warning, the level the benchmarks run at: no fields to build)
        context = current_request()
        request_id = context.request_id if context is not None else None
        if self._surface is Surface.MESSAGES:
            story.info(
                "message.accepted",
                message=steps[0].message_id,
                workflow=workflow_id,
                account=account_id,
                channel=steps[0].channel,
                request_id=request_id,
            )
        else:
            story.info(
                "workflow.accepted",
                workflow=workflow_id,
                surface=self._surface.value,
                account=account_id,
                channels=",".join(step.channel for step in steps),
                request_id=request_id,
            )

    def steps(self, body: bytes, principal: Principal) -> list[NewStep]:
        """The messages a request body asks for, in order (InvalidRequest when it is bad)."""
        version = webhook_version(principal)
        if self._surface is Surface.MESSAGES:
            message = _message_decoder.decode(body)
            return [_step(message, version)]
        workflow = _workflow_decoder.decode(body)
        return [_step(step, version) for step in workflow.workflow]

    def response_body(self, steps: list[NewStep], workflow_id: str) -> bytes:
        """The 202's body: the id a client of this surface knows the request by."""
        public_id = steps[0].message_id if self._surface is Surface.MESSAGES else workflow_id
        return b'{"%s":"%s"}' % (self._id_field.encode(), public_id.encode())


def _request_digest(request: Request, body: bytes) -> str:
    """The identity of a request for idempotency: its path and its exact body."""
    digest = hashlib.sha256(request.url.path.rstrip("/").encode())
    digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()
