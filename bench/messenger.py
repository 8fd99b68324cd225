"""End-to-end Messenger over the Graph API: HTTP accept -> Send API -> delivery callback ->
``delivered`` status webhook.

Three processes besides this one, all on 127.0.0.1, all stopped in a ``finally``:

* the fake Graph API of the test tree (``tests/peers/graph.py``, run by ``bench/messenger.py
  graph``): checks each send's page token and body, answers with a new ``m_...`` id, and posts
  a ``message_deliveries`` callback signed with the page's app secret (``X-Hub-Signature-256``)
  to Cascade's ``/channels/messenger``; recipients never read;
* a webhook receiver (``bench/receiver.py``): answers 204, notes each status webhook;
* ``cascade serve`` (engine in-process) over a fresh SQLite file: a live account with one
  linked page (``cascade channel add messenger``), ``CASCADE_GRAPH_BASE_URL`` on the fake, the
  account's status URL on the receiver.

This process POSTs ``--n`` Messenger messages (``POST /v0.1/messages``) from ``--connections``
keep-alive clients and waits for a ``delivered`` webhook for each. It reports messages/s end to
end (first request -> last ``delivered`` webhook), the latency p50/p99 (202 -> webhook), CPU
µs per message of each process, and the machine's other load.

    .venv/bin/python bench/messenger.py                # 10,000 messages
    .venv/bin/python bench/messenger.py --n 2000 --json out.json

``--processes``, ``--serve-jobs`` and ``--worker-jobs`` choose the layout (each process's CPU is
reported); ``--callback-delay`` holds each delivery callback back that long after its send (by
default 50 ms: Meta posts a delivery once the recipient's device has the message, not when it
answers the send; ``--callback-delay 0.005``, the earlier default, makes a delivery often reach
an API process before the engine process recorded its send).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import enginelib as lib
import harness
import httptools

PAGE = "104116062535871"
PAGE_TOKEN = "bench-page-access-token"
APP_SECRET = "bench-app-secret"
#: replaced by each message's own recipient (a PSID of 16 digits)
PSID_MARK = "PSIDPSIDPSIDPSID"


# --- the fake Graph API (a subprocess) ---------------------------------------------------------


async def _graph(port_file: Path, callback_url: str) -> None:
    """Serve the test tree's fake Graph API; write its port to ``port_file``; on SIGTERM, print
    how many sends and callbacks it saw (as JSON) and exit."""
    sys.path.insert(0, str(lib.BENCH_DIR.parent))  # the repository root: ``tests`` importable
    from tests.peers.graph import NEVER_READS, FakeGraph
    from tests.peers.server import CallbackClient

    # Meta retries a callback for hours; three quick attempts (the tests' default) would lose
    # the callbacks a busy Cascade answers late
    callbacks = CallbackClient(attempts=60, delay=1.0)
    graph = FakeGraph(callback_url=callback_url, default=NEVER_READS, callbacks=callbacks)
    graph.received = _Counted()  # type: ignore[assignment]  # keep counts, not 10,000 bodies
    graph.add_page(PAGE, PAGE_TOKEN, APP_SECRET)
    stopped = asyncio.Event()
    harness.exit_on_signals(stopped)
    async with graph:
        port_file.write_text(graph.url.rsplit(":", 1)[1])  # noqa: ASYNC240  (once, tiny)
        print(f"fake graph on {graph.url}", flush=True)
        await stopped.wait()
        sent = graph.callbacks.sent
        report = {
            "sends": graph.received.count,  # type: ignore[attr-defined]
            "sends_ok": graph.received.ok,  # type: ignore[attr-defined]
            "callback_posts": len(sent),
            "callbacks_answered_200": sum(1 for c in sent if c.status == 200),
        }
        print("stats " + json.dumps(report), flush=True)
    os._exit(0)


class _LeanGraph(asyncio.Protocol):
    """One connection to the lean fake Graph API: reads Send API requests with httptools and
    answers each at once."""

    def __init__(self, graph: LeanGraph) -> None:
        self.graph = graph
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.token = b""
        self._header = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.token = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        answer = self.graph.send(self.token, b"".join(self.body))
        self.body = []
        self.token = b""
        self.transport.write(
            b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (200 if answer.startswith(b'{"recipient_id"') else 400, len(answer), answer)
        )


class LeanGraph:
    """A fake Graph Send API cheap enough not to be what a benchmark measures: it checks each
    send's page token and recipient, answers ``{"recipient_id", "message_id"}``, and posts the
    ``message_deliveries`` callbacks signed with the app secret (``X-Hub-Signature-256``) on
    Cascade's own lean HTTP client, ``batch`` events to a callback at most (Meta batches
    events in one callback too), each ``delay`` seconds after its send or within 5 ms after
    that. It checks nothing else of the body (the test tree's fake Graph does, in the tests)."""

    def __init__(self, callback_url: str, batch: int, delay: float = 0.005) -> None:
        from cascade.httpclient import HttpClient, parse_url

        self.target = parse_url(callback_url)
        self.client = HttpClient(user_agent="lean-graph", max_connections=32)
        self.batch = batch
        self.delay = delay
        self.pending: list[tuple[bytes, str, int]] = []
        self.flushing: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.mids = 0
        self.stats = {"sends": 0, "sends_ok": 0, "callback_posts": 0, "callback_events": 0,
                      "callbacks_answered_200": 0}  # fmt: skip

    def send(self, token: bytes, body: bytes) -> bytes:
        """Answer one send: its id, or Graph's error 190 for a wrong token."""
        self.stats["sends"] += 1
        if token != b"Bearer " + PAGE_TOKEN.encode():
            return b'{"error":{"message":"Invalid OAuth access token.","code":190}}'
        psid = json.loads(body)["recipient"]["id"].encode()
        self.mids += 1
        mid = f"m_bench{self.mids}"
        self.stats["sends_ok"] += 1
        self.pending.append((psid, mid, int(time.time() * 1000)))
        self.wake.set()
        return b'{"recipient_id":"%s","message_id":"%s"}' % (psid, mid.encode())

    async def run(self) -> None:
        """Post the pending deliveries, ``batch`` to a callback, every 5 ms at most, each once
        ``delay`` has passed since its send."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0.005)
            while self.pending:
                take = self.batch
                if self.delay > 0.005:  # (else every pending one goes: its 5 ms have passed)
                    # the first is due; those due within 5 ms more go with it
                    wait = self.pending[0][2] / 1000 + self.delay - time.time()
                    if wait > 0:  # (one already due goes at once: a pause per callback
                        await asyncio.sleep(wait + 0.005)  # would cap them at 200/s)
                    due_until = time.time() * 1000 - self.delay * 1000
                    take = 1
                    while take < min(self.batch, len(self.pending)) and (
                        self.pending[take][2] <= due_until
                    ):
                        take += 1
                events, self.pending = self.pending[:take], self.pending[take:]
                task = asyncio.ensure_future(self._post(events))
                self.flushing.add(task)
                task.add_done_callback(self.flushing.discard)

    async def _post(self, events: list[tuple[bytes, str, int]]) -> None:
        now = int(time.time() * 1000)
        messaging = [
            {"sender": {"id": psid.decode()}, "recipient": {"id": PAGE}, "timestamp": now,
             "delivery": {"mids": [mid], "watermark": at}}
            for psid, mid, at in events
        ]  # fmt: skip
        raw = json.dumps(
            {"object": "page", "entry": [{"id": PAGE, "time": now, "messaging": messaging}]}
        ).encode()
        signature = hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        headers = [("Content-Type", "application/json"),
                   ("X-Hub-Signature-256", f"sha256={signature}")]  # fmt: skip
        for _ in range(60):  # Meta retries a callback for hours; a busy Cascade answers late
            try:
                response = await self.client.post(self.target, raw, headers, within=30)
            except Exception:  # the bench's peer: it tries again, as Meta would
                await asyncio.sleep(1.0)
                continue
            self.stats["callback_posts"] += 1
            if response.status == 200:
                self.stats["callbacks_answered_200"] += 1
                self.stats["callback_events"] += len(events)
                return
            await asyncio.sleep(1.0)


async def _lean_graph(port_file: Path, callback_url: str, batch: int, delay: float) -> None:
    """Serve :class:`LeanGraph`; write its port to ``port_file``; on SIGTERM, print its counts
    (as JSON) and exit."""
    graph = LeanGraph(callback_url, batch, delay)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _LeanGraph(graph), "127.0.0.1", 0)
    runner = asyncio.ensure_future(graph.run())
    stopped = asyncio.Event()
    harness.exit_on_signals(stopped)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240  (once, tiny)
    await stopped.wait()
    runner.cancel()
    print("stats " + json.dumps(graph.stats), flush=True)
    os._exit(0)


class _Counted(list):  # type: ignore[type-arg]
    """A stand-in for the fake's list of requests that only counts them."""

    count = 0
    ok = 0

    def append(self, item: Any) -> None:
        self.count += 1
        self.ok += item.status == 200


# --- the run -----------------------------------------------------------------------------------


def _stats(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("stats "):
            result: dict[str, Any] = json.loads(line[6:])
            return result
    return {}


def start_graph(
    procs: harness.Processes, server: lib.Server, args: argparse.Namespace
) -> tuple[Any, int]:
    """The Graph peer, posting its callbacks to the server; it and its port."""
    port_file = server.workdir / "graph.port"
    log = server.workdir / "graph.log"
    callback = f"http://127.0.0.1:{server.port}/channels/messenger"
    graph = procs.helper(
        Path(__file__).resolve(), "graph", "--port-file", str(port_file), "--callback", callback,
        "--kind", args.graph, "--batch", str(args.callback_batch),
        "--delay", str(args.callback_delay), log=log,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not port_file.exists() or not port_file.read_text():
        if graph.poll() is not None or time.monotonic() > deadline:
            raise harness.BenchError(f"the fake Graph did not start:\n{harness.tail(log)}")
        time.sleep(0.05)
    return graph, int(port_file.read_text())


def link_page(server: lib.Server, graph_port: int, receiver_port: int) -> None:
    """A live account with the page linked, Graph on the peer, status webhooks to the receiver."""
    from cascade.sealing import Sealer

    server.env.update(
        CASCADE_CHANNEL_KEY=Sealer.generate_key(),
        CASCADE_GRAPH_BASE_URL=f"http://127.0.0.1:{graph_port}",
        CASCADE_PUBLIC_URL=f"http://127.0.0.1:{server.port}",
    )
    status_url = f"http://127.0.0.1:{receiver_port}/status"
    server.cli("account", "set", "--live", "--status-url", status_url)
    server.cli(
        "channel", "add", "messenger", "--page-id", PAGE, "--page-access-token", PAGE_TOKEN,
        "--app-secret", APP_SECRET, "--verify-token", "bench-verify",
    )  # fmt: skip


#: one recipient per message: a delivery's watermark then covers only its own message
BODY = json.dumps(
    {
        "to": {"type": "messenger", "id": PSID_MARK},
        "from": {"type": "messenger", "id": PAGE},
        "message": {
            "content": {"type": "text", "text": "Your parcel arrives today."},
            "messenger": {"category": "update"},
        },
    }
).encode()


def body(index: int) -> bytes:
    """Request ``index``'s body: to a recipient of its own."""
    return BODY.replace(PSID_MARK.encode(), b"%016d" % index)


def serve_children(server: lib.Server, processes: int) -> dict[str, int]:
    """``serve --processes N``'s children by name (forked in order: the engine first), so each
    one's CPU is reported beside the total."""
    children = sorted(
        int(child)
        for task in Path(f"/proc/{server.pid}/task").glob("*/children")
        for child in task.read_text().split()
    )
    names = ["engine" if processes > 1 else "child"] + ["api"] * len(children)
    return {f"serve: {names[n]} process {pid}": pid for n, pid in enumerate(children)}


def run(args: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
    env = {"CASCADE_SQLITE_SYNCHRONOUS": args.synchronous, "CASCADE_PROCESSES": str(args.processes)}
    if args.serve_jobs:
        env["CASCADE_ENGINE_JOBS"] = args.serve_jobs
    server = lib.Server(procs, env, keep=args.keep)
    graph = None
    try:
        graph, graph_port = start_graph(procs, server, args)
        receiver, receiver_port = lib.start_receiver(procs, server.workdir)
        link_page(server, graph_port, receiver_port)
        server.start()
        pids = {"cascade serve": server.pid}
        if args.worker_jobs:
            worker_env = {k: v for k, v in server.env.items() if k != "CASCADE_ENGINE_JOBS"}
            worker = server.worker("worker", args.worker_jobs, env=worker_env)
            pids[f"cascade worker ({args.worker_jobs})"] = worker.pid
        pids.update({"fake graph": graph.pid, "receiver": receiver.pid})
        usage = harness.Usage(
            pids, loops=["cascade serve"], parts=serve_children(server, args.processes)
        )
        posted = lib.post_many(
            server.port, server.token, body, args.n, args.connections, path=lib.MESSAGES_PATH
        )
        lib.accept_or_fail(posted, args.n, server)

        def delivered() -> int:
            counts = harness.get_json(receiver_port, "/stats")["counts"]
            return int(counts.get("delivered", 0))

        server.wait_for(
            "every delivered webhook",
            lambda: delivered() >= len(posted.accepted),
            timeout=args.timeout,
            interval=0.05,
            progress=lambda: f"{delivered():,} delivered",
        )
        measured = usage.stop()
        seen = harness.get_json(receiver_port, "/dump")
        server.stop()
        db = dict(server.query("SELECT coalesce(status, '-'), count(*) FROM messages GROUP BY 1"))
        procs.stop(graph)
        graph_stats = _stats(server.workdir / "graph.log")
    finally:
        procs.stop_all()
        server.cleanup()
    return summarize(posted, measured, seen, db, graph_stats)


def summarize(
    posted: lib.PostResult,
    measured: dict[str, Any],
    seen: dict[str, Any],
    db: dict[str, int],
    graph_stats: dict[str, Any],
) -> dict[str, Any]:
    """The figures and checks of one run."""
    accepted = posted.accepted
    n = len(accepted)
    delivered: dict[str, float] = {}
    duplicates = 0
    for at, uuid, status in seen["seen"]:
        if status == "delivered":
            duplicates += uuid in delivered
            delivered.setdefault(uuid, at)
    latencies = sorted(delivered[u] - at for u, at in accepted.items() if u in delivered)
    last = max(delivered.values(), default=posted.finished)
    cpu = measured["cpu_s"]
    return {
        "n": n,
        "accepted_per_s": posted.rate,
        "end_to_end_s": last - posted.started,
        "end_to_end_per_s": n / max(1e-9, last - posted.started),
        "latency_p50": harness.percentile(latencies, 50),
        "latency_p99": harness.percentile(latencies, 99),
        "checks": {
            "messages without a delivered webhook": n - len(delivered),
            "duplicate delivered webhooks": duplicates,
            "sends to Graph beyond one per message": graph_stats.get("sends", 0) - n,
            "messages not delivered in the database": n - db.get("delivered", 0),
        },
        "graph": graph_stats,
        "receiver_counts": seen["counts"],
        "database": db,
        **measured,
        "cpu_us_per_message": {name: value / max(1, n) * 1e6 for name, value in cpu.items()},
        "cascade_cpu_us_per_message": sum(
            value for name, value in cpu.items() if name.startswith("cascade") and ":" not in name
        )
        / max(1, n)
        * 1e6,
        "commit": harness.commit(),
    }


def print_result(r: dict[str, Any]) -> None:
    print(
        f"\n{r['n']:,} Messenger messages: end to end {r['end_to_end_per_s']:,.0f}/s "
        f"({r['end_to_end_s']:.2f} s), accepted {r['accepted_per_s']:,.0f}/s; "
        f"latency p50 {r['latency_p50'] * 1000:.0f} ms, p99 {r['latency_p99'] * 1000:.0f} ms"
    )
    print(f"  CPU Cascade, every process: {r['cascade_cpu_us_per_message']:,.0f} µs/message")
    for name, value in r["cpu_us_per_message"].items():
        print(f"  CPU {name}: {value:,.0f} µs/message")
    print(
        f"  machine busy {r['machine_busy_cores']:.2f} cores, other load "
        f"{r['other_load_cores']:.2f} cores; commit {r['commit']}"
    )
    print(f"  graph {r['graph']}; receiver {r['receiver_counts']}; database {r['database']}")
    failed = {name: value for name, value in r["checks"].items() if value}
    print(f"  checks: {failed or 'all passed'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    graph = sub.add_parser("graph", help="(internal) run the fake Graph API")
    graph.add_argument("--port-file", type=Path, required=True)
    graph.add_argument("--callback", required=True)
    graph.add_argument("--kind", choices=("lean", "fake"), default="lean")
    graph.add_argument("--batch", type=int, default=1)
    graph.add_argument("--delay", type=float, default=0.005)
    parser.add_argument(
        "--graph",
        choices=("lean", "fake"),
        default="lean",
        help="the Graph peer: lean (a bench sink, cheap) or fake (the tests' FakeGraph, checks "
        "every body but costs more CPU than Cascade)",
    )
    parser.add_argument(
        "--callback-batch",
        type=int,
        default=1,
        help="deliveries per callback the lean Graph posts at most (Meta batches; default 1)",
    )
    parser.add_argument(
        "--callback-delay",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="seconds from a send to its delivery callback, at least (the lean Graph; default "
        "0.05: a delivery follows the device's acknowledgement; with 0.005 it often beats the "
        "recording of its send)",
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="cascade serve --processes (0: one per core; CPU figures then sum every process, "
        "and the event-loop figure is the parent's)",
    )
    parser.add_argument(
        "--serve-jobs",
        metavar="KINDS",
        help="CASCADE_ENGINE_JOBS of serve's engine, e.g. webhook (default: every kind)",
    )
    parser.add_argument(
        "--worker-jobs",
        metavar="KINDS",
        help="also run a `cascade worker --jobs KINDS`, e.g. send,step_timeout,report_horizon",
    )
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    if args.command == "graph":
        if args.kind == "lean":
            harness.run_loop(_lean_graph(args.port_file, args.callback, args.batch, args.delay))
        else:
            harness.run_loop(_graph(args.port_file, args.callback))
        return 0
    return harness.run_benchmark(
        "messenger", args, run, print_result, failed=lambda r: any(r["checks"].values())
    )


if __name__ == "__main__":
    sys.exit(main())
