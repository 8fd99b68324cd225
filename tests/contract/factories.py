"""Records for the storage contract tests: accounts, applications and requests to accept."""

from __future__ import annotations

import itertools
import uuid

from cascade.domain.failover import step_jobs
from cascade.domain.records import (
    Account,
    Application,
    IdempotencyClaim,
    NewStep,
    NewWorkflow,
    Receipt,
    StoredResponse,
    Surface,
)
from cascade.store.base import Store

T0 = 1_800_000_000.0
HORIZON = 72 * 3600.0
_serial = itertools.count()


def account(*, created_at: float = T0, account_id: str | None = None) -> Account:
    """A new account with unique credentials."""
    n = next(_serial)
    return Account(
        id=account_id or str(uuid.uuid4()),
        api_key=f"key{n:05d}",
        api_secret_sha256=f"{n:064x}",
        signature_secret=f"signature-secret-{n}",
        status_url=f"https://example.test/{n}/status",
        inbound_url=f"https://example.test/{n}/inbound",
        created_at=created_at,
    )


def application(owner: Account, *, created_at: float = T0) -> Application:
    """A new application of ``owner``."""
    return Application(
        id=str(uuid.uuid4()),
        account_id=owner.id,
        name=f"app {next(_serial)}",
        public_key_pem="-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n",
        status_url=None,
        inbound_url="https://example.test/inbound",
        created_at=created_at,
    )


def messenger_step() -> NewStep:
    """A Messenger step with a 600 s window that succeeds on ``read``."""
    return NewStep(
        message_id=str(uuid.uuid4()),
        channel="messenger",
        to=b'{"type":"messenger","id":"1234560003"}',
        from_=b'{"type": "messenger", "id": "page"}',
        body='{"content":{"type":"text","text":"Grüße ✓"}}'.encode(),
        client_ref="order-42",
        expiry_time=600,
        condition_status="read",
    )


def sms_step() -> NewStep:
    """An SMS step, the usual last resort."""
    return NewStep(
        message_id=str(uuid.uuid4()),
        channel="sms",
        to=b'{"type":"sms","number":"447700900000"}',
        from_=b'{"type":"sms","number":"Acme"}',
        body=b'{"content":{"type":"text","text":"Hi by SMS"}}',
        client_ref=None,
        expiry_time=None,
        condition_status=None,
    )


def workflow(
    owner: Account,
    *steps: NewStep,
    key: str | None = None,
    digest: str = "digest-a",
    workflow_id: str | None = None,
    at: float = T0,
) -> NewWorkflow:
    """A request of ``owner`` (Messenger then SMS by default) with the jobs the API computes."""
    steps = steps or (messenger_step(), sms_step())
    workflow_id = workflow_id or str(uuid.uuid4())
    claim = None
    if key is not None:
        body = b'{"dispatch_uuid":"%s"}' % workflow_id.encode()
        claim = IdempotencyClaim(key, digest, StoredResponse(202, body))
    first = steps[0]
    jobs = step_jobs(workflow_id, first.message_id, first.expiry_time, len(steps) == 1, at, HORIZON)
    return NewWorkflow(
        id=workflow_id,
        account_id=owner.id,
        application_id=None,
        surface=Surface.DISPATCH,
        steps=steps,
        accepted_at=at,
        jobs=tuple(jobs),
        idempotency=claim,
    )


async def tenant(store: Store) -> Account:
    """A stored account."""
    owner = account()
    await store.create_account(owner)
    return owner


async def take_orphans(
    store: Store, provider: str | None = None, provider_message_id: str | None = None
) -> list[Receipt]:
    """The kept receipts that match a message, dropped as an engine drops them once applied."""
    found = await store.matched_orphan_receipts(provider, provider_message_id)
    for receipt in found:
        assert receipt.kept_id is not None
        await store.drop_orphan_receipt(receipt.kept_id)
    return found
