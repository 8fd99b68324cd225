"""The container files: Dockerfile and compose.yaml name commands and settings the CLI accepts,
and the entrypoint the image uses runs them as written (this machine cannot pull the base
images, so the image is not built here): the image's command on a SQLite file in a stand-in
for its /data volume, and compose's migrate, api and worker services on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cascade import cli
from cascade.config import Settings
from cascade.devtools.smsc import free_port
from tests.contract.conftest import postgres_schema, postgres_schemas, postgres_url

__all__ = ["postgres_schema", "postgres_schemas", "postgres_url"]  # fixtures used here

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker-entrypoint.sh"
#: the services of compose.yaml that run the Cascade image
CASCADE_SERVICES = ("migrate", "api", "worker")


@dataclass
class Image:
    """What the Dockerfile's final stage declares."""

    bases: list[str] = field(default_factory=list)
    user: str = "root"
    volumes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def dockerfile() -> Image:
    """The Dockerfile's instructions (continuation lines joined; comments skipped)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    image = Image()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            image.bases.append(rest.split()[0])
        elif instruction == "USER":
            image.user = rest.strip()
        elif instruction == "VOLUME":
            image.volumes += rest.split()
        elif instruction == "ENV":
            image.env.update(pair.split("=", 1) for pair in shlex.split(rest))
        elif instruction == "ENTRYPOINT":
            image.entrypoint = json.loads(rest)
        elif instruction == "CMD":
            image.cmd = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            image.healthcheck = json.loads(rest.split(" CMD ", 1)[1])
    return image


def compose() -> dict[str, Any]:
    """compose.yaml with ``${NAME:-default}`` taken as its default (the variable unset)."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", (ROOT / "compose.yaml").read_text())
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def cli_accepts(args: list[str]) -> bool:
    """Whether ``cascade ARGS`` names a command and options the CLI has."""
    result = CliRunner().invoke(cli.app, [*args, "--help"])
    return result.exit_code == 0 and result.output.startswith("Usage:")


def test_the_image_is_small_non_root_with_its_database_on_a_volume() -> None:
    """python:3.11-slim, a non-root user, the SQLite file and credentials in the /data
    volume, `serve --host 0.0.0.0` through the entrypoint, and a health check."""
    image = dockerfile()
    assert image.bases == ["python:3.11-slim", "python:3.11-slim"]
    assert image.user not in ("root", "0", "")
    assert image.volumes == ["/data"]
    assert image.env["CASCADE_DATABASE_URL"] == "sqlite:////data/cascade.db"
    assert image.env["CASCADE_CREDENTIALS_FILE"].startswith("/data/")
    assert image.entrypoint == ["docker-entrypoint.sh"]
    assert image.cmd == ["serve", "--host", "0.0.0.0"]
    assert image.healthcheck == ["docker-entrypoint.sh", "healthcheck"]
    assert cli_accepts(image.cmd)
    assert os.access(ENTRYPOINT, os.X_OK)


def test_compose_runs_api_and_worker_on_postgresql_after_one_migration() -> None:
    """compose.yaml: PostgreSQL, a one-shot `db upgrade` the others wait for, an API with the
    engine off and a `worker`; every command and CASCADE_* setting is one the CLI accepts."""
    services = compose()["services"]
    assert set(services) == {"postgres", *CASCADE_SERVICES}
    postgres = services["postgres"]["environment"]
    url = (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["command"] == ["serve", "--host", "0.0.0.0"]
    assert services["api"]["environment"]["CASCADE_RUN_WORKER"] == "false"
    assert services["worker"]["command"] == ["worker"]
    for name in ("api", "worker"):
        waits = services[name]["depends_on"]["migrate"]["condition"]
        assert waits == "service_completed_successfully"
    for name in CASCADE_SERVICES:
        service = services[name]
        assert service["build"] == "."
        assert cli_accepts(service["command"]), name
        assert service["environment"]["CASCADE_DATABASE_URL"] == url, name
        assert "cascade-data:/data" in service["volumes"]


@pytest.mark.parametrize("where", ["Dockerfile", *CASCADE_SERVICES])
def test_every_setting_the_container_files_give_is_one_cascade_reads(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each CASCADE_* variable in the Dockerfile and in each compose service is a setting,
    with a value it accepts."""
    env = dockerfile().env if where == "Dockerfile" else compose()["services"][where]["environment"]
    settings = {name: str(value) for name, value in env.items() if name.startswith("CASCADE_")}
    assert settings
    for name, value in settings.items():
        assert name.removeprefix("CASCADE_").lower() in Settings.model_fields, name
        monkeypatch.setenv(name, value)
    Settings(_env_file=None)  # type: ignore[call-arg]


def _environment(settings: dict[str, str], data: Path) -> dict[str, str]:
    """This process's environment without CASCADE_* settings, with ``settings`` (their /data
    paths moved to ``data``) and the test's Python first on PATH (as the image's is)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASCADE_")}
    env.update({name: str(value).replace("/data/", f"{data}/") for name, value in settings.items()})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _in_image(command: list[str]) -> list[str]:
    """How to run an argv of the image here: its entrypoint script from this tree (the image
    copies it onto PATH), and 0.0.0.0 made 127.0.0.1 (tests listen on loopback only)."""
    assert command[0] == "docker-entrypoint.sh", command
    return ["sh", str(ENTRYPOINT), *(arg.replace("0.0.0.0", "127.0.0.1") for arg in command[1:])]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at its end is stopped (SIGTERM, then
    SIGKILL)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _healthy(env: dict[str, str], command: list[str], within: float = 30.0) -> None:
    """Wait until the image's health check passes."""
    deadline = time.monotonic() + within
    while True:
        check = subprocess.run(_in_image(command), env=env, capture_output=True)
        if check.returncode == 0:
            return
        assert time.monotonic() < deadline, check.stderr.decode()
        time.sleep(0.2)


#: how a process that stopped gracefully on SIGTERM exits: 0, or (serve) by the signal itself,
#: which uvicorn raises again once its graceful stop is done, as a service manager expects
STOPPED = (0, -signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM a process; its exit status."""
    process.send_signal(signal.SIGTERM)
    return process.wait(20)


def _events(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log (CASCADE_LOG_FORMAT=json)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_the_image_command_serves_on_a_sqlite_file_in_its_data_volume(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The entrypoint with the image's command and settings (its /data a temporary folder)
    starts the API, which creates the database and credentials there and passes the image's
    health check; it stops cleanly on SIGTERM, after which the check fails."""
    image = dockerfile()
    data = tmp_path / "data"
    data.mkdir()
    env = _environment({**image.env, "CASCADE_PORT": str(free_port())}, data)
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            _in_image([*image.entrypoint, *image.cmd]),
            env=env,
            cwd=data,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    processes.append(serve)
    _healthy(env, image.healthcheck)
    assert (data / "cascade.db").is_file()
    credentials = data / "cascade.credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert _stop(serve) in STOPPED
    events = [line["event"] for line in _events(tmp_path / "serve.log")]
    assert [e for e in events if e.startswith("cascade.s")] == [
        "cascade.started",
        "cascade.stopped",
    ]
    unhealthy = subprocess.run(_in_image(image.healthcheck), env=env, capture_output=True)
    assert unhealthy.returncode != 0


def _credentials(path: Path) -> tuple[str, str]:
    """The api_key and api_secret a first start wrote."""
    lines = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return lines["CASCADE_API_KEY"], lines["CASCADE_API_SECRET"]


@pytest.mark.slow
@pytest.mark.postgres
def test_the_compose_services_run_cascade_on_postgresql(
    tmp_path: Path, postgres_schema: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    """compose's services, each run through the entrypoint with its command and settings on
    the loopback PostgreSQL: migrate creates the schema and the first account, the API (engine
    off) accepts a message, and the worker sends it: it reads back delivered."""
    services = compose()["services"]
    image = dockerfile()
    data = tmp_path / "data"
    data.mkdir()
    port = str(free_port())

    def env_of(name: str) -> dict[str, str]:
        return _environment(
            {
                **services[name]["environment"],
                "CASCADE_DATABASE_URL": postgres_schema,  # the test server, not the service
                "CASCADE_PORT": port,
                "CASCADE_SANDBOX_SPEED": "20",
            },
            data,
        )

    migrate = subprocess.run(
        _in_image([*image.entrypoint, *services["migrate"]["command"]]),
        env=env_of("migrate"),
        cwd=data,
        capture_output=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    api_key, api_secret = _credentials(data / "cascade.credentials")
    logs = {}
    for name in ("api", "worker"):
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("wb") as log:
            processes.append(
                subprocess.Popen(
                    _in_image([*image.entrypoint, *services[name]["command"]]),
                    env=env_of(name),
                    cwd=data,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    _healthy(env_of("api"), image.healthcheck)
    base = f"http://127.0.0.1:{port}"
    sent = httpx.post(
        f"{base}/v0.1/messages",
        auth=(api_key, api_secret),
        json={
            "to": {"type": "sms", "number": "447700900000"},
            "from": {"type": "sms", "number": "Acme"},
            "message": {"content": {"type": "text", "text": "hello from compose"}},
        },
        timeout=10,
    )
    assert sent.status_code == 202, sent.text
    message = sent.json()["message_uuid"]
    deadline = time.monotonic() + 30
    while True:
        shown = httpx.get(f"{base}/v0.1/messages/{message}", auth=(api_key, api_secret), timeout=5)
        if shown.json().get("status") == "delivered":
            break
        assert time.monotonic() < deadline, shown.text
        time.sleep(0.2)
    api, worker = processes
    assert _stop(api) in STOPPED
    assert _stop(worker) == 0
    started = [line for line in _events(logs["api"]) if line["event"] == "cascade.started"]
    # the API service runs one API process per core of its container, none with an engine
    assert started
    assert {line["engine"] for line in started} == {"off"}
    assert "engine.stopped" in [line["event"] for line in _events(logs["worker"])]
