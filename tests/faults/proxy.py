"""A TCP proxy on loopback that can cut the line: what a database restart or a network
partition looks like to the client.

It forwards every connection to one target. ``cut()`` closes every open connection (both sides
see a reset, as when a server process goes away) and refuses new ones by closing them as soon
as they are accepted; ``stall()`` keeps every connection open but forwards nothing more (a
peer gone silent: a half-open connection, a frozen server); ``restore()`` forwards again. It
does not simulate a slow link or packet loss.
"""

from __future__ import annotations

import asyncio
import contextlib


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
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction until either side closes (dropping what comes while stalled)."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if self._stalled:
                    continue
                sink.write(data)
                await sink.drain()
        _reset(sink)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once, without waiting for what is buffered."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
