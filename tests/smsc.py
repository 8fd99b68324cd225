"""The project's test SMSC: Cascade's local SMSC (``cascade.devtools.smsc``) scripted per
destination, with the faults the tests need.

:class:`LoopbackSmsc` is :class:`cascade.devtools.smsc.Smsc` (smpp34 behind a relay that checks
binds, receipts in the Appendix B format with TLVs, every submit and deliver_sm recorded) on a
free loopback port, plus what only tests use:

* faults: :meth:`LoopbackSmsc.sever` drops every connection at once (a crash, no unbind),
  :meth:`LoopbackSmsc.restart` also stops listening for a while and starts a fresh smpp34
  server (``smpp34.Server.stop`` alone keeps bound sessions alive), with ``reset_ids`` counting
  message ids from 1000 again as SMSCs that keep no state do, and clearing
  :attr:`LoopbackSmsc.flowing` makes the SMSC hang (connections stay open, nothing answers);
* vendor statuses: smpp34 answers a status it does not know (the vendor range 0x400-0x4FF) as
  ``ESME_RSYSERR``, so such a reject goes out as ``ESME_RUNKNOWNERR`` and the relay writes the
  vendor status into that ``submit_sm_resp``.

What each ``submit_sm`` gets is a :class:`Behaviour`, chosen by destination number (or
:attr:`LoopbackSmsc.default`): accept and send a receipt with a given state after a delay,
the receipt first and the response after, a receipt without the optional fields, a reject
with any status, throttling the first N submits, no answer at all, or a dropped connection.
Setting :attr:`LoopbackSmsc.min_gap` makes it a gateway enforcing its quota as a minimum gap
between submits (Jasmin): a submit closer than that to the last accepted one is answered
``ESME_RTHROTTLED``. MO messages, single or in parts (UDH or SAR TLVs), are sent with
:meth:`LoopbackSmsc.deliver_mo`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import smpp34
from aiosmpplib.codec import GSM7BitCodec

from cascade.devtools import smsc as core
from cascade.devtools.smsc import Delivered, Submitted

ESME_RTHROTTLED = 0x58
ESME_RUNKNOWNERR = 0xFF
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F


@dataclass
class Behaviour(core.Behaviour):
    """What the SMSC does with a submit_sm to one destination: the receipt (as the local
    SMSC's, but 20 ms after the answer by default) or a fault."""

    receipt_delay: float = 0.02
    reject: int | None = None  # answer with this command_status
    throttle: int = 0  # answer N submits with ESME_RTHROTTLED ...
    throttle_after: int = 0  # ... after accepting this many
    silent: bool = False  # hold the submit unanswered (see LoopbackSmsc.answer_held)
    drop_connection: bool = False  # sever every connection instead of answering


class LoopbackSmsc(core.Smsc):
    """A scripted SMSC on 127.0.0.1 (see the module doc)."""

    default: Behaviour

    def __init__(
        self,
        *,
        credentials: dict[str, str] | None = None,
        hex_ids: bool = False,
        receipt_tlvs: bool = True,
    ) -> None:
        super().__init__(
            credentials=credentials,
            default=Behaviour(),
            hex_ids=hex_ids,
            receipt_tlvs=receipt_tlvs,
        )
        self.behaviours: dict[str, Behaviour] = {}
        self._seen: dict[str, int] = {}
        #: seconds a submit must come after the last accepted one (0: any spacing)
        self.min_gap = 0.0
        self._last_accepted = -float("inf")
        #: while cleared, the relay holds what clients send (a hung SMSC); set by default
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._held: list[smpp34.SubmitSmEvent] = []
        self._vendor_statuses: list[int] = []

    # -- faults ----------------------------------------------------------------------------

    async def restart(self, down_for: float = 0.2, *, reset_ids: bool = False) -> None:
        """Crash (no unbind), refuse connections for ``down_for`` seconds, come back fresh;
        with ``reset_ids`` the message ids start from 1000 again."""
        await self._stop_front()
        await self._stop_backend(2.0)
        self._sessions.clear()
        self._held.clear()
        if reset_ids:
            self._ids = itertools.count(1000)
        await asyncio.sleep(down_for)
        await self.start()

    def answer_held(self) -> None:
        """Accept the submits held by ``silent`` behaviours, in the order they came."""
        held, self._held = self._held, []
        for event in held:
            for submit in self.submits:
                if submit.status is None and submit.destination_addr == event.destination_addr:
                    submit.message_id, _ = self._next_id()
                    submit.status = 0
                    event.accept(submit.message_id)
                    break

    async def _forwarding(self) -> None:
        await self.flowing.wait()

    def _response_status(self, command_id: int, status: int) -> int:
        if command_id == 0x80000004 and status == ESME_RUNKNOWNERR and self._vendor_statuses:
            return self._vendor_statuses.pop(0)
        return status

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``condition()`` holds; fails the test after ``within`` seconds."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {within}s")
            await asyncio.sleep(0.005)

    def answered(self, status: int | None = 0) -> list[Submitted]:
        """Submits answered with ``status`` (None: not answered)."""
        return [submit for submit in self.submits if submit.status == status]

    # -- scripted submits ------------------------------------------------------------------

    async def _on_submit(self, event: smpp34.SubmitSmEvent) -> None:
        behaviour = self.behaviours.get(event.destination_addr, self.default)
        submit = self._submitted(event)
        if behaviour.drop_connection:
            self._held.append(event)
            self.sever()
            return
        if behaviour.silent:
            self._held.append(event)
            return
        seen = self._seen.get(event.destination_addr, 0)
        self._seen[event.destination_addr] = seen + 1
        arrived = time.monotonic()
        too_close = arrived - self._last_accepted < self.min_gap
        if too_close or (
            behaviour.throttle_after <= seen < behaviour.throttle_after + behaviour.throttle
        ):
            submit.status = ESME_RTHROTTLED
            event.reject(ESME_RTHROTTLED)
            return
        if behaviour.reject is not None:
            submit.status = behaviour.reject
            if behaviour.reject > 0xFF:
                self._vendor_statuses.append(behaviour.reject)
                event.reject(ESME_RUNKNOWNERR)
            else:
                event.reject(behaviour.reject)
            return
        self._last_accepted = arrived
        await self._accept(event, submit, behaviour)

    # -- MO messages -----------------------------------------------------------------------

    async def deliver_mo(
        self,
        source: str,
        destination: str,
        text: str,
        *,
        split: Literal["udh", "sar"] | None = None,
        chars_per_part: int = 10,
        reference: int = 0x2A,
    ) -> list[Delivered]:
        """Send an MO message, in parts of ``chars_per_part`` characters when ``split``."""
        gsm = GSM7BitCodec.is_gsm_text(text)
        data_coding = 0 if gsm else 8

        def encode(chunk: str) -> bytes:
            return bytes(GSM7BitCodec().encode(chunk)[0]) if gsm else chunk.encode("utf-16-be")

        chunks = [text] if split is None else _chunks(text, chars_per_part)
        records = []
        for seq, chunk in enumerate(chunks, start=1):
            payload = encode(chunk)
            esm_class = 0
            tlvs: list[smpp34.Tlv] = []
            if split == "udh":
                payload = bytes([5, 0, 3, reference, len(chunks), seq]) + payload
                esm_class = 0x40
            elif split == "sar":
                tlvs = [
                    smpp34.Tlv(TLV_SAR_MSG_REF_NUM, reference.to_bytes(2, "big")),
                    smpp34.Tlv(TLV_SAR_TOTAL_SEGMENTS, bytes([len(chunks)])),
                    smpp34.Tlv(TLV_SAR_SEGMENT_SEQNUM, bytes([seq])),
                ]
            record = Delivered(kind="mo", short_message=payload)
            await self._deliver(
                record,
                source_addr=source,
                destination_addr=destination,
                esm_class=esm_class,
                data_coding=data_coding,
                tlvs=tlvs,
            )
            records.append(record)
        return records


def _chunks(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]
