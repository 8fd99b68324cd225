"""GSM 03.38 / UCS-2 detection, counting, splitting with concatenation headers, and decoding."""

from __future__ import annotations

import pytest
from aiosmpplib.codec import GSM_BASIC_ENCODE_MAP, GSM_EXTENDED_ENCODE_MAP, GSM7BitCodec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cascade.channels import gsm

EXTENSION = "^{}\\[~]|€\f"


@pytest.mark.parametrize(
    ("text", "gsm7"),
    [
        ("Hello, world!", True),
        ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà", True),
        (EXTENSION, True),
        ("line\nbreak\r", True),
        ("ç", False),  # only the capital is in the basic table
        ("Привет", False),
        ("emoji 😀", False),
        ("\x1b", False),  # a bare escape is not a character
        ("", True),
    ],
)
def test_is_gsm7(text: str, gsm7: bool) -> None:
    """Characters of the basic and extension tables are GSM-7, anything else is not."""
    assert gsm.is_gsm7(text) is gsm7
    assert gsm.data_coding_for(text) == (gsm.DATA_CODING_GSM7 if gsm7 else gsm.DATA_CODING_UCS2)


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("abc", 3),
        ("€", 2),
        ("a{b}", 6),
        (EXTENSION, 20),
        ("Ж", 1),
        ("😀", 2),
        ("a😀", 3),
    ],
)
def test_length_counts_extension_septets_and_surrogate_pairs(text: str, units: int) -> None:
    """Extension characters cost two septets; astral characters two UTF-16 units."""
    assert gsm.length(text) == units


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),
        ("€" * 81, 2),
        ("a" * 158 + "€", 1),
        ("a" * 159 + "€", 2),
        ("Ж" * 70, 1),
        ("Ж" * 71, 2),
        ("Ж" * 134, 2),
        ("Ж" * 135, 3),
        ("😀" * 35, 1),
        ("😀" * 36, 2),
    ],
)
def test_segment_count(text: str, segments: int) -> None:
    """160/153 septets, 70/67 units per SMS, whole characters only."""
    assert gsm.segment_count(text) == segments
    assert gsm.encode(text).segments == segments


def test_escape_pair_moves_whole_to_the_next_part() -> None:
    """A part with one septet left does not take half of an extension character."""
    encoded = gsm.encode("a" * 152 + "€" + "b" * 10, ref=1)
    first, second = (gsm.split_udh(part.payload)[1] for part in encoded.parts)
    assert first == b"a" * 152
    assert second.startswith(b"\x1b\x65")


def test_surrogate_pair_moves_whole_to_the_next_part() -> None:
    """A UCS-2 part with one unit left does not take half of a surrogate pair."""
    encoded = gsm.encode("Ж" * 66 + "😀" + "Ж" * 5, ref=1)
    first, second = (gsm.split_udh(part.payload)[1] for part in encoded.parts)
    assert first.decode("utf-16-be") == "Ж" * 66
    assert second.decode("utf-16-be") == "😀" + "Ж" * 5


def test_single_part_has_no_header() -> None:
    """A text that fits one SMS is sent as is, without a user data header."""
    encoded = gsm.encode("hi €", ref=9)
    assert encoded.udhi is False
    assert encoded.parts[0].payload == b"hi \x1b\x65"


def test_parts_carry_the_concatenation_header() -> None:
    """Each part starts 05 00 03 ref total seq."""
    encoded = gsm.encode("x" * 400, ref=0x42)
    assert encoded.udhi is True
    assert [part.payload[:6] for part in encoded.parts] == [
        bytes([5, 0, 3, 0x42, 3, seq]) for seq in (1, 2, 3)
    ]
    assert [len(part.payload) for part in encoded.parts] == [159, 159, 100]


def test_ucs2_payload_is_utf16_big_endian() -> None:
    """UCS-2 parts are UTF-16BE, astral characters as surrogate pairs."""
    encoded = gsm.encode("Ж😀")
    assert encoded.data_coding == gsm.DATA_CODING_UCS2
    assert encoded.parts[0].payload == b"\x04\x16\xd8\x3d\xde\x00"


def test_too_many_parts_are_refused() -> None:
    """An 8-bit header numbers at most 255 parts."""
    with pytest.raises(ValueError, match="255"):
        gsm.encode("a" * (153 * 255 + 1))


@pytest.mark.parametrize(
    ("payload", "udhi", "data_coding", "octets"),
    [
        (b"a" * 160, False, gsm.DATA_CODING_GSM7, 140),
        (bytes([5, 0, 3, 1, 2, 1]) + b"a" * 153, True, gsm.DATA_CODING_GSM7, 140),
        (bytes([5, 0, 3, 1, 2, 1]) + b"a" * 154, True, gsm.DATA_CODING_GSM7, 141),
        (bytes([5, 0, 3, 1, 2, 1]) + b"\x00" * 134, True, gsm.DATA_CODING_UCS2, 140),
        (b"", False, gsm.DATA_CODING_GSM7, 0),
    ],
)
def test_air_octets(payload: bytes, udhi: bool, data_coding: int, octets: int) -> None:
    """GSM-7 is measured packed, with the header padded to a septet boundary."""
    assert gsm.air_octets(payload, data_coding, udhi) == octets


@pytest.mark.parametrize(
    ("payload", "concat", "body"),
    [
        (bytes([5, 0, 3, 7, 3, 2]) + b"abc", gsm.Concat(7, 3, 2), b"abc"),
        (bytes([6, 8, 4, 0x12, 0x34, 2, 1]) + b"x", gsm.Concat(0x1234, 2, 1), b"x"),
        (
            bytes([11, 5, 4, 0x0B, 0x84, 0x23, 0xF0, 0, 3, 9, 2, 2]) + b"y",
            gsm.Concat(9, 2, 2),
            b"y",
        ),
        (bytes([4, 5, 2, 0, 1]) + b"z", None, b"z"),
    ],
)
def test_split_udh(payload: bytes, concat: gsm.Concat | None, body: bytes) -> None:
    """8- and 16-bit references are read wherever they sit in the header."""
    assert gsm.split_udh(payload) == (concat, body)


@pytest.mark.parametrize(
    "payload",
    [b"", bytes([9, 0, 3, 1]), bytes([5, 0, 9, 1, 2, 1]), bytes([1, 0])],
)
def test_split_udh_refuses_overruns(payload: bytes) -> None:
    """A header longer than its payload, or an element longer than its header, is refused."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        gsm.split_udh(payload)


@pytest.mark.parametrize(
    ("body", "data_coding", "text"),
    [
        (b"\x00\x1b\x65Hi", 0x00, "@€Hi"),
        (b"\x80", 0x00, "?"),
        (b"caf\xe9", 0x03, "café"),
        (b"ascii", 0x01, "ascii"),
        ("Жж".encode("utf-16-be"), 0x08, "Жж"),
        ("Ж".encode("utf-16-be") + b"\x04", 0x08, "Ж"),
        (b"\xd8\x3d", 0x08, "\ufffd"),
        (b"Hi\x00", 0xF0, "Hi@"),
        (b"\xe9", 0xF4, "é"),
        ("Ж".encode("utf-16-be"), 0x18, "Ж"),
        (b"\xe9", 0x04, "é"),
        (b"\xe9", 0x0C, "é"),
    ],
)
def test_decode(body: bytes, data_coding: int, text: str) -> None:
    """Inbound bodies decode by data_coding and never raise."""
    assert gsm.decode(body, data_coding) == text


GSM_ALPHABET = "".join(GSM_BASIC_ENCODE_MAP) + "".join(GSM_EXTENDED_ENCODE_MAP)
#: GSM-only texts (often long enough for GSM-7 parts), texts dense in extension characters or
#: astral characters (where part boundaries fall on pairs), and mixed texts (UCS-2)
TEXTS = st.one_of(
    st.text(alphabet=GSM_ALPHABET, max_size=200),
    st.text(alphabet=GSM_ALPHABET, min_size=150, max_size=700),
    st.text(alphabet="a€{|", min_size=70, max_size=500),
    st.text(alphabet="Ж😀🇬", min_size=30, max_size=300),
    st.text(alphabet=GSM_ALPHABET + "ЖжçЁ😀🇬🇧\u00a0\u4e2d", max_size=700),
)


def _bodies(encoded: gsm.EncodedText) -> list[bytes]:
    """The message octets of each part, headers removed."""
    if not encoded.udhi:
        return [encoded.parts[0].payload]
    return [gsm.split_udh(part.payload)[1] for part in encoded.parts]


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, ref=st.integers(0, 255))
def test_parts_join_back_to_the_text(text: str, ref: int) -> None:
    """Joining the parts (texts or decoded octets) gives back the text exactly."""
    encoded = gsm.encode(text, ref)
    assert "".join(part.text for part in encoded.parts) == text
    joined = b"".join(_bodies(encoded))
    assert gsm.decode(joined, encoded.data_coding) == text
    assert encoded.segments == gsm.segment_count(text)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, ref=st.integers(0, 255))
def test_no_part_exceeds_140_octets(text: str, ref: int) -> None:
    """Every part fits one SMS on the air and numbers itself correctly."""
    encoded = gsm.encode(text, ref)
    for seq, part in enumerate(encoded.parts, start=1):
        assert gsm.air_octets(part.payload, encoded.data_coding, encoded.udhi) <= 140
        assert len(part.payload) <= 160
        if encoded.udhi:
            concat, _ = gsm.split_udh(part.payload)
            assert concat == gsm.Concat(ref, encoded.segments, seq)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
@example(text="a" * 152 + "€" * 200)
@example(text="Ж" * 66 + "😀" * 100)
def test_no_part_splits_an_escape_or_a_surrogate_pair(text: str) -> None:
    """Each part decodes on its own: no dangling ESC, no lone surrogate."""
    encoded = gsm.encode(text)
    for part, body in zip(encoded.parts, _bodies(encoded), strict=True):
        if encoded.data_coding == gsm.DATA_CODING_GSM7:
            decoded = GSM7BitCodec().decode(body, "strict")[0]  # raises on a trailing ESC
        else:
            decoded = body.decode("utf-16-be")  # strict: raises on a split surrogate pair
        assert decoded == part.text


def _codec_length(text: str) -> int:
    """The text's units counted a character at a time (the reference the fast count must give)."""
    if GSM7BitCodec.is_gsm_text(text):
        return sum(gsm.septets(char) for char in text)
    return sum(gsm.utf16_units(char) for char in text)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS | st.text(max_size=40))
@example(text="")
@example(text="\x1b")  # the escape itself is in neither table
@example(text="a" * 160)
@example(text="a" * 159 + "€")
@example(text="Ж" * 70)
@example(text="Ж" * 69 + "😀")
def test_alphabet_length_and_septets_agree_with_the_codec(text: str) -> None:
    """The C-speed alphabet check, unit count and GSM-7 septets equal aiosmpplib's codec."""
    assert gsm.is_gsm7(text) == bool(GSM7BitCodec.is_gsm_text(text))
    assert gsm.length(text) == _codec_length(text)
    encoded = gsm.encode(text)
    assert encoded.length == _codec_length(text)
    if gsm.is_gsm7(text):
        joined = b"".join(_bodies(encoded))
        assert joined == GSM7BitCodec().encode(text)[0]
        assert gsm.encode_chars(text, gsm.DATA_CODING_GSM7) == joined
