"""Cascade's commands run as real processes by the tests that need several of them (a worker
killed mid-run, many nodes on one database): starting them with their logs, stopping them,
killing one, waiting for a condition, and the CLI steps that set a database up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest

CASCADE = str(Path(sys.executable).with_name("cascade"))


def cascade_env(**settings: str) -> dict[str, str]:
    """This process's environment without the developer's CASCADE_* settings, with
    ``settings`` (CASCADE_* names) set: what a command started by a test runs with."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
    env.update(settings)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """The processes a test started, each stopped (killed if it lingers) at the end."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``cascade ARGS`` with its output in DIR/NAME-N.log."""
        log = self.directory / f"{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [CASCADE, *args],
                env={**self.env, **env},
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM each process still running, then SIGKILL any that has not exited in 5 s."""
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def logs(self) -> str:
        """The tail of every log, for a failure message."""
        parts = []
        for log in sorted(self.directory.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            parts.append(f"--- {log.name}\n" + "\n".join(lines[-30:]))
        return "\n".join(parts)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL one process and reap it."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=5)
    assert process.returncode == -signal.SIGKILL


async def wait_for(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    until: float,
    what: str,
    every: float = 0.02,
) -> None:
    """Poll ``check`` every ``every`` seconds until it holds; fail once the monotonic
    ``until`` passes."""
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > until:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def create_application(processes: Processes, url: str) -> tuple[str, bytes]:
    """``cascade app create`` on the database (creating and migrating it, and its first
    account, when it is new); returns the application id and private key."""
    key_file = processes.directory / "app.key"
    result = subprocess.run(
        [CASCADE, "app", "create", "test", "--database", url, "--private-key-file", str(key_file)],
        env=processes.env,
        cwd=processes.directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    match = re.search(r"application_id:\s*(\S+)", result.stdout)
    assert match, result.stdout
    return match.group(1), key_file.read_bytes()


def set_status_url(processes: Processes, url: str, status_url: str) -> None:
    """``cascade account set --status-url``: where the account's webhooks go."""
    subprocess.run(
        [CASCADE, "account", "set", "--status-url", status_url, "--database", url],
        env=processes.env,
        cwd=processes.directory,
        capture_output=True,
        timeout=60,
        check=True,
    )
