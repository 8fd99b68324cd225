"""Worst-case request bodies: how long one hostile request holds the event loop.

Every request is answered on the event loop, so a body that takes the API 20 s to validate
stops ``/health``, every other tenant and an in-process engine for 20 s. This builds the slowest
bodies of at most ``--max-bytes`` (the service's default limit, 256 KiB) that we know of (many
steps, arrays far over their maximum, many bad or unknown fields, deep nesting, NULs, long
strings), sends each through the ASGI app in-process (a SQLite store in a temporary directory,
one tenant, Basic auth), and reports per body: the median and slowest time per request, the
longest time the loop was held (a task that only yields measures the gaps between its turns),
and the size of the response. The target is under 10 ms for each.

    .venv/bin/python bench/validation.py                   # every body, 5 requests each
    .venv/bin/python bench/validation.py --runs 3 --max-bytes 262144 --only steps
    PYTHONPATH=OTHER_CHECKOUT/src .venv/bin/python bench/validation.py   # another checkout

A body whose first request takes longer than a second is sent only once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LIMIT = 262_144
TARGET_MS = 10.0

_ADDRESSES = (
    b'"to":{"type":"whatsapp","number":"447700900000"},'
    b'"from":{"type":"whatsapp","number":"447700900001"}'
)


def _fill(prefix: bytes, item: Callable[[int], bytes], suffix: bytes, limit: int) -> bytes:
    """``prefix`` + as many comma-separated ``item(i)`` as fit in ``limit`` bytes + ``suffix``."""
    parts = [prefix]
    size = len(prefix) + len(suffix)
    index = 0
    while True:
        piece = item(index)
        cost = len(piece) + (1 if index else 0)
        if size + cost > limit:
            break
        parts.append((b"," if index else b"") + piece)
        size += cost
        index += 1
    parts.append(suffix)
    return b"".join(parts)


def _message(content: bytes, extra: bytes = b"") -> bytes:
    return b"{" + _ADDRESSES + b',"message":{"content":' + content + b"}" + extra + b"}"


def _in_content(opening: bytes, item: Callable[[int], bytes], closing: bytes, limit: int) -> bytes:
    """A message whose content is ``opening``, many ``item``, ``closing``, filling ``limit``."""
    prefix = b"{" + _ADDRESSES + b',"message":{"content":' + opening
    return _fill(prefix, item, closing + b"}}", limit)


def _workflow(steps: bytes) -> bytes:
    return b'{"template":"failover","workflow":[' + steps + b"]}"


def _bad_step(index: int) -> bytes:
    """A step where every field is wrong in its own way."""
    return (
        b'{"to":{"type":"fax","number":7,"id":[],"x":1},"from":{"type":1},'
        b'"message":{"content":{"type":"nope","text":"","image":{"url":1},"template":'
        b'{"name":"","parameters":[1,2,3]},"custom":7},"viber_service_msg":{"ttl":1,'
        b'"category":"x"},"messenger":{"tag":""},"whatsapp":{"policy":"x","locale":"e"}},'
        b'"failover":{"expiry_time":1,"condition_status":"seen"},"client_ref":' + b"9" * 50 + b"}"
    )


def bodies(limit: int) -> dict[str, tuple[str, bytes]]:
    """name -> (path, body) of every worst case that fits in ``limit`` bytes; each is JSON
    (but for nesting deeper than a parser takes), only its content is hostile."""
    text_step = _message(b'{"type":"text","text":"hi"}')
    items = b'{"type":"custom","custom":{"items":['
    deep = (limit - len(_message(items + b"]}}"))) // 2
    steps = b'{"template":"failover","workflow":['
    cases = {
        "valid-2-steps": (
            "/v0.1/dispatch",
            _workflow(
                text_step[:-1]
                + b',"failover":{"expiry_time":600,"condition_status":"delivered"}},'
                + text_step
            ),
        ),
        "30000-empty-steps": ("/v0.1/dispatch", _workflow(b",".join([b"{}"] * 30_000))),
        "empty-steps": ("/v0.1/dispatch", _fill(steps, lambda i: b"{}", b"]}", limit)),
        "numbers-as-steps": ("/v0.1/dispatch", _fill(steps, lambda i: b"0", b"]}", limit)),
        "numbers-as-template-parameters": (
            "/v0.1/messages",
            _in_content(
                b'{"type":"template","template":{"name":"t","parameters":[',
                lambda i: b"0",
                b"]}}",
                limit,
            ),
        ),
        "10-steps-every-field-bad": (
            "/v0.1/dispatch",
            _workflow(b",".join(_bad_step(i) for i in range(10))),
        ),
        "unknown-fields": (
            "/v0.1/messages",
            _fill(text_step[:-1] + b",", _unknown, b"}", limit),
        ),
        "unknown-fields-in-content": (
            "/v0.1/messages",
            _in_content(b'{"type":"text","text":"hi",', _unknown, b"}", limit),
        ),
        "one-long-unknown-field": (
            "/v0.1/messages",
            _message(b'{"type":"text","text":"hi"}', b',"' + b"k" * (limit - 200) + b'":1'),
        ),
        "long-text": (
            "/v0.1/messages",
            _message(b'{"type":"text","text":"' + b"x" * (limit - 200) + b'"}'),
        ),
        "deep-nesting-in-custom": (
            "/v0.1/messages",
            _message(items + b"[" * deep + b"]" * deep + b"]}}"),
        ),
        "strings-in-custom": (
            "/v0.1/messages",
            _in_content(items, lambda i: b'"s"', b"]}}", limit),
        ),
        "strings-in-custom-nul-last": (
            "/v0.1/messages",
            _in_content(items, lambda i: b'"s"', b',"\\u0000"]}}', limit),
        ),
        "nul-strings-in-custom": (
            "/v0.1/messages",
            _in_content(items, lambda i: b'"\\u0000"', b"]}}", limit),
        ),
        "escaped-backslash-u0000-in-custom": (
            "/v0.1/messages",
            _in_content(items, lambda i: b'"\\\\u0000"', b"]}}", limit),
        ),
        "escaped-emoji-in-custom": (
            "/v0.1/messages",
            _in_content(items, lambda i: b'"\\ud83d\\ude00"', b"]}}", limit),
        ),
        "nul-keys-in-custom": (
            "/v0.1/messages",
            _in_content(
                b'{"type":"custom","custom":{', lambda i: b'"\\u0000%d":0' % i, b"}}", limit
            ),
        ),
    }
    return {name: case for name, case in cases.items() if len(case[1]) <= limit}


def _unknown(index: int) -> bytes:
    return b'"k%d":0' % index


@dataclass
class Result:
    """How one body fared."""

    name: str
    body_bytes: int
    status: int
    response_bytes: int
    median_ms: float
    slowest_ms: float
    longest_hold_ms: float
    runs: int


class LoopWatch:
    """The longest gap between turns of a task that does nothing but yield: the longest the
    event loop was held by anything else."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def start(self) -> None:
        """Start watching from zero."""
        self.longest = 0.0
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _request(app: Any, path: str, body: bytes, auth: bytes) -> tuple[int, int]:
    """Send one POST through the ASGI app; (status, response body bytes)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", auth),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0
    size = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(scope, receive, send)
    return status, size


async def measure(args: argparse.Namespace) -> list[Result]:
    """Every body through a fresh app; a Result each."""
    from cascade.api.app import create_app
    from cascade.clock import SystemClock
    from cascade.service import new_account
    from cascade.store.sqlite import SqliteStore

    cases = bodies(args.max_bytes)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteStore(Path(directory) / "cascade.db", synchronous="NORMAL")
        await store.open()
        try:
            clock = SystemClock()
            created = new_account(clock)
            await store.create_account(created.account)
            credentials = f"{created.account.api_key}:{created.api_secret}".encode()
            auth = b"Basic " + base64.b64encode(credentials)
            app = create_app(store, clock=clock, max_body_bytes=args.max_bytes)
            watch = LoopWatch()
            for name, (path, body) in cases.items():
                if args.only and not any(word in name for word in args.only):
                    continue
                times = []
                watch.start()
                await asyncio.sleep(0)  # the watcher's first turn
                for _ in range(args.runs):
                    await asyncio.sleep(0)
                    started = time.perf_counter()
                    status, size = await _request(app, path, body, auth)
                    times.append(time.perf_counter() - started)
                    if times[0] > 1.0:
                        break
                await asyncio.sleep(0)  # let the watcher see the end of the last request
                await watch.stop()
                result = Result(
                    name=name,
                    body_bytes=len(body),
                    status=status,
                    response_bytes=size,
                    median_ms=statistics.median(times) * 1000,
                    slowest_ms=max(times) * 1000,
                    longest_hold_ms=watch.longest * 1000,
                    runs=len(times),
                )
                results.append(result)
                _print(result)
        finally:
            await store.close()
    return results


def _print(result: Result) -> None:
    flag = "" if result.slowest_ms < TARGET_MS else "  over 10 ms"
    print(
        f"{result.name:36} {result.body_bytes:>9,} B  {result.status}  "
        f"{result.response_bytes:>10,} B  median {result.median_ms:9.2f} ms  "
        f"slowest {result.slowest_ms:9.2f} ms  hold {result.longest_hold_ms:9.2f} ms"
        f"  ({result.runs} runs){flag}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a body held the loop for 10 ms or more."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_LIMIT,
        help="body size limit (256 KiB, the default)",
    )
    parser.add_argument("--runs", type=int, default=5, help="requests per body (5)")
    parser.add_argument("--only", nargs="*", help="only bodies whose name holds one of these")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    import cascade

    print(f"cascade from {Path(cascade.__file__).parent}, bodies up to {args.max_bytes:,} bytes")
    results = asyncio.run(measure(args))
    if args.json:
        print(json.dumps([result.__dict__ for result in results], indent=2))
    return 0 if all(r.longest_hold_ms < TARGET_MS for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
