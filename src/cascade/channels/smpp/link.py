"""One bound TCP connection to an SMSC: PDUs out in batches, responses back to their requests.

The link is the part of the session that owns the socket and nothing else: it queues PDUs and
hands them to the transport in one write, matches responses to requests by sequence number,
and fails every waiting request when it closes. Binding, reading and keeping it alive are the
session's (:mod:`cascade.channels.smpp.session`); keeping the link apart lets it be tested on a
bare stream.
"""

from __future__ import annotations

import asyncio

from cascade.channels.smpp.framing import Pdu


class LinkClosed(Exception):
    """The TCP connection to the SMSC ended; the message says why."""


class Link:
    """One bound TCP connection: writes PDUs and matches responses to requests.

    PDUs are queued and handed to the socket together, in the order they were written, by a
    callback that runs once the event loop has run the callbacks already due: a batch of
    submits (or of ``deliver_sm_resp`` answering a batch of receipts) costs one ``send``
    system call instead of one each, on this side and at the SMSC.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Pdu]] = {}
        self.closed: str | None = None
        self._drain = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._queued: list[bytes] = []

    def write(self, pdu: bytes) -> None:
        """Queue a PDU for the socket; raises LinkClosed if the link has ended."""
        if self.closed is not None:
            raise LinkClosed(self.closed)
        if not self._queued:
            self._loop.call_soon(self._send_queued)
        self._queued.append(pdu)

    def _send_queued(self) -> None:
        """Hand every queued PDU to the transport in one write."""
        if not self._queued:
            return
        data = b"".join(self._queued)
        self._queued.clear()
        try:
            self.writer.write(data)
        except Exception as exc:  # the transport refused it: the link is no use any more
            self.close(f"write failed: {exc!r}")

    async def flush(self) -> None:
        """Wait while the socket is behind (flow control). PDUs still queued go out a moment
        later; if they fill the socket, the next flush waits for it."""
        async with self._drain:
            await self.writer.drain()

    def expect(self, sequence: int) -> asyncio.Future[Pdu]:
        """A future for the response to request ``sequence``."""
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self.pending[sequence] = future
        return future

    def resolve(self, pdu: Pdu) -> bool:
        """Hand a response to its waiting request; False when nobody waits for it."""
        future = self.pending.pop(pdu.sequence, None)
        if future is None or future.done():
            return False
        future.set_result(pdu)
        return True

    def close(self, reason: str) -> None:
        """End the link; requests still waiting fail with LinkClosed."""
        if self.closed is not None:
            return
        self.closed = reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(LinkClosed(reason))
        self.pending.clear()
        self._send_queued()  # queued before the close: out before the connection closes
        self.writer.close()
