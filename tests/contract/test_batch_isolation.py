"""One request's value that the database cannot hold fails that request alone: the others of
its group commit are stored, and the failure is permanent (StoreRejected, a 400), never a
StoreUnavailable that tells a polite client to retry forever."""

from __future__ import annotations

import asyncio
import dataclasses

from cascade.errors import StoreRejected
from cascade.store.base import Store
from tests.contract.conftest import Backend
from tests.contract.factories import messenger_step, sms_step, tenant, workflow

#: per back end, strings its database refuses: PostgreSQL text cannot hold NUL, and neither
#: database takes a lone surrogate (it is no UTF-8)
UNSTORABLE = {"sqlite": ["\ud800"], "postgres": ["\x00", "bad\x00ref", "\udfff"]}


async def test_an_unstorable_value_fails_only_its_own_request(
    backend: Backend, store: Store
) -> None:
    """Among 60 concurrent accepts of two accounts, the few whose client_ref the database
    cannot hold get StoreRejected and the rest are all stored."""
    victim, attacker = await tenant(store), await tenant(store)
    good = [workflow(victim) for _ in range(50)]
    bad = [
        workflow(attacker, dataclasses.replace(messenger_step(), client_ref=value), sms_step())
        for value in UNSTORABLE[backend.name]
    ]
    requests = good[:25] + bad + good[25:] + [workflow(attacker) for _ in range(10 - len(bad))]
    outcomes = await asyncio.gather(
        *(store.accept(request) for request in requests), return_exceptions=True
    )
    for request, outcome in zip(requests, outcomes, strict=True):
        if request in bad:
            assert isinstance(outcome, StoreRejected), outcome
        else:
            assert not isinstance(outcome, BaseException), outcome
            assert await store.get_workflow(request.account_id, request.id) is not None
    for request in bad:
        assert await store.get_workflow(request.account_id, request.id) is None
