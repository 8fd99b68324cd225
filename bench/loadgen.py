"""The Python load generator of the accept benchmark, used when ``wrk`` is not installed.

Run as its own process (``bench/accept.py`` starts it): ``--connections`` keep-alive HTTP/1.1
connections on raw asyncio streams (uvloop when available), each POSTing the body of
``--body-file`` with the bearer tokens of ``--tokens-file`` in turn, one request in flight per
connection, for ``--duration`` seconds. Then it stops sending and waits for every answer, so the
202s it counts can be compared exactly with the rows in the database. It writes the same JSON
summary as ``bench/accept.lua`` to ``--out`` and the ids of the 202s to ``--ids``.

It is slower than wrk (about 30-50 µs of CPU per request in the client, on the same 2 cores as
the server), so its figures are lower bounds; ``bench/accept.py`` says which generator ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: how long one request may take before the connection counts as failed
REQUEST_TIMEOUT = 10.0
#: the most times one connection reconnects after an error before it gives up
MAX_RECONNECTS = 5

_ID = re.compile(rb'_uuid":"([^"]+)"')


@dataclass
class Tally:
    """What all connections saw (one event loop, so plain counters suffice)."""

    sent: int = 0
    answered: int = 0
    in_window: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    ids: list[bytes] = field(default_factory=list)
    latencies_us: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(
        default_factory=lambda: {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a Content-Length: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    host: str, port: int, requests: list[bytes], offset: int, deadline: float, tally: Tally
) -> None:
    """One client connection: POST until the deadline, reconnecting a bounded number of times."""
    index = offset
    reconnects = 0
    while time.monotonic() < deadline and reconnects <= MAX_RECONNECTS:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), REQUEST_TIMEOUT
            )
        except (OSError, TimeoutError):
            tally.errors["connect"] += 1
            reconnects += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while True:
                started = time.monotonic()
                if started >= deadline:
                    return
                request = requests[index % len(requests)]
                index += 1
                tally.sent += 1
                writer.write(request)
                status, body = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT)
                done = time.monotonic()
                tally.answered += 1
                if done < deadline:
                    tally.in_window += 1
                tally.latencies_us.append(int((done - started) * 1e6))
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
                if status == 202:
                    match = _ID.search(body)
                    if match:
                        tally.ids.append(match.group(1))
        except TimeoutError:
            tally.errors["timeout"] += 1
            reconnects += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            tally.errors["read"] += 1
            reconnects += 1
        finally:
            writer.close()


def _percentile(ordered: list[int], pct: float) -> int:
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


async def run(
    args: argparse.Namespace, body: bytes, tokens: list[str]
) -> tuple[dict[str, object], list[bytes]]:
    """Drive the load; the JSON summary and the ids of the 202s."""
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    requests = [
        (
            f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for token in tokens
    ]
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.duration
    tasks = [
        asyncio.create_task(_connection(host, port, requests, i, deadline, tally))
        for i in range(args.connections)
    ]
    await asyncio.gather(*tasks)
    finished = time.monotonic()
    ordered = sorted(tally.latencies_us)
    failed = sum(tally.errors.values())
    summary: dict[str, object] = {
        "sent": tally.sent,
        "answered": tally.answered,
        "in_window": tally.in_window,
        "health_answers": 0,
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        # a request lost to a socket error may still have been stored
        "drained": failed == 0,
        "window_s": args.duration,
        "drain_s": finished - deadline,
        "socket_errors": tally.errors,
        "latency_us": {
            "mean": sum(ordered) / len(ordered) if ordered else 0.0,
            "max": ordered[-1] if ordered else 0,
            "p50": _percentile(ordered, 50),
            "p90": _percentile(ordered, 90),
            "p99": _percentile(ordered, 99),
            "p999": _percentile(ordered, 99.9),
        },
    }
    return summary, tally.ids


def main() -> None:
    """Parse the arguments, run, write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/v0.1/dispatch")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--tokens-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ids", required=True)
    args = parser.parse_args()
    body = Path(args.body_file).read_bytes()
    tokens = [t for t in Path(args.tokens_file).read_text().splitlines() if t]
    try:
        import uvloop
    except ImportError:
        summary, ids = asyncio.run(run(args, body, tokens))
    else:
        summary, ids = uvloop.run(run(args, body, tokens))
    Path(args.ids).write_bytes(b"".join(i + b"\n" for i in ids))
    Path(args.out).write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
