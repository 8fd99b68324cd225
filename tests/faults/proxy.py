"""A TCP proxy on loopback that can cut the line: what a database restart or a network
partition looks like to the client.

It forwards every connection to one target. ``cut()`` closes every open connection (both sides
see a reset, as when a server process goes away) and refuses new ones by closing them as soon
as they are accepted; ``stall()`` keeps every connection open but forwards nothing more (a
peer gone silent: a half-open connection, a frozen server); ``restore()`` forwards again.
``lose_answer_to(marker)`` lets the next request holding ``marker`` reach the server and drops
what the server answers on that connection before cutting it (a database that committed as
its line broke). It does not simulate a slow link or packet loss.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class _Line:
    """One proxied connection: both ends, and whether its answers are being dropped."""

    ends: tuple[asyncio.StreamWriter, ...] = ()
    deaf: bool = False


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to a target, until told to cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.refused = 0
        self._cut = False
        self._stalled = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        #: the next request holding this loses its answer (lose_answer_to)
        self._marker: bytes | None = None
        self._cut_all_after_marker = False

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until restored."""
        self._cut = True
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    def stall(self) -> None:
        """Keep every connection open and accept new ones, but forward nothing until restored
        (what was sent meanwhile is lost)."""
        self._stalled = True

    def lose_answer_to(self, marker: bytes, *, cut_all: bool = False) -> None:
        """Forward the next request holding ``marker`` (e.g. b"COMMIT"), drop what the server
        answers on its connection and cut that connection 0.3 s later (the server has acted
        by then); with ``cut_all``, cut everything then, as :meth:`cut` does."""
        self._marker = marker
        self._cut_all_after_marker = cut_all

    def restore(self) -> None:
        """Forward again, and new connections too."""
        self._cut = False
        self._stalled = False

    async def close(self) -> None:
        """Stop listening and drop everything."""
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        if self._cut:  # cut while connecting
            _reset(writer)
            _reset(up_writer)
            return
        self._writers.update((writer, up_writer))
        line = _Line((writer, up_writer))
        for source, sink, answers in ((reader, up_writer, False), (up_reader, writer, True)):
            pipe = asyncio.create_task(self._pipe(source, sink, line, answers))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, line: _Line, answers: bool
    ) -> None:
        """Copy one direction until either side closes (dropping what comes while stalled, and
        the answers of a line that lost them)."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if self._stalled or (answers and line.deaf):
                    continue
                if not answers and self._marker is not None and self._marker in data:
                    self._marker = None
                    line.deaf = True
                    asyncio.get_running_loop().call_later(0.3, self._cut_line, line)
                sink.write(data)
                await sink.drain()
        _reset(sink)

    def _cut_line(self, line: _Line) -> None:
        """End a line that lost its answer (and every line, when asked to)."""
        if self._cut_all_after_marker:
            self.cut()
        for end in line.ends:
            _reset(end)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once, without waiting for what is buffered."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
