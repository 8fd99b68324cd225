"""The benchmark harness and drivers keep working: the pieces every driver uses (processes,
ports, CPU samplers, the machine, the JSON record, the receiver), and two drivers end to end at a
tiny size with the suite's tables written from their records. No figure is checked, only that
each part runs and its checks pass."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

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
    """write_json keeps the result with what reproduces it: command, machine, commit."""
    monkeypatch.setattr(sys, "argv", ["bench/smoke.py", "--n", "5", "--json", "x.json", "--keep"])
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
