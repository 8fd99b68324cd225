"""Reassembly of concatenated inbound SMS: the parts held until the last one arrives.

A long MO message comes as several ``deliver_sm``, numbered either in a UDH
(:func:`cascade.channels.gsm.split_udh`) or in the SAR TLVs (:func:`sar_concat`);
:class:`InboundParts` keeps their bodies in memory, keyed by sender, recipient, reference and
part count, and gives them back in order once all have arrived. It holds no I/O, so it is kept
apart from the deliver_sm handling that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cascade.channels import gsm
from cascade.channels.receipts import (
    TLV_SAR_MSG_REF_NUM,
    TLV_SAR_SEGMENT_SEQNUM,
    TLV_SAR_TOTAL_SEGMENTS,
)


@dataclass
class _Parts:
    """The parts of one inbound concatenated message received so far."""

    created: float
    bodies: dict[int, bytes] = field(default_factory=dict)


#: what the parts of one message share: source, destination, reference, part count
PartsKey = tuple[str, str, int, int]


class InboundParts:
    """Parts of concatenated inbound messages, kept in memory until the last one arrives.

    Parts are answered as they arrive, so parts held here when the process stops are lost; the
    SMSC will not send them again. Incomplete messages are dropped after ``ttl`` seconds.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[PartsKey, _Parts] = {}

    def add(self, key: PartsKey, seq: int, body: bytes, now: float) -> list[bytes] | None:
        """Keep one part; returns every part's body in order once all have arrived."""
        entry = self._entries.setdefault(key, _Parts(created=now))
        entry.bodies[seq] = body
        total = key[3]
        if len(entry.bodies) < total:
            return None
        del self._entries[key]
        return [entry.bodies[number] for number in range(1, total + 1)]

    def restore(self, key: PartsKey, bodies: list[bytes], now: float) -> None:
        """Put a completed message's parts back (its last part will be delivered again)."""
        self._entries[key] = _Parts(created=now, bodies=dict(enumerate(bodies, start=1)))

    def expire(self, now: float) -> list[PartsKey]:
        """Drop messages whose first part is older than ``ttl``; returns their keys."""
        expired = [key for key, entry in self._entries.items() if now - entry.created > self.ttl]
        for key in expired:
            del self._entries[key]
        return expired

    def __len__(self) -> int:
        return len(self._entries)


def sar_concat(tlvs: Mapping[int, bytes]) -> gsm.Concat | None:
    """Concatenation from the SAR TLVs (0x020C/0x020E/0x020F), when all three are present."""
    ref, total, seq = (
        tlvs.get(TLV_SAR_MSG_REF_NUM),
        tlvs.get(TLV_SAR_TOTAL_SEGMENTS),
        tlvs.get(TLV_SAR_SEGMENT_SEQNUM),
    )
    if ref is None or total is None or seq is None:
        return None
    if not ref or len(total) != 1 or len(seq) != 1:
        raise ValueError("SAR TLVs have the wrong length")
    return gsm.Concat(ref=int.from_bytes(ref, "big"), total=total[0], seq=seq[0])
