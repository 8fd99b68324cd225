"""In-process Messenger lifecycles, for instruction counts that load cannot move.

Everything of ``bench/messenger.py`` in one process and one event loop (uvloop): the app of
``cascade serve`` (``runtime.build_app``, engine in-process, SQLite) on uvicorn on 127.0.0.1, the
lean Graph peer (``messenger.LeanGraph``: answers each send, posts the signed
``message_deliveries`` callbacks in batches of 50 to ``/channels/messenger``), a lean status
webhook receiver, and the clients that POST the messages (16 keep-alive connections, one
recipient per message). It waits for the ``delivered`` webhook of each message.

Run it under callgrind at two sizes and divide the difference of the instruction totals by the
difference of the sizes: start-up and warm-up cancel out, and what remains is the instructions
per message of the whole path (accept, Send API request, callback intake, both status webhooks,
and the peers' share, the same for every tree), repeatable whatever else the machine is doing.
It needs the repository root on ``sys.path`` (it borrows the tests' tenant)::

    for n in 400 1200; do PYTHONPATH=src:. valgrind --tool=callgrind \\
        --callgrind-out-file=/dev/null .venv/bin/python bench/messenger_lifecycle.py $n 2>&1 \\
        | grep Collected
    done

Without valgrind it prints the CPU per message of the whole process.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import enginelib as lib
import httptools
import messenger
import uvloop
from tests.channels.test_linked_e2e import serving
from tests.conftest import make_tenant

from cascade.config import Settings
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.log import configure_logging
from cascade.runtime import build_app, tune_gc
from cascade.sealing import Sealer
from cascade.store.sqlite import SqliteStore

CONNECTIONS = 16
CALLBACK_BATCH = 50
WARM_UP = 100


class _Receiver(asyncio.Protocol):
    """One connection of the status webhook receiver: answers 204, counts ``delivered``."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if b'"status":"delivered"' in b"".join(self.body):
            self.counts["delivered"] += 1
        self.body = []
        self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


async def main(count: int) -> None:
    """Send ``WARM_UP`` then ``count`` messages end to end; print the CPU per message."""
    loop = asyncio.get_running_loop()
    workdir = Path(tempfile.mkdtemp(prefix="cascade-messenger-lifecycle-"))
    db = workdir / "cascade.db"
    key = Sealer.generate_key()
    counts = {"delivered": 0}
    receiver = await loop.create_server(lambda: _Receiver(counts), "127.0.0.1", 0)
    receiver_port = receiver.sockets[0].getsockname()[1]
    listener = _listener()
    cascade_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    graph = messenger.LeanGraph(cascade_url + "/channels/messenger", CALLBACK_BATCH)
    graph_server = await loop.create_server(lambda: messenger._LeanGraph(graph), "127.0.0.1", 0)
    graph_port = graph_server.sockets[0].getsockname()[1]
    runner = asyncio.ensure_future(graph.run())

    store = SqliteStore(db, synchronous="FULL", sealer=Sealer(key))
    await store.open()
    try:
        tenant = await make_tenant(store)
        await store.update_account(
            tenant.account.id, sandbox=False, status_url=f"http://127.0.0.1:{receiver_port}/s"
        )
        await store.add_channel_link(
            ChannelLink(
                id=str(uuid.uuid4()),
                account_id=tenant.account.id,
                channel=LinkedChannel.MESSENGER,
                address=messenger.PAGE,
                credentials={
                    "page_access_token": messenger.PAGE_TOKEN,
                    "app_secret": messenger.APP_SECRET,
                    "verify_token": "bench-verify",
                },
                created_at=time.time(),
            )
        )
    finally:
        await store.close()
    settings = Settings(
        database_url=f"sqlite:///{db}",
        sqlite_synchronous="FULL",
        channel_key=key,  # type: ignore[arg-type]
        public_url=cascade_url,
        credentials_file=workdir / "credentials",
        graph_base_url=f"http://127.0.0.1:{graph_port}",
        log_level="warning",
    )
    token = tenant.token()
    body = (
        b'{"to":{"type":"messenger","id":"%s"},"from":{"type":"messenger","id":"%s"},'
        b'"message":{"content":{"type":"text","text":"Your parcel arrives today."},'
        b'"messenger":{"category":"update"}}}'
        % (messenger.PSID_MARK.encode(), messenger.PAGE.encode())
    )
    port = listener.getsockname()[1]
    configure_logging(settings.log_level, "json")  # as serve does
    tune_gc()
    try:
        async with serving(build_app(settings), listener):
            await _round(port, token, body, WARM_UP, counts)
            started = time.process_time()
            await _round(port, token, body, count, counts)
            used = time.process_time() - started
    finally:
        runner.cancel()
        graph_server.close()
        receiver.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{count} messages: {used / count * 1e6:,.0f} µs CPU per message (one process)")


async def _round(port: int, token: str, body: bytes, count: int, counts: dict[str, int]) -> None:
    """Accept ``count`` messages and wait for their ``delivered`` webhooks."""
    target = counts["delivered"] + count
    posted = await lib.post_many_async(
        port, token, body, count, CONNECTIONS, 0.0, lib.MESSAGES_PATH
    )
    if len(posted.accepted) != count:
        raise SystemExit(posted.line(count))
    deadline = time.monotonic() + 600
    while counts["delivered"] < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {counts['delivered']} of {target} delivered")
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
