"""The benchmarks' SMSC, a process of its own: ``python bench/smsc_sink.py --port P --control C``.

It accepts every ``submit_sm`` with a new id and sends a ``DELIVRD`` receipt (Appendix B text
plus the ``receipted_message_id``/``message_state`` TLVs) ``--receipt-delay`` seconds later on
the session the submit came on; a receipt answered with an error is sent again after 0.5 s, as
an SMSC would. ``--smsc raw`` (the default) is :mod:`rawsmsc`, lean; ``--smsc smpp34`` the
``smpp34`` server the tests use (its Rust core, Python events: about 220 µs per message against
about 60). A line on the control port (``count`` or ``dump``) answers with what it saw, as JSON:
``submits``, ``receipts``, ``counts`` (binds, unbinds, failures), and with ``dump`` the time of
each submit and accepted receipt. :class:`Smsc` starts it and reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import rawsmsc


async def _smsc(port: int, control: int, receipt_delay: float, kind: str) -> None:
    """Accept every submit_sm and send a DELIVRD receipt; serve stats on ``control``."""
    harness.exit_on_signals()
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


@dataclass
class Smsc:
    """A running SMSC process: its SMPP port and its control port."""

    proc: Any
    port: int
    control: int
    log: Path

    @classmethod
    def start(
        cls, procs: harness.Processes, workdir: Path, receipt_delay: float, kind: str = "raw"
    ) -> Smsc:
        """Start it on free ports and wait until both listen."""
        port, control = harness.free_port(), harness.free_port()
        log = workdir / "smsc.log"
        proc = procs.helper(
            Path(__file__).resolve(), "--port", str(port), "--control", str(control),
            "--receipt-delay", str(receipt_delay), "--smsc", kind, log=log,
        )  # fmt: skip
        harness.wait_port(port, proc, log)
        harness.wait_port(control, proc, log)
        return cls(proc, port, control, log)

    def stats(self, dump: bool = False) -> dict[str, Any]:
        """What it saw (with every submit's and receipt's time when ``dump``)."""
        with socket.create_connection(("127.0.0.1", self.control), 30) as conn:
            conn.sendall(b"dump\n" if dump else b"count\n")
            chunks = []
            while chunk := conn.recv(1 << 20):
                chunks.append(chunk)
        result: dict[str, Any] = json.loads(b"".join(chunks))
        return result

    def wait_binds(self, binds: int, log: Path, within: float = 10.0) -> None:
        """Wait until ``binds`` sessions have bound; BenchError with ``log``'s tail if not."""
        deadline = time.monotonic() + within
        while self.stats()["counts"].get("binds", 0) < binds:
            if time.monotonic() > deadline:
                raise harness.BenchError(f"no {binds} binds in {within:g} s:\n{harness.tail(log)}")
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--receipt-delay", type=float, default=0.1)
    parser.add_argument("--smsc", choices=["raw", "smpp34"], default="raw")
    args = parser.parse_args(argv)
    harness.run_loop(_smsc(args.port, args.control, args.receipt_delay, args.smsc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
