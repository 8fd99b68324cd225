"""The peers, measured beside Cascade when installed: Kannel (Debian's ``kannel``: ``bearerbox``
and ``smsbox``) relaying to the benchmarks' own SMSC, loaded by ``wrk`` on its HTTP
``sendsms`` interface.

One run gives both figures the suite compares: Kannel's accepted requests per second (``wrk``'s
rate, answers ``202 Accepted for delivery``) while it relays them, and SMS end to end: every
accepted SMS submitted over SMPP to ``bench/smsc_sink.py`` (2 binds, window 200, as Cascade's
run), its DLR received and reported to ``dlr-url`` on ``bench/receiver.py`` (Kannel's status
callback, as Cascade's delivered webhook). Kannel keeps its queue in its file store
(``store-type = file``). CPU is bearerbox's and smsbox's together, per SMS.

Jasmin (PyPI ``jasmin``) needs RabbitMQ and Redis beside it; it is not run here: BENCHMARKS.md
keeps the figures measured for it by hand.

    .venv/bin/python bench/peers.py --duration 10      # needs kannel and wrk (apt-get install)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import enginelib as lib
import harness
from smsc_sink import Smsc

SIZES = {
    "quick": {"duration": 2.0, "connections": 32},
    "full": {"duration": 10.0, "connections": 32},
}


def kannel_installed() -> bool:
    """Whether bearerbox, smsbox and wrk are all on this machine."""
    return all(shutil.which(tool) for tool in ("bearerbox", "smsbox", "wrk"))


def kannel_conf(
    workdir: Path, smsc_port: int, admin: int, box: int, http: int, store: bool = True
) -> str:
    """bearerbox and smsbox on 127.0.0.1, two binds to the SMSC, one sendsms user; the queue in
    Kannel's file store, or (``store`` false) in memory only."""
    kept = f'store-type = file\nstore-location = "{workdir}/kannel.store"\n' if store else ""
    smsc = "".join(
        f"""
group = smsc
smsc = smpp
smsc-id = sink
host = 127.0.0.1
port = {smsc_port}
transceiver-mode = true
smsc-username = cascade
smsc-password = secret
max-pending-submits = 200
msg-id-type = 0x00
system-type = "bench"
"""
        for _ in range(2)
    )
    return f"""
group = core
admin-port = {admin}
admin-password = bench
status-password = bench
admin-allow-ip = "127.0.0.1"
smsbox-port = {box}
box-allow-ip = "127.0.0.1"
log-file = "{workdir}/bearerbox.log"
log-level = 2
{kept}dlr-storage = internal
{smsc}
group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box}
sendsms-port = {http}
log-file = "{workdir}/smsbox.log"
log-level = 2

group = sendsms-user
username = bench
password = bench
max-messages = 1
"""


_RATE = re.compile(r"Requests/sec:\s*([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def parse_wrk(output: str) -> dict[str, float]:
    """wrk's summary: requests, requests/s, non-2xx and the p99 latency in ms."""
    rate, total, p99 = _RATE.search(output), _TOTAL.search(output), _P99.search(output)
    if rate is None or total is None:
        raise harness.BenchError(f"wrk said:\n{output}")
    non2xx = _NON2XX.search(output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests": int(total.group(1)),
        "requests_per_s": float(rate.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


@dataclass
class Started:
    """A peer running: its processes by name, the URL that accepts one SMS, and its log."""

    pids: dict[str, int]
    url: str
    log: Path


def start_kannel(
    procs: harness.Processes, workdir: Path, smsc: Smsc, receiver_port: int, store: bool
) -> Started:
    """bearerbox and smsbox, bound twice to the SMSC; the ``sendsms`` URL with its DLR
    callback to the receiver."""
    admin, box, http = (harness.free_port() for _ in range(3))
    conf = workdir / "kannel.conf"
    conf.write_text(kannel_conf(workdir, smsc.port, admin, box, http, store))
    bearerbox = procs.start(["bearerbox", str(conf)], log=workdir / "bearerbox.out")
    harness.wait_port(box, bearerbox, workdir / "bearerbox.out")
    smsbox = procs.start(["smsbox", str(conf)], log=workdir / "smsbox.out")
    harness.wait_port(http, smsbox, workdir / "smsbox.out")
    smsc.wait_binds(2, workdir / "bearerbox.log", within=20)
    query = urllib.parse.urlencode(
        {
            "username": "bench", "password": "bench", "from": "447700900001",
            "to": "447700900000", "text": "Your parcel arrives today.", "dlr-mask": "1",
            "dlr-url": f"http://127.0.0.1:{receiver_port}/status?id=%I&status=%d",
        }
    )  # fmt: skip
    return Started(
        {"bearerbox": bearerbox.pid, "smsbox": smsbox.pid},
        f"http://127.0.0.1:{http}/cgi-bin/sendsms?{query}",
        workdir / "bearerbox.log",
    )


def relay(
    name: str,
    start: Callable[[harness.Processes, Path, Smsc, int], Started],
    procs: harness.Processes,
    duration: float,
    connections: int,
) -> dict[str, Any]:
    """One peer run: the SMSC and the receiver, the peer, ``wrk`` on its URL for ``duration``,
    then every DLR callback waited for; accepts/s, SMS/s end to end and CPU per SMS."""
    workdir = Path(tempfile.mkdtemp(prefix="cascade-peer-"))
    try:
        smsc = Smsc.start(procs, workdir, receipt_delay=0.1)
        _, receiver_port = lib.start_receiver(procs, workdir)
        peer = start(procs, workdir, smsc, receiver_port)
        usage = harness.Usage(peer.pids)
        started = time.time()
        done = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
             peer.url],
            capture_output=True, text=True, timeout=duration + 60, check=False,
        )  # fmt: skip
        load = parse_wrk(done.stdout)
        accepted = load["requests"] - load["non_2xx"]
        deadline = time.monotonic() + 180
        while (seen := harness.get_json(receiver_port, "/stats"))["requests"] < accepted:
            if time.monotonic() > deadline:
                raise harness.BenchError(
                    f"{name} reported {seen['requests']} of {accepted} DLRs in 180 s:\n"
                    f"{harness.tail(peer.log)}"
                )
            time.sleep(0.1)
        measured = usage.stop(own="wrk and this process")
        last = max(at for at, _, _ in harness.get_json(receiver_port, "/dump")["seen"])
        submits = smsc.stats()["submits"]
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    cpu = sum(measured["cpu_s"][process] for process in peer.pids)
    return {
        "name": name,
        **load,
        "accepted": accepted,
        "submits": submits,
        "accepted_per_s": load["requests_per_s"],
        "end_to_end_per_s": accepted / max(1e-9, last - started),
        "cpu_us_per_message": cpu / max(1, accepted) * 1e6,
        "server_cpu_us_per_req": cpu / max(1, accepted) * 1e6,
        "other_load_cores": measured["other_load_cores"],
    }


def run_kannel(
    procs: harness.Processes, duration: float, connections: int, store: bool = True
) -> dict[str, Any]:
    """Kannel relaying to the SMSC (its queue in its file store unless ``store`` is false)."""
    name = f"Kannel {kannel_version()} (`sendsms`, {'file store' if store else 'no store'})"

    def start(procs: harness.Processes, workdir: Path, smsc: Smsc, port: int) -> Started:
        return start_kannel(procs, workdir, smsc, port, store)

    return relay(name, start, procs, duration, connections)


def kannel_version() -> str:
    """Kannel's version, from dpkg ("" when unknown)."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "kannel"], capture_output=True, text=True, check=False
    )
    return done.stdout.split("-")[0].strip()


def measure_all(size: str, out: Path) -> dict[str, Any]:
    """Every installed peer at the suite's ``size``: rows for the accept and SMS tables (the
    ceiling ratio filled in from the accept benchmark's ceiling of the same suite run)."""
    peers: dict[str, Any] = {"accept": [], "sms": [], "notes": []}
    if not kannel_installed():
        peers["notes"].append("Kannel not measured: apt-get install -y kannel wrk")
        return peers
    procs = harness.Processes()
    print("== peers: Kannel", flush=True)
    try:
        result = run_kannel(procs, **SIZES[size])
    except harness.BenchError as exc:
        print(f"   failed: {exc}", flush=True)
        return {**peers, "error": str(exc), "log": str(exc)[-2000:]}
    finally:
        procs.stop_all()
    trivial = _ceiling(out)
    result["ratio_to_trivial"] = result["requests_per_s"] / trivial if trivial else float("nan")
    peers["accept"].append(result)
    peers["sms"].append(result)
    return peers


def _ceiling(out: Path) -> float | None:
    """The trivial app's rate in the suite's accept record, if there is one."""
    import json

    record = out / "accept.json"
    if not record.exists():
        return None
    rows = {row["config"]: row for row in json.loads(record.read_text())["summary"]}
    return rows.get("trivial", {}).get("requests_per_s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--no-store", action="store_true", help="Kannel's queue in memory only (no store file)"
    )
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    if not kannel_installed():
        print("Kannel and wrk are not installed: apt-get install -y kannel wrk", file=sys.stderr)
        return 1
    return harness.run_benchmark(
        "peers",
        args,
        lambda a, procs: run_kannel(procs, a.duration, a.connections, not a.no_store),
        lambda r: print({k: v for k, v in r.items()}),
    )


if __name__ == "__main__":
    sys.exit(main())
