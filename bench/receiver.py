"""The benchmarks' webhook receiver, a process of its own: ``python bench/receiver.py --port P``.

It answers ``204`` to every POST (``200 ACK/Jasmin`` to a GET callback: the peers' DLR URLs)
over keep-alive HTTP/1.1 and notes, per request, when it came,
the ``message_uuid`` and ``status`` of its JSON body and its ``X-Cascade-Delivery-Id``; it keeps
the token and body of every 997th request (20 at most) for a signature check. ``GET /stats``
answers ``{"counts": {status: n}, "requests": n, "delivery_ids": distinct}`` and ``GET /dump``
the same with ``seen`` (``[time, message_uuid, status]`` per request) and ``samples``.

A bare protocol (no streams, no task per connection, uvloop when installed): it shares the two
cores with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from typing import Any

import harness

_UUID = re.compile(rb'"message_uuid":"([^"]+)"')
_STATUS = re.compile(rb'"status":"([a-z_]+)"')
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_TOKEN = re.compile(rb"(?i)\r\nauthorization:\s*Bearer\s+(\S+)")
_DELIVERY = re.compile(rb"(?i)\r\nx-cascade-delivery-id:\s*(\S+)")
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
#: the answer to a GET callback (the peers' DLR URLs): Jasmin counts a DLR thrown only when
#: its URL answers this body, and throws it again otherwise
ACK = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nACK/Jasmin"


class Seen:
    """What the receiver has been sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, str]] = []
        self.counts: Counter[str] = Counter()
        self.delivery_ids: set[bytes] = set()
        self.samples: list[dict[str, str]] = []

    def note(self, head: bytes, body: bytes) -> None:
        """One POST."""
        uuid = _UUID.search(body)
        status = _STATUS.search(body)
        state = status.group(1).decode() if status else "?"
        self.counts[state] += 1
        self.requests.append((time.time(), uuid.group(1).decode() if uuid else "?", state))
        delivery = _DELIVERY.search(head)
        if delivery:
            self.delivery_ids.add(delivery.group(1))
        if len(self.samples) < 20 and len(self.requests) % 997 == 1:
            token = _TOKEN.search(head)
            self.samples.append(
                {"token": token.group(1).decode() if token else "", "body": body.decode()}
            )

    def stats(self, dump: bool) -> dict[str, Any]:
        """The answer to ``GET /stats`` (or ``/dump``)."""
        report: dict[str, Any] = {
            "counts": dict(self.counts),
            "requests": len(self.requests),
            "delivery_ids": len(self.delivery_ids),
        }
        if dump:
            report["seen"] = self.requests
            report["samples"] = self.samples
        return report


def _json_answer(value: Any) -> bytes:
    body = json.dumps(value).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + (
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


class Receiver(asyncio.Protocol):
    """One connection."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        answers = []
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            match = _LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4 : end + 4 + length]
            buffer = buffer[end + 4 + length :]
            if head.startswith(b"GET /stats"):
                answers.append(_json_answer(self.seen.stats(dump=False)))
            elif head.startswith(b"GET /dump"):
                answers.append(_json_answer(self.seen.stats(dump=True)))
            else:
                self.seen.note(head, body)
                answers.append(ACK if head.startswith(b"GET ") else NO_CONTENT)
        self.buffer = buffer
        if answers:
            self.transport.write(b"".join(answers))


async def serve(port: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    harness.exit_on_signals()
    seen = Seen()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(seen), "127.0.0.1", port, backlog=1024)
    print(f"receiver listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    harness.run_loop(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
