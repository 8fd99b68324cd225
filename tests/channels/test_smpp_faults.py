"""SMPP under faults: an SMSC that restarts and hands out its ids again, SMSCs that share ids,
a submit whose outcome is unknown, and a gateway that enforces its quota as a minimum gap."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from cascade.channels.base import OutboundMessage, SendResult
from cascade.channels.smpp import SmppProvider
from cascade.channels.smpp.config import SmppSettings
from cascade.channels.smpp.flow import TokenBucket
from cascade.clock import FakeClock, SystemClock
from cascade.domain.records import WorkflowState
from cascade.errors import ChannelUnavailable, StoreUnavailable
from cascade.store.base import ClaimedIds
from cascade.store.sqlite import SqliteStore
from cascade.views import render_timeline
from tests.channels.conftest import ProviderFactory, connection
from tests.engine.harness import World, step, workflow, world
from tests.smsc import ESME_RTHROTTLED, Behaviour, LoopbackSmsc

TO = "447700900123"


def sms(text: str) -> OutboundMessage:
    """An SMS to ``TO`` from ``Cascade``."""
    return OutboundMessage(
        message_id="m-1",
        channel="sms",
        to={"type": "sms", "number": TO},
        from_={"type": "sms", "number": "Cascade"},
        message={"content": {"type": "text", "text": text}},
    )


def sms_from(sender: str, to: str) -> dict[str, Any]:
    """A Dispatch SMS step from ``sender``."""
    body = step("sms", to)
    body["from"]["number"] = sender
    return body


async def _until_finished(w: World, workflow_id: str, within: float = 5.0) -> None:
    """Wait (real time: the SMSC is real) until the workflow has finished."""
    deadline = time.monotonic() + within
    while (await w.workflow(workflow_id)).state is WorkflowState.RUNNING:
        assert time.monotonic() < deadline, "the workflow did not finish in time"
        await w.settle()
        await asyncio.sleep(0.02)


async def test_an_smsc_restarted_with_its_ids_reset_still_delivers(
    sqlite_store: SqliteStore, clock: FakeClock, smsc: LoopbackSmsc
) -> None:
    """After an SMSC restart that hands out id 1000 again, the new message records it, is
    delivered by its receipt, and the read-back and ``cascade show`` name the id."""
    smpp = SmppProvider(SmppSettings.from_mapping({"connections": [connection(smsc)]}))
    async with world(sqlite_store, clock, providers={"sms": smpp}) as w:
        assert await smpp.ready(2.0)
        first_id = await w.dispatch(workflow(step("sms", "447700900123")))
        await _until_finished(w, first_id)
        await smsc.restart(reset_ids=True)
        assert await smpp.ready(5.0)
        second_id = await w.dispatch(workflow(step("sms", "447700900124")))
        await _until_finished(w, second_id)

        assert [s.message_id for s in smsc.submits] == ["1000", "1000"]
        second = (await w.workflow(second_id)).messages[0]
        assert (second.status, second.error_code) == ("delivered", None)
        id_space = f"smpp:cascade@127.0.0.1:{smsc.port}"
        assert (second.provider, second.provider_message_id) == (id_space, "1000")
        first = (await w.workflow(first_id)).messages[0]
        assert (first.status, first.provider_message_id) == ("delivered", None)

        response = await w.http.get(f"/v0.1/messages/{second.id}", headers=w.tenant.bearer())
        assert response.json()["provider"] == {"name": id_space, "message_id": "1000"}
        shown = render_timeline(await w.workflow(second_id))
        assert f"provider {id_space} id 1000" in shown


async def test_two_smscs_handing_out_the_same_ids_do_not_collide(
    sqlite_store: SqliteStore, clock: FakeClock, smsc: LoopbackSmsc
) -> None:
    """Binds to two SMSCs that both answer id 1000 keep both messages, each delivered by its
    own SMSC's receipt."""
    other = LoopbackSmsc()
    await other.start()
    try:
        settings = SmppSettings.from_mapping(
            {
                "connections": [
                    connection(smsc, name="a", senders=["447700900001"]),
                    connection(other, name="b", senders=["447700900002"]),
                ]
            }
        )
        smpp = SmppProvider(settings, clock=SystemClock())
        async with world(sqlite_store, clock, providers={"sms": smpp}) as w:
            assert await smpp.ready(2.0)
            via_a = await w.dispatch(workflow(sms_from("447700900001", "447700900123")))
            via_b = await w.dispatch(workflow(sms_from("447700900002", "447700900124")))
            await _until_finished(w, via_a)
            await _until_finished(w, via_b)
            a = (await w.workflow(via_a)).messages[0]
            b = (await w.workflow(via_b)).messages[0]
    finally:
        await other.stop()
    assert (a.status, a.provider_message_id) == ("delivered", "1000")
    assert (b.status, b.provider_message_id) == ("delivered", "1000")
    assert a.provider != b.provider


async def test_a_connection_lost_after_the_submit_says_so_in_the_1330(
    sqlite_store: SqliteStore, clock: FakeClock, smsc: LoopbackSmsc
) -> None:
    """A submit written and then cut off fails the step with 1330 and a reason saying the
    connection was lost before the SMSC answered and it was not resent."""
    smsc.behaviours["447700900125"] = Behaviour(drop_connection=True)
    smpp = SmppProvider(SmppSettings.from_mapping({"connections": [connection(smsc)]}))
    async with world(sqlite_store, clock, providers={"sms": smpp}) as w:
        assert await smpp.ready(2.0)
        workflow_id = await w.dispatch(workflow(step("sms", "447700900125")))
        await _until_finished(w, workflow_id)
        message = (await w.workflow(workflow_id)).messages[0]
    assert (message.status, message.error_code) == ("undeliverable", 1330)
    assert message.error_reason is not None
    assert "was lost after the message was written" in message.error_reason
    assert message.error_reason.endswith("; not resent")
    assert "service stopped" not in message.error_reason


def test_the_bucket_spaces_tokens_evenly_by_default() -> None:
    """With the default burst of one, tokens taken at once are 1/rate apart, never back to
    back; a burst lets that many go at once."""
    now = [0.0]
    even = TokenBucket(50, now=lambda: now[0])
    assert [round(even.take(), 3) for _ in range(4)] == [0.0, 0.02, 0.04, 0.06]
    bursty = TokenBucket(50, burst=3, now=lambda: now[0])
    assert [round(bursty.take(), 3) for _ in range(4)] == [0.0, 0.0, 0.0, 0.02]


async def test_a_throttled_window_backs_off_once(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """Five submits throttled in one window hold back once, for the shortest delay, instead of
    doubling the hold on every answer."""
    smsc.default = Behaviour(throttle=5, receipt=None)
    provider = await make_provider(throttle_min_delay=0.05, throttle_max_delay=5.0)
    assert await provider.ready(2.0)
    outcomes = await asyncio.gather(
        *(provider.send(sms("hi")) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(outcome, ChannelUnavailable) for outcome in outcomes)
    assert len(smsc.answered(ESME_RTHROTTLED)) == 5
    waits = [o.retry_after for o in outcomes if isinstance(o, ChannelUnavailable)]
    assert all(wait is not None and wait <= 0.1 for wait in waits), waits


async def test_messages_turned_away_by_a_hold_come_back_spread_out(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """Each new message refused during a throttle hold is told to come back 1/throughput after
    the one before, not all when the hold ends."""
    smsc.default = Behaviour(throttle=1, receipt=None)
    provider = await make_provider(throughput=50, throttle_min_delay=1.0, throttle_max_delay=5.0)
    assert await provider.ready(2.0)
    waits = []
    for _ in range(4):
        with pytest.raises(ChannelUnavailable) as refused:
            await provider.send(sms("hi"))
        waits.append(refused.value.retry_after or 0.0)
    assert all(later > earlier for earlier, later in itertools.pairwise(waits)), waits
    assert len(smsc.submits) == 1  # the others were held back here


async def test_a_gateway_enforcing_a_minimum_gap_gets_200_messages_in_seconds(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """Behind a gateway refusing submits closer than 10 ms (Jasmin's quota), throughput = 50
    sends 200 messages in well under 10 s with few ESME_RTHROTTLED answers (at most a fifth)."""
    smsc.min_gap = 0.010
    smsc.default = Behaviour(receipt=None)
    provider = await make_provider(
        throughput=50, throttle_min_delay=1.0, throttle_max_delay=30.0, response_timeout=10.0
    )
    assert await provider.ready(2.0)

    async def send_until_taken(n: int) -> SendResult:
        """Send, coming back no sooner than the provider asks (as the engine does)."""
        while True:
            try:
                return await provider.send(sms(f"message {n}"))
            except ChannelUnavailable as exc:
                await asyncio.sleep(exc.retry_after or 0.05)

    started = time.monotonic()
    async with asyncio.timeout(30):
        results = await asyncio.gather(*(send_until_taken(n) for n in range(200)))
    elapsed = time.monotonic() - started
    throttled = len(smsc.answered(ESME_RTHROTTLED))
    assert len({result.provider_message_id for result in results}) == 200
    assert elapsed < 10, (elapsed, throttled)
    # unpaced, most of the 200 would be refused; paced, a refusal is a submit the event loop
    # let out late and its successor on time (10-30 on a loaded machine, 0-5 on a quiet one)
    assert throttled <= 40, (elapsed, throttled)


async def test_a_submit_whose_recording_failed_is_not_sent_again(
    sqlite_store: SqliteStore,
    clock: FakeClock,
    smsc: LoopbackSmsc,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When storing an accepted submit fails, the job's next run fails the step with 1330
    saying the attempt was interrupted before its outcome was stored, and sends nothing."""
    smpp = SmppProvider(SmppSettings.from_mapping({"connections": [connection(smsc)]}))
    claim = sqlite_store.claim_provider_ids

    async def failing_once(*args: Any) -> ClaimedIds:
        """Fail the first claim as a store that went away would, then behave."""
        monkeypatch.setattr(sqlite_store, "claim_provider_ids", claim)
        raise StoreUnavailable("the database went away")

    monkeypatch.setattr(sqlite_store, "claim_provider_ids", failing_once)
    async with world(sqlite_store, clock, providers={"sms": smpp}) as w:
        assert await smpp.ready(2.0)
        workflow_id = await w.dispatch(workflow(step("sms", "447700900126")))
        await w.advance(120)
        await _until_finished(w, workflow_id)
        message = (await w.workflow(workflow_id)).messages[0]
    assert len(smsc.submits) == 1
    assert (message.status, message.error_code) == ("undeliverable", 1330)
    assert message.error_reason is not None
    assert "storing the provider's answer failed" in message.error_reason
