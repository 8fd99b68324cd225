"""Browser tests of the dashboard: Playwright for Python driving Debian's Chromium (its path
given, so nothing downloads a browser), against a real `cascade serve` on loopback.

Without /usr/bin/chromium the browser tests are skipped locally and fail under CI=true, so CI
can never pass by skipping them (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.running import cascade_env
from tests.webhooks.receiver import free_port

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def _launch_options() -> dict[str, Any]:
    """How to launch the system Chromium: its path, and no DNS look-ups of anything but
    loopback. Skips without it, or fails under CI=true."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and the browser tests need Chromium: {message}", pytrace=False)
        pytest.skip(message)
    return {
        "executable_path": CHROMIUM,
        "args": ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"],
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Playwright's sync API runs an event loop in this thread
    while it is started, so it is stopped with the module: the asyncio tests after it need
    the thread's loop free (pytest-playwright's session-wide browser would keep it)."""
    options = _launch_options()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(**options)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh, laptop-sized browser context (cookies of its own) that accepts downloads."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


@dataclass
class Hooks:
    """A webhook receiver on loopback answering ``status`` to every POST, and recording them."""

    port: int
    status: int = 400
    received: list[tuple[str, int]] = field(default_factory=list)
    #: set when a POST is answered with a 2xx
    accepted: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        """Where to send status webhooks."""
        return f"http://127.0.0.1:{self.port}/status"


@pytest.fixture(scope="session")
def hooks() -> Iterator[Hooks]:
    """The receiver, serving in a thread for the session."""
    state = Hooks(free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            answer = state.status
            state.received.append((self.path, answer))
            self.send_response(answer)
            self.send_header("content-length", "0")
            self.end_headers()
            if 200 <= answer < 300:
                state.accepted.set()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Server:
    """A running `cascade serve`: its base URL, its folder and its first account."""

    url: str
    folder: Path
    api_key: str
    api_secret: str
    env: dict[str, str]

    def cascade(self, *args: str) -> str:
        """Run a `cascade` command on the server's database; its standard output."""
        done = subprocess.run(
            [sys.executable, "-c", "from cascade.cli import main; main()", *args],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    def basic(self, api_key: str, api_secret: str) -> dict[str, str]:
        """The Authorization header of an account."""
        raw = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`cascade serve` on a fresh SQLite file, with the engine; stopped after the session."""
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    env = cascade_env()
    env.update(
        CASCADE_DATABASE_URL=f"sqlite:///{folder / 'cascade.db'}",
        CASCADE_SQLITE_SYNCHRONOUS="NORMAL",
        CASCADE_SANDBOX_SPEED="10",
        CASCADE_LOG_FORMAT="json",
        CASCADE_PORT=str(port),
    )
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from cascade.cli import main; main()", "serve"],
        env=env,
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, (folder / "serve.log").read_text()
            assert time.monotonic() < deadline, "cascade serve did not become ready"
            time.sleep(0.05)
        lines = (folder / "cascade.db.credentials").read_text().splitlines()
        values = dict(line.split("=", 1) for line in lines if "=" in line)
        yield Server(url, folder, values["CASCADE_API_KEY"], values["CASCADE_API_SECRET"], env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
