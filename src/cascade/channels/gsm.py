"""SMS text encoding: GSM 03.38 or UCS-2, segment counts, and UDH-concatenated parts.

Pure functions; the SMPP provider uses them to build ``short_message`` payloads and to read
inbound ones.

Choosing the alphabet. A text whose every character is in the GSM 03.38 basic table or its
extension table goes out as GSM-7 (SMPP ``data_coding`` 0, one septet per octet, unpacked, as
SMPP carries it); anything else goes out as UCS-2 (``data_coding`` 8, UTF-16BE). The tables are
aiosmpplib's ``gsm0338`` codec; an extension character (``^ { } \\ [ ~ ] | €`` and form feed)
costs two septets (ESC 0x1B, then its code).

Counting and splitting. One SMS carries 140 octets of user data: 160 GSM-7 septets or 70
UTF-16 code units (a character outside the BMP, e.g. most emoji, is a surrogate pair and costs
two units). A longer text is split into parts that each start with a 6-octet user data header
``05 00 03 <ref> <total> <seq>`` (IEI 0x00, concatenated short message with an 8-bit
reference), leaving 153 septets or 67 units per part. A part never ends between an ESC and its
character, nor between the two halves of a surrogate pair: splitting works on whole characters.

Over SMPP a GSM-7 part is unpacked, so its ``short_message`` is up to 6 + 153 = 159 octets;
what must fit in 140 octets is the part on the air interface, where septets are packed and the
header is padded to a septet boundary. :func:`air_octets` computes that size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from aiosmpplib.codec import GSM_BASIC_ENCODE_MAP, GSM_EXTENDED_ENCODE_MAP, GSM7BitCodec

#: SMPP ``data_coding`` values this module produces
DATA_CODING_GSM7 = 0x00
DATA_CODING_UCS2 = 0x08

#: user data octets in one SMS on the air interface
MAX_USER_DATA_OCTETS = 140
GSM7_SINGLE = 160  # septets in an unsegmented GSM-7 message
GSM7_PART = 153  # septets per part after the concatenation header
UCS2_SINGLE = 70  # UTF-16 code units in an unsegmented UCS-2 message
UCS2_PART = 67  # code units per part after the concatenation header

#: the most parts an 8-bit concatenation header can number
MAX_PARTS = 255

#: information element identifiers for concatenated short messages (3GPP TS 23.040 9.2.3.24)
IEI_CONCAT_8BIT = 0x00
IEI_CONCAT_16BIT = 0x08
CONCAT_UDH_LENGTH = 6  # UDHL + IEI + IEDL + ref + total + seq

_GSM = GSM7BitCodec()
#: septets each GSM 03.38 character costs
_GSM_COST = {**dict.fromkeys(GSM_BASIC_ENCODE_MAP, 1), **dict.fromkeys(GSM_EXTENDED_ENCODE_MAP, 2)}

# The codec's encoder and its alphabet check go a character at a time in Python (23 µs for a
# 47-character text, three passes of it per SMS); a character class and str.translate over the
# same tables do it in C, one pass each (issue 15).
#: each GSM 03.38 character as the unpacked septets SMPP carries (extension: ESC, then its code)
_SEPTETS = str.maketrans(
    {char: chr(code) for char, code in GSM_BASIC_ENCODE_MAP.items()}
    | {char: f"\x1b{chr(code)}" for char, code in GSM_EXTENDED_ENCODE_MAP.items()}
)
#: a character in neither table
_NOT_GSM7 = re.compile(f"[^{re.escape(''.join(_GSM_COST))}]")


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM 03.38 basic or extension table."""
    return _NOT_GSM7.search(text) is None


def _gsm7_septets(text: str) -> bytes:
    """The unpacked septets of a text :func:`is_gsm7` accepts (one octet each)."""
    return text.translate(_SEPTETS).encode("ascii")


def septets(char: str) -> int:
    """Septets one GSM 03.38 character costs: 1 (basic table) or 2 (extension table)."""
    if char in GSM_BASIC_ENCODE_MAP:
        return 1
    if char in GSM_EXTENDED_ENCODE_MAP:
        return 2
    raise ValueError(f"{char!r} is not in the GSM 03.38 alphabet")


def utf16_units(char: str) -> int:
    """UTF-16 code units one character costs: 2 outside the Basic Multilingual Plane, else 1."""
    return 2 if ord(char) > 0xFFFF else 1


def data_coding_for(text: str) -> int:
    """The SMPP ``data_coding`` ``text`` is sent with: GSM-7 when it can be, else UCS-2."""
    return DATA_CODING_GSM7 if is_gsm7(text) else DATA_CODING_UCS2


def length(text: str) -> int:
    """The text's length in its encoding's units (septets for GSM-7, code units for UCS-2)."""
    return _units(text, is_gsm7(text))


def _units(text: str, gsm7: bool) -> int:
    """:func:`length`, the alphabet known."""
    if gsm7:
        return len(text.translate(_SEPTETS))
    return len(text.encode("utf-16-be", "surrogatepass")) // 2


@dataclass(frozen=True, slots=True)
class Part:
    """One ``submit_sm``'s worth of a message."""

    text: str  # the characters this part carries
    payload: bytes  # the ``short_message``: header (when concatenated) + encoded characters


@dataclass(frozen=True, slots=True)
class EncodedText:
    """A text encoded for SMPP: its ``data_coding`` and the parts to submit, in order."""

    data_coding: int
    length: int  # septets (GSM-7) or UTF-16 code units (UCS-2) of the whole text
    parts: tuple[Part, ...]

    @property
    def segments(self) -> int:
        """How many SMS the text costs."""
        return len(self.parts)

    @property
    def udhi(self) -> bool:
        """Whether the parts carry a user data header (``esm_class`` bit 6 must be set)."""
        return len(self.parts) > 1


def _chunks(text: str, cost: dict[str, int] | None, per_part: int) -> list[str]:
    """Split ``text`` on character boundaries into runs of at most ``per_part`` units.

    ``cost`` gives a character's units (None: UTF-16 units).
    """
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for char in text:
        size = cost[char] if cost is not None else utf16_units(char)
        if used + size > per_part:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += size
    if current:
        chunks.append("".join(current))
    return chunks


def split(text: str) -> list[str]:
    """The characters of each part ``text`` is sent as (one element when it fits one SMS)."""
    gsm7 = is_gsm7(text)
    return _split(text, gsm7, _units(text, gsm7))


def _split(text: str, gsm7: bool, units: int) -> list[str]:
    """:func:`split`, the alphabet and the whole text's units known."""
    if units <= (GSM7_SINGLE if gsm7 else UCS2_SINGLE):
        return [text]
    if gsm7:
        return _chunks(text, _GSM_COST, GSM7_PART)
    return _chunks(text, None, UCS2_PART)


def segment_count(text: str) -> int:
    """How many SMS ``text`` costs."""
    return len(split(text))


def concat_udh(ref: int, total: int, seq: int) -> bytes:
    """The 6-octet concatenation header for part ``seq`` (1-based) of ``total``."""
    if not (0 <= ref <= 0xFF and 1 <= seq <= total <= MAX_PARTS):
        raise ValueError(f"bad concatenation header: ref={ref} total={total} seq={seq}")
    return bytes((CONCAT_UDH_LENGTH - 1, IEI_CONCAT_8BIT, 3, ref, total, seq))


def encode_chars(text: str, data_coding: int) -> bytes:
    """Encode characters for ``short_message``: GSM 03.38 unpacked septets or UTF-16BE."""
    if data_coding == DATA_CODING_GSM7:
        if not is_gsm7(text):
            raise ValueError(f"{text!r} is not in the GSM 03.38 alphabet")
        return _gsm7_septets(text)
    return text.encode("utf-16-be")


def encode(text: str, ref: int = 0) -> EncodedText:
    """Encode ``text`` into the ``short_message`` payloads to submit, in order.

    ``ref`` is the 8-bit concatenation reference shared by the parts of one message; it only
    appears when the text needs more than one part. Raises ValueError when the text needs more
    than 255 parts.
    """
    gsm7 = is_gsm7(text)
    data_coding = DATA_CODING_GSM7 if gsm7 else DATA_CODING_UCS2
    whole = _gsm7_septets(text) if gsm7 else text.encode("utf-16-be")
    units = len(whole) if gsm7 else len(whole) // 2
    chunks = _split(text, gsm7, units)
    total = len(chunks)
    if total == 1:  # most messages: the whole text is the payload, encoded once
        return EncodedText(data_coding=data_coding, length=units, parts=(Part(text, whole),))
    if total > MAX_PARTS:
        raise ValueError(f"text needs {total} parts; at most {MAX_PARTS} can be concatenated")
    parts = tuple(
        Part(text=chunk, payload=concat_udh(ref, total, seq) + encode_chars(chunk, data_coding))
        for seq, chunk in enumerate(chunks, start=1)
    )
    return EncodedText(data_coding=data_coding, length=units, parts=parts)


def air_octets(payload: bytes, data_coding: int, udhi: bool) -> int:
    """Octets a ``short_message`` occupies as TP-User-Data on the air interface.

    UCS-2 and 8-bit data travel as they are. GSM-7 septets are packed 8 to 7 octets, and a user
    data header is padded with fill bits to a whole number of septets before them.
    """
    if data_coding != DATA_CODING_GSM7:
        return len(payload)
    header = payload[0] + 1 if udhi and payload else 0
    header_septets = math.ceil(header * 8 / 7)
    return math.ceil((header_septets + len(payload) - header) * 7 / 8)


@dataclass(frozen=True, slots=True)
class Concat:
    """Where one part belongs in a concatenated message."""

    ref: int
    total: int
    seq: int


def split_udh(payload: bytes) -> tuple[Concat | None, bytes]:
    """Separate a user data header from the message body.

    Returns the concatenation element when the header has one (8- or 16-bit reference; other
    elements such as port addressing are skipped) and the body after the header. Raises
    ValueError when the header is longer than the payload or its elements overrun it.
    """
    if not payload:
        raise ValueError("empty payload cannot carry a user data header")
    header_length = payload[0]
    if header_length + 1 > len(payload):
        raise ValueError(f"user data header of {header_length} octets overruns the payload")
    elements = payload[1 : header_length + 1]
    concat: Concat | None = None
    index = 0
    while index < len(elements):
        if index + 2 > len(elements):
            raise ValueError("truncated information element in the user data header")
        iei, size = elements[index], elements[index + 1]
        value = elements[index + 2 : index + 2 + size]
        if len(value) != size:
            raise ValueError(f"information element {iei:#04x} overruns the user data header")
        if iei == IEI_CONCAT_8BIT and size == 3:
            concat = Concat(ref=value[0], total=value[1], seq=value[2])
        elif iei == IEI_CONCAT_16BIT and size == 4:
            concat = Concat(ref=value[0] << 8 | value[1], total=value[2], seq=value[3])
        index += 2 + size
    return concat, payload[header_length + 1 :]


#: SMPP 3.4 data_coding values (section 5.2.19) with a Python codec
_SMPP_CODECS = {
    0x01: "ascii",
    0x03: "latin-1",
    0x06: "iso8859-5",
    0x07: "iso8859-8",
    0x08: "utf-16-be",
    0x0A: "iso2022-jp",
    0x0E: "euc-kr",
}


def decode(body: bytes, data_coding: int) -> str:
    """Decode an inbound message body; never raises (undecodable bytes become U+FFFD or ``?``).

    ``data_coding`` 0 is read as GSM 03.38. Values above 0x0F follow the GSM 03.38 data coding
    scheme groups some SMSCs pass through (general coding and 0xF0 message class: 7-bit, 8-bit
    or UCS-2). 8-bit data and encodings without a codec are read as Latin-1, byte for byte.
    """
    alphabet = _alphabet(data_coding)
    if alphabet == "gsm":
        return str(_GSM.decode(body, "replace")[0])
    if alphabet == "utf-16-be" and len(body) % 2:
        body = body[:-1]  # a stray odd octet cannot be a UTF-16 unit
    return body.decode(alphabet, "replace")


def _alphabet(data_coding: int) -> str:
    """The codec name (or ``gsm``) for a data_coding value."""
    if data_coding == DATA_CODING_GSM7:
        return "gsm"
    if data_coding <= 0x0F:
        return _SMPP_CODECS.get(data_coding, "latin-1")
    group = data_coding & 0xF0
    if group <= 0x70:  # general data coding (0x40..0x7F: marked for deletion): bits 3..2
        return ("gsm", "latin-1", "utf-16-be", "latin-1")[(data_coding >> 2) & 0x03]
    if group in (0xC0, 0xD0):  # message waiting indication, GSM 7-bit
        return "gsm"
    if group == 0xE0:  # message waiting indication, UCS-2
        return "utf-16-be"
    if group == 0xF0:  # message class: bit 2 chooses 8-bit over 7-bit
        return "latin-1" if data_coding & 0x04 else "gsm"
    return "latin-1"
