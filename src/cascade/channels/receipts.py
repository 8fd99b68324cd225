"""SMPP delivery receipts: decode a ``deliver_sm``, read its receipt, map it to a Nexmo status.

Pure functions; no I/O. The SMPP provider decodes every ``deliver_sm`` body with
:func:`decode_deliver_sm`, and for a receipt (``esm_class`` message type 0001, or 1000 for an
intermediate notification) calls :func:`parse_receipt` and :func:`outcome_of`.

Reading a receipt. The text follows SMPP 3.4 Appendix B,
``id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:SSSSSSS err:EEE
text:...``, which is non-normative and varies by vendor, so the parser is tolerant: keys in any
case (``Text:``), any of them missing (Jasmin sends no ``sub``, ``dlvrd`` or ``text``), dates of
10 or 12 digits (with seconds) or unreadable (then None: a date never fails a receipt), ``text``
last and taken verbatim. Two TLVs win over the text when present: ``receipted_message_id``
(0x001E) for the id and ``message_state`` (0x0427) for the state. A receipt without an id, or
without a state it can read, is malformed (:class:`MalformedReceipt`).

Message ids. The engine correlates a receipt with the id ``submit_sm_resp`` returned, so both
must be written the same way. The rule:

1. ``receipted_message_id`` is, by the specification, the ``submit_sm_resp`` id: when present
   it is the receipt's id, even when the text's ``id:`` differs (some SMSCs answer in hex and
   write the text in decimal; both are kept on :class:`ParsedReceipt` for the log).
2. Without the TLV the text's ``id:`` is used.
3. Ids are compared as written unless the connection declares their base: with
   ``submit_id_format`` (how ``submit_sm_resp`` and the TLV write ids) and ``receipt_id_format``
   (how the text writes them) set to ``hex`` or ``decimal``, ids are parsed in that base and
   written as canonical decimal, so ``submit_sm_resp`` ``0A1F`` and text ``id:2591`` both become
   ``2591``. :func:`normalise_message_id` is the one function both sides use. ``opaque`` (the
   default) keeps an id as written, minus surrounding blanks and NULs.

Statuses. A receipt's state maps to a v0.1 status (docs/design.md §1.9: asynchronous SMS failures
are ``rejected`` with an error from Nexmo's documented asynchronous code list):

=========  =============  ==========  ====  ================================================
stat       message_state  status      code  why this code
=========  =============  ==========  ====  ================================================
DELIVRD    2 DELIVERED    delivered   -
ENROUTE    1 ENROUTE      no change   -     still trying; not a final state
ACCEPTD    6 ACCEPTED     no change   -     accepted on the subscriber's behalf, not delivered
EXPIRED    3 EXPIRED      rejected    1180  Absent subscriber temporary: the SMSC retried until
                                            the validity period ran out, which is what a handset
                                            that stays off or out of coverage causes. Not 1360
                                            ("TTL was activated"), which Nexmo uses for a
                                            message never sent, with no callback and no charge;
                                            this one was submitted and is charged.
UNDELIV    5 UNDELIVERABLE rejected   1260  Destination unreachable: the network gave up on
                                            the destination.
DELETED    4 DELETED      rejected    1331  Provider error: the SMSC (an operator or a
                                            cancel) removed it before delivery; the recipient
                                            had no part in it.
REJECTD    8 REJECTED     rejected    1331  Provider error: the SMSC or carrier refused it
                                            after accepting it (content, route or policy).
UNKNOWN    7 UNKNOWN      rejected    1330  Unknown, as the SMSC says.
NOROUTE    -              rejected    1250  Unroutable (a common non-standard state).
=========  =============  ==========  ====  ================================================

Long statuses (``DELIVERED``, ``UNDELIVERABLE``, ``REJECTED``, ...) are read as their short
forms. The reason keeps the SMSC's own words: state, ``err`` and ``network_error_code``.

Multi-part messages. Each part has its own id and its own receipt; the engine combines the
parts' statuses into the message's by :func:`cascade.domain.status.combine_parts`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from cascade.domain.status import Status

#: TLV tags (SMPP 3.4 section 5.3.2)
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427

#: ``esm_class`` message type bits (5..2) of a delivery receipt and of an intermediate
#: delivery notification
ESM_CLASS_TYPE_MASK = 0x3C
ESM_CLASS_RECEIPT = 0x04
ESM_CLASS_INTERMEDIATE = 0x20
ESM_CLASS_UDHI = 0x40

IdFormat = Literal["opaque", "hex", "decimal"]


class MalformedPdu(ValueError):
    """The deliver_sm body does not follow the SMPP 3.4 layout."""


class MalformedReceipt(ValueError):
    """The delivery receipt has no id or no state this parser can read."""


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """A decoded ``deliver_sm`` body: mandatory fields as sent, TLVs as raw values by tag."""

    service_type: str
    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    protocol_id: int
    priority_flag: int
    schedule_delivery_time: str
    validity_period: str
    registered_delivery: int
    replace_if_present_flag: int
    data_coding: int
    sm_default_msg_id: int
    short_message: bytes
    tlvs: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def is_receipt(self) -> bool:
        """Whether this is a delivery receipt (or an intermediate notification), not an MO."""
        return self.esm_class & ESM_CLASS_TYPE_MASK in (ESM_CLASS_RECEIPT, ESM_CLASS_INTERMEDIATE)

    @property
    def udhi(self) -> bool:
        """Whether the message starts with a user data header."""
        return bool(self.esm_class & ESM_CLASS_UDHI)

    @property
    def message(self) -> bytes:
        """The message octets: ``short_message``, or ``message_payload`` when that is empty."""
        return self.short_message or self.tlvs.get(TLV_MESSAGE_PAYLOAD, b"")


def decode_deliver_sm(body: bytes) -> DeliverSm:
    """Decode a ``deliver_sm`` PDU body (the octets after the 16-octet header).

    Strings are read as Latin-1 so no octet can fail them; values outside the enumerations
    (TON, NPI, data_coding) are kept as numbers rather than refused. Raises
    :class:`MalformedPdu` when a field or TLV runs past the end.
    """
    reader = _Reader(body)
    try:
        decoded = DeliverSm(
            service_type=reader.cstring(6),
            source_addr_ton=reader.byte(),
            source_addr_npi=reader.byte(),
            source_addr=reader.cstring(21),
            dest_addr_ton=reader.byte(),
            dest_addr_npi=reader.byte(),
            destination_addr=reader.cstring(21),
            esm_class=reader.byte(),
            protocol_id=reader.byte(),
            priority_flag=reader.byte(),
            schedule_delivery_time=reader.cstring(17),
            validity_period=reader.cstring(17),
            registered_delivery=reader.byte(),
            replace_if_present_flag=reader.byte(),
            data_coding=reader.byte(),
            sm_default_msg_id=reader.byte(),
            short_message=reader.octets(reader.byte()),
            tlvs=reader.tlvs(),
        )
    except (IndexError, struct.error) as exc:
        raise MalformedPdu(f"deliver_sm body ends early at octet {reader.index}") from exc
    return decoded


class _Reader:
    """A cursor over a PDU body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.index = 0

    def byte(self) -> int:
        value = self.data[self.index]
        self.index += 1
        return value

    def octets(self, count: int) -> bytes:
        value = self.data[self.index : self.index + count]
        if len(value) != count:
            raise MalformedPdu(f"{count} octets expected at octet {self.index}, {len(value)} left")
        self.index += count
        return value

    def cstring(self, limit: int) -> str:
        end = self.data.find(b"\x00", self.index, self.index + limit)
        if end < 0:
            raise MalformedPdu(f"C-string at octet {self.index} has no NUL within {limit} octets")
        value = self.data[self.index : end].decode("latin-1")
        self.index = end + 1
        return value

    def tlvs(self) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        while self.index < len(self.data):
            tag, size = struct.unpack_from("!HH", self.data, self.index)
            self.index += 4
            found.setdefault(tag, self.octets(size))
        return found


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a receipt means for the message: its new status, and the error when it failed."""

    status: Status
    code: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    """The fields of one delivery receipt."""

    message_id: str  # normalised; what the engine correlates with the submit_sm_resp id
    stat: str  # the state's short name (DELIVRD, UNDELIV, ...), from the TLV when present
    err: str | None = None
    sub: int | None = None
    dlvrd: int | None = None
    #: the dates as written (``YYMMDDhhmm[ss]``), read only when asked for: nothing in the
    #: engine's path needs them, and two datetimes cost a fifth of reading a receipt
    submit_date_text: str | None = None
    done_date_text: str | None = None
    text: str | None = None
    network_error: tuple[int, int] | None = None  # (network type, error code) from 0x0423
    text_id: str | None = None  # the text's ``id:`` as written
    tlv_id: str | None = None  # ``receipted_message_id`` as written

    @property
    def submit_date(self) -> datetime | None:
        """When the message was submitted, as the SMSC's receipt says (UTC assumed)."""
        return parse_date(self.submit_date_text)

    @property
    def done_date(self) -> datetime | None:
        """When the message reached its final state, as the SMSC's receipt says."""
        return parse_date(self.done_date_text)

    @property
    def ids_disagree(self) -> bool:
        """Whether the text's id and the TLV's id are not the same number in any base."""
        if self.text_id is None or self.tlv_id is None or self.text_id == self.tlv_id:
            return False
        return not _same_number(self.text_id, self.tlv_id)


def _same_number(a: str, b: str) -> bool:
    """Whether two ids are one number written in decimal and in hex (either way round)."""
    for first, second in ((a, b), (b, a)):
        try:
            if int(first, 10) == int(second, 16):
                return True
        except ValueError:
            continue
    return False


_KEY = re.compile(
    r"(?i)(?<![A-Za-z_])(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:"
)

#: message_state TLV values (SMPP 3.4 section 5.2.28) as receipt text states
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}

_LONG_STATES = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
}

#: final failure states: (Nexmo code, what it means)
FAILURES: dict[str, tuple[int, str]] = {
    "EXPIRED": (1180, "validity period expired before delivery"),
    "UNDELIV": (1260, "undeliverable"),
    "DELETED": (1331, "deleted by the SMSC"),
    "REJECTD": (1331, "rejected by the SMSC"),
    "UNKNOWN": (1330, "state unknown"),
    "NOROUTE": (1250, "no route to the destination"),
}
PENDING_STATES = frozenset({"ENROUTE", "ACCEPTD"})
DELIVERED_STATE = "DELIVRD"


#: "submit date", "submit_date" and "submitdate" are one key
_DATE_KEY = re.compile(r"[ _]?date$")


#: the receipt text of SMPP 3.4's Appendix B as SMSCs write it: lower-case keys in order, one
#: space apart, values without blanks or colons, the text last and optional. Such a text is read
#: in one match; any other goes through the general reading, which gives the same fields for it
#: (a property test holds them equal)
_APPENDIX_B = re.compile(
    r"id:([^\s:]*) sub:([^\s:]*) dlvrd:([^\s:]*) submit date:([^\s:]*) done date:([^\s:]*)"
    r" stat:([^\s:]*) err:([^\s:]*)(?: text:(.*))?",
    re.DOTALL,
)
_APPENDIX_B_KEYS = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err")


def parse_receipt_text(text: str) -> dict[str, str]:
    """The ``key: value`` fields of a receipt text, keys lower-case with one space.

    ``text`` is the last field and keeps the rest of the string, even if it looks like more
    keys. An unknown word before a colon is part of the previous value.
    """
    match = _APPENDIX_B.fullmatch(text)
    if match is None:
        return _read_fields(text)
    fields = dict(zip(_APPENDIX_B_KEYS, match.group(1, 2, 3, 4, 5, 6, 7), strict=True))
    rest = match.group(8)  # the text, when there is one
    if rest is not None:
        fields["text"] = rest.strip()
    return fields


def _read_fields(text: str) -> dict[str, str]:
    """:func:`parse_receipt_text` for any text: each key found wherever it stands."""
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for number, match in enumerate(matches):
        key = match.group(1).lower()
        if key.endswith("date"):
            key = _DATE_KEY.sub(" date", key)
        if key in fields:
            continue
        if key == "text":
            fields[key] = text[match.end() :].strip()
            break
        end = matches[number + 1].start() if number + 1 < len(matches) else len(text)
        fields[key] = text[match.end() : end].strip()
    return fields


def parse_date(value: str | None) -> datetime | None:
    """A receipt date ``YYMMDDhhmm`` or ``YYMMDDhhmmss`` as UTC (the SMSC's zone is unknown)."""
    if value is None or not value.isdigit() or len(value) not in (10, 12):
        return None
    year = int(value[0:2])
    # strptime's %y, without its cost (one receipt per SMS): 69-99 are 19xx, 00-68 20xx
    year += 1900 if year >= 69 else 2000
    second = int(value[10:12]) if len(value) == 12 else 0
    try:
        return datetime(
            year, int(value[2:4]), int(value[4:6]), int(value[6:8]), int(value[8:10]), second,
            tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        return None


def normalise_message_id(raw: str, fmt: IdFormat = "opaque") -> str:
    """An SMSC message id in the one form both submit responses and receipts are stored in.

    ``opaque`` strips blanks and NULs; ``hex`` and ``decimal`` parse the id in that base and
    write it in canonical decimal. An id that does not parse in the declared base is kept as
    written (stripped), so a misconfigured base never loses an id.
    """
    value = raw.strip().strip("\x00").strip()
    if fmt == "opaque" or not value:
        return value
    try:
        return str(int(value, 16 if fmt == "hex" else 10))
    except ValueError:
        return value


def _int_or_none(value: str | None) -> int | None:
    """A receipt counter (``sub``, ``dlvrd``), or None when missing or not a number."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _state_name(value: str) -> str:
    """A receipt state in its canonical short upper-case form."""
    name = value.strip().upper()
    return _LONG_STATES.get(name, name)


def receipt_text(message: bytes, data_coding: int) -> str:
    """The characters of a receipt's message: UTF-16BE for UCS-2, Latin-1 otherwise.

    Receipt keys and values are ASCII, which Latin-1 and the GSM default alphabet share.
    """
    if data_coding == 0x08:
        return message[: len(message) // 2 * 2].decode("utf-16-be", "replace")
    return message.decode("latin-1")


def parse_receipt(
    text: str,
    tlvs: Mapping[int, bytes],
    *,
    submit_id_format: IdFormat = "opaque",
    receipt_id_format: IdFormat = "opaque",
) -> ParsedReceipt:
    """Read a delivery receipt from its text and TLVs (the TLVs win; see the module doc).

    Raises :class:`MalformedReceipt` when no id or no readable state is found.
    """
    fields = parse_receipt_text(text)
    tlv_id = _tlv_string(tlvs.get(TLV_RECEIPTED_MESSAGE_ID))
    text_id = fields.get("id") or None
    if tlv_id:
        message_id = normalise_message_id(tlv_id, submit_id_format)
    elif text_id:
        message_id = normalise_message_id(text_id, receipt_id_format)
    else:
        raise MalformedReceipt("receipt has neither receipted_message_id nor an id: field")
    if not message_id:
        raise MalformedReceipt("receipt id is empty")

    state = tlvs.get(TLV_MESSAGE_STATE)
    stat: str | None = None
    if state is not None and len(state) == 1 and state[0] in MESSAGE_STATES:
        stat = MESSAGE_STATES[state[0]]
    elif fields.get("stat"):
        stat = _state_name(fields["stat"])
    if stat is None:
        raise MalformedReceipt(f"receipt for {message_id} has no readable state")
    if stat != DELIVERED_STATE and stat not in FAILURES and stat not in PENDING_STATES:
        raise MalformedReceipt(f"receipt for {message_id} has an unknown state {stat!r}")

    network = tlvs.get(TLV_NETWORK_ERROR_CODE)
    return ParsedReceipt(
        message_id=message_id,
        stat=stat,
        err=fields.get("err") or None,
        sub=_int_or_none(fields.get("sub")),
        dlvrd=_int_or_none(fields.get("dlvrd")),
        submit_date_text=fields.get("submit date"),
        done_date_text=fields.get("done date"),
        text=fields.get("text"),
        network_error=(network[0], network[1] << 8 | network[2])
        if network and len(network) == 3
        else None,
        text_id=text_id,
        tlv_id=tlv_id or None,
    )


def _tlv_string(value: bytes | None) -> str | None:
    """A C-octet-string TLV value without its NUL."""
    if value is None:
        return None
    return value.split(b"\x00", 1)[0].decode("latin-1").strip()


_NETWORK_TYPES = {1: "ANSI-136", 2: "IS-95", 3: "GSM"}


def outcome_of(receipt: ParsedReceipt) -> Outcome | None:
    """The status change a receipt reports, or None for a state that changes nothing."""
    if receipt.stat == DELIVERED_STATE:
        return Outcome(Status.DELIVERED)
    if receipt.stat in PENDING_STATES:
        return None
    code, meaning = FAILURES[receipt.stat]
    details = [f"SMSC receipt {receipt.stat}: {meaning}"]
    if receipt.err is not None:
        details.append(f"err {receipt.err}")
    if receipt.network_error is not None:
        kind, number = receipt.network_error
        details.append(f"{_NETWORK_TYPES.get(kind, f'network type {kind}')} error {number}")
    return Outcome(Status.REJECTED, code, "; ".join(details))
