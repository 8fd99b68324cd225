"""HTTPS and the webhook shape from the command line: ``cascade serve --ssl-certfile
--ssl-keyfile`` (or the settings) checked before start and handed to uvicorn, and
``cascade app create/update --webhook-version``."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from typer.testing import CliRunner

from cascade import cli, runtime, tenancy
from cascade.config import Settings
from cascade.errors import ConfigError
from tests.api.test_connections import free_port
from tests.conftest import rsa_key
from tests.running import cascade_env
from tests.tls import make_certificate

runner = CliRunner()
CASCADE = str(Path(sys.executable).with_name("cascade"))


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key."""
    return make_certificate(tmp_path)


def test_without_certificate_or_key_cascade_serves_plain_http() -> None:
    """No TLS setting: plain HTTP, as before."""
    assert runtime.tls_files(Settings(_env_file=None)) is None


def test_a_certificate_and_its_key_are_served(certificate: tuple[Path, Path]) -> None:
    """A certificate with its own key loads, and both paths go to the server."""
    cert, key = certificate
    settings = Settings(_env_file=None, ssl_certfile=cert, ssl_keyfile=key)
    assert runtime.tls_files(settings) == (str(cert), str(key))


@pytest.mark.parametrize("given", ["ssl_certfile", "ssl_keyfile"])
def test_one_without_the_other_is_refused_naming_the_missing_setting(
    certificate: tuple[Path, Path], given: str
) -> None:
    """A certificate without its key (or a key alone) stops the start, naming what is unset."""
    cert, key = certificate
    settings = Settings(_env_file=None, **{given: cert if given == "ssl_certfile" else key})
    missing = "CASCADE_SSL_KEYFILE" if given == "ssl_certfile" else "CASCADE_SSL_CERTFILE"
    with pytest.raises(ConfigError, match=missing):
        runtime.tls_files(settings)


def test_a_key_that_is_not_the_certificates_is_refused(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """Another certificate's key does not load with this certificate: a ConfigError at start."""
    cert, _ = certificate
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_certificate(other)
    settings = Settings(_env_file=None, ssl_certfile=cert, ssl_keyfile=other_key)
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        runtime.tls_files(settings)


def test_serve_passes_the_certificate_and_key_to_uvicorn(
    certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cascade serve --ssl-certfile C --ssl-keyfile K`` runs uvicorn's server with them."""
    cert, key = certificate
    seen: dict[str, Any] = {}

    class Recorder:
        """A uvicorn server that records its configuration and serves nothing."""

        def __init__(self, config: Any) -> None:
            seen.update(certfile=config.ssl_certfile, keyfile=config.ssl_keyfile)
            self.started = True

        def run(self, sockets: list[Any]) -> None:
            """Serve nothing."""

    monkeypatch.setattr(runtime.uvicorn, "Server", Recorder)
    monkeypatch.setattr(runtime, "tune_gc", lambda: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASCADE_DATABASE_URL", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = runner.invoke(
            cli.app,
            [
                "serve",
                "--processes",
                "1",  # the recorder runs in this process
                "--port",
                "0",
                "--ssl-certfile",
                str(cert),
                "--ssl-keyfile",
                str(key),
                "--database",
                f"sqlite:///{tmp_path / 'x.db'}",
            ],
        )
    finally:  # serve configures logging for the process: put it back for the other tests
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert seen == {"certfile": str(cert), "keyfile": str(key)}


def test_serve_with_a_certificate_but_no_key_stops_with_an_error(
    certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-configured HTTPS is an error before anything listens (exit 1)."""
    cert, _ = certificate
    monkeypatch.setattr(runtime, "bind_listener", lambda *args: pytest.fail("bound"))
    monkeypatch.delenv("CASCADE_SSL_KEYFILE", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = runner.invoke(cli.app, ["serve", "--ssl-certfile", str(cert)])
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()
    assert result.exit_code == 1
    assert "CASCADE_SSL_KEYFILE is not set" in result.stderr


def test_app_create_and_update_set_the_webhook_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--webhook-version`` is v0.1 unless given, stored by create and changed by update;
    another value is refused."""
    key = rsa_key()
    monkeypatch.setattr(tenancy.rsa, "generate_private_key", lambda **_: key)
    monkeypatch.chdir(tmp_path)
    database = ["--database", f"sqlite:///{tmp_path / 'x.db'}"]

    def ok(*args: str) -> Any:
        result = runner.invoke(cli.app, [*args, *database])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return json.loads(result.stdout)

    plain = ok("app", "create", "plain", "--json")
    v1 = ok("app", "create", "sdk", "--webhook-version", "v1", "--json")
    assert (plain["webhook_version"], v1["webhook_version"]) == ("v0.1", "v1")
    changed = ok("app", "update", plain["application_id"], "--webhook-version", "v1", "--json")
    assert changed["webhook_version"] == "v1"
    listed = ok("app", "list", "--json")
    assert [a["webhook_version"] for a in listed] == ["v1", "v1"]
    refused = runner.invoke(
        cli.app, ["app", "update", v1["application_id"], "--webhook-version", "v2", *database]
    )
    assert refused.exit_code == 2


def test_a_tls_server_stops_at_once_while_a_client_keeps_an_idle_connection(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGTERM stops `cascade serve --ssl-certfile` promptly even while a client (an SDK's
    keep-alive pool) holds an idle connection and never sends TLS's close_notify."""
    cert, key = certificate
    port = free_port()
    env = cascade_env()
    env.update(
        CASCADE_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}",
        CASCADE_RUN_WORKER="false",
        CASCADE_LOG_FORMAT="json",
    )
    command = [CASCADE, "serve", "--port", str(port), "--ssl-certfile", str(cert)]
    process = subprocess.Popen(
        [*command, "--ssl-keyfile", str(key)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        trust = ssl.create_default_context(cafile=cert)
        with httpx.Client(verify=trust) as client:  # keeps its connection open, idle
            deadline = time.monotonic() + 30
            while True:
                with suppress(httpx.HTTPError):
                    if client.get(f"https://127.0.0.1:{port}/health").status_code == 200:
                        break
                assert process.poll() is None, "cascade serve stopped"
                assert time.monotonic() < deadline, "cascade serve did not start"
                time.sleep(0.05)
            started = time.monotonic()
            process.terminate()
            process.wait(timeout=10)
            assert time.monotonic() - started < 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
