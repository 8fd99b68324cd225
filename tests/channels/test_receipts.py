"""Delivery receipts: deliver_sm decoding, receipt text and TLVs, ids, and status mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import smpp34
from hypothesis import example, given
from hypothesis import strategies as st

from cascade.channels.receipts import (
    _APPENDIX_B,
    TLV_MESSAGE_PAYLOAD,
    TLV_MESSAGE_STATE,
    TLV_NETWORK_ERROR_CODE,
    TLV_RECEIPTED_MESSAGE_ID,
    IdFormat,
    MalformedPdu,
    MalformedReceipt,
    Outcome,
    _read_fields,
    decode_deliver_sm,
    normalise_message_id,
    outcome_of,
    parse_date,
    parse_receipt,
    parse_receipt_text,
    receipt_text,
)
from cascade.domain.status import Status

STANDARD = (
    "id:1000 sub:001 dlvrd:001 submit date:2401311200 done date:2401311201 "
    "stat:DELIVRD err:000 text:Hello there"
)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (
            STANDARD,
            {
                "id": "1000",
                "sub": "001",
                "dlvrd": "001",
                "submit date": "2401311200",
                "done date": "2401311201",
                "stat": "DELIVRD",
                "err": "000",
                "text": "Hello there",
            },
        ),
        (
            "id:abc-1 submit date:240131120000 done date:240131120105 stat:UNDELIV err:001",
            {
                "id": "abc-1",
                "submit date": "240131120000",
                "done date": "240131120105",
                "stat": "UNDELIV",
                "err": "001",
            },
        ),
        (
            "ID:7 SUB:001 DLVRD:000 SUBMIT DATE:2401311200 DONE DATE:2401311201 "
            "STAT:EXPIRED ERR:000 Text:stat:DELIVRD id:9",
            {
                "id": "7",
                "sub": "001",
                "dlvrd": "000",
                "submit date": "2401311200",
                "done date": "2401311201",
                "stat": "EXPIRED",
                "err": "000",
                "text": "stat:DELIVRD id:9",
            },
        ),
        ("id: 42  stat: DELIVRD", {"id": "42", "stat": "DELIVRD"}),
        (
            "id:5 submit_date:2401311200 stat:ACCEPTD",
            {"id": "5", "submit date": "2401311200", "stat": "ACCEPTD"},
        ),
        ("nothing here", {}),
        ("", {}),
    ],
)
def test_parse_receipt_text(text: str, fields: dict[str, str]) -> None:
    """Keys in any case, any missing, text last and verbatim."""
    assert parse_receipt_text(text) == fields


#: receipt values: mostly of the keys' letters, digits and dashes (the one-match form), now
#: and then with blanks, colons and others (the general reading)
_VALUE = st.from_regex(r"[idsubtextdonerrlav0-9_-]{0,6}", fullmatch=True) | st.text(
    alphabet="idsubtextstaerr_ :0123456789-Aé\n", max_size=8
)


@given(values=st.lists(_VALUE, min_size=7, max_size=7), text=st.none() | _VALUE)
@example(values=["1", "001", "1stat", "", "5sub", "id", "err"], text=" x  y ")
@example(values=["1"] * 7, text="")
@example(values=["1", "2", "3", "4", "5", "1id:2", "0"], text=None)
def test_a_receipt_in_appendix_b_form_reads_as_the_general_reading_does(
    values: list[str], text: str | None
) -> None:
    """The one-match reading of SMPP's Appendix B form gives the fields the general reading
    gives, whatever the values hold (values that could read as keys go the general way)."""
    receipt = "id:{} sub:{} dlvrd:{} submit date:{} done date:{} stat:{} err:{}".format(*values) + (
        "" if text is None else f" text:{text}"
    )
    assert parse_receipt_text(receipt) == _read_fields(receipt)


def test_a_receipt_in_appendix_b_form_is_read_in_one_match() -> None:
    """The usual form takes the one match, its values and text as written."""
    assert _APPENDIX_B.fullmatch(STANDARD) is not None
    assert parse_receipt_text(STANDARD) == _read_fields(STANDARD) == {
        "id": "1000", "sub": "001", "dlvrd": "001", "submit date": "2401311200",
        "done date": "2401311201", "stat": "DELIVRD", "err": "000", "text": "Hello there",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("2401311200", datetime(2024, 1, 31, 12, 0, tzinfo=UTC)),
        ("240131120059", datetime(2024, 1, 31, 12, 0, 59, tzinfo=UTC)),
        ("2413311200", None),
        ("24013112", None),
        ("2401311200000", None),
        ("2401 31120", None),
        (None, None),
    ],
)
def test_parse_date(value: str | None, parsed: datetime | None) -> None:
    """10 or 12 digits; anything else is no date rather than an error."""
    assert parse_date(value) == parsed


@pytest.mark.parametrize(
    ("raw", "fmt", "normalised"),
    [
        (" 0A1F\x00", "opaque", "0A1F"),
        ("0A1F", "hex", "2591"),
        ("0a1f", "hex", "2591"),
        ("002591", "decimal", "2591"),
        ("not-a-number", "hex", "not-a-number"),
        ("", "decimal", ""),
    ],
)
def test_normalise_message_id(raw: str, fmt: IdFormat, normalised: str) -> None:
    """Declared bases become canonical decimal; opaque ids are only trimmed."""
    assert normalise_message_id(raw, fmt) == normalised


def _tlv_id(value: str) -> dict[int, bytes]:
    return {TLV_RECEIPTED_MESSAGE_ID: value.encode() + b"\x00"}


def test_full_receipt() -> None:
    """Every field of the Appendix B format is read."""
    receipt = parse_receipt(STANDARD, {})
    assert receipt.message_id == "1000"
    assert receipt.stat == "DELIVRD"
    assert (receipt.sub, receipt.dlvrd, receipt.err) == (1, 1, "000")
    assert receipt.submit_date == datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
    assert receipt.done_date == datetime(2024, 1, 31, 12, 1, tzinfo=UTC)
    assert receipt.text == "Hello there"


def test_receipt_without_optional_fields() -> None:
    """Jasmin-style receipts (no sub, dlvrd, text) parse."""
    receipt = parse_receipt(
        "id:9f3c submit date:2401311200 done date:2401311201 stat:DELIVRD err:000", {}
    )
    assert (receipt.message_id, receipt.stat, receipt.sub, receipt.text) == (
        "9f3c",
        "DELIVRD",
        None,
        None,
    )


def test_tlvs_win_over_text() -> None:
    """receipted_message_id and message_state override the text's id and stat."""
    tlvs = {**_tlv_id("77"), TLV_MESSAGE_STATE: bytes([5])}
    receipt = parse_receipt("id:78 stat:DELIVRD err:000", tlvs)
    assert (receipt.message_id, receipt.stat) == ("77", "UNDELIV")
    assert receipt.ids_disagree is True


def test_tlvs_alone_suffice() -> None:
    """A receipt with an empty text but both TLVs is complete."""
    receipt = parse_receipt("", {**_tlv_id("abc"), TLV_MESSAGE_STATE: bytes([2])})
    assert (receipt.message_id, receipt.stat) == ("abc", "DELIVRD")


def test_hex_tlv_and_decimal_text_are_one_id() -> None:
    """The TLV's hex id and the text's decimal id name one message: no disagreement."""
    receipt = parse_receipt("id:2591 stat:DELIVRD", _tlv_id("0A1F"))
    assert receipt.message_id == "0A1F"
    assert receipt.ids_disagree is False
    canonical = parse_receipt("id:2591 stat:DELIVRD", _tlv_id("0A1F"), submit_id_format="hex")
    assert canonical.message_id == "2591"


def test_text_id_in_decimal_matches_a_hex_submit_id() -> None:
    """Without the TLV, declared bases bring text and submit_sm_resp ids to one form."""
    receipt = parse_receipt("id:2591 stat:DELIVRD", {}, receipt_id_format="decimal")
    assert receipt.message_id == normalise_message_id("0A1F", "hex")


def test_empty_receipted_message_id_falls_back_to_text() -> None:
    """An empty receipted_message_id TLV does not hide the text's id."""
    receipt = parse_receipt("id:12 stat:DELIVRD", {TLV_RECEIPTED_MESSAGE_ID: b"\x00"})
    assert receipt.message_id == "12"


def test_unknown_message_state_falls_back_to_text() -> None:
    """A message_state outside 1..8 is ignored in favour of the text's stat."""
    receipt = parse_receipt("id:1 stat:EXPIRED", {TLV_MESSAGE_STATE: bytes([9])})
    assert receipt.stat == "EXPIRED"


@pytest.mark.parametrize(
    ("text", "tlvs", "problem"),
    [
        ("stat:DELIVRD err:000", {}, "neither"),
        ("id: stat:DELIVRD", {}, "neither"),
        ("id:1 err:000", {}, "no readable state"),
        ("id:1 stat:BOGUS", {}, "unknown state"),
        ("id:\x00 stat:DELIVRD", {}, "empty"),
    ],
)
def test_malformed_receipts(text: str, tlvs: dict[int, bytes], problem: str) -> None:
    """No id or no readable state makes a receipt malformed."""
    with pytest.raises(MalformedReceipt, match=problem):
        parse_receipt(text, tlvs)


@pytest.mark.parametrize(
    ("stat", "outcome"),
    [
        ("DELIVRD", Outcome(Status.DELIVERED)),
        ("delivered", Outcome(Status.DELIVERED)),
        ("ENROUTE", None),
        ("ACCEPTD", None),
        ("EXPIRED", Outcome(Status.REJECTED, 1180)),
        ("UNDELIV", Outcome(Status.REJECTED, 1260)),
        ("Undeliverable", Outcome(Status.REJECTED, 1260)),
        ("DELETED", Outcome(Status.REJECTED, 1331)),
        ("REJECTD", Outcome(Status.REJECTED, 1331)),
        ("REJECTED", Outcome(Status.REJECTED, 1331)),
        ("UNKNOWN", Outcome(Status.REJECTED, 1330)),
        ("NOROUTE", Outcome(Status.REJECTED, 1250)),
    ],
)
def test_status_mapping(stat: str, outcome: Outcome | None) -> None:
    """Each receipt state maps to the documented status and Nexmo code."""
    result = outcome_of(parse_receipt(f"id:1 stat:{stat} err:042", {}))
    if outcome is None:
        assert result is None
        return
    assert result is not None
    assert (result.status, result.code) == (outcome.status, outcome.code)
    if outcome.status is Status.REJECTED:
        assert result.reason is not None
        assert "err 042" in result.reason


@pytest.mark.parametrize(
    ("state", "stat"),
    [
        (1, "ENROUTE"),
        (2, "DELIVRD"),
        (3, "EXPIRED"),
        (4, "DELETED"),
        (5, "UNDELIV"),
        (6, "ACCEPTD"),
        (7, "UNKNOWN"),
        (8, "REJECTD"),
    ],
)
def test_message_state_values(state: int, stat: str) -> None:
    """message_state 1..8 name the SMPP 3.4 states."""
    assert parse_receipt("", {**_tlv_id("1"), TLV_MESSAGE_STATE: bytes([state])}).stat == stat


def test_network_error_code_is_in_the_reason() -> None:
    """The network_error_code TLV (type + code) is reported in the reason."""
    tlvs = {TLV_NETWORK_ERROR_CODE: bytes([3, 0, 27])}
    outcome = outcome_of(parse_receipt("id:1 stat:UNDELIV err:027", tlvs))
    assert outcome is not None
    assert outcome.reason == "SMSC receipt UNDELIV: undeliverable; err 027; GSM error 27"


def _body(pdu: smpp34.DeliverSm) -> bytes:
    """A deliver_sm body as smpp34 encodes it, without the 16-octet header."""
    return pdu.encode()[16:]


def test_decode_deliver_sm_receipt() -> None:
    """A receipt encoded by another SMPP implementation decodes field for field."""
    encoded = smpp34.DeliverSm(
        "447700900001",
        "Cascade",
        b"id:1 stat:DELIVRD",
        source_addr_ton=1,
        source_addr_npi=1,
        dest_addr_ton=5,
        esm_class=0x04,
        data_coding=0,
        tlvs=[
            smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, b"1\x00"),
            smpp34.Tlv(TLV_MESSAGE_STATE, bytes([2])),
        ],
    )
    pdu = decode_deliver_sm(_body(encoded))
    assert (pdu.source_addr, pdu.source_addr_ton, pdu.destination_addr) == (
        "447700900001",
        1,
        "Cascade",
    )
    assert pdu.is_receipt
    assert not pdu.udhi
    assert pdu.message == b"id:1 stat:DELIVRD"
    assert pdu.tlvs == {TLV_RECEIPTED_MESSAGE_ID: b"1\x00", TLV_MESSAGE_STATE: b"\x02"}


def test_decode_deliver_sm_keeps_unlisted_values() -> None:
    """Odd TON/NPI, GSM class data_coding and binary vendor TLVs are kept, not refused."""
    encoded = smpp34.DeliverSm(
        "123",
        "456",
        b"\x80\xff",
        source_addr_ton=7,
        source_addr_npi=0x0F,
        data_coding=0xF4,
        tlvs=[smpp34.Tlv(0x1401, b"\x80\x81\xff")],
    )
    pdu = decode_deliver_sm(_body(encoded))
    assert (pdu.source_addr_ton, pdu.source_addr_npi, pdu.data_coding) == (7, 0x0F, 0xF4)
    assert pdu.tlvs == {0x1401: b"\x80\x81\xff"}
    assert not pdu.is_receipt


def test_message_payload_replaces_an_empty_short_message() -> None:
    """A long MO carried in message_payload is the message."""
    encoded = smpp34.DeliverSm("1", "2", b"", tlvs=[smpp34.Tlv(TLV_MESSAGE_PAYLOAD, b"x" * 300)])
    assert decode_deliver_sm(_body(encoded)).message == b"x" * 300


@pytest.mark.parametrize(
    "cut",
    [0, 5, 20, 37],
)
def test_truncated_deliver_sm_is_malformed(cut: int) -> None:
    """A body that ends inside a field is refused with MalformedPdu."""
    body = _body(
        smpp34.DeliverSm("447700900001", "2", b"hello world", tlvs=[smpp34.Tlv(0x1401, b"abc")])
    )
    with pytest.raises(MalformedPdu):
        decode_deliver_sm(body[:cut] if cut != 37 else body[:-1])


def test_unterminated_string_is_malformed() -> None:
    """A C-string without its NUL within the field's size is refused."""
    with pytest.raises(MalformedPdu, match="NUL"):
        decode_deliver_sm(b"\x00\x01\x01" + b"9" * 30)


@pytest.mark.parametrize(
    ("message", "data_coding", "text"),
    [
        (b"id:1 stat:DELIVRD", 0, "id:1 stat:DELIVRD"),
        ("id:1 stat:DELIVRD".encode("utf-16-be"), 8, "id:1 stat:DELIVRD"),
        (b"id:1 text:caf\xe9", 3, "id:1 text:café"),
    ],
)
def test_receipt_text(message: bytes, data_coding: int, text: str) -> None:
    """Receipt texts read as Latin-1, or UTF-16BE when sent as UCS-2."""
    assert receipt_text(message, data_coding) == text


@pytest.mark.parametrize(
    ("esm_class", "is_receipt"),
    [(0x00, False), (0x04, True), (0x20, True), (0x44, True), (0x08, False), (0x40, False)],
)
def test_receipt_esm_classes(esm_class: int, is_receipt: bool) -> None:
    """Receipts and intermediate notifications are receipts; MO messages (type 0) are not."""
    pdu = decode_deliver_sm(_body(smpp34.DeliverSm("1", "2", b"x", esm_class=esm_class)))
    assert pdu.is_receipt is is_receipt


@given(st.text(alphabet="0123456789", min_size=10, max_size=12).filter(lambda v: len(v) != 11))
def test_parse_date_reads_digits_as_strptime_does(value: str) -> None:
    """Any 10 or 12 digits give strptime's %y%m%d%H%M[%S] answer, or None where it refuses."""
    try:
        fmt = "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M"
        expected: datetime | None = datetime.strptime(value, fmt).replace(tzinfo=UTC)
    except ValueError:
        expected = None
    assert parse_date(value) == expected
