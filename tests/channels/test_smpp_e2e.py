"""A dispatch that fails over from Viber to a real SMS over SMPP, end to end through HTTP."""

from __future__ import annotations

import asyncio
import time

from cascade.channels.smpp import SmppProvider
from cascade.channels.smpp.config import SmppSettings
from cascade.clock import FakeClock, SystemClock
from cascade.domain.records import StepState, WorkflowState
from cascade.store.sqlite import SqliteStore
from tests.channels.conftest import connection
from tests.engine.harness import World, step, workflow, world
from tests.smsc import LoopbackSmsc


async def _until(w: World, workflow_id: str, done: object, within: float = 5.0) -> None:
    """Wait (real time: the SMSC's receipts are real) until the workflow's state is ``done``."""
    deadline = time.monotonic() + within
    while (await w.workflow(workflow_id)).state is not done:
        assert time.monotonic() < deadline, "the workflow did not finish in time"
        await w.settle()
        await asyncio.sleep(0.02)


async def test_viber_expires_and_the_sms_goes_out_over_smpp_and_is_delivered(
    sqlite_store: SqliteStore, clock: FakeClock, smsc: LoopbackSmsc
) -> None:
    """viber(delivered, 15 s) to a silent recipient, then SMS over SMPP: delivered by DLR."""
    settings = SmppSettings.from_mapping(
        {"connections": [connection(smsc, price_per_segment="0.0400", currency="EUR")]}
    )
    smpp = SmppProvider(settings, clock=SystemClock())
    async with world(sqlite_store, clock, providers={"sms": smpp}) as w:
        assert await smpp.ready(2.0)
        workflow_id = await w.dispatch(
            workflow(
                step("viber_service_msg", "447700900003", expiry=15),
                step("sms", "447700900123", text="Your code is 1234"),
            )
        )
        await w.advance(15)
        await _until(w, workflow_id, WorkflowState.COMPLETED)
        done = await w.workflow(workflow_id)
        assert [m.state for m in done.messages] == [StepState.EXPIRED, StepState.SUCCEEDED]
        sms = done.messages[1]
        assert sms.status == "delivered"
        assert sms.provider == f"smpp:cascade@127.0.0.1:{smsc.port}"
        assert sms.price == "0.0400"
        assert sms.segments == 1
        assert [s.destination_addr for s in smsc.submits] == ["447700900123"]


async def test_a_three_part_sms_is_delivered_when_every_part_is(
    sqlite_store: SqliteStore, clock: FakeClock, smsc: LoopbackSmsc
) -> None:
    """A 400-character SMS goes out in 3 parts; it is delivered once all 3 receipts are in."""
    settings = SmppSettings.from_mapping(
        {"connections": [connection(smsc, price_per_segment="0.0400", currency="EUR")]}
    )
    smpp = SmppProvider(settings, clock=SystemClock())
    async with world(sqlite_store, clock, providers={"sms": smpp}) as w:
        assert await smpp.ready(2.0)
        workflow_id = await w.dispatch(workflow(step("sms", "447700900124", text="x" * 400)))
        await _until(w, workflow_id, WorkflowState.COMPLETED)
        message = (await w.workflow(workflow_id)).messages[0]
        assert message.status == "delivered"
        assert message.segments == 3
        assert message.price == "0.1200"
        assert len(smsc.submits) == 3
