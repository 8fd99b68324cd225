"""The benchmark harness and drivers keep working: the pieces every driver uses (processes,
ports, CPU samplers, the machine, the JSON record, the receiver), and two drivers end to end at a
tiny size with the suite's tables written from their records. No figure is checked, only that
each part runs and its checks pass."""

from __future__ import annotations

import http.client
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import accept  # noqa: E402
import enginelib  # noqa: E402
import harness  # noqa: E402
import run as suite  # noqa: E402


@pytest.fixture
def procs() -> Iterator[harness.Processes]:
    """A process registry that is emptied after the test."""
    registry = harness.Processes()
    try:
        yield registry
    finally:
        registry.stop_all()


def test_free_port_can_be_listened_on() -> None:
    """free_port names a port on 127.0.0.1 that a server can bind at once."""
    import socket

    port = harness.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_stop_ends_the_whole_process_group_and_stop_all_what_is_left(
    procs: harness.Processes, tmp_path: Path
) -> None:
    """A started process and the child it spawned both end on stop; stop_all ends the rest."""
    script = (
        "import subprocess, time; child = subprocess.Popen(['sleep', '60']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    first = procs.start([sys.executable, "-c", script], log=tmp_path / "first.log")
    second = procs.start(["sleep", "60"], log=tmp_path / "second.log")
    deadline = time.monotonic() + 10
    while not (tmp_path / "first.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "first.log").read_text())
    procs.stop(first)
    assert first.poll() is not None
    deadline = time.monotonic() + 5  # a signal is delivered, not waited for
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
    procs.stop_all()
    assert second.poll() is not None


def _gone(pid: int) -> bool:
    """Whether a process has ended (no longer there, or a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_usage_counts_a_busy_child_and_this_process(
    procs: harness.Processes, tmp_path: Path
) -> None:
    """Usage gives a CPU-burning process its seconds, and names the rest of the machine."""
    burn = procs.start(
        [sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
         "while time.process_time() < end: pass\ntime.sleep(60)"],
        log=tmp_path / "burn.log",
    )  # fmt: skip
    usage = harness.Usage({"burn": burn.pid}, loops=["burn"])
    time.sleep(1.0)
    measured = usage.stop()
    assert measured["cpu_s"]["burn"] > 0.1
    assert measured["cpu_s"]["burn: event loop thread"] > 0.1
    assert measured["wall_s"] >= 1.0
    assert measured["other_load_cores"] >= 0.0
    assert "load generator (this process)" in measured["cpu_s"]


def test_the_json_record_names_command_machine_and_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_json keeps the result with what reproduces it: command, machine, commit; not
    where the record went or where preloaded databases were copied from."""
    argv = ["bench/smoke.py", "--n", "5", "--json", "x.json", "--preload-cache", "cache", "--keep"]
    monkeypatch.setattr(sys, "argv", argv)
    path = harness.write_json("smoke", {"result": {"x": 1}}, str(tmp_path / "out.json"))
    assert path is not None
    record = json.loads(path.read_text())
    assert record["benchmark"] == "smoke"
    assert record["result"] == {"x": 1}
    assert record["machine"]["nproc"] == os.cpu_count()
    assert {"cpu", "python", "sqlite", "packages", "load_average_1m"} <= set(record["machine"])
    assert record["command"] == "bench/smoke.py --n 5 --keep"
    assert "commit" in record
    assert str(record["machine"]["nproc"]) in harness.describe_machine(record["machine"])


def _accept_run(config: str, rnd: int, rate: float) -> accept.RunResult:
    """A measured accept run with nothing but its configuration, round and rate filled in."""
    return accept.RunResult(config, rnd, rate, *(0.0,) * 3, 0, 0, *(0.0,) * 5, 0)


def _peer_run(rnd: int, rate: float) -> dict[str, Any]:
    """A Kannel run of one round, as bench/peers.py reports it."""
    figures = {"p99_ms": 500.0, "end_to_end_per_s": rate / 2, "cpu_us_per_message": 800.0}
    return {"peer": "kannel", "round": rnd, "name": "Kannel", "requests_per_s": rate,
            "server_cpu_us_per_req": 800.0, **figures}  # fmt: skip


def test_cascade_is_compared_with_the_peer_of_its_own_round() -> None:
    """Each round's Cascade rate is divided by the peer's rate of the same round, not by the
    peer's median: a slow minute for both is a ratio of one, and the suite's table says so."""
    configs = accept._configs(["sqlite"], ["FULL"], "on", [0])
    name = configs[1].name
    results = [
        _accept_run("trivial", 1, 10_000), _accept_run(name, 1, 2_000),
        _accept_run("trivial", 2, 20_000), _accept_run(name, 2, 4_000),
    ]  # fmt: skip
    peer_runs = [_peer_run(1, 1_000), _peer_run(2, 4_000)]
    rows = accept.summarize(results, configs, peer_runs)
    cascade = next(row for row in rows if row["config"] == name)
    assert cascade["ratios_to_peer"] == [2.0, 1.0]
    assert cascade["ratio_to_peer"] == 1.5  # against the medians it would be 3,000/2,500
    assert math.isnan(rows[0]["ratio_to_peer"])  # the ceiling is not compared with a peer
    (peer,) = accept.summarize_peers(peer_runs, results)
    assert peer["requests_per_s"] == 2_500
    assert peer["ratio_to_trivial"] == pytest.approx(0.15)
    record = {
        "command": "bench/accept.py --peers kannel",
        "generator": {"description": "wrk"},
        "summary": rows,
        "peers": {"summary": [peer], "runs": peer_runs, "notes": ["jasmin not installed"]},
    }
    markdown = suite.render({"accept": record}, "quick")
    assert "| peer: Kannel | 2,500 | 1,250 | 500.0 | 800 | 0.15 |" in markdown
    assert f"| Cascade, {name} | 1.50 | 2.00, 1.00 |" in markdown
    assert "- jasmin not installed" in markdown


def _timers_record(pending: int, p99_ms: float, stored: int = 0) -> dict[str, Any]:
    """A timers.py record held to 50 ms, as the suite's growth steps run it."""
    lateness = {"SMS submitted": {"p50_ms": 10.0, "p99_ms": p99_ms, "max_ms": p99_ms + 5}}
    return {
        "command": f"bench/timers.py --pending {pending} --preload {stored}",
        "options": {"pending": pending, "preload": stored},
        "result": {"workflows": 10_000, "accept_rate": 800.0, "lateness": lateness,
                   "target_p99_ms": 50.0, "target_met": p99_ms <= 50.0},
    }  # fmt: skip


def test_the_growth_table_sets_pending_timers_and_stored_messages_beside_neither() -> None:
    """The growth table shows timer lateness with nothing stored, with pending timers and with
    stored messages at one rate, each against the target the runs were held to."""
    lines = suite.table_growth(
        {"growth-timers-none": _timers_record(0, 21.0),
         "growth-timers": _timers_record(100_000, 61.0),
         "growth-timers-stored": _timers_record(0, 30.0, stored=10_000_000)}
    )  # fmt: skip
    assert "| p99 <= 50 ms |" in lines[0]
    assert (
        "| nothing stored, no timers pending | 10,000 | 800 | 10.0 | 21.0 | 26.0 | met |" in lines
    )
    assert "| 100,000 timers pending | 10,000 | 800 | 10.0 | 61.0 | 66.0 | MISSED |" in lines
    assert "| 10,000,000 finished SMS stored | 10,000 | 800 | 10.0 | 30.0 | 35.0 | met |" in lines


def test_the_sms_table_splits_cascades_cpu_by_process() -> None:
    """Under the SMS table, the CPU an SMS of each of serve's processes, by the name serve
    gives it; the whole is the table's own figure."""
    parts = {"engine": 304.0, "webhook": 173.0, "api-1": 100.0}
    result = {"end_to_end_per_s": 2525.0, "accepted_per_s": 5600.0, "latency_p50": 1.6,
              "latency_p99": 2.1, "cascade_cpu_us_per_message": 577.0,
              "serve_parts_cpu_us_per_message": parts, "checks": {"lost": 0}, "n": 10_000,
              "other_load_cores": 0.0}  # fmt: skip
    lines = suite.table_sms({"sms": {"command": "bench/sms.py --processes 0", "result": result}})
    assert "| 2,525 | 5,600 | 1,600 / 2,100 | 577 |" in lines[2]
    split = "Cascade's CPU µs an SMS, process by process: engine 304, webhook 173, api-1 100."
    assert split in lines


def test_the_nodes_table_shows_each_layout_and_whether_all_ended_once() -> None:
    """The many-nodes table has a row per layout with its figures, and names the rule a
    layout broke instead of "yes"."""

    def layout(name: str, killed: int, broken: int) -> dict[str, Any]:
        return {
            "layout": name, "workflows": 10_000, "accept_per_s": 857, "end_to_end_per_s": 148,
            "last_final_after_last_accept_s": 56.04,
            "timer_lateness_ms": {"n": 2500, "p50": 20.8, "p99": 25.0, "max": 25.2},
            "final_once_violations": {"wrong_state": 0, "not_one_ending": broken},
            "killed_worker_jobs": killed,
            "cpu_s": {"machine": 123.4, "this_run": 57.2, "wall": 72.0},
        }  # fmt: skip

    record = {
        "command": "bench/nodes.py --workflows 10000",
        "result": {"runs": [layout("1 API + 1 worker", 0, 0),
                            layout("2 API + 2 workers, one worker SIGKILLed", 101, 2)]},
    }  # fmt: skip
    lines = suite.table_nodes({"nodes": record})
    assert (
        "| 1 API + 1 worker | 10,000 | 857 | 148 | 56.0 | 20.8 / 25.0 / 25.2 | - | yes "
        "| 123 / 57 / 72 |" in lines
    )
    assert "| 101 | {'not_one_ending': 2} |" in lines[3]
    assert lines[-1].startswith("`bench/nodes.py --workflows 10000`")


def test_a_stored_database_the_disk_cannot_hold_is_refused_before_it_is_written(
    tmp_path: Path,
) -> None:
    """Ten billion workflows need more disk than any here: refused at once, nothing made."""
    with pytest.raises(harness.BenchError, match="GB free"):
        harness.stored_database(tmp_path / "cascade.db", 10**10, harness.clean_env(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_stored_database_is_written_once_and_copied(tmp_path: Path) -> None:
    """With a cache, the first database of a count is written there and the next is a copy;
    each holds the stored workflows of its one account, and an application can be added."""
    cache = tmp_path / "cache"
    cache.mkdir()
    env = harness.clean_env()
    made = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        db = tmp_path / name / "cascade.db"
        harness.stored_database(db, 30, env, cache)
        made.append(db)
        run_env = {**env, "CASCADE_DATABASE_URL": f"sqlite:///{db}"}
        harness.cli(["app", "create", name, "--private-key-file", str(db.parent / "k")],
                    run_env, db.parent)  # fmt: skip
    assert sorted(p.name for p in cache.iterdir()) == ["stored-30.db"]
    for db in made:
        conn = sqlite3.connect(db)
        try:
            accounts = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
            stored = conn.execute(
                "SELECT count(*) FROM workflows WHERE id <= ?", (harness.PRELOADED,)
            ).fetchone()[0]
            apps = conn.execute("SELECT count(*) FROM applications").fetchone()[0]
        finally:
            conn.close()
        assert (accounts, stored, apps) == (1, 30, 2)


def test_a_partial_suite_run_replaces_only_its_own_tables() -> None:
    """With --only, the tables of the steps that ran replace theirs, each saying when it was
    re-run; the first line and the other tables stay as the whole run left them."""
    old = "Suite run of then.\n\n### A\n\nold a\n\n### B\n\nold b\n"
    new = "Suite run of now.\n\n### A\n\nnew a\n\n### B\n\n(not run)\n"
    merged = suite.merge_tables(old, new, {"A"}, "(re-run now)")
    assert merged == ("Suite run of then.\n\n### A\n\nnew a\n\n(re-run now)\n\n### B\n\nold b\n")


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; nothing gives NaN."""
    values = [float(i) for i in range(1, 101)]
    assert harness.percentile(values, 50) == 50.0
    assert harness.percentile(values, 99) == 99.0
    assert harness.percentile([], 50) != harness.percentile([], 50)


def test_the_receiver_notes_each_webhook(procs: harness.Processes, tmp_path: Path) -> None:
    """bench/receiver.py answers 204 and reports status, id and delivery id of what it got."""
    receiver, port = enginelib.start_receiver(procs, tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for delivery in ("d1", "d2", "d2"):
        conn.request(
            "POST",
            "/status",
            body=b'{"message_uuid":"m1","status":"delivered"}',
            headers={"X-Cascade-Delivery-Id": delivery, "Authorization": "Bearer t"},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 204
    conn.close()
    dump = harness.get_json(port, "/dump")
    assert dump["requests"] == 3
    assert dump["delivery_ids"] == 2
    assert dump["counts"] == {"delivered": 3}
    assert [seen[1:] for seen in dump["seen"]] == [["m1", "delivered"]] * 3
    assert dump["samples"][0]["token"] == "t"
    procs.stop(receiver)


def _driver(script: str, *args: str, out: Path) -> dict[str, Any]:
    """Run a driver with --json; its record (the test fails with its output if it fails)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record: dict[str, Any] = json.loads(out.read_text())
    return record


def test_the_webhook_and_sms_drivers_run_and_the_suite_writes_their_tables(
    tmp_path: Path,
) -> None:
    """webhooks.py and sms.py pass their own checks at a tiny size; the suite tabulates them."""
    webhooks = _driver(
        "webhooks.py", "--count", "40", "--client", "sender,raw", out=tmp_path / "webhooks.json"
    )
    assert [row["client"] for row in webhooks["result"]["summary"]] == ["sender", "raw"]
    sms = _driver("sms.py", "--n", "30", "--connections", "4", out=tmp_path / "sms.json")
    result = sms["result"]
    assert result["n"] == 30
    assert not any(result["checks"].values())
    assert result["receiver_counts"]["delivered"] == 30
    markdown = suite.render({"webhooks": webhooks, "sms": sms}, "quick")
    assert "| ceiling: minimal asyncio client |" in markdown
    assert "| Cascade (`serve` in one process, 2 binds) |" in markdown
    assert "### Timer lateness\n\n(not run)" in markdown


def test_the_in_process_messenger_lifecycle_runs(tmp_path: Path) -> None:
    """messenger_lifecycle.py (the callgrind driver) delivers its messages through the lean
    Graph and prints its CPU per message."""
    root = BENCH.parent
    done = subprocess.run(
        [sys.executable, str(BENCH / "messenger_lifecycle.py"), "20"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "20 messages:" in done.stdout
