"""The webhook sender's HTTP client can be given to it (a test's or a benchmark's client), in
place of its own pooled one: every POST goes through the given client, its answers decide the
outcome as a real receiver's would, and the sender leaves the client open for its owner."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import jwt
from vonage_jwt import verify_signature

from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.errors import PeerUnreachable
from cascade.httpclient import Response, Target
from cascade.runtime import build_engine
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import DELIVERY_ID_HEADER, RETRY_DELAYS, WebhookSender
from tests.engine.harness import world
from tests.webhooks.conftest import FAST, queue


class ScriptedHttp:
    """A client that answers from a script (a status, or an exception to raise), noting each
    request, and counts its closes."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[Target, bytes, dict[str, str]]] = []
        self.closed = 0

    async def post(
        self, target: Target, body: bytes, headers: Iterable[tuple[str, str]]
    ) -> Response:
        """Note the request; answer with the next scripted status (or raise)."""
        self.requests.append((target, body, dict(headers)))
        answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, Exception):
            raise answer
        return Response(answer)

    async def close(self) -> None:
        """Count the close."""
        self.closed += 1


async def test_a_given_client_carries_each_signed_post_and_its_answers_decide_the_outcome(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """An unreachable peer, then a 503, are retried on schedule; the 204 after delivers it."""
    http = ScriptedHttp(PeerUnreachable("refused", request_sent=False), 503, 204)
    sender = WebhookSender(sqlite_store, clock, FAST, http=http)
    async with world(sqlite_store, clock, job_kinds=[sender]) as w:
        url = "http://hooks.example:8080/status?k=1"
        hook_id = await queue(w, b'{"status":"delivered"}', url=url)
        assert len(http.requests) == 1
        await w.advance(RETRY_DELAYS[0] * 1.1)
        assert len(http.requests) == 2
        await w.advance(RETRY_DELAYS[1] * 1.1)
        assert len(http.requests) == 3
        await w.advance(3600)
        assert len(http.requests) == 3
        hook = await w.store.get_webhook(hook_id)
        assert hook is not None
        assert (hook.state, hook.attempts, hook.last_status) == ("delivered", 3, 204)
        attempts = await w.store.webhook_attempts([hook_id])
        assert [a.status_code for a in attempts] == [None, 503, 204]
        target, body, headers = http.requests[-1]
        assert (target.destination.host, target.destination.port, target.path) == (
            "hooks.example",
            8080,
            "/status?k=1",
        )
        assert body == b'{"status":"delivered"}'
        token = headers["Authorization"].removeprefix("Bearer ")
        secret = w.tenant.account.signature_secret
        assert verify_signature(token, secret) is True
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        assert claims["payload_hash"] == hashlib.sha256(body).hexdigest()
        assert len({h[DELIVERY_ID_HEADER] for _, _, h in http.requests}) == 1
    assert http.closed == 0  # the engine stopped and closed its sender; the client is the test's


async def test_build_engine_gives_its_webhook_sender_the_client_it_is_handed(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """build_engine(webhook_http=...) is the seam a benchmark uses: its sender posts with it."""
    http = ScriptedHttp()
    engine = build_engine(Settings(_env_file=None), sqlite_store, clock, webhook_http=http)
    sender = engine.job_kind("webhook")
    assert isinstance(sender, WebhookSender)
    assert sender._client() is http
    default = build_engine(Settings(_env_file=None), sqlite_store, clock).job_kind("webhook")
    assert isinstance(default, WebhookSender)
    assert default._client() is not http
    await default.close()
