"""The peers, measured beside Cascade when installed, each relaying SMS to the benchmarks' own
SMSC (``bench/smsc_sink.py``) and loaded by ``wrk`` on its HTTP interface:

* Kannel (Debian's ``kannel``: ``bearerbox`` and ``smsbox``), ``/cgi-bin/sendsms``, two binds
  (window 200, as Cascade's run), its queue in its file store (``--no-store``: in memory). The
  store file is written for each message and never fsynced (``strace -f -c -e
  trace=fsync,fdatasync -p <bearerbox>`` counts none in a run): a killed ``bearerbox`` loses
  nothing, a power cut may. That is Cascade's ``CASCADE_SQLITE_SYNCHRONOUS=NORMAL``; its default,
  ``FULL``, fsyncs every commit;
* Jasmin (PyPI ``jasmin`` 0.11.0 in a virtualenv at ``$JASMIN_HOME``, default /opt/jasmin;
  0.11.1 loses every SMSC receipt, jookies/jasmin#1236), ``/send``, one bind, with the RabbitMQ
  and Redis it needs on their default ports (Redis database 9; its queues named by a connector
  id of the run's own).

The suite measures them in its accept step (``bench/accept.py --peers kannel,jasmin``), one
run in each of Cascade's rounds. One run gives both figures the suite compares: the peer's
accepted requests per second (``wrk``'s rate) while it relays them, and SMS end to end: every
accepted SMS submitted over SMPP, its DLR received and reported to the peer's ``dlr-url`` on
``bench/receiver.py`` (the peer's status callback, as Cascade's delivered webhook), timed from
the first request to the last callback. CPU is the peer's processes' together, per SMS (not
RabbitMQ's or Redis's).

    .venv/bin/python bench/peers.py --duration 10               # apt-get install -y kannel wrk
    .venv/bin/python bench/peers.py --peer jasmin --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
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
    keep: bool = False,
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
        if keep:
            print(f"  kept {workdir}", flush=True)
        else:
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
    procs: harness.Processes,
    duration: float,
    connections: int,
    store: bool = True,
    keep: bool = False,
) -> dict[str, Any]:
    """Kannel relaying to the SMSC (its queue in its file store unless ``store`` is false)."""
    kept = "file store, not fsynced" if store else "no store"
    name = f"Kannel {kannel_version()} (`sendsms`, {kept})"

    def start(procs: harness.Processes, workdir: Path, smsc: Smsc, port: int) -> Started:
        return start_kannel(procs, workdir, smsc, port, store)

    return relay(name, start, procs, duration, connections, keep)


JASMIN_HOME = Path(os.environ.get("JASMIN_HOME", "/opt/jasmin"))


def jasmin_installed() -> bool:
    """Whether Jasmin (a virtualenv at ``$JASMIN_HOME``, default /opt/jasmin), wrk, and the
    RabbitMQ and Redis it needs (on their default ports) are all here."""
    if not (JASMIN_HOME / "bin" / "jasmind.py").exists() or not shutil.which("wrk"):
        return False
    for port in (5672, 6379):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return False
    return True


def jasmin_conf(workdir: Path, ports: dict[str, int]) -> str:
    """jasmind on 127.0.0.1 with its stores in ``workdir``, Redis database 9, the AMQP 0-9-1
    spec shipped with txAMQP, logs at WARNING."""
    spec = next(JASMIN_HOME.glob("lib/python3*/site-packages/txamqp/specs/standard/amqp0-9-1*"))
    sections = {
        "smpp-server": {"port": ports["smpp"]},
        "smpp-server-pb": {"port": ports["smpp-pb"]},
        "client-management": {"port": ports["cm"], "store_path": workdir},
        "router": {"port": ports["router"], "store_path": workdir},
        "http-api": {"port": ports["http"]},
        "jcli": {"port": ports["jcli"], "authentication": "False"},
        "redis-client": {"host": "127.0.0.1", "port": 6379, "dbid": 9},
        "amqp-broker": {"host": "127.0.0.1", "port": 5672, "spec": spec},
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += ["bind = 127.0.0.1", "log_level = WARNING"] if "port" in values else []
        lines += [f"{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def jcli(port: int, commands: list[str]) -> str:
    """Run ``commands`` on jasmind's console, one at a time; everything it answered."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), 10) as conn:
        conn.settimeout(10)

        def read(done: Callable[[bytes], bool]) -> str:
            buffer = b""
            try:
                while not done(buffer):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buffer += chunk
            except TimeoutError as exc:
                raise harness.BenchError(f"Jasmin's console went quiet after {buffer!r}") from exc
            return buffer.decode(errors="replace")

        # the greeting ends with its session's number; each answer with a prompt
        answers.append(read(lambda b: b"Session ref:" in b and b.endswith(b"\n")))
        for command in commands:
            conn.sendall(command.encode() + b"\r\n")
            answers.append(read(lambda b: b.rstrip().endswith((b"jcli :", b">"))))
    return "".join(answers)


def start_jasmin(
    procs: harness.Processes, workdir: Path, smsc: Smsc, receiver_port: int
) -> Started:
    """jasmind (with its DLR lookup and thrower) bound once to the SMSC, a user and a default
    route made through its console; the HTTP API's ``/send`` URL with its DLR callback."""
    names = ("smpp", "smpp-pb", "cm", "router", "http", "jcli")
    ports = {name: harness.free_port() for name in names}
    (workdir / "var" / "log" / "jasmin").mkdir(parents=True)
    conf = workdir / "jasmin.cfg"
    conf.write_text(jasmin_conf(workdir, ports))
    log = workdir / "jasmind.out"
    jasmind = procs.start(
        [str(JASMIN_HOME / "bin" / "python"), str(JASMIN_HOME / "bin" / "jasmind.py"),
         "-c", str(conf), "--enable-dlr-thrower", "--enable-dlr-lookup"],
        env={**os.environ, "ROOT_PATH": str(workdir)}, log=log,
    )  # fmt: skip
    harness.wait_port(ports["jcli"], jasmind, log, within=60)
    connector = f"bench{os.getpid()}"  # RabbitMQ's queues are named by it: one of our own
    said = jcli(
        ports["jcli"],
        ["group -a", "gid bench", "ok",
         "user -a", "username bench", "password bench", "gid bench", "uid bench", "ok",
         "smppccm -a", f"cid {connector}", "host 127.0.0.1", f"port {smsc.port}",
         "username cascade", "password secret", "submit_throughput 0", "ok",
         f"smppccm -1 {connector}",
         "mtrouter -a", "type defaultroute", f"connector smppc({connector})", "rate 0.00", "ok"],
    )  # fmt: skip
    if "Successfully added MTRoute" not in said:
        raise harness.BenchError(f"Jasmin's console said:\n{said[-2000:]}")
    smsc.wait_binds(1, log, within=30)
    query = urllib.parse.urlencode(
        {
            "username": "bench", "password": "bench", "from": "447700900001",
            "to": "447700900000", "content": "Your parcel arrives today.", "dlr": "yes",
            "dlr-url": f"http://127.0.0.1:{receiver_port}/status", "dlr-level": "2",
            "dlr-method": "GET",
        }
    )  # fmt: skip
    return Started({"jasmind": jasmind.pid}, f"http://127.0.0.1:{ports['http']}/send?{query}", log)


def run_jasmin(
    procs: harness.Processes, duration: float, connections: int, keep: bool = False
) -> dict[str, Any]:
    """Jasmin relaying to the SMSC (one bind, its queues in RabbitMQ, DLR maps in Redis)."""
    name = f"Jasmin {jasmin_version()} (HTTP `/send`, 1 bind)"
    return relay(name, start_jasmin, procs, duration, connections, keep)


def jasmin_version() -> str:
    """The version of Jasmin in ``$JASMIN_HOME``."""
    done = subprocess.run(
        [str(JASMIN_HOME / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('jasmin'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip()


def kannel_version() -> str:
    """Kannel's version, from dpkg ("" when unknown)."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "kannel"], capture_output=True, text=True, check=False
    )
    return done.stdout.split("-")[0].strip()


PEERS: dict[str, tuple[Callable[[], bool], Callable[..., dict[str, Any]], str]] = {
    "kannel": (kannel_installed, run_kannel, "apt-get install -y kannel wrk"),
    "jasmin": (
        jasmin_installed,
        run_jasmin,
        "python3 -m venv /opt/jasmin && /opt/jasmin/bin/pip install jasmin==0.11.0, with "
        "RabbitMQ and Redis running (apt-get install -y rabbitmq-server redis-server wrk)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=sorted(PEERS), default="kannel")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--no-store", action="store_true", help="Kannel's queue in memory only (no store file)"
    )
    harness.add_machine_options(parser)
    args = parser.parse_args(argv)
    installed, run, install = PEERS[args.peer]
    if not installed():
        print(f"{args.peer} is not installed: {install}", file=sys.stderr)
        return 1

    def measure(a: argparse.Namespace, procs: harness.Processes) -> dict[str, Any]:
        if a.peer == "kannel":
            return run_kannel(procs, a.duration, a.connections, not a.no_store, a.keep)
        return run(procs, a.duration, a.connections, keep=a.keep)

    return harness.run_benchmark("peers", args, measure, lambda r: print(json.dumps(r, indent=2)))


if __name__ == "__main__":
    sys.exit(main())
