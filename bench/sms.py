"""End-to-end SMS over SMPP: HTTP accept -> submit_sm -> DLR -> ``delivered`` status webhook.

Three processes besides this one, all on 127.0.0.1, all stopped in a ``finally``:

* an SMSC (``bench/sms.py smsc``): the ``smpp34`` server (Rust core) accepting every
  ``submit_sm`` with a new id and sending a ``DELIVRD`` receipt (Appendix B text plus the
  ``receipted_message_id``/``message_state`` TLVs) ``--receipt-delay`` seconds later on the
  session the submit came on; a receipt answered with an error is sent again after 0.5 s, as
  an SMSC would;
* a webhook receiver (``bench/sms.py receive``): raw asyncio HTTP/1.1 with keep-alive, answering
  ``204`` to every POST and noting when each status webhook arrived, its ``message_uuid`` and
  ``status``;
* ``cascade serve`` (engine in-process) over a fresh SQLite file, with a TOML config whose
  ``[smpp]`` table has ``--binds`` connections to the SMSC (``throughput = 0``: no limit,
  ``window_size = --window``) and the account's status URL on the receiver.

This process POSTs ``--n`` single SMS (``POST /v0.1/messages``, or with ``--surface dispatch``
one-step dispatches) from ``--connections`` keep-alive clients, as fast as they are answered or
at ``--rate`` per second, noting when each 202 came; then waits until the receiver has had a
``delivered`` webhook for every accepted message. It reports

* accepted/s (client side), submitted/s and DLRs/s (the SMSC's clock: first to last
  ``submit_sm``, first to last receipt answered ``ESME_ROK``), delivered webhooks/s (the
  receiver's clock), each over its own span;
* end to end: N / (first request sent -> last ``delivered`` webhook received);
* p50/p99/max of (``delivered`` webhook received - 202 received), per message;
* CPU seconds of each process, and per message; a per-second timeline of the four stages.

Checks: every accepted message got exactly one ``delivered`` webhook, the SMSC saw exactly one
submit per message, and the database holds every message as ``delivered``.

``--profile`` samples ``cascade serve`` with py-spy (``pip install py-spy``) over the whole run
and prints its CPU by pipeline stage (accept, send job, SMPP submit, receipt, webhook,
SQLite writer, ...).

    .venv/bin/python bench/sms.py                            # 20,000 SMS, 2 binds, window 200
    .venv/bin/python bench/sms.py --n 10000 --rate 1000      # a paced load: latency at 1,000/s
    .venv/bin/python bench/sms.py --profile --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import enginelib as lib
import rawsmsc

accept = lib.accept

MESSAGES_PATH = "/v0.1/messages"
DISPATCH_PATH = "/v0.1/dispatch"

#: the receiver's and the SMSC's control lines
_UUID = re.compile(rb'"message_uuid":"([^"]+)"')
_STATUS = re.compile(rb'"status":"([a-z_]+)"')
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def _run(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)


def _exit_on_signals() -> None:
    """SIGTERM/SIGINT end a helper process at once (smpp34's server may not stop promptly)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: (sys.stdout.flush(), os._exit(0)))


# --- the SMSC (a subprocess) -------------------------------------------------------------------


async def _smsc(port: int, control: int, receipt_delay: float, kind: str) -> None:
    """Accept every submit_sm and send a DELIVRD receipt; serve stats on ``control``."""
    _exit_on_signals()
    stats = rawsmsc.Stats()
    if kind == "raw":
        await rawsmsc.start(port, receipt_delay, stats)
    else:
        await _smpp34_smsc(port, receipt_delay, stats)

    async def serve_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).strip()
        report: dict[str, Any] = {
            "submits": len(stats.submits),
            "receipts": len(stats.receipts),
            "counts": dict(stats.counts),
        }
        if line == b"dump":
            report["submit_times"] = stats.submits
            report["receipt_times"] = stats.receipts
        writer.write(json.dumps(report).encode())
        await writer.drain()
        writer.close()

    await asyncio.start_server(serve_control, "127.0.0.1", control)
    print(f"smsc ({kind}) listening on {port}, control {control}", flush=True)
    await asyncio.Event().wait()


async def _smpp34_smsc(port: int, receipt_delay: float, stats: rawsmsc.Stats) -> None:
    """The same sink on the ``smpp34`` server the tests use (its Rust core, Python events)."""
    import smpp34

    server = smpp34.Server("127.0.0.1", port, system_id="sink")
    await server.start()
    sessions: dict[str, Any] = {}
    counts = stats.counts
    ids = itertools.count(1)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    state = {"date": "", "second": 0}

    def date() -> str:
        second = int(time.time())
        if second != state["second"]:
            state["second"] = second
            state["date"] = time.strftime("%y%m%d%H%M", time.localtime(second))
        return str(state["date"])

    async def receipt(session_id: str, message_id: str, source: str, destination: str) -> None:
        stamp = date()
        text = (
            f"id:{message_id} sub:001 dlvrd:001 submit date:{stamp} done date:{stamp} "
            f"stat:DELIVRD err:000 text:"
        ).encode()
        tlvs = [
            smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, message_id.encode() + b"\0"),
            smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, b"\x02"),
        ]
        for attempt in range(20):
            esme = sessions.get(session_id)
            if esme is None or not esme.can_receive:
                live = [s for s in sessions.values() if s.can_receive]
                esme = live[-1] if live else None
            if esme is not None:
                try:
                    answer = await esme.deliver_sm(
                        source,
                        text,
                        source_addr=destination,
                        source_addr_ton=1,
                        source_addr_npi=1,
                        esm_class=0x04,
                        data_coding=0,
                        tlvs=tlvs,
                    )
                    if answer.command_status == 0:
                        stats.receipts.append(time.time())
                        return
                    counts[f"receipt answered {answer.command_status:#x}"] += 1
                except (smpp34.SmppError, OSError) as exc:
                    counts[f"receipt failed: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5 if attempt else 0.1)
        counts["receipt given up"] += 1

    def spawn(coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def later(session_id: str, message_id: str, source: str, destination: str) -> None:
        spawn(receipt(session_id, message_id, source, destination))

    async def events() -> None:
        while True:
            event = await server.next()
            if isinstance(event, smpp34.SubmitSmEvent):
                stats.submits.append(time.time())
                message_id = str(next(ids))
                event.accept(message_id)
                args = (event.session_id, message_id, event.source_addr, event.destination_addr)
                if receipt_delay > 0:
                    loop.call_later(receipt_delay, later, *args)
                else:
                    later(*args)
            elif isinstance(event, smpp34.Esme):
                counts["binds"] += 1
                sessions[event.session_id] = event
            elif isinstance(event, smpp34.Unbound):
                counts["unbinds"] += 1
                sessions.pop(event.session_id, None)

    spawn(events())


# --- the webhook receiver (a subprocess) ---------------------------------------------------------


async def _receive(port: int) -> None:
    """Answer 204 to every POST, noting (time, message_uuid, status); ``GET /stats`` and
    ``GET /dump`` answer with what was seen. A bare protocol (no streams, no task per
    connection): it shares the two cores with what it measures."""
    _exit_on_signals()
    seen: list[tuple[float, str, str]] = []
    counts: Counter[str] = Counter()
    no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"

    def json_answer(value: Any) -> bytes:
        body = json.dumps(value).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + (
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )

    class Receiver(asyncio.Protocol):
        def __init__(self) -> None:
            self.buffer = b""

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
                    answers.append(json_answer({"counts": dict(counts), "webhooks": len(seen)}))
                elif head.startswith(b"GET /dump"):
                    answers.append(json_answer({"counts": dict(counts), "seen": seen}))
                else:
                    uuid = _UUID.search(body)
                    status = _STATUS.search(body)
                    state = status.group(1).decode() if status else "?"
                    counts[state] += 1
                    seen.append((time.time(), uuid.group(1).decode() if uuid else "?", state))
                    answers.append(no_content)
            self.buffer = buffer
            if answers:
                self.transport.write(b"".join(answers))

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=512)
    print(f"receiver listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


# --- talking to the helpers --------------------------------------------------------------------


def _wait_port(port: int, proc: Any, log: Path, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise lib.BenchError(f"a helper exited:\n{accept._tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise lib.BenchError(f"nothing listens on {port}:\n{accept._tail(log)}")


def smsc_stats(control: int, dump: bool = False) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", control), 30) as conn:
        conn.sendall(b"dump\n" if dump else b"count\n")
        chunks = []
        while chunk := conn.recv(1 << 20):
            chunks.append(chunk)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


def receiver_get(port: int, path: str) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        result: dict[str, Any] = json.loads(conn.getresponse().read())
        return result
    finally:
        conn.close()


# --- the load --------------------------------------------------------------------------------


def sms_body(surface: str) -> tuple[str, bytes]:
    """The request path and body of one single SMS."""
    if surface == "dispatch":
        return DISPATCH_PATH, lib.dispatch(lib.sms_step())
    body = {
        "to": {"type": "sms", "number": "447700900000"},
        "from": {"type": "sms", "number": "447700900001"},
        "message": {"content": {"type": "text", "text": "Your parcel arrives today."}},
    }
    return MESSAGES_PATH, json.dumps(body).encode()


async def _drive(
    port: int, token: str, path: str, body: bytes, count: int, connections: int, rate: float
) -> dict[str, Any]:
    """POST ``count`` times; the time each 202 came, by the id it returned."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    accepted: dict[str, float] = {}
    statuses: Counter[int] = Counter()
    errors = [0]
    sent = itertools.count()
    started = time.time()
    t0 = time.monotonic()
    id_pattern = re.compile(rb'_uuid":"([^"]+)"')

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (index := next(sent)) < count:
                if rate > 0:
                    delay = t0 + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                writer.write(request)
                try:
                    status, answer = await asyncio.wait_for(lib._read_response(reader), 60)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    errors[0] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                statuses[status] += 1
                if status == 202:
                    match = id_pattern.search(answer)
                    if match:
                        accepted[match.group(1).decode()] = time.time()
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(max(1, min(connections, count)))))
    return {
        "started": started,
        "finished": time.time(),
        "accepted": accepted,
        "statuses": dict(statuses),
        "errors": errors[0],
    }


# --- the SMPP provider alone ----------------------------------------------------------------------


async def _provider_only(
    smsc_port: int, count: int, concurrency: int, binds: int, window: int, profile: str | None
) -> dict[str, Any]:
    """``SmppProvider.send`` ``count`` times (``concurrency`` at once) with a sink that only
    counts receipts: the provider's own cost and rate, without the API, engine or store."""
    import tomllib

    from cascade.channels.base import OutboundMessage
    from cascade.channels.smpp import SmppProvider
    from cascade.channels.smpp.config import SmppSettings
    from cascade.log import configure_logging

    configure_logging("warning")  # as the benchmark runs cascade serve
    settings = SmppSettings.from_mapping(
        tomllib.loads(config_toml(smsc_port, binds, window))["smpp"]
    )
    receipts: list[float] = []
    done = asyncio.Event()

    class Sink:
        async def receipt(self, receipt: Any) -> None:
            receipts.append(time.time())
            if len(receipts) >= count:
                done.set()

        async def inbound(self, message: Any) -> None:
            pass

    provider = SmppProvider(settings)
    await provider.start(Sink())
    if not await provider.ready(10):
        raise lib.BenchError(f"the provider did not bind: {provider.status()}")
    to = {"type": "sms", "number": "447700900000"}
    from_ = {"type": "sms", "number": "447700900001"}
    content = {"content": {"type": "text", "text": "Your parcel arrives today."}}
    submitted: list[float] = []
    errors: Counter[str] = Counter()
    numbers = itertools.count()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0, started = time.process_time(), time.time()

    async def sender() -> None:
        while (number := next(numbers)) < count:
            message = OutboundMessage(f"m{number}", "sms", to, from_, content)
            try:
                await provider.send(message)
            except Exception as exc:
                errors[type(exc).__name__] += 1
            else:
                submitted.append(time.time())

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 120)
    finished, cpu = time.time(), time.process_time() - cpu0
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    await provider.stop()
    return {
        "n": count,
        "submitted": len(submitted),
        "receipts": len(receipts),
        "errors": dict(errors),
        "submitted_per_s": _rate(submitted),
        "receipts_per_s": _rate(receipts),
        "end_to_end_per_s": len(receipts) / max(1e-9, finished - started),
        "cpu_us_per_message": cpu / count * 1e6,
    }


def run_provider_only(args: argparse.Namespace, procs: lib.Processes) -> dict[str, Any]:
    """The SMSC in its own process, the provider in this one."""
    smsc_port, control = accept.free_port(), accept.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="cascade-sms-bench-"))
    try:
        log = workdir / "smsc.log"
        smsc = procs.start(
            [sys.executable, str(Path(__file__).resolve()), "smsc", "--port", str(smsc_port),
             "--control", str(control), "--receipt-delay", str(args.receipt_delay),
             "--smsc", args.smsc],
            env=dict(os.environ), cwd=workdir, log=log,
        )  # fmt: skip
        try:
            _wait_port(smsc_port, smsc, log)
            _wait_port(control, smsc, log)
            cpu0 = accept.process_cpu(smsc.pid)
            result: dict[str, Any] = _run(
                _provider_only(
                    smsc_port, args.n, args.concurrency, args.binds, args.window,
                    args.provider_profile,
                )
            )  # fmt: skip
            result["smsc_cpu_us_per_message"] = (accept.process_cpu(smsc.pid) - cpu0) / args.n * 1e6
        finally:
            procs.stop(smsc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- the run ---------------------------------------------------------------------------------


def config_toml(port: int, binds: int, window: int) -> str:
    tables = ["[smpp]\n"]
    for number in range(binds):
        tables.append(
            f"""
[[smpp.connections]]
name = "sink{number + 1}"
host = "127.0.0.1"
port = {port}
system_id = "cascade"
password = "secret"
window_size = {window}
throughput = 0
enquire_link_interval = 30
response_timeout = 30
"""
        )
    return "".join(tables)


def _span(times: list[float]) -> tuple[float, float]:
    return (min(times), max(times)) if times else (float("nan"), float("nan"))


def _rate(times: list[float]) -> float:
    if len(times) < 2:
        return float("nan")
    first, last = _span(times)
    return len(times) / max(1e-9, last - first)


def _sends(jobs: str) -> bool:
    """Whether an engine of these job kinds (CASCADE_ENGINE_JOBS) sends, and so binds."""
    return jobs == "all" or "send" in jobs.split(",")


def run(args: argparse.Namespace, procs: lib.Processes) -> dict[str, Any]:
    smsc_port, control, receiver_port = (accept.free_port() for _ in range(3))
    env = {"CASCADE_SQLITE_SYNCHRONOUS": args.synchronous, "CASCADE_PROCESSES": str(args.processes)}
    if args.batch_size:
        env["CASCADE_WORKER_BATCH_SIZE"] = str(args.batch_size)
    if args.stop_at == "accept" or (args.workers and not args.serve_jobs):
        env["CASCADE_RUN_WORKER"] = "false"
    worker_jobs = args.worker_jobs or "all"
    if args.webhook_worker:
        # serve's engine, or the workers', run everything but webhooks
        env["CASCADE_ENGINE_JOBS"] = worker_jobs = "send,step_timeout,report_horizon"
    if args.serve_jobs:
        env["CASCADE_ENGINE_JOBS"] = args.serve_jobs
    env.update(item.split("=", 1) for item in args.server_env)
    # the data directory goes in a folder of this benchmark's own, out of the way of whatever
    # cleans up after the other benchmarks' cascade-engine-bench-* folders in /tmp
    base = tempfile.mkdtemp(prefix="cascade-sms-bench-")
    tempfile.tempdir, previous = base, tempfile.tempdir
    try:
        server = lib.Server(procs, env, keep=args.keep)
    finally:
        tempfile.tempdir = previous
    helpers: list[Any] = []
    spy = None
    try:
        workdir = server.workdir
        script = str(Path(__file__).resolve())
        smsc_log, receiver_log = workdir / "smsc.log", workdir / "receiver.log"
        smsc = procs.start(
            [sys.executable, script, "smsc", "--port", str(smsc_port), "--control", str(control),
             "--receipt-delay", str(args.receipt_delay), "--smsc", args.smsc],
            env=dict(os.environ), cwd=workdir, log=smsc_log,
        )  # fmt: skip
        receiver = procs.start(
            [sys.executable, script, "receive", "--port", str(receiver_port)],
            env=dict(os.environ), cwd=workdir, log=receiver_log,
        )  # fmt: skip
        helpers = [smsc, receiver]
        _wait_port(smsc_port, smsc, smsc_log)
        _wait_port(control, smsc, smsc_log)
        _wait_port(receiver_port, receiver, receiver_log)

        config = workdir / "cascade.toml"
        config.write_text(config_toml(smsc_port, args.binds, args.window))
        server.env["CASCADE_CONFIG_FILE"] = str(config)
        if args.stop_at == "webhook":
            status_url = f"http://127.0.0.1:{receiver_port}/status"
            accept._cli(["account", "set", "--status-url", status_url], server.env, workdir)
        server.start()
        workers = []
        pids_extra: dict[str, int] = {}
        if args.stop_at != "accept":
            for number in range(args.workers):
                workers.append(procs.start(
                    [*accept._cascade_argv(), "worker", "--jobs", worker_jobs],
                    env=dict(server.env), cwd=workdir, log=workdir / f"worker{number + 1}.log",
                ))  # fmt: skip
                helpers.append(workers[-1])
            if args.webhook_worker:
                worker_env = {k: v for k, v in server.env.items() if k != "CASCADE_ENGINE_JOBS"}
                webhook_worker = procs.start(
                    [*accept._cascade_argv(), "worker", "--jobs", "webhook"], env=worker_env,
                    cwd=workdir, log=workdir / "webhook-worker.log",
                )  # fmt: skip
                helpers.append(webhook_worker)
                pids_extra["cascade webhook worker"] = webhook_worker.pid
        # every engine that runs send jobs binds to the SMSC
        senders = len(workers) if _sends(worker_jobs) else 0
        if env.get("CASCADE_RUN_WORKER") != "false":
            senders += _sends(env.get("CASCADE_ENGINE_JOBS", "all"))
        binds = 0 if args.stop_at == "accept" else args.binds * senders
        binds_deadline = time.monotonic() + 10
        while smsc_stats(control)["counts"].get("binds", 0) < binds:
            if time.monotonic() > binds_deadline:
                raise lib.BenchError(f"cascade did not bind {binds} times:\n"
                                     f"{accept._tail(server.log)}")  # fmt: skip
            time.sleep(0.05)

        path, body = sms_body(args.surface)
        if args.profile:
            target = workers[0].pid if workers else server.pid
            spy = lib.start_py_spy(
                procs, target, args.profile_seconds, workdir / "profile.txt", workdir / "py-spy.log"
            )
        pids = {"cascade serve": server.pid}
        pids.update({f"cascade worker {i + 1}": w.pid for i, w in enumerate(workers)})
        pids.update(pids_extra)
        pids.update({"smsc": smsc.pid, "receiver": receiver.pid})
        cascades = [name for name in pids if name.startswith("cascade")]
        cpu0 = {name: accept.process_cpu(pid) for name, pid in pids.items()}
        loop0 = {name: accept.main_thread_cpu(pids[name]) for name in cascades}
        own0 = time.process_time()
        busy0, wall0 = accept.machine_busy(), time.monotonic()

        posted = _run(
            _drive(server.port, server.token, path, body, args.n, args.connections, args.rate)
        )
        own_load = time.process_time() - own0
        accepted: dict[str, float] = posted["accepted"]
        print(
            f"accepted {len(accepted):,} of {args.n:,} in "
            f"{posted['finished'] - posted['started']:.2f} s (statuses {posted['statuses']}, "
            f"errors {posted['errors']})",
            flush=True,
        )
        if not accepted:
            raise lib.BenchError("nothing was accepted")
        _wait_done(args, server, control, receiver_port, len(accepted))
        busy1, wall1 = accept.machine_busy(), time.monotonic()
        cpu1 = {name: accept.process_cpu(pid) for name, pid in pids.items()}
        loop1 = {name: accept.main_thread_cpu(pids[name]) for name in cascades}
        time.sleep(max(0.0, args.settle))  # late duplicates, if any, would show up now
        seen = receiver_get(receiver_port, "/dump")
        smsc_dump = smsc_stats(control, dump=True)
        metrics = server.metrics()
        if spy is not None:
            spy.wait(args.profile_seconds + 60)
        server.stop()
        db = dict(server.query("SELECT coalesce(status, '-'), count(*) FROM messages GROUP BY 1"))
        hooks = dict(server.query("SELECT state, count(*) FROM webhooks GROUP BY 1"))
        delivered_rows = server.query(
            "SELECT id, updated_at FROM messages WHERE status = 'delivered'"
        )
        profile = None
        if args.profile and (workdir / "profile.txt").exists():
            profile = classify_profile(workdir / "profile.txt")
            if args.profile_out:
                shutil.copyfile(workdir / "profile.txt", args.profile_out)
    finally:
        for proc in helpers:
            procs.stop(proc)
        server.cleanup()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    n = len(accepted)
    delivered_times: dict[str, list[float]] = {}
    if args.stop_at == "webhook":
        for at, uuid, status in seen["seen"]:
            if status == "delivered":
                delivered_times.setdefault(uuid, []).append(at)
    elif args.stop_at == "dlr" and args.surface == "messages":
        # no webhooks: when the delivered status was stored instead
        delivered_times = {uuid: [at] for uuid, at in delivered_rows}
    duplicates = sum(len(v) - 1 for v in delivered_times.values())
    missing = [uuid for uuid in accepted if uuid not in delivered_times]
    latencies = sorted(
        min(delivered_times[u]) - at for u, at in accepted.items() if u not in missing
    )
    done_times = sorted(min(v) for v in delivered_times.values())
    submit_times, receipt_times = smsc_dump["submit_times"], smsc_dump["receipt_times"]
    checks: dict[str, int] = {}
    if args.stop_at != "accept":
        checks = {
            "submits beyond one per message": len(submit_times) - n,
            "messages not delivered in the database": n - db.get("delivered", 0),
        }
    if delivered_times:
        checks["messages without a delivered status"] = len(missing)
    if args.stop_at == "webhook":
        checks["duplicate delivered webhooks"] = duplicates
    wall = wall1 - wall0
    cpu = {name: cpu1[name] - cpu0[name] for name in pids}
    for name in cascades:
        loop = loop1[name] - loop0[name]
        cpu[f"{name}: event loop thread"] = loop
        cpu[f"{name}: other threads (SQLite COMMIT)"] = cpu[name] - loop
    cpu["load generator (this process)"] = own_load
    profiled = "cascade worker 1" if "cascade worker 1" in cascades else "cascade serve"
    accept_times = sorted(accepted.values())
    last = max(done_times) if done_times else posted["finished"]
    if profile is not None:
        loop = cpu[f"{profiled}: event loop thread"]
        profile["process"] = profiled
        profile["us_per_message"] = _profile_cost(profile, loop, cpu[profiled] - loop, n)
    return {
        "n": n,
        "surface": args.surface,
        "stop_at": args.stop_at,
        "statuses": posted["statuses"],
        "accepted_per_s": n / max(1e-9, posted["finished"] - posted["started"]),
        "submitted_per_s": _rate(submit_times),
        "dlrs_per_s": _rate(receipt_times),
        "done_per_s": _rate(done_times),
        "end_to_end_s": last - posted["started"],
        "end_to_end_per_s": n / max(1e-9, last - posted["started"]),
        "latency_p50": lib.percentile(latencies, 50),
        "latency_p99": lib.percentile(latencies, 99),
        "latency_max": latencies[-1] if latencies else float("nan"),
        "spans": {
            "accepts": _span(accept_times),
            "submits": _span(submit_times),
            "receipts": _span(receipt_times),
            "done": _span(done_times),
            "origin": posted["started"],
        },
        "timeline": timeline(
            posted["started"], accept_times, submit_times, receipt_times, done_times
        ),
        "checks": checks,
        "smsc_counts": smsc_dump["counts"],
        "receiver_counts": seen["counts"],
        "database": {"messages": db, "webhooks": hooks},
        # receipts are labelled by SMSC account (smpp:<system_id>@<host>:<port>)
        "orphan_receipts": sum(
            value
            for name, value in metrics.items()
            if name.startswith('cascade_receipts_total{matched="no",provider="smpp')
        ),
        "metrics": {
            name: value
            for name, value in metrics.items()
            if name.startswith(METRICS) and "_created" not in name and "smpp_binds" not in name
        },
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_us_per_message": {name: value / n * 1e6 for name, value in cpu.items()},
        "machine_busy_cores": (busy1 - busy0) / wall,
        "other_load_cores": max(0.0, (busy1 - busy0 - sum(cpu[name] for name in pids)) / wall),
        "commit": _commit(),
        "profile": profile,
    }


METRICS = (
    "cascade_jobs_run_total",
    "cascade_webhook_attempts_total",
    "cascade_smpp_",
    "cascade_receipts_total",
    "cascade_sends_total",
)


def _commit() -> str:
    """The commit measured, with ``+changes`` when src/ differs from it."""
    import subprocess

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", *argv], cwd=lib.BENCH_DIR.parent, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "src")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")


def _wait_done(
    args: argparse.Namespace, server: lib.Server, control: int, receiver_port: int, count: int
) -> None:
    """Wait until every accepted message reached the stage the run stops at."""
    if args.stop_at == "accept":
        return

    def progress() -> int:
        if args.stop_at == "webhook":
            counts = receiver_get(receiver_port, "/stats")["counts"]
            return int(counts.get("delivered", 0))
        rows = server.query("SELECT count(*) FROM messages WHERE status = 'delivered'")
        return int(rows[0][0])

    deadline = time.monotonic() + args.timeout
    last_print = time.monotonic()
    while (done := progress()) < count:
        if server.proc.poll() is not None:
            raise lib.BenchError(f"the server exited:\n{accept._tail(server.log)}")
        if time.monotonic() > deadline:
            raise lib.BenchError(
                f"timed out: {done} of {count} delivered; SMSC {smsc_stats(control)}"
            )
        if time.monotonic() - last_print > 5:
            last_print = time.monotonic()
            print(f"  ... {done:,} delivered", flush=True)
        time.sleep(0.05 if args.stop_at == "webhook" else 0.2)


def timeline(origin: float, *series: list[float]) -> list[list[int]]:
    """Counts per second since ``origin`` of each series (accepts, submits, DLRs, webhooks)."""
    end = max((max(s) for s in series if s), default=origin)
    seconds = int(end - origin) + 1
    rows = [[0] * len(series) for _ in range(seconds)]
    for column, times in enumerate(series):
        for at in times:
            rows[max(0, min(seconds - 1, int(at - origin)))][column] += 1
    return rows


# --- profile -----------------------------------------------------------------------------------

#: event-loop stages, by a frame on the stack (the first marker found wins)
LOOP_STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "webhook delivery",
        (
            "webhooks/",
            "SqliteStore.get_webhook ",
            "SqliteStore.get_account ",  # per attempt; the API's is cached with the token
        ),
    ),
    (
        "receipt: deliver_sm -> stored",
        (
            "SmppConnection._deliver ",
            "DeliverSmHandler.",
            "Engine.receipt ",
            "channels/receipts.py",
        ),
    ),
    (
        "SMPP submit (provider.send, responses)",
        (
            "SmppProvider.send ",
            "SmppConnection.submit ",
            "SmppConnection._submit_part ",
            "SmppConnection._exchange ",
            "SubmitFlow.",
            "SubmitSm.",
            "channels/gsm.py",
            "SmppConnection._read_loop ",
            "channels/smpp/link.py",
        ),
    ),
    ("send job (engine, store calls)", ("Engine._send ",)),
    ("engine loop, claims, timers", ("cascade/engine/engine.py",)),
    ("accept (uvicorn, starlette, API)", ("uvicorn/protocols/", "starlette/", "cascade/api/")),
    ("store futures settled", ("_settle ",)),
    ("event loop itself (uvloop, GC)", ("Runner.run ",)),
]
#: SQLite writer stages, by the write function on the stack
WRITER_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("accept", ("_insert_workflows", "_Accept", "idempotency", "accept_plan", "_accept_run")),
    ("send job", ("begin_send", "claim_jobs", "matched_orphan_receipts", "add_message_parts")),
    ("transitions (submitted, delivered)", ("transition.<locals>", "transition_plan")),
    ("webhook delivery", ("record_webhook_attempt", "defer_job")),
    # a store of plans (since issue 10) runs every statement through one `run`/`_execute`, so
    # a statement's caller is not on the stack: these are the writes the markers above miss
    ("statements of other plans", ("run (cascade/store/sqlite.py", "_execute (")),
    ("COMMIT, BEGIN", ("_commit (", "_flush (")),
]
_WAITS = ("Condition.wait ", "select (selectors.py")


def _stage(frames: list[str], stages: list[tuple[str, tuple[str, ...]]]) -> str:
    for name, markers in stages:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return "other"


def classify_profile(collapsed: Path) -> dict[str, Any]:
    """py-spy raw output -> busy samples by thread (the event loop, the others) and stage.

    SQLite writes are counted by the write function on the stack, whichever thread runs them
    (the event loop's since 7365e37, a writer thread of their own before)."""
    stages: dict[str, Counter[str]] = {"loop": Counter(), "other threads": Counter()}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(wait in frames[-1] for wait in _WAITS):
            continue  # waiting, not working
        thread = "loop" if "MainThread" in frames[0] else "other threads"
        if any("_GroupCommitWriter" in frame or "_commit (" in frame for frame in frames):
            stage = "SQLite writes: " + _stage(frames[1:], WRITER_STAGES)
        elif thread == "loop":
            stage = _stage(frames[1:], LOOP_STAGES)
        else:
            stage = "other"
        stages[thread][stage] += int(count_text)
    return {thread: dict(counter.most_common()) for thread, counter in stages.items()}


def _profile_cost(
    profile: dict[str, Any], loop_cpu: float, other_cpu: float, n: int
) -> dict[str, dict[str, float]]:
    """Each thread's measured CPU per message, split in proportion to its samples by stage."""
    costs: dict[str, dict[str, float]] = {}
    for thread, cpu in (("loop", loop_cpu), ("other threads", other_cpu)):
        samples = profile[thread]
        total = sum(samples.values()) or 1
        costs[thread] = {stage: cpu * count / total / n * 1e6 for stage, count in samples.items()}
    return costs


# --- reporting -------------------------------------------------------------------------------


def print_result(r: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    rate = f"{args.rate:g}/s" if args.rate else "max"
    print(
        f"{r['n']:,} SMS ({r['surface']}), {args.binds} bind(s), window {args.window}, "
        f"{args.workers or 'no'} separate worker(s)"
        f"{', webhooks in a worker of their own' if args.webhook_worker else ''}, "
        f"{args.connections} clients, rate {rate}, "
        f"receipt delay {args.receipt_delay:g} s, SQLite {args.synchronous}, "
        f"up to: {args.stop_at}"
    )
    done = {"webhook": "delivered webhook", "dlr": "delivered stored", "accept": "202"}[
        r["stop_at"]
    ]
    rows = [
        ("accepted / s (client)", f"{r['accepted_per_s']:,.0f}"),
        ("submitted / s (SMSC)", f"{r['submitted_per_s']:,.0f}"),
        ("DLRs answered / s (SMSC)", f"{r['dlrs_per_s']:,.0f}"),
        (f"{done}s / s", f"{r['done_per_s']:,.0f}"),
        (f"end to end / s (N / first POST -> last {done})", f"{r['end_to_end_per_s']:,.0f}"),
        (f"first POST -> last {done} (s)", f"{r['end_to_end_s']:.2f}"),
        (f"{done} - 202, p50 (ms)", f"{r['latency_p50'] * 1000:,.0f}"),
        (f"{done} - 202, p99 (ms)", f"{r['latency_p99'] * 1000:,.0f}"),
        (f"{done} - 202, max (ms)", f"{r['latency_max'] * 1000:,.0f}"),
        ("receipts kept as orphans", f"{r['orphan_receipts']:,.0f}"),
        ("machine busy (cores, avg)", f"{r['machine_busy_cores']:.2f}"),
        ("  of which not this benchmark's processes", f"{r['other_load_cores']:.2f}"),
    ]
    for name, value in rows:
        print(f"  {name:<50} {value:>10}")
    print("  CPU (s, and µs per message):")
    for name, seconds in r["cpu_s"].items():
        print(f"    {name:<46} {seconds:>7.2f} s {r['cpu_us_per_message'][name]:>8,.0f} µs")
    print("  per second since the first POST: accepts / submits / DLRs / " + done + "s")
    for second, row in enumerate(r["timeline"]):
        print(f"    {second:>3}s  " + "  ".join(f"{v:>6,}" for v in row))
    print(f"  SMSC: {r['smsc_counts']}; receiver: {r['receiver_counts']}")
    print(f"  database: {r['database']}")
    print(
        "  cascade serve counters: "
        + ", ".join(
            f"{name.removeprefix('cascade_')} {value:,.0f}" for name, value in r["metrics"].items()
        )
    )
    problems = {k: v for k, v in r["checks"].items() if v}
    print(f"  checks: {problems or 'all passed'}; commit {r['commit']}")
    if r["profile"]:
        costs = r["profile"]["us_per_message"]
        for thread, title in (("loop", "event loop"), ("other threads", "other threads")):
            print(f"  {r['profile']['process']} {title}, µs per message by stage (py-spy samples):")
            for stage, us in sorted(costs[thread].items(), key=lambda item: -item[1]):
                print(f"    {stage:<46} {us:>8,.0f} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    smsc = sub.add_parser("smsc", help="(internal) the SMSC sink")
    smsc.add_argument("--port", type=int, required=True)
    smsc.add_argument("--control", type=int, required=True)
    smsc.add_argument("--receipt-delay", type=float, default=0.1)
    smsc.add_argument("--smsc", choices=["raw", "smpp34"], default="raw")
    receive = sub.add_parser("receive", help="(internal) the webhook receiver")
    receive.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, default=20_000, help="SMS to send")
    parser.add_argument("--connections", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--rate", type=float, default=0.0, help="POSTs per second (0: max)")
    parser.add_argument(
        "--stop-at",
        choices=["webhook", "dlr", "accept"],
        default="webhook",
        help="webhook: the whole pipeline; dlr: no status URL, done when delivered is stored; "
        "accept: API only (CASCADE_RUN_WORKER=false)",
    )
    parser.add_argument("--surface", choices=["messages", "dispatch"], default="messages")
    parser.add_argument("--binds", type=int, default=2, help="[[smpp.connections]] to the SMSC")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="cascade serve --processes (0: one per core; the CPU of `cascade serve` then sums "
        "its processes, and its event-loop figure is the parent's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the engine in this many `cascade worker` processes (API-only serve)",
    )
    parser.add_argument(
        "--webhook-worker",
        action="store_true",
        help="deliver webhooks in a `cascade worker --jobs webhook` process of their own "
        "(serve, or the --workers, run the other jobs)",
    )
    parser.add_argument(
        "--serve-jobs",
        help="CASCADE_ENGINE_JOBS of serve (its engine runs even with --workers), e.g. webhook",
    )
    parser.add_argument("--worker-jobs", help="--jobs of each --workers process (default all)")
    parser.add_argument("--window", type=int, default=200, help="window_size of each bind")
    parser.add_argument(
        "--smsc",
        choices=["raw", "smpp34"],
        default="raw",
        help="the SMSC: raw (bench/rawsmsc.py, lean) or smpp34 (the tests' server)",
    )
    parser.add_argument("--receipt-delay", type=float, default=0.1, help="SMSC: DLR after (s)")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--batch-size", type=int, default=0, help="CASCADE_WORKER_BATCH_SIZE")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds for late duplicates")
    parser.add_argument(
        "--provider-only",
        action="store_true",
        help="no API, engine or store: SmppProvider.send in this process, receipts counted",
    )
    parser.add_argument("--concurrency", type=int, default=400, help="--provider-only sends")
    parser.add_argument("--provider-profile", metavar="PATH", help="--provider-only: cProfile")
    parser.add_argument("--profile", action="store_true", help="py-spy the server")
    parser.add_argument("--profile-seconds", type=float, default=30.0)
    parser.add_argument("--profile-out", metavar="PATH", help="keep py-spy's raw samples here")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for a nearly idle machine first",
    )
    parser.add_argument("--nice", type=int, default=0, help="run everything at this nice")
    parser.add_argument("--json", nargs="?", const="auto", default=None, metavar="PATH")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a CASCADE_* setting for every Cascade process, over the benchmark's own; "
        "repeatable, e.g. --server-env CASCADE_ACCESS_LOG=false",
    )
    args = parser.parse_args(argv)
    for item in args.server_env:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("CASCADE_"):
            parser.error(f"--server-env takes CASCADE_NAME=VALUE, not {item!r}")
    if args.command == "smsc":
        _run(_smsc(args.port, args.control, args.receipt_delay, args.smsc))
        return 0
    if args.command == "receive":
        _run(_receive(args.port))
        return 0
    lib.install_signal_handlers()
    procs = lib.Processes()
    if args.nice:
        os.nice(args.nice)  # this process (the load generator) and every child inherit it
    print(f"machine: {lib.describe_machine()}", flush=True)
    try:
        if args.wait_idle:
            busy = accept.wait_for_quiet(args.wait_idle)
            print(f"other load before the run: {busy:.2f} cores busy", flush=True)
        if args.provider_only:
            only = run_provider_only(args, procs)
            print(json.dumps(only, indent=2))
            lib.write_json("sms", {"options": vars(args), "provider_only": only}, args.json)
            return 0
        result = run(args, procs)
    except lib.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    print_result(result, args)
    lib.write_json("sms", {"options": vars(args), "result": result}, args.json)
    return 1 if any(result["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
