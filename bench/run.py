"""The benchmark suite: every driver in turn, each with its ceiling and (when installed) its peer
measured in the same run, and the tables written.

    make bench                                   # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --size quick   # small sizes: checks every driver still works
    .venv/bin/python bench/run.py --only accept,sms --update-benchmarks

Each benchmark runs as its own process (``bench/NAME.py ... --json``); its output goes to
``bench/results/NAME.log`` and its record to ``bench/results/NAME.json``. Then the tables are
written to ``bench/results/latest.md`` (and ``latest.json``, all the records), and with
``--update-benchmarks`` into BENCHMARKS.md between its ``suite:begin``/``suite:end`` markers
(with ``--only``, only the tables of the steps that ran, each saying when). A benchmark that
fails is reported as failed in the tables and makes the exit status 1; the others still run.

The benchmarks, each with what it is compared with in the same run:

* ``accept``: durable accepts/s of ``cascade serve`` (the accept path alone, and with its engine
  as the README starts it); ceiling: the trivial ASGI app on the same server stack; peers:
  Kannel's ``sendsms`` and Jasmin's ``/send`` (``bench/peers.py``) when installed, measured in
  every round between Cascade's runs, and each Cascade figure over the first peer's of its round;
  ``accept-sdk`` the same with the engine running and a new JWT for every request, as the
  official SDKs send them (one reused token is verified once and then cached);
* ``sms``: SMS end to end over SMPP (accept -> submit -> DLR -> delivered webhook); ceiling:
  ``SmppProvider.send`` alone against the same SMSC (``--provider-only``); peers: Kannel and
  Jasmin relaying to the same kind of SMSC, their DLR callbacks to the same kind of receiver
  (their figures from the accept step's runs);
* ``messenger``: Messenger end to end through a lean Graph API peer;
* ``webhooks``: webhooks delivered/s; ceiling: a minimal asyncio HTTP client given to the sender;
* ``timers``: lateness of failover timers (target p99 <= 100 ms);
* ``throughput``: sandbox workflows completed/s (engine and API in one process);
* ``growth``: accepts/s with finished messages already stored (``--preload 0,N,M``), against
  the empty database in the same rounds, and timer lateness with 100,000 pending timers
  (``--pending``) and with 10 million finished messages stored (``--preload``) beside neither,
  at a rate one process sustains; each preloaded database is written once a suite run and
  copied for every run that needs it;
* ``memory``: resident memory with pending workflows;
* ``nodes``: on the local PostgreSQL, one node (an API process and a worker) against two (two
  of each, one worker SIGKILLed mid-run) taking the multi-node test's mixed workflows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness

BENCHMARKS_MD = harness.REPO / "BENCHMARKS.md"
BEGIN = "<!-- suite:begin (written by bench/run.py --update-benchmarks) -->"
END = "<!-- suite:end -->"


@dataclass(frozen=True)
class Step:
    """One benchmark process of the suite: its script and its arguments at each size."""

    name: str
    script: str
    quick: str
    full: str
    #: it stores workflows before it runs: it is given the run's cache of preloaded databases
    preloads: bool = False
    #: it measures the installed peers in its rounds (``--peers auto``)
    peers: bool = False

    def argv(self, size: str) -> list[str]:
        """The script's arguments at ``size`` (quick or full)."""
        return (self.quick if size == "quick" else self.full).split()


STEPS: list[Step] = [
    # NORMAL beside FULL: Kannel's file store is written but never fsynced, which is what
    # NORMAL promises (a killed process loses nothing, a power cut may lose the last commits)
    Step("accept", "accept.py", "--duration 2 --warmup 1 --engine both --synchronous FULL,NORMAL",
         "--duration 10 --warmup 3 --engine both --synchronous FULL,NORMAL --runs 2", peers=True),
    # the official SDKs sign a new JWT for every request: 12,000 in rotation outrun the API's
    # cache of 10,000 verified tokens, so each request pays the RS256 verification
    Step("accept-sdk", "accept.py", "--duration 2 --warmup 1 --engine on --tokens 12000",
         "--duration 10 --warmup 3 --engine on --tokens 12000 --runs 2", peers=True),
    # `cascade serve` as the README starts it: one process per core (with SMPP: engine,
    # webhooks, API)
    Step("sms", "sms.py", "--n 500 --processes 0", "--n 10000 --processes 0"),
    Step("sms-provider", "sms.py", "--provider-only --n 500", "--provider-only --n 10000"),
    # full: the layout of issue 11's figure, two processes, Meta's batched callbacks
    Step("messenger", "messenger.py", "--n 300",
         "--n 8000 --connections 16 --callback-batch 50 --processes 2"),
    Step("webhooks", "webhooks.py", "--count 500 --client sender,raw",
         "--count 10000 --client sender,raw --runs 2"),
    Step("timers", "timers.py", "--n 300", "--n 10000 --rate 1500"),
    Step("throughput", "throughput.py", "--n 500", "--n 10000"),
    Step("growth-accept", "accept.py", "--duration 2 --warmup 1 --preload 0,20000",
         "--duration 10 --warmup 3 --preload 0,1000000,10000000 --runs 2", preloads=True),
    # issue 15's 50 ms with 100,000 timers pending is how the cost grows, so it is measured
    # beside no timers pending at a rate one process sustains (1,500/s is the timers step's)
    Step("growth-timers-none", "timers.py", "--n 300 --rate 800 --target-ms 50",
         "--n 10000 --rate 800 --target-ms 50"),
    Step("growth-timers", "timers.py", "--n 300 --rate 800 --pending 20000 --target-ms 50",
         "--n 10000 --rate 800 --pending 100000 --target-ms 50"),
    Step("growth-timers-stored", "timers.py", "--n 300 --rate 800 --preload 20000 --target-ms 50",
         "--n 10000 --rate 800 --preload 10000000 --target-ms 50", preloads=True),
    Step("memory", "memory.py", "--n 500 --warmup 50 --settle 0.5", "--n 100000"),
    # PostgreSQL: one node against two, one of whose workers is killed mid-run
    Step("nodes", "nodes.py", "--workflows 300", "--workflows 10000"),
]  # fmt: skip


#: the accept step measures the peers, each installed one in every round between Cascade's runs
#: (bench/peers.py), and the SMS table takes their figures end to end from the same runs
PEERS = ("--peers", "kannel,jasmin")


def run_step(step: Step, size: str, out: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run one benchmark (``extra``: arguments after the step's own); its JSON record, or
    ``{"error": ...}`` with its log's tail."""
    record = out / f"{step.name}.json"
    log = out / f"{step.name}.log"
    record.unlink(missing_ok=True)
    argv = [sys.executable, str(harness.BENCH_DIR / step.script), *step.argv(size), *extra]
    argv += ["--json", str(record)]
    print(f"== {step.name}: {' '.join(argv[1:])}", flush=True)
    # the repository root importable: nodes.py runs the multi-node test's scenario
    path = os.pathsep.join(filter(None, [str(harness.REPO), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    with log.open("wb") as sink:
        done = subprocess.run(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path},
            check=False,
        )
    seconds = time.monotonic() - started
    if done.returncode != 0 or not record.exists():
        print(f"   failed ({done.returncode}) after {seconds:.0f} s; see {log}", flush=True)
        return {"error": f"exit {done.returncode}", "log": harness.tail(log, 15)}
    print(f"   done in {seconds:.0f} s", flush=True)
    result: dict[str, Any] = json.loads(record.read_text())
    return result


# --- the tables --------------------------------------------------------------------------------


def _n(value: Any, digits: int = 0) -> str:
    """A figure for a table ("-" for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _command(record: dict[str, Any]) -> str:
    return f"`{record.get('command', '?')}`"


def _other(record: dict[str, Any], value: float | None) -> str:
    return f"other load {_n(value, 2)} cores" if value is not None else ""


def table_accept(records: dict[str, Any], key: str = "accept") -> list[str]:
    rec = records[key]
    rows = {row["config"]: row for row in rec["summary"]}
    lines = [
        "| configuration | req/s | sent or relayed /s meanwhile | p99 ms | server µs/req "
        "| vs ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        label = "ceiling: trivial ASGI app" if name == "trivial" else f"Cascade, {name}"
        if "NORMAL" in name:  # the default is FULL
            label += " (`CASCADE_SQLITE_SYNCHRONOUS=NORMAL`: durable as Kannel's file store)"
        elif name.endswith("+ engine"):
            label += " (`serve` as the README starts it)"
        lines.append(
            f"| {label} | {_n(row['requests_per_s'])} | {_n(row.get('engine_sent_per_s'))} "
            f"| {_n(row['p99_ms'], 1)} | {_n(row['server_cpu_us_per_req'])} "
            f"| {_n(row['ratio_to_trivial'], 2)} |"
        )
    measured = rec.get("peers", {})
    for peer in measured.get("summary", []):
        lines.append(
            f"| peer: {peer['name']} | {_n(peer['requests_per_s'])} "
            f"| {_n(peer['end_to_end_per_s'])} | {_n(peer['p99_ms'], 1)} "
            f"| {_n(peer['server_cpu_us_per_req'])} | {_n(peer['ratio_to_trivial'], 2)} |"
        )
    others = [row["other_cpu_cores"] for row in rows.values()]
    notes = measured.get("notes", [])
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    if measured.get("summary"):
        peer = measured["summary"][0]
        lines += [
            "",
            f"Against {peer['name']}, measured between Cascade's runs in each of the same "
            "rounds (the median of the rounds' ratios, then each round's):",
            "",
            "| configuration | / peer, same round | each round |",
            "|---|---|---|",
        ]
        for name, row in rows.items():
            if row.get("ratios_to_peer"):
                each = ", ".join(f"{ratio:.2f}" for ratio in row["ratios_to_peer"])
                lines.append(f"| Cascade, {name} | {row['ratio_to_peer']:.2f} | {each} |")
    lines += [
        "",
        f"{_command(rec)}; load generator: {rec['generator']['description']}; "
        f"other load {min(others):.2f}-{max(others):.2f} cores.",
    ]
    return lines


def _layout(record: dict[str, Any]) -> str:
    """How the run's ``cascade serve`` was laid out, read from its command line."""
    match = re.search(r"--processes (\d+)", str(record.get("command", "")))
    processes = int(match.group(1)) if match else 1
    if processes == 0:
        return "as the README starts it: engine, webhooks and API processes"
    return "in one process" if processes == 1 else f"on {processes} processes"


def table_sms(records: dict[str, Any]) -> list[str]:
    r = records["sms"]["result"]
    lines = [
        "| | SMS/s end to end | accepted/s | p50 / p99 ms (202 -> webhook) | CPU µs/SMS |",
        "|---|---|---|---|---|",
        f"| Cascade (`serve` {_layout(records['sms'])}, 2 binds) | {_n(r['end_to_end_per_s'])} "
        f"| {_n(r['accepted_per_s'])} | {_n(r['latency_p50'] * 1000)} / "
        f"{_n(r['latency_p99'] * 1000)} | {_n(r['cascade_cpu_us_per_message'])} |",
    ]
    provider = records.get("sms-provider", {}).get("result")
    if provider:
        lines.append(
            f"| ceiling: `SmppProvider.send` alone | {_n(provider['end_to_end_per_s'])} | - | - "
            f"| {_n(provider['cpu_us_per_message'])} |"
        )
    for peer in records.get("accept", {}).get("peers", {}).get("summary", []):
        lines.append(
            f"| peer: {peer['name']} | {_n(peer['end_to_end_per_s'])} "
            f"| {_n(peer['requests_per_s'])} | - | {_n(peer['cpu_us_per_message'])} |"
        )
    failed = {k: v for k, v in r["checks"].items() if v}
    parts = [f"{part} {_n(us)}" for part, us in r.get("serve_parts_cpu_us_per_message", {}).items()]
    if parts:
        lines += ["", f"Cascade's CPU µs an SMS, process by process: {', '.join(parts)}."]
    lines += [
        "",
        f"{_command(records['sms'])}; {r['n']:,} SMS; checks "
        f"{failed or 'all passed'}; {_other(r, r['other_load_cores'])}.",
    ]
    return lines


def table_messenger(records: dict[str, Any]) -> list[str]:
    r = records["messenger"]["result"]
    failed = {k: v for k, v in r["checks"].items() if v}
    return [
        "| messages/s end to end | accepted/s | p50 / p99 ms (202 -> webhook) "
        "| `cascade serve` CPU µs/message |",
        "|---|---|---|---|",
        f"| {_n(r['end_to_end_per_s'])} | {_n(r['accepted_per_s'])} "
        f"| {_n(r['latency_p50'] * 1000)} / {_n(r['latency_p99'] * 1000)} "
        f"| {_n(r['cpu_us_per_message']['cascade serve'])} |",
        "",
        f"{_command(records['messenger'])}; {r['n']:,} messages; no ceiling or peer measured; "
        f"checks {failed or 'all passed'}; "
        f"{_other(r, r['other_load_cores'])}.",
    ]


def table_webhooks(records: dict[str, Any]) -> list[str]:
    rec = records["webhooks"]
    names = {"sender": "WebhookSender (its own client)", "raw": "ceiling: minimal asyncio client"}
    lines = [
        "| HTTP client | deliveries/s (median) | min-max | unrecorded at most "
        "| sender's process CPU µs a delivery |",
        "|---|---|---|---|---|",
    ]
    for row in rec["result"]["summary"]:
        lines.append(
            f"| {names[row['client']]} | {_n(row['per_second'])} "
            f"| {_n(row['min'])}-{_n(row['max'])} | {row['unrecorded_max']} "
            f"| {_n(row.get('cpu_us_per_delivery'))} |"
        )
    return [*lines, "", f"{_command(rec)}; load average {rec['machine']['load_average_1m']}."]


def _timers_header(rec: dict[str, Any]) -> list[str]:
    target = rec["result"].get("target_p99_ms", 100.0)
    return [
        f"| | workflows | accepted/s | p50 ms | p99 ms | max ms | p99 <= {target:g} ms |",
        "|---|---|---|---|---|---|---|",
    ]


def _timers_row(label: str, rec: dict[str, Any]) -> str:
    r = rec["result"]
    s = r["lateness"]["SMS submitted"]
    return (
        f"| {label} | {r['workflows']:,} | {_n(r['accept_rate'])} | {_n(s['p50_ms'], 1)} "
        f"| {_n(s['p99_ms'], 1)} | {_n(s['max_ms'], 1)} "
        f"| {'met' if r['target_met'] else 'MISSED'} |"
    )


def table_timers(records: dict[str, Any]) -> list[str]:
    lines = [
        *_timers_header(records["timers"]),
        _timers_row("due -> SMS submitted", records["timers"]),
    ]
    return [*lines, "", f"{_command(records['timers'])}."]


def table_throughput(records: dict[str, Any]) -> list[str]:
    rec = records["throughput"]
    r = rec["result"]
    return [
        "| workflows/s | jobs/s | accepted/s | server CPU µs/workflow | machine busy cores |",
        "|---|---|---|---|---|",
        f"| {_n(r['workflows_per_s'])} | {_n(r['jobs_per_s'])} | {_n(r['accept_rate'])} "
        f"| {_n(r['server_cpu_us_per_workflow'])} | {_n(r['machine_busy_cores'], 2)} |",
        "",
        f"{_command(rec)}.",
    ]


def table_growth(records: dict[str, Any]) -> list[str]:
    lines = []
    accept = records.get("growth-accept")
    if accept and "summary" in accept:
        rows = [row for row in accept["summary"] if row["config"].startswith("sqlite")]
        base = rows[0]["requests_per_s"]
        lines += ["| stored before the run | accepts/s | server µs/req | of the empty rate |"]
        lines += ["|---|---|---|---|"]
        for row, count in zip(rows, accept["options"]["preload"], strict=True):
            lines.append(
                f"| {f'{count:,} finished SMS' if count else 'nothing'} "
                f"| {_n(row['requests_per_s'])} | {_n(row['server_cpu_us_per_req'])} "
                f"| {row['requests_per_s'] / base:.2f} |"
            )
        lines += ["", f"{_command(accept)} (the rounds alternate the databases).", ""]
    names = ("growth-timers-none", "growth-timers", "growth-timers-stored")
    timers = [rec for rec in map(records.get, names) if rec and "result" in rec]
    if timers:
        lines += _timers_header(timers[-1])
        for rec in timers:
            pending, stored = rec["options"]["pending"], rec["options"].get("preload", 0)
            label = "nothing stored, no timers pending"
            if pending:
                label = f"{pending:,} timers pending"
            elif stored:
                label = f"{stored:,} finished SMS stored"
            lines.append(_timers_row(label, rec))
        lines += ["", "; ".join(_command(rec) for rec in timers) + "."]
    return lines


def table_memory(records: dict[str, Any]) -> list[str]:
    rec = records["memory"]
    r = rec["result"]
    lines = ["| point | VmRSS MB | growth MB |", "|---|---|---|"]
    for point in r["points"]:
        lines.append(f"| {point['point']} | {point['rss_mb']:.1f} | {point['growth_mb']:+.1f} |")
    return [
        *lines,
        "",
        f"{_command(rec)}; {r['pending_workflows']:,} pending workflows; SQLite page cache "
        f"{r.get('cache_mb', 64)} MiB a connection; target < 50 MB growth: "
        f"{'met' if r['target_met'] else 'MISSED'}.",
    ]


def table_nodes(records: dict[str, Any]) -> list[str]:
    rec = records["nodes"]
    lines = [
        "| layout | workflows | accepts/s | end to end /s | last final after last accept s "
        "| timer lateness p50 / p99 / max ms | killed worker's jobs | all final once "
        "| CPU s: machine / these processes / wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in rec["result"]["runs"]:
        late, cpu = run["timer_lateness_ms"], run["cpu_s"]
        broken = {k: v for k, v in run["final_once_violations"].items() if v}
        lines.append(
            f"| {run['layout']} | {run['workflows']:,} | {_n(run['accept_per_s'])} "
            f"| {_n(run['end_to_end_per_s'])} | {_n(run['last_final_after_last_accept_s'], 1)} "
            f"| {_n(late['p50'], 1)} / {_n(late['p99'], 1)} / {_n(late['max'], 1)} "
            f"| {run['killed_worker_jobs'] or '-'} | {broken or 'yes'} "
            f"| {_n(cpu['machine'])} / {_n(cpu['this_run'])} / {_n(cpu['wall'])} |"
        )
    return [*lines, "", f"{_command(rec)}; PostgreSQL on this machine, a schema per layout."]


TABLES: list[tuple[str, str, Callable[[dict[str, Any]], list[str]]]] = [
    ("Durable accepts (`POST /v0.1/dispatch`)", "accept", table_accept),
    (
        "Durable accepts with a new JWT for every request, as the official SDKs send them",
        "accept-sdk",
        lambda records: table_accept(records, "accept-sdk"),
    ),
    ("SMS end to end over SMPP", "sms", table_sms),
    ("Messenger end to end", "messenger", table_messenger),
    ("Webhook delivery", "webhooks", table_webhooks),
    ("Timer lateness", "timers", table_timers),
    ("Sandbox throughput", "throughput", table_throughput),
    ("How cost grows with what is stored", "growth-accept", table_growth),
    ("Memory", "memory", table_memory),
    ("Many nodes on PostgreSQL", "nodes", table_nodes),
]


def render(records: dict[str, Any], size: str) -> str:
    """The tables of one suite run, as Markdown."""
    facts = next((r["machine"] for r in records.values() if "machine" in r), harness.machine())
    commit = next((r["commit"] for r in records.values() if r.get("commit")), harness.commit())
    lines = [
        f"Suite run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at `{commit}`, "
        f"`python bench/run.py --size {size}`, on {harness.describe_machine(facts)}. "
        "Each figure's ceiling and peer were measured in the same run; the machine is "
        "shared, so compare ratios and CPU per message rather than rates across runs.",
    ]
    for title, key, table in TABLES:
        lines += ["", f"### {title}", ""]
        record = records.get(key)
        if record is None:
            lines.append("(not run)")
        elif "error" in record:
            lines += [f"**failed** ({record['error']}):", "", "```", record["log"], "```"]
        else:
            try:
                lines += table(records)
            except (KeyError, TypeError, ZeroDivisionError) as exc:
                lines.append(f"**table not written**: {type(exc).__name__}: {exc}")
    return "\n".join(lines) + "\n"


def _sections(text: str) -> tuple[str, dict[str, str]]:
    """A block of tables: what precedes its first ``### `` title, and each titled section."""
    head, *parts = text.split("\n### ")
    return head, {part.split("\n", 1)[0]: part for part in parts}


def merge_tables(old: str, new: str, rerun: set[str], note: str) -> str:
    """The block ``old`` with the sections titled in ``rerun`` taken from ``new``, each ending
    with ``note`` (what re-ran it, when); its first line and the other sections stay as they
    were, so that a table keeps saying which run it comes from."""
    head, sections = _sections(old.strip("\n"))
    fresh = _sections(new.strip("\n"))[1]
    for title in rerun:
        sections[title] = fresh[title].rstrip("\n") + f"\n\n{note}\n"
    return "\n### ".join([head, *sections.values()]) + "\n"


def update_benchmarks(text: str, rerun: set[str] | None = None, note: str = "") -> None:
    """Put ``text`` between the suite markers of BENCHMARKS.md; with ``rerun``, only the
    sections of those titles (:func:`merge_tables`)."""
    doc = BENCHMARKS_MD.read_text()
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise harness.BenchError(f"{BENCHMARKS_MD.name} has no {BEGIN!r} ... {END!r} block")
    if rerun is not None:
        text = merge_tables(doc[start + len(BEGIN) : end], text, rerun, note)
    BENCHMARKS_MD.write_text(
        doc[: start + len(BEGIN)] + "\n" + text.strip("\n") + "\n\n" + doc[end:]
    )
    print(f"written into {BENCHMARKS_MD}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["quick", "full"], default="full")
    parser.add_argument("--only", help="comma-separated benchmarks (default: all)")
    parser.add_argument(
        "--peers",
        choices=["auto", "off"],
        default="auto",
        help="auto: measure Kannel and Jasmin when installed; off: never",
    )
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR, help="where to write")
    parser.add_argument(
        "--update-benchmarks",
        action="store_true",
        help="also write the tables into BENCHMARKS.md (between its suite markers)",
    )
    args = parser.parse_args(argv)
    harness.install_signal_handlers()
    known = {step.name for step in STEPS} | {s.name.split("-")[0] for s in STEPS}
    only = set(args.only.split(",")) if args.only else known
    if only - known:
        parser.error(f"unknown: {', '.join(sorted(only - known))}; choose from {sorted(known)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {harness.describe_machine()}", flush=True)
    records: dict[str, Any] = {}
    # the preloaded databases, each made once for the steps that store workflows first
    cache = Path(tempfile.mkdtemp(prefix="cascade-bench-stored-"))
    try:
        for step in STEPS:
            if step.name in only or step.name.split("-")[0] in only:
                extra: tuple[str, ...] = ()
                if step.peers and args.peers == "auto":
                    extra = PEERS
                elif step.preloads:
                    extra = ("--preload-cache", str(cache))
                records[step.name] = run_step(step, args.size, args.out, extra)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    markdown = render(records, args.size)
    (args.out / "latest.md").write_text(markdown)
    (args.out / "latest.json").write_text(json.dumps(records, indent=2, default=str) + "\n")
    print(f"\n{markdown}\ntables written to {args.out / 'latest.md'}", flush=True)
    if args.update_benchmarks and args.only:
        # the tables of the steps that ran replace theirs; the others stay as the last run left
        rerun = {title for title, key, _ in TABLES if key in records}
        note = (
            f"(This table re-run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at "
            f"`{harness.commit()}`: `python bench/run.py --size {args.size} --only {args.only}`.)"
        )
        update_benchmarks(markdown, rerun, note)
    elif args.update_benchmarks:
        update_benchmarks(markdown)
    failed = [name for name, record in records.items() if "error" in record]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
