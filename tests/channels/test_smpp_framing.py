"""The submit_sm and deliver_sm_resp Cascade builds itself (the PDUs sent for every SMS) against
the ones aiosmpplib builds from the same values: byte for byte, for any addresses, TON/NPI,
esm_class, data coding, payload, status and sequence number."""

from __future__ import annotations

from typing import Any

import pytest
from aiosmpplib import NPI, TON, DeliverSmResp, PhoneNumber, SmppCommandStatus, SubmitSm
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cascade.channels.smpp.config import NPI_VALUES, TON_VALUES
from cascade.channels.smpp.framing import MAX_SEQUENCE, deliver_sm_resp, submit_sm

ADDRESSES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)

#: the values of a submit_sm, as :func:`submit_sm` takes them
FIELDS = st.fixed_dictionaries(
    {
        "source": ADDRESSES,
        "source_ton": st.sampled_from(sorted(TON_VALUES)),
        "source_npi": st.sampled_from(sorted(NPI_VALUES)),
        "destination": ADDRESSES,
        "dest_ton": st.sampled_from(sorted(TON_VALUES)),
        "dest_npi": st.sampled_from(sorted(NPI_VALUES)),
        "esm_class": st.sampled_from([0x00, 0x40]),
        "data_coding": st.sampled_from([0, 8]),
        "short_message": st.binary(min_size=1, max_size=254),
    }
)
#: one SMS to Acme's customer, one part
ONE_PART: dict[str, Any] = {
    "source": "Acme",
    "source_ton": 5,
    "source_npi": 0,
    "destination": "447700900000",
    "dest_ton": 1,
    "dest_npi": 1,
    "esm_class": 0,
    "data_coding": 0,
    "short_message": b"hi",
}


def _aiosmpplib_pdu(fields: dict[str, Any], sequence: int) -> bytes:
    """The submit_sm aiosmpplib writes for these values (as the provider built it before)."""
    submit = SubmitSm(
        short_message="x",  # its text is not sent: the encoded payload is
        source=PhoneNumber(fields["source"], TON(fields["source_ton"]), NPI(fields["source_npi"])),
        destination=PhoneNumber(
            fields["destination"], TON(fields["dest_ton"]), NPI(fields["dest_npi"])
        ),
        esm_class=fields["esm_class"],
        registered_delivery=0x01,
        encoding="ucs2" if fields["data_coding"] == 8 else None,
    )
    submit.set_encoded_message(fields["short_message"])
    submit.sequence_num = sequence
    return submit.pdu()


@settings(max_examples=300, deadline=None)
@given(fields=FIELDS, sequence=st.integers(1, MAX_SEQUENCE))
@example(
    fields={
        **ONE_PART,
        "esm_class": 0x40,
        "short_message": b"\x05\x00\x03\x2a\x02\x01" + b"a" * 153,
    },
    sequence=MAX_SEQUENCE,
)
def test_the_submit_sm_is_aiosmpplibs_byte_for_byte(fields: dict[str, Any], sequence: int) -> None:
    """Every field in its place: the same PDU as aiosmpplib's SubmitSm for the same values."""
    assert submit_sm(**fields).pdu(sequence) == _aiosmpplib_pdu(fields, sequence)


def test_a_part_is_numbered_at_each_write() -> None:
    """One part written twice (a throttled part sent again) carries each write's number."""
    part = submit_sm(**ONE_PART)
    assert part.pdu(7)[12:16] == (7).to_bytes(4, "big")
    assert part.pdu(8)[12:16] == (8).to_bytes(4, "big")
    assert part.pdu(7)[16:] == part.pdu(8)[16:]


def test_a_payload_too_long_for_short_message_is_refused() -> None:
    """short_message holds 254 octets at most: a longer one is a ValueError, not a bad PDU."""
    with pytest.raises(ValueError, match="254"):
        submit_sm(**{**ONE_PART, "short_message": b"a" * 255})


@given(sequence=st.integers(1, MAX_SEQUENCE), status=st.sampled_from(sorted(SmppCommandStatus)))
def test_the_deliver_sm_resp_is_aiosmpplibs_byte_for_byte(sequence: int, status: int) -> None:
    """The answer to each deliver_sm: the same PDU as aiosmpplib's DeliverSmResp."""
    expected = DeliverSmResp(sequence_num=sequence, command_status=SmppCommandStatus(status))
    assert deliver_sm_resp(sequence, status) == expected.pdu()
