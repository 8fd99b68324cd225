"""Signed webhooks as a real receiver sees them: vonage_jwt verifies each one with the
account's signature secret, the claims are Nexmo's, and a rotated secret signs what follows."""

from __future__ import annotations

import hashlib
import secrets
import uuid

import jwt
import pytest
from vonage_jwt import VonageVerifyJwtError, verify_signature

from cascade.clock import FakeClock
from cascade.domain.records import NewWebhook
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import DeliverySettings
from tests.engine.harness import step, workflow
from tests.webhooks.conftest import MakeReceiver, delivering, dispatch, queue
from tests.webhooks.receiver import Respond, verify


async def test_every_webhook_of_a_dispatch_verifies_with_vonage_jwt(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Each status webhook and the final report verify, with payload_hash = sha256(body)."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await dispatch(w, workflow(step("sms", "447700900000")))
        await w.advance(60)
        assert len(receiver.requests) == 3  # submitted, delivered, final report
        secret = w.tenant.account.signature_secret
        for request in receiver.requests:
            assert request.method == "POST"
            assert request.path == "/hook"
            assert request.headers["content-type"] == "application/json"
            claims = verify(request, secret)
            assert claims["payload_hash"] == hashlib.sha256(request.body).hexdigest()


async def test_claims_are_iat_jti_iss_api_key_application_id_and_delivery_id(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """iat is whole seconds never ahead of the clock; jti is a fresh UUID per request; the
    delivery_id claim is the X-Cascade-Delivery-Id header."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        clock.advance(0.999)  # a fraction of a second that must not round up
        await dispatch(w, workflow(step("sms", "447700900000")))
        await w.advance(60)
        tenant = w.tenant
        seen_jti = set()
        for request in receiver.requests:
            claims = verify(request, tenant.account.signature_secret)
            assert set(claims) == {
                "iat",
                "jti",
                "iss",
                "payload_hash",
                "api_key",
                "application_id",
                "delivery_id",
            }
            assert claims["delivery_id"] == request.headers["x-cascade-delivery-id"]
            assert isinstance(claims["iat"], int)
            assert claims["iat"] <= request.at
            assert request.at - claims["iat"] < 1
            assert claims["iss"] == "Vonage"
            assert claims["api_key"] == tenant.account.api_key
            assert claims["application_id"] == tenant.application.id
            assert str(uuid.UUID(claims["jti"])) == claims["jti"]
            seen_jti.add(claims["jti"])
        assert len(seen_jti) == len(receiver.requests) == 3


async def test_a_webhook_without_application_has_no_application_id_claim(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """An account-level webhook (no application) is signed without application_id."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await w.store.add_webhooks(
            [NewWebhook("inbound", w.tenant.account.id, None, None, None, receiver.url(), b"{}")],
            clock.now(),
        )
        await w.settle()
        (request,) = receiver.requests
        claims = verify(request, w.tenant.account.signature_secret)
        assert "application_id" not in claims
        assert claims["api_key"] == w.tenant.account.api_key


async def test_a_retried_webhook_is_signed_afresh(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """Each attempt carries a new jti and the iat of its own moment, over the same body."""
    receiver = await receivers()
    receiver.then(Respond(500))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await queue(w)
        await w.advance(10)
        first, second = receiver.requests
        secret = w.tenant.account.signature_secret
        one, two = verify(first, secret), verify(second, secret)
        assert first.body == second.body
        assert one["jti"] != two["jti"]
        assert two["iat"] >= one["iat"] + 5


async def test_rotating_the_signature_secret_signs_new_webhooks_with_the_new_secret(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A webhook sent once the account cache has passed verifies with the new secret only."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        old = w.tenant.account.signature_secret
        await queue(w)
        verify(receiver.requests[0], old)
        new = secrets.token_urlsafe(32)
        await w.store.update_account(w.tenant.account.id, signature_secret=new)
        clock.advance(DeliverySettings().account_cache)
        await queue(w)
        assert len(receiver.requests) == 2
        rotated = receiver.requests[1]
        verify(rotated, new)
        assert verify_signature(rotated.token, old) is False


async def test_a_tampered_body_fails_the_payload_hash_check(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """The hash covers the exact bytes: one changed byte no longer matches payload_hash."""
    receiver = await receivers()
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await queue(w, b'{"status":"delivered"}')
        (request,) = receiver.requests
        assert request.body == b'{"status":"delivered"}'
        claims = jwt.decode(request.token, w.tenant.account.signature_secret, algorithms=["HS256"])
        assert claims["payload_hash"] != hashlib.sha256(b'{"status":"rejected"}').hexdigest()
        assert verify_signature(request.token + "x", w.tenant.account.signature_secret) is False
        with pytest.raises(VonageVerifyJwtError):  # a mangled token is not even a JWT
            verify_signature("x" + request.token, w.tenant.account.signature_secret)


async def test_cookies_a_receiver_sets_are_never_sent_back(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """A Set-Cookie answer is ignored: the next webhook to that host carries no Cookie."""
    receiver = await receivers()
    receiver.then(Respond(204, headers=(("Set-Cookie", "session=tenant-a; Path=/"),)))
    async with delivering(sqlite_store, clock, status_url=receiver.url()) as w:
        await queue(w)
        await queue(w, url=receiver.url("/another-tenant"))
        first, second = receiver.requests
        assert "cookie" not in first.headers
        assert "cookie" not in second.headers
