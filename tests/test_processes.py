"""``cascade serve`` on several processes (``cascade.processes``): the engine in one child (its
webhook deliveries in another when it holds SMPP connections) and the API in another, a dead
child started again, SIGTERM stopping all, children stopping when the parent is killed, on
SQLite and PostgreSQL. Each test runs the installed command."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cascade import processes
from cascade.config import Settings
from cascade.processes import MAX_QUICK_FAILURES, Child, ProcessSupervisor
from cascade.runtime import engine_children
from tests.contract.conftest import postgres_schema, postgres_schemas, postgres_url
from tests.running import cascade_env
from tests.test_dev_smsc import free_port

__all__ = ["postgres_schema", "postgres_schemas", "postgres_url"]  # fixtures used here

CASCADE = str(Path(sys.executable).parent / "cascade")
SMS = {
    "to": {"type": "sms", "number": "447700900000"},
    "from": {"type": "sms", "number": "447700900001"},
    "message": {"content": {"type": "text", "text": "hello"}},
}


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition: object, within: float = 20.0) -> None:
    """Poll ``condition`` (a callable) until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@dataclass
class Serve:
    """A running ``cascade serve --processes 2`` and how to talk to it."""

    process: subprocess.Popen[bytes]
    url: str
    auth: tuple[str, str]
    log: Path

    def send_and_wait(self) -> dict[str, object]:
        """POST one sandbox SMS and wait until it reads back delivered (the engine, in its
        own process, sent it); its final read."""
        posted = httpx.post(f"{self.url}/v0.1/messages", json=SMS, auth=self.auth, timeout=10)
        assert posted.status_code == 202, posted.text
        uuid = posted.json()["message_uuid"]
        found: dict[str, object] = {}

        def delivered() -> bool:
            nonlocal found
            found = httpx.get(f"{self.url}/v0.1/messages/{uuid}", auth=self.auth).json()
            return found.get("status") == "delivered"

        wait_until(delivered)
        return found

    def family(self) -> list[int]:
        """The two children (engine, API; the sandbox, no SMPP), once both run."""
        wait_until(lambda: len(children(self.process.pid)) == 2)
        return children(self.process.pid)


@contextlib.contextmanager
def running(tmp_path: Path, database: str) -> Iterator[Serve]:
    """``cascade serve --processes 2`` on ``database``, until the block ends; then stopped
    (SIGKILL if need be), children included."""
    port = free_port()
    env = cascade_env()
    credentials = tmp_path / "cascade.credentials"
    env.update(
        CASCADE_DATABASE_URL=database,
        CASCADE_SANDBOX_SPEED="20",
        CASCADE_CREDENTIALS_FILE=str(credentials),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CASCADE, "serve", "--port", str(port), "--processes", "2"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/health").status_code == 200
        except httpx.TransportError:
            return False

    family: list[int] = []
    try:
        wait_until(healthy)
        family = children(process.pid)
        lines = credentials.read_text().splitlines()
        values = dict(line.split("=", 1) for line in lines if "=" in line)
        yield Serve(process, url, (values["CASCADE_API_KEY"], values["CASCADE_API_SECRET"]), log)
    finally:
        family += children(process.pid)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``cascade serve --processes 2`` on a SQLite file in ``tmp_path``."""
    with running(tmp_path, f"sqlite:///{tmp_path / 'cascade.db'}") as serving:
        yield serving


class Hooks(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: records each POST's JSON body, answers 200."""

    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_the_engine_runs_apart_from_the_api_and_sends(serve: Serve, tmp_path: Path) -> None:
    """Two children, engine and API (no SMPP connection: the webhooks stay in the engine's
    process); a message accepted by the API process is sent by the engine process, reads back
    delivered, and its two status webhooks arrive; SIGTERM stops the children and the parent
    (0)."""
    family = serve.family()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        database = f"sqlite:///{tmp_path / 'cascade.db'}"
        status_url = f"http://127.0.0.1:{receiver.server_address[1]}/status"
        subprocess.run(
            [CASCADE, "account", "set", "--status-url", status_url, "--database", database],
            check=True,
            capture_output=True,
        )
        found = serve.send_and_wait()
        assert found["status"] == "delivered"
        wait_until(lambda: {hook.get("status") for hook in Hooks.received} >= {"delivered"})
    finally:
        receiver.shutdown()
    assert [hook["message_uuid"] for hook in Hooks.received] == [found["message_uuid"]] * 2
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(30) == 0
    assert not any(alive(pid) for pid in family)
    text = serve.log.read_text()
    assert "processes=['engine', 'api-1']" in text
    assert "jobs=all" in text
    assert text.count("cascade.account_created") == 1  # made once, by the parent


def test_webhooks_go_apart_from_an_engine_holding_smpp_connections(tmp_path: Path) -> None:
    """With SMPP connections configured the webhook deliveries run in a process of their own
    and the engine's process runs the rest of its jobs (as CASCADE_ENGINE_JOBS narrows them);
    without SMPP, or without webhook jobs, or with only webhook jobs, the engine is one
    process."""
    smpp = tmp_path / "cascade.toml"
    smpp.write_text(
        '[smpp]\n[[smpp.connections]]\nname = "sink"\nhost = "127.0.0.1"\n'
        'system_id = "cascade"\npassword = "secret"\n'
    )

    def layout(jobs: str, config: Path | None = smpp) -> list[tuple[str, str]]:
        settings = Settings(engine_jobs=jobs, config_file=config)
        return [
            (child.name, child.run.args[0].engine_jobs)  # type: ignore[attr-defined]
            for child in engine_children(settings)
        ]

    assert layout("all") == [
        ("engine", "send,step_timeout,report_horizon"),
        ("webhooks", "webhook"),
    ]
    assert layout("send,webhook") == [("engine", "send"), ("webhooks", "webhook")]
    assert layout("all", config=None) == [("engine", "all")]
    assert layout("send,step_timeout") == [("engine", "send,step_timeout")]
    assert layout("webhook") == [("engine", "webhook")]


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ("smpp = 1\n", "[smpp] must be a table"),
        ('[smpp]\nhost = "127.0.0.1"\n', "invalid SMPP settings: smpp.connections"),
    ],
)
def test_a_bad_smpp_table_stops_serve_before_any_child_starts(
    tmp_path: Path, table: str, said: str
) -> None:
    """``serve`` on several processes with a configuration file whose SMPP table is wrong
    says what is wrong and exits with status 1 at once, rather than serve the API while the
    engine's children fail and are restarted over and over."""
    config = tmp_path / "cascade.toml"
    config.write_text(table)
    env = cascade_env()
    env.update(
        CASCADE_DATABASE_URL=f"sqlite:///{tmp_path / 'cascade.db'}",
        CASCADE_CONFIG_FILE=str(config),
        CASCADE_CREDENTIALS_FILE=str(tmp_path / "cascade.credentials"),
    )
    done = subprocess.run(
        [CASCADE, "serve", "--port", str(free_port()), "--processes", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert said in output
    assert "process_exited" not in output
    assert "Traceback" not in output


def test_a_child_that_dies_is_started_again(serve: Serve) -> None:
    """SIGKILL the engine process: the parent starts a new one, which sends the next message."""
    engine = serve.family()[0]
    os.kill(engine, signal.SIGKILL)
    wait_until(lambda: engine not in children(serve.process.pid))
    wait_until(lambda: len(children(serve.process.pid)) == 2)
    assert serve.send_and_wait()["status"] == "delivered"
    assert "serve.process_exited" in serve.log.read_text()


def test_the_children_stop_when_the_parent_is_killed(serve: Serve) -> None:
    """SIGKILL the parent (which cannot stop its children then): the children stop on their
    own within a few seconds."""
    family = serve.family()
    serve.process.kill()
    serve.process.wait()
    wait_until(lambda: not any(alive(pid) for pid in family), within=30)
    assert "serve.parent_gone" in serve.log.read_text()


@pytest.mark.postgres
def test_on_postgresql(tmp_path: Path, postgres_schema: str) -> None:
    """The same on PostgreSQL: the API process accepts, the engine process sends."""
    with running(tmp_path, postgres_schema) as serving:
        serving.family()
        assert serving.send_and_wait()["status"] == "delivered"


def test_each_child_is_named_for_ps_and_top(tmp_path: Path) -> None:
    """A child shows in ps and top as ``cascade <its name>``, cut to the 15 bytes Linux keeps,
    so that an operator can tell the engine from the webhooks and the API processes."""
    seen = {name: tmp_path / name for name in ("engine", "webhooks")}

    def naming(name: str) -> Child:
        def run() -> int:
            seen[name].write_text(Path("/proc/self/comm").read_text())
            time.sleep(60)
            return 0

        return Child(name, run)

    def stop_when_both_said() -> None:
        wait_until(lambda: all(path.exists() for path in seen.values()))
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_both_said, daemon=True)
    stopper.start()
    supervisor = ProcessSupervisor([naming("engine"), naming("webhooks")])
    assert supervisor.run() == 0
    assert seen["engine"].read_text() == "cascade engine\n"
    assert seen["webhooks"].read_text() == "cascade webhook\n"


def test_a_child_that_never_starts_stops_the_service() -> None:
    """A child whose first five starts each end at once (a broken setting) stops the
    supervisor with status 1, after five starts; its sibling is stopped with it."""
    starts: list[int] = []
    sibling = Child("api-1", lambda: (time.sleep(60), 0)[1])

    def broken() -> int:
        return 3

    child = Child("engine", broken)
    supervisor = ProcessSupervisor([child, sibling], first_delay=0.01)
    assert supervisor.run() == 1
    starts.extend(child.exits)
    assert starts == [3] * MAX_QUICK_FAILURES
    assert sibling.pid is None  # stopped (SIGTERM) with the service
    assert sibling.exits


def test_a_child_that_once_ran_is_restarted_however_often_it_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that ran a steady spell before is started again past five quick deaths in a
    row (a database outage must not end the service); SIGTERM then stops all with status 0."""
    monkeypatch.setattr(processes, "STEADY_AFTER", 0.3)
    marker = Path(f"/tmp/cascade-test-steady-{os.getpid()}")  # noqa: S108 (a per-run name)
    marker.unlink(missing_ok=True)

    def once_steady() -> int:
        if not marker.exists():
            marker.touch()
            time.sleep(0.5)  # the first start runs past STEADY_AFTER
        return 1

    child = Child("engine", once_steady)
    supervisor = ProcessSupervisor([child], first_delay=0.01)
    stopper = threading.Timer(6.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    stopper.start()
    try:
        assert supervisor.run() == 0
    finally:
        stopper.cancel()
        marker.unlink(missing_ok=True)
    assert child.quick_failures >= MAX_QUICK_FAILURES  # and it was still restarted
