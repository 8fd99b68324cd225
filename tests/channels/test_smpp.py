"""The SMPP provider against the loopback test SMSC (smpp34) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from cascade.channels.base import OutboundMessage
from cascade.channels.smpp import SmppProvider, SmppSubmitUnconfirmed
from cascade.channels.smpp.config import SmppSettings
from cascade.domain.status import Status, combine_parts
from cascade.errors import ChannelRejected, ChannelUnavailable
from tests.channels.conftest import ProviderFactory, connection
from tests.channels.support import RecordingSink
from tests.smsc import Behaviour, LoopbackSmsc

TO = "447700900001"


def sms(
    text: str, to: str = TO, sender: str = "Cascade", message_id: str = "m-1"
) -> OutboundMessage:
    """An outbound SMS as the engine hands it over."""
    return OutboundMessage(
        message_id=message_id,
        channel="sms",
        to={"type": "sms", "number": to},
        from_={"type": "sms", "number": sender},
        message={"content": {"type": "text", "text": text}},
    )


def deliver_sm_count(outcome: str, kind: str = "receipt", connection: str = "loopback") -> float:
    """The current value of the deliver_sm counter for one outcome."""
    value = REGISTRY.get_sample_value(
        "cascade_smpp_deliver_sm_total",
        {"connection": connection, "kind": kind, "outcome": outcome},
    )
    return value or 0.0


async def test_bind_submit_and_receipt(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """A text is submitted once as GSM-7 and its DELIVRD receipt reaches the sink by id."""
    result = await provider.send(sms("Hello {world}"))
    assert (result.segments, result.segment_ids) == (1, (result.provider_message_id,))
    [submit] = smsc.submits
    assert submit.system_id == "cascade"
    assert (submit.source_addr, submit.source_addr_ton) == ("Cascade", 5)
    assert (submit.destination_addr, submit.dest_addr_ton) == (TO, 1)
    assert (submit.esm_class, submit.data_coding, submit.registered_delivery) == (0, 0, 1)
    assert submit.short_message == b"Hello \x1b(world\x1b)"
    assert submit.message_id == result.provider_message_id
    await sink.wait_for(lambda: sink.receipt_for(result.provider_message_id) is not None)
    receipt = sink.receipt_for(result.provider_message_id)
    assert receipt is not None
    expected = (f"smpp:cascade@127.0.0.1:{smsc.port}", Status.DELIVERED, None)
    assert (receipt.provider, receipt.status, receipt.code) == expected
    await smsc.wait_for(lambda: smsc.deliveries[-1].status == 0)


async def test_price_is_per_segment(make_provider: ProviderFactory, smsc: LoopbackSmsc) -> None:
    """usage.price is segments x price_per_segment, in the connection's currency."""
    provider = await make_provider(price_per_segment="0.0333", currency="EUR")
    assert await provider.ready(2.0)
    result = await provider.send(sms("x" * 200))
    assert (result.segments, result.price, result.currency) == (2, "0.0666", "EUR")


async def test_undelivered_receipt_is_rejected_with_a_code(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """UNDELIV becomes rejected with Nexmo 1260 and the SMSC's words in the reason."""
    smsc.behaviours[TO] = Behaviour(receipt="UNDELIV", err="034")
    result = await provider.send(sms("hi"))
    await sink.wait_for(lambda: sink.receipt_for(result.provider_message_id) is not None)
    receipt = sink.receipt_for(result.provider_message_id)
    assert receipt is not None
    assert (receipt.status, receipt.code) == (Status.REJECTED, 1260)
    assert receipt.reason == "SMSC receipt UNDELIV: undeliverable; err 034"


async def test_throttling_then_success(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """ESME_RTHROTTLED is transient, with a retry_after of the hold plus a jitter up to the
    hold, growing when the send after the hold is throttled again; the third try goes through."""
    smsc.behaviours[TO] = Behaviour(throttle=2)
    with pytest.raises(ChannelUnavailable) as first:
        await provider.send(sms("hi"))
    assert first.value.code == 1000
    assert first.value.retry_after is not None
    assert 0.05 <= first.value.retry_after <= 0.1
    with pytest.raises(ChannelUnavailable, match="throttling"):
        await provider.send(sms("hi"))  # held back here: the SMSC sees nothing
    assert len(smsc.submits) == 1
    await asyncio.sleep(first.value.retry_after)
    with pytest.raises(ChannelUnavailable) as second:
        await provider.send(sms("hi"))
    assert second.value.retry_after is not None
    assert 0.1 <= second.value.retry_after <= 0.2
    await asyncio.sleep(second.value.retry_after)
    result = await provider.send(sms("hi"))
    assert [submit.status for submit in smsc.submits] == [0x58, 0x58, 0]
    assert result.provider_message_id == smsc.submits[-1].message_id


async def test_throttled_later_part_is_retried_here(
    provider: SmppProvider, smsc: LoopbackSmsc
) -> None:
    """A throttled second part is sent again after the backoff; the message still succeeds."""
    smsc.behaviours[TO] = Behaviour(throttle=1, throttle_after=1)
    result = await provider.send(sms("z" * 300))
    assert [submit.status for submit in smsc.submits] == [0, 0x58, 0]
    assert [submit.short_message[5] for submit in smsc.submits] == [1, 2, 2]
    assert result.segment_ids == (smsc.submits[0].message_id, smsc.submits[2].message_id)


async def test_ucs2(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """A text outside GSM 03.38 goes as UCS-2 (data_coding 8, UTF-16BE)."""
    await provider.send(sms("Привет 😀"))
    [submit] = smsc.submits
    assert submit.data_coding == 8
    assert submit.short_message == "Привет 😀".encode("utf-16-be")


async def test_three_part_message(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """A 400-character text is three submits with one UDH reference and three receipts."""
    text = "".join(chr(ord("a") + i % 26) for i in range(400))
    result = await provider.send(sms(text))
    assert len(smsc.submits) == 3
    headers = [submit.short_message[:6] for submit in smsc.submits]
    reference = headers[0][3]
    assert headers == [bytes([5, 0, 3, reference, 3, seq]) for seq in (1, 2, 3)]
    assert {submit.esm_class for submit in smsc.submits} == {0x40}
    assert b"".join(submit.short_message[6:] for submit in smsc.submits) == text.encode()
    assert result.segments == 3
    assert result.segment_ids == tuple(submit.message_id for submit in smsc.submits)
    assert result.provider_message_id == result.segment_ids[0]
    await sink.wait_for(lambda: all(sink.receipt_for(i) for i in result.segment_ids))
    statuses = [sink.receipt_for(i).status for i in result.segment_ids]  # type: ignore[union-attr]
    assert combine_parts(statuses) is Status.DELIVERED


async def test_failing_part_fails_the_message(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """Each part's receipt names its own id; one failed part rejects the message."""
    smsc.behaviours[TO] = Behaviour(receipt="EXPIRED")
    result = await provider.send(sms("y" * 300))
    await sink.wait_for(lambda: all(sink.receipt_for(i) for i in result.segment_ids))
    statuses = [sink.receipt_for(i).status for i in result.segment_ids]  # type: ignore[union-attr]
    assert combine_parts([Status.DELIVERED, statuses[1]]) is Status.REJECTED
    assert {sink.receipt_for(i).code for i in result.segment_ids} == {1180}  # type: ignore[union-attr]


async def test_smsc_restart(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """After a crash the provider rebinds; an accepted message is not sent again."""
    smsc.behaviours[TO] = Behaviour(receipt_delay=0.5)
    before = await provider.send(sms("before"))
    await smsc.restart(down_for=0.2)
    with pytest.raises(ChannelUnavailable) as down:
        await provider.send(sms("during", to="447700900002"))
    assert down.value.code == 1100
    assert await provider.ready(3.0)
    after = await provider.send(sms("after", to="447700900002"))
    assert [submit.short_message for submit in smsc.answered()] == [b"before", b"after"]
    assert smsc.binds == 2  # the first session and the one after the restart
    # the receipt the SMSC kept across its restart arrives on the new session
    await sink.wait_for(
        lambda: (
            bool(sink.receipt_for(before.provider_message_id))
            and bool(sink.receipt_for(after.provider_message_id))
        )
    )


async def test_permanent_reject(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """A refusal such as ESME_RINVDSTADR is a ChannelRejected with the mapped code."""
    smsc.behaviours[TO] = Behaviour(reject=0x0B)
    with pytest.raises(ChannelRejected) as refused:
        await provider.send(sms("hi"))
    assert refused.value.code == 1170
    assert "ESME_RINVDSTADR" in refused.value.reason


async def test_vendor_status_keeps_the_session(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """A vendor-specific status (0x400+) is a provider error and the session stays up."""
    smsc.behaviours[TO] = Behaviour(reject=0x401)
    with pytest.raises(ChannelRejected) as refused:
        await provider.send(sms("hi"))
    assert refused.value.code == 1331
    assert "vendor status" in refused.value.reason
    await provider.send(sms("hi", to="447700900002"))
    assert smsc.binds == 1


async def test_system_error_is_transient(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """ESME_RSYSERR is the SMSC's own failure: try again later."""
    smsc.behaviours[TO] = Behaviour(reject=0x08)
    with pytest.raises(ChannelUnavailable) as failed:
        await provider.send(sms("hi"))
    assert failed.value.code == 1331


async def test_receipt_with_missing_fields(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """A receipt with only id, dates, stat and err (no sub, dlvrd, text, TLVs) is read."""
    smsc.behaviours[TO] = Behaviour(minimal_receipt=True, receipt="REJECTD")
    result = await provider.send(sms("hi"))
    await sink.wait_for(lambda: sink.receipt_for(result.provider_message_id) is not None)
    receipt = sink.receipt_for(result.provider_message_id)
    assert receipt is not None
    assert (receipt.status, receipt.code) == (Status.REJECTED, 1331)


async def test_receipt_before_submit_response(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """A receipt that comes before the submit_sm_resp is stored, not held back."""
    smsc.behaviours[TO] = Behaviour(receipt_first=True)
    result = await provider.send(sms("quick"))
    returned = time.monotonic()
    receipt = sink.receipt_for(result.provider_message_id)
    assert receipt is not None
    assert receipt.status is Status.DELIVERED
    assert sink.returned[0][1] < returned


async def test_deliver_sm_answered_only_after_the_sink_returned(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """The SMSC hears deliver_sm_resp only once the receipt is stored."""
    sink.gate.clear()
    await provider.send(sms("hi"))
    await smsc.wait_for(lambda: len(smsc.deliveries) == 1)
    await asyncio.sleep(0.1)
    assert smsc.deliveries[0].status is None  # the sink has not returned yet
    sink.gate.set()
    await smsc.wait_for(lambda: smsc.deliveries[0].status == 0)
    answered = smsc.deliveries[0].answered_at
    assert answered is not None
    assert sink.returned[0][1] <= answered


async def test_sink_failure_asks_for_redelivery(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """When the sink fails, the receipt is answered ESME_RX_T_APPN so the SMSC resends it."""
    sink.failures = 1
    failed = deliver_sm_count("sink_error")
    await provider.send(sms("hi"))
    await smsc.wait_for(lambda: bool(smsc.deliveries) and smsc.deliveries[0].status is not None)
    assert smsc.deliveries[0].status == 0x64
    assert deliver_sm_count("sink_error") == failed + 1
    again = await smsc.send_receipt(smsc.deliveries[0].short_message)
    assert again.status == 0
    assert len(sink.receipts) == 1


async def test_malformed_receipts_are_counted_and_answered(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """Receipts without an id or a known state are logged, counted, answered; the session lives."""
    malformed = deliver_sm_count("malformed")
    for text in (b"garbage", b"id:7 stat:WHATEVER", b"stat:DELIVRD err:000"):
        answer = await smsc.send_receipt(text)
        assert answer.status == 0
    assert deliver_sm_count("malformed") == malformed + 3
    assert sink.receipts == []
    await provider.send(sms("still bound"))
    assert smsc.binds == 1


async def test_pending_states_change_nothing(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """ENROUTE and ACCEPTD receipts are answered and reach no sink."""
    for stat in (b"ENROUTE", b"ACCEPTD"):
        answer = await smsc.send_receipt(b"id:5 stat:" + stat)
        assert answer.status == 0
    assert sink.receipts == []


async def test_inbound_message(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """An MO deliver_sm becomes an inbound SMS with its numbers and text."""
    [answer] = await smsc.deliver_mo("447700900009", "447700900000", "Hi there €")
    assert answer.status == 0
    [message] = sink.messages
    assert (message.provider, message.channel) == ("smpp", "sms")
    assert message.from_ == {"type": "sms", "number": "447700900009"}
    assert message.to == {"type": "sms", "number": "447700900000"}
    assert message.content == {"type": "text", "text": "Hi there €"}
    assert message.extra == {"num_messages": 1}


@pytest.mark.parametrize(
    ("split", "text"),
    [
        ("udh", "This message came in three parts!"),
        ("sar", "Сообщение из нескольких частей 😀"),
    ],
)
async def test_inbound_multipart_message(
    provider: SmppProvider,
    smsc: LoopbackSmsc,
    sink: RecordingSink,
    split: Any,
    text: str,
) -> None:
    """Parts (UDH or SAR TLVs) are reassembled into one inbound message."""
    answers = await smsc.deliver_mo("447700900009", "447700900000", text, split=split)
    assert len(answers) > 2
    assert [answer.status for answer in answers] == [0] * len(answers)
    [message] = sink.messages
    assert message.content == {"type": "text", "text": text}
    assert message.extra == {"num_messages": len(answers)}


async def test_inbound_sink_failure_keeps_the_parts(
    provider: SmppProvider, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """When storing a reassembled message fails, a resent last part completes it again."""
    sink.failures = 1
    answers = await smsc.deliver_mo("447700900009", "447700900000", "a" * 25, split="udh")
    assert [answer.status for answer in answers] == [0, 0, 0x64]
    assert sink.messages == []
    await smsc.deliver_mo("447700900009", "447700900000", "a" * 25, split="udh")
    [message] = sink.messages
    assert message.content["text"] == "a" * 25


async def test_wrong_password_is_a_refused_bind(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """A refused bind (the relay checks credentials) makes sends transient failures."""
    provider = await make_provider(password="wrong")
    assert smsc.bind_refusals >= 1
    assert provider.status()["loopback"]["bound"] is False
    with pytest.raises(ChannelUnavailable, match="ESME_RINVPASWD") as refused:
        await provider.send(sms("hi"))
    assert refused.value.code == 1100
    assert refused.value.retry_after is not None
    assert smsc.submits == []


async def test_no_response_is_unconfirmed(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """A submit the SMSC never answers fails as SmppSubmitUnconfirmed after the timeout."""
    provider = await make_provider(response_timeout=0.3)
    assert await provider.ready(2.0)
    smsc.behaviours[TO] = Behaviour(silent=True)
    with pytest.raises(SmppSubmitUnconfirmed, match="may have been accepted") as unconfirmed:
        await provider.send(sms("hi"))
    assert unconfirmed.value.code == 1100
    assert len(smsc.submits) == 1


async def test_connection_lost_after_the_write(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """A connection lost while a submit awaits its answer is unconfirmed; the provider rebinds."""
    smsc.behaviours[TO] = Behaviour(drop_connection=True)
    with pytest.raises(SmppSubmitUnconfirmed, match="lost"):
        await provider.send(sms("hi"))
    assert await provider.ready(3.0)
    await provider.send(sms("hi", to="447700900002"))
    assert smsc.binds == 2


async def test_routing_by_sender(make_provider: ProviderFactory, smsc: LoopbackSmsc) -> None:
    """A sender listed on a connection goes there; others go to the catch-all connection."""
    smsc.credentials["marketing"] = "secret2"
    provider = await make_provider(
        connection(smsc, name="alerts", senders=["+447700900100"]),
        connection(smsc, name="bulk", system_id="marketing", password="secret2"),
    )
    assert await provider.ready(2.0)
    await provider.send(sms("a", sender="447700900100"))
    await provider.send(sms("b", sender="447700900200"))
    await provider.send(sms("c", sender="Brand"))
    assert [(s.system_id, s.source_addr, s.source_addr_ton) for s in smsc.submits] == [
        ("cascade", "447700900100", 1),
        ("marketing", "447700900200", 1),
        ("marketing", "Brand", 5),
    ]


async def test_unrouted_sender_is_refused(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """Without a catch-all connection, an unlisted sender is an illegal sender address."""
    provider = await make_provider(senders=["447700900100"])
    with pytest.raises(ChannelRejected) as refused:
        await provider.send(sms("a", sender="Other"))
    assert refused.value.code == 1120


async def test_hex_ids_and_decimal_receipts_correlate(
    make_provider: ProviderFactory, smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """With declared bases, a hex submit id and a decimal receipt text id come out equal."""
    smsc.hex_ids = True
    smsc.receipt_tlvs = False
    provider = await make_provider(submit_id_format="hex", receipt_id_format="decimal")
    assert await provider.ready(2.0)
    result = await provider.send(sms("hi"))
    assert smsc.submits[0].message_id == "3E8"
    assert result.provider_message_id == "1000"
    await sink.wait_for(lambda: sink.receipt_for("1000") is not None)


async def test_window_limits_outstanding_submits(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """With a window of one, a second submit waits until the first is answered."""
    provider = await make_provider(window_size=1, response_timeout=3.0)
    assert await provider.ready(2.0)
    smsc.behaviours[TO] = Behaviour(silent=True)
    first = asyncio.create_task(provider.send(sms("slow")))
    await smsc.wait_for(lambda: len(smsc.submits) == 1)
    second = asyncio.create_task(provider.send(sms("next", to="447700900002")))
    await asyncio.sleep(0.2)
    assert len(smsc.submits) == 1
    smsc.answer_held()
    results = await asyncio.gather(first, second)
    assert [submit.short_message for submit in smsc.submits] == [b"slow", b"next"]
    assert [r.provider_message_id for r in results] == [s.message_id for s in smsc.submits]


async def test_a_send_that_waits_too_long_for_a_window_slot_is_unavailable(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """A submit that finds every slot taken waits at most response_timeout for one, then is a
    transient failure; the ones holding the slots time out as unconfirmed."""
    provider = await make_provider(window_size=1, response_timeout=0.5)
    assert await provider.ready(2.0)
    smsc.default = Behaviour(silent=True)
    first = asyncio.create_task(provider.send(sms("one", message_id="m-1")))
    await smsc.wait_for(lambda: len(smsc.submits) == 1)
    waiting = [
        asyncio.create_task(provider.send(sms(text, message_id=text))) for text in ("two", "three")
    ]
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert isinstance(results[0], SmppSubmitUnconfirmed)
    assert isinstance(results[1], SmppSubmitUnconfirmed)  # took the slot the first freed
    assert isinstance(results[2], ChannelUnavailable)
    assert not isinstance(results[2], SmppSubmitUnconfirmed)
    assert "window slots stayed busy" in str(results[2])
    assert [submit.short_message for submit in smsc.submits] == [b"one", b"two"]


async def test_throughput_limit(make_provider: ProviderFactory, smsc: LoopbackSmsc) -> None:
    """The token bucket holds submits to the configured rate after a one-second burst."""
    provider = await make_provider(throughput=20.0)
    assert await provider.ready(2.0)
    started = time.monotonic()
    await asyncio.gather(*(provider.send(sms(f"n{i}")) for i in range(26)))
    assert time.monotonic() - started >= 0.25  # 20 at once, then 6 at 20 per second
    assert len(smsc.answered()) == 26


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (sms(""), 1040),
        (sms("hi", to="not-a-number"), 1170),
        (sms("hi", sender=""), 1120),
        (sms("hi", sender="Ünïcode"), 1120),
        (sms("x" * 1531), 1090),
    ],
)
async def test_refused_before_sending(
    provider: SmppProvider, smsc: LoopbackSmsc, message: OutboundMessage, code: int
) -> None:
    """Messages SMPP cannot carry are refused without reaching the SMSC."""
    with pytest.raises(ChannelRejected) as refused:
        await provider.send(message)
    assert refused.value.code == code
    assert smsc.submits == []


async def test_stop_refuses_new_sends(provider: SmppProvider, smsc: LoopbackSmsc) -> None:
    """After stop the connection is down and sends are transient failures."""
    await provider.stop()
    assert provider.status()["loopback"]["bound"] is False
    with pytest.raises(ChannelUnavailable):
        await provider.send(sms("late"))


async def test_unanswered_enquire_link_drops_the_session(
    make_provider: ProviderFactory, smsc: LoopbackSmsc
) -> None:
    """A hung SMSC is noticed by enquire_link; the provider rebinds once it answers again."""
    provider = await make_provider(enquire_link_interval=0.1, response_timeout=0.2)
    assert await provider.ready(2.0)
    await asyncio.sleep(0.25)  # keep-alives answered: still the first session
    assert provider.status()["loopback"]["bound"] is True
    smsc.flowing.clear()
    await smsc.wait_for(
        lambda: "enquire_link not answered" in str(provider.status()["loopback"]["last_error"]),
        within=2.0,
    )
    assert provider.status()["loopback"]["bound"] is False
    smsc.flowing.set()
    assert await provider.ready(3.0)
    await provider.send(sms("back"))
    assert smsc.binds == 2


async def test_binding_and_unbinding_are_logged_at_info(
    smsc: LoopbackSmsc, sink: RecordingSink
) -> None:
    """A connection that binds logs "smpp bound", and one stopped logs "smpp unbound", each
    naming the connection and host (and never the password)."""
    provider = SmppProvider(SmppSettings.from_mapping({"connections": [connection(smsc)]}))
    with capture_logs() as logs:
        await provider.start(sink)
        assert await provider.ready(2.0)
        await provider.stop()
    lines = [entry for entry in logs if entry["event"] in ("smpp bound", "smpp unbound")]
    assert [(line["event"], line["log_level"]) for line in lines] == [
        ("smpp bound", "info"),
        ("smpp unbound", "info"),
    ]
    assert all(line["connection"] == "loopback" for line in lines)
    assert all(line["host"] == smsc.host for line in lines)
    assert "secret" not in repr(logs)
