"""The SMPP link's write path: PDUs written in one turn of the event loop go out together."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cascade.channels.smpp.link import Link, LinkClosed


class FakeWriter:
    """Records every write the transport gets, and whether it was closed (and when)."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("transport refused the write")
        self.writes.append(data)
        self.events.append("write")

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.events.append("close")


def link(writer: Any) -> Link:
    return Link(asyncio.StreamReader(), writer)


async def test_pdus_written_in_one_turn_go_out_in_one_write_in_order() -> None:
    writer = FakeWriter()
    smpp = link(writer)
    for number in range(5):
        smpp.write(bytes([number]))
    assert writer.writes == []  # not yet: at the end of this turn
    await asyncio.sleep(0)
    assert writer.writes == [bytes([0, 1, 2, 3, 4])]
    smpp.write(b"\x05")
    await smpp.flush()
    await asyncio.sleep(0)
    assert writer.writes == [bytes([0, 1, 2, 3, 4]), b"\x05"]


async def test_concurrent_writers_share_one_write() -> None:
    writer = FakeWriter()
    smpp = link(writer)

    async def submit(number: int) -> None:
        smpp.write(bytes([number]))
        await smpp.flush()

    await asyncio.gather(*(submit(number) for number in range(10)))
    await asyncio.sleep(0)
    assert b"".join(writer.writes) == bytes(range(10))
    assert len(writer.writes) == 1


async def test_closing_sends_what_was_queued_first() -> None:
    writer = FakeWriter()
    smpp = link(writer)
    smpp.write(b"unbind_resp")
    smpp.close("unbound by the SMSC")
    assert writer.events == ["write", "close"]
    assert writer.writes == [b"unbind_resp"]
    await asyncio.sleep(0)
    assert writer.writes == [b"unbind_resp"]  # not twice
    with pytest.raises(LinkClosed):
        smpp.write(b"late")


async def test_a_refused_write_ends_the_link_and_fails_waiting_requests() -> None:
    writer = FakeWriter(fail=True)
    smpp = link(writer)
    response = smpp.expect(7)
    smpp.write(b"submit_sm")
    await asyncio.sleep(0)
    assert smpp.closed is not None
    assert "write failed" in smpp.closed
    with pytest.raises(LinkClosed):
        await response
