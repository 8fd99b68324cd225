"""SMPP on the wire: the PDU header, reading one whole PDU, and what a ``command_status`` means.

This is the layer below the session that knows bytes and nothing of binds, windows or
messages: :func:`read_pdu` frames one PDU off the stream, :func:`submit_sm` and
:func:`deliver_sm_resp` build the PDUs sent for every SMS (the others are aiosmpplib's), and
the status constants and :func:`status_name` say what an answer's ``command_status`` is. It is
its own module so that the link, the session and the tests share one definition of a PDU.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from aiosmpplib import SmppCommand, SmppCommandStatus

#: command_status values that mean "not now": the message was not taken, send it later
THROTTLE_STATUSES = frozenset({SmppCommandStatus.ESME_RTHROTTLED, SmppCommandStatus.ESME_RMSGQFUL})
SYSTEM_ERROR_STATUS = int(SmppCommandStatus.ESME_RSYSERR)
#: deliver_sm_resp statuses: taken, and "temporary application error, send it again"
ESME_ROK = int(SmppCommandStatus.ESME_ROK)
ESME_RX_T_APPN = int(SmppCommandStatus.ESME_RX_T_APPN)

HEADER = struct.Struct("!IIII")
MAX_PDU_LENGTH = 70_000  # a 64 KiB message_payload plus every mandatory field
#: sequence numbers run from 1 to this and start again
MAX_SEQUENCE = 0x7FFFFFFF
#: set in the command_id of every response
RESPONSE_BIT = 0x80000000
SUBMIT_SM = int(SmppCommand.SUBMIT_SM)
DELIVER_SM_RESP = int(SmppCommand.DELIVER_SM_RESP)
#: the longest ``short_message`` (its length is one octet, and 255 is reserved)
MAX_SHORT_MESSAGE = 254


def status_name(status: int) -> str:
    """The SMPP name of a command_status, e.g. ``ESME_RTHROTTLED (0x00000058)``."""
    try:
        name = SmppCommandStatus(status).name
    except ValueError:
        name = "vendor status" if 0x400 <= status <= 0x4FF else "unknown status"
    return f"{name} ({status:#010x})"


class BindRefused(Exception):
    """The SMSC answered the bind with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {status_name(status)}")
        self.status = status


class ProtocolError(Exception):
    """The SMSC sent something that is not SMPP."""


@dataclass(frozen=True, slots=True)
class Pdu:
    """A PDU as read off the wire."""

    command_id: int
    status: int
    sequence: int
    body: bytes


async def read_pdu(reader: asyncio.StreamReader) -> Pdu:
    """Read one whole PDU; raises EOFError subclasses on a closed stream."""
    header = await reader.readexactly(HEADER.size)
    length, command_id, status, sequence = HEADER.unpack(header)
    if not HEADER.size <= length <= MAX_PDU_LENGTH:
        raise ProtocolError(f"PDU length {length} is out of range")
    body = await reader.readexactly(length - HEADER.size)
    return Pdu(command_id, status, sequence, body)


def cstring(body: bytes) -> str:
    """The first C-octet string of a body (a response's ``message_id``/``system_id``)."""
    return body.split(b"\x00", 1)[0].decode("latin-1")


@dataclass(frozen=True, slots=True)
class SubmitPart:
    """One ``submit_sm`` as the session writes it: the body made once, when the message is
    encoded; the header, which carries the sequence number, at each write."""

    body: bytes

    def pdu(self, sequence: int) -> bytes:
        """The whole PDU, numbered ``sequence``."""
        return HEADER.pack(HEADER.size + len(self.body), SUBMIT_SM, 0, sequence) + self.body


def deliver_sm_resp(sequence: int, status: int) -> bytes:
    """The answer to the ``deliver_sm`` numbered ``sequence`` (its ``message_id`` unused,
    so empty), as aiosmpplib's ``DeliverSmResp`` writes it."""
    return HEADER.pack(HEADER.size + 1, DELIVER_SM_RESP, status, sequence) + b"\x00"


def submit_sm(
    *,
    source: str,
    source_ton: int,
    source_npi: int,
    destination: str,
    dest_ton: int,
    dest_npi: int,
    esm_class: int,
    data_coding: int,
    short_message: bytes,
) -> SubmitPart:
    """A ``submit_sm`` (SMPP 3.4 section 4.4.1) asking for a delivery receipt, sent at once
    with the SMSC's default validity and no optional parameters, ``short_message`` already
    encoded. aiosmpplib's ``SubmitSm`` type-checks sixteen parameters and rebuilds the body
    at every write, a sixth of an SMPP send's CPU (issue 15); its bytes are these (a property
    test holds them equal). The caller has checked the addresses (ASCII, 20 characters at
    most); ValueError when a value does not fit its field."""
    if len(short_message) > MAX_SHORT_MESSAGE:
        raise ValueError(f"short_message of {len(short_message)} octets (at most 254)")
    return SubmitPart(
        b"".join(
            (
                b"\x00",  # service_type: the SMSC's default
                bytes((source_ton, source_npi)),
                source.encode("ascii"),
                b"\x00",
                bytes((dest_ton, dest_npi)),
                destination.encode("ascii"),
                b"\x00",
                bytes((esm_class, 0, 0)),  # protocol_id, priority_flag
                b"\x00\x00",  # schedule_delivery_time (now), validity_period (the default)
                # registered_delivery: a receipt; replace_if_present_flag, sm_default_msg_id: 0
                bytes((1, 0, data_coding, 0, len(short_message))),
                short_message,
            )
        )
    )
