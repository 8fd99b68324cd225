"""The ``cascade`` command line: database, account, applications and JWTs."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import socket
import sqlite3
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import structlog
import typer
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from cascade import __version__ as cascade_version
from cascade import cli, runtime, tenancy
from cascade.api.app import create_app
from cascade.api.auth import hash_secret
from cascade.clock import SystemClock
from cascade.config import Settings
from cascade.domain.records import Account, Application, NewWebhook, WebhookKind
from cascade.service import redacted_url
from cascade.store.migrations import migrations
from cascade.store.sqlite import SqliteStore
from tests.conftest import public_pem, rsa_key

runner = CliRunner()
APP_ID = re.compile(r"application_id: (\S+)")


class Cascade:
    """Runs ``cascade`` commands against one SQLite file from a temporary working directory."""

    def __init__(
        self, directory: Path, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
    ) -> None:
        self.directory = directory
        self.database = directory / "x.db"
        #: the key pair ``app create`` generates in these tests
        self.key = key
        #: a key pair it does not generate
        self.other_key = other_key

    def __call__(self, *args: str, database: bool = True) -> Result:
        """Run ``cascade ARGS`` (with --database unless told not to)."""
        extra = ["--database", f"sqlite:///{self.database}"] if database else []
        return runner.invoke(cli.app, [*args, *extra])

    def ok(self, *args: str, database: bool = True) -> str:
        """Run a command that must succeed; its standard output."""
        result = self(*args, database=database)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    @property
    def credentials_file(self) -> Path:
        """Where a first start writes the new account's credentials (beside the database)."""
        return self.directory / "x.db.credentials"

    def credentials(self) -> dict[str, str]:
        """The NAME=value lines of the credentials file."""
        lines = self.credentials_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def create_app(self, name: str = "shop", *extra: str) -> str:
        """Create an application; its id."""
        match = APP_ID.search(self.ok("app", "create", name, *extra))
        assert match is not None
        return match.group(1)


@pytest.fixture
def cascade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cascade:
    """The CLI in a fresh temporary working directory, with no CASCADE_* settings; it "generates"
    a cached RSA key, since making a new one is slow."""
    key, other_key = rsa_key(), rsa_key()
    monkeypatch.setattr(tenancy.rsa, "generate_private_key", lambda **_: key)
    monkeypatch.chdir(tmp_path)
    for name in (
        "CASCADE_DATABASE_URL",
        "CASCADE_URL",
        "CASCADE_API_KEY",
        "CASCADE_API_SECRET",
        "CASCADE_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    return Cascade(tmp_path, key, other_key)


def test_db_upgrade_creates_the_database_and_writes_the_secret_once(cascade: Cascade) -> None:
    """The first upgrade creates the file and writes the new credentials to a file it names,
    not to stdout; the second upgrade creates nothing."""
    first = cascade.ok("db", "upgrade")
    assert cascade.database.is_file()
    credentials = cascade.credentials()
    secret = credentials["CASCADE_API_SECRET"]
    assert str(cascade.credentials_file) in first
    assert credentials["CASCADE_API_KEY"] in first
    assert secret not in first
    assert credentials["CASCADE_SIGNATURE_SECRET"] not in first
    assert "The database schema is up to date." in first
    before = cascade.credentials_file.read_text()
    second = cascade.ok("db", "upgrade")
    assert "credentials" not in second
    assert cascade.credentials_file.read_text() == before
    assert "The database schema is up to date." in second


def test_account_show_hides_the_signature_secret_unless_asked(cascade: Cascade) -> None:
    """account show prints the api_key but the signature secret only with --show-secrets."""
    cascade.ok("db", "upgrade")
    signature = cascade.credentials()["CASCADE_SIGNATURE_SECRET"]
    shown = cascade.ok("account", "show")
    assert signature not in shown
    assert "hidden" in shown
    assert re.search(r"api_key:\s+\S+", shown)
    assert signature in cascade.ok("account", "show", "--show-secrets")


def test_the_credentials_file_is_private_whatever_the_umask(cascade: Cascade) -> None:
    """The credentials file and the database are created mode 0600 even under umask 000, and
    the API secret in the file authenticates the account."""
    old_umask = os.umask(0)
    try:
        cascade.ok("db", "upgrade")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(cascade.credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cascade.database.stat().st_mode) == 0o600
    credentials = cascade.credentials()
    account = asyncio.run(_stored_account(cascade.database))
    assert account.api_key == credentials["CASCADE_API_KEY"]
    assert account.api_secret_sha256 == hash_secret(credentials["CASCADE_API_SECRET"])
    assert account.signature_secret == credentials["CASCADE_SIGNATURE_SECRET"]


async def _stored_account(database: Path) -> Account:
    """The one account of a SQLite file."""
    store = SqliteStore(database)
    await store.open()
    try:
        (account,) = await store.list_accounts()
        return account
    finally:
        await store.close()


def test_an_existing_credentials_file_is_never_overwritten(cascade: Cascade) -> None:
    """A first start refuses to replace a credentials file that exists (it may hold the only
    copy of an older secret) and creates no account it could not hand over."""
    cascade.credentials_file.write_text("CASCADE_API_SECRET=older\n")
    result = cascade("db", "upgrade")
    assert result.exit_code == 1
    assert "exists" in result.stderr
    assert cascade.credentials_file.read_text() == "CASCADE_API_SECRET=older\n"
    cascade.credentials_file.unlink()
    cascade.ok("db", "upgrade")
    assert cascade.credentials()["CASCADE_API_SECRET"] != "older"


def test_serve_first_start_writes_no_secret_to_stdout_or_the_log(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve under a service manager (stdout not a terminal) logs and prints the api_key and
    the credentials file's path, never the API or signature secret."""
    lifespan: list[str] = []

    class LifespanOnly:
        """A uvicorn server that runs the app's start-up and shutdown, and serves nothing."""

        def __init__(self, config: Any) -> None:
            self.app = config.app
            self.started = False

        def run(self, sockets: list[socket.socket]) -> None:
            """Start and stop the app as uvicorn would around serving ``sockets``."""
            assert [sock.getsockname()[0] for sock in sockets] == ["127.0.0.1"]

            async def drive() -> None:
                messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

                async def receive() -> dict[str, str]:
                    return messages.pop(0)

                async def send(message: dict[str, Any]) -> None:
                    lifespan.append(message["type"])

                scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
                await self.app(scope, receive, send)

            asyncio.run(drive())
            self.started = True

    monkeypatch.setattr(runtime.uvicorn, "Server", LifespanOnly)
    monkeypatch.setattr(runtime, "tune_gc", lambda: None)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = cascade("serve", "--port", "0", "--processes", "1")  # uvicorn is this one
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert lifespan == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    credentials = cascade.credentials()
    output = result.stdout + result.stderr
    assert "cascade.account_created" in result.stderr
    assert str(cascade.credentials_file) in result.stderr
    assert str(cascade.credentials_file) in result.stdout
    assert credentials["CASCADE_API_KEY"] in output
    assert credentials["CASCADE_API_SECRET"] not in output
    assert credentials["CASCADE_SIGNATURE_SECRET"] not in output
    assert stat.S_IMODE(cascade.credentials_file.stat().st_mode) == 0o600


def test_account_set_changes_and_clears_the_webhook_urls(cascade: Cascade) -> None:
    """account set stores the status and inbound URLs, and '' clears one."""
    cascade.ok("db", "upgrade")
    cascade.ok(
        "account",
        "set",
        "--status-url",
        "https://hooks.example/status",
        "--inbound-url",
        "https://hooks.example/inbound",
    )
    shown = cascade.ok("account", "show")
    assert re.search(r"status_url:\s+https://hooks.example/status", shown)
    assert re.search(r"inbound_url:\s+https://hooks.example/inbound", shown)
    cascade.ok("account", "set", "--inbound-url", "")
    shown = cascade.ok("account", "show")
    assert re.search(r"status_url:\s+https://hooks.example/status", shown)
    assert re.search(r"inbound_url:\s+-", shown)


def test_account_set_refuses_a_url_that_is_not_http(cascade: Cascade) -> None:
    """A webhook URL that is not http(s) is refused with exit code 1 and changes nothing."""
    cascade.ok("db", "upgrade")
    result = cascade("account", "set", "--status-url", "ftp://hooks.example")
    assert result.exit_code == 1
    assert "not an http(s) URL" in result.stderr
    assert re.search(r"status_url:\s+-", cascade.ok("account", "show"))


def test_account_set_refuses_a_private_url_where_webhooks_may_not_go(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CASCADE_WEBHOOK_ALLOW_PRIVATE=false, a URL naming a private address or localhost
    is refused saying why, and changes nothing; the operator's allowed network is accepted."""
    cascade.ok("db", "upgrade")
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOW_PRIVATE", "false")
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOWED_NETWORKS", "10.1.2.0/24")
    for url in ("http://169.254.169.254/latest", "http://localhost:8000/status"):
        result = cascade("account", "set", "--status-url", url)
        assert result.exit_code == 1
        assert "CASCADE_WEBHOOK_ALLOW_PRIVATE" in result.stderr
    assert re.search(r"status_url:\s+-", cascade.ok("account", "show"))
    cascade.ok("account", "set", "--status-url", "http://10.1.2.3/status")
    assert re.search(r"status_url:\s+http://10.1.2.3/status", cascade.ok("account", "show"))


def test_a_bad_setting_is_one_line_naming_it_not_a_traceback(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CASCADE_* value that does not validate ends the command with status 2 and a line per
    bad setting, naming it and why, without echoing the value."""
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,intranet")
    monkeypatch.setenv("CASCADE_SANDBOX_SPEED", "-1")
    monkeypatch.setattr(sys, "argv", ["cascade", "status"])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "error: CASCADE_WEBHOOK_ALLOWED_NETWORKS: " in err
    assert "error: CASCADE_SANDBOX_SPEED: Input should be greater than 0" in err
    assert "Traceback" not in err
    assert "input_value" not in err


def test_app_create_writes_a_private_key_readable_only_by_its_owner(cascade: Cascade) -> None:
    """app create NAME writes NAME.key (mode 0600), prints the id, and app list shows it."""
    app_id = cascade.create_app("shop")
    key_file = cascade.directory / "shop.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    listed = cascade.ok("app", "list")
    assert app_id in listed
    assert "shop" in listed


def test_app_create_refuses_to_overwrite_a_key_file(cascade: Cascade) -> None:
    """A second app with the same name fails instead of overwriting the first one's key."""
    cascade.create_app("shop")
    before = (cascade.directory / "shop.key").read_bytes()
    result = cascade("app", "create", "shop")
    assert result.exit_code == 1
    assert "exists" in result.stderr
    assert (cascade.directory / "shop.key").read_bytes() == before


def test_app_create_with_a_bad_url_leaves_no_key_file(cascade: Cascade) -> None:
    """A refused --status-url writes no private key, so the corrected command can run."""
    result = cascade("app", "create", "shop", "--status-url", "hooks.example")
    assert result.exit_code == 1
    assert "not an http(s) URL" in result.stderr
    assert not (cascade.directory / "shop.key").exists()
    cascade.create_app("shop", "--status-url", "https://hooks.example/status")
    assert "status=https://hooks.example/status" in cascade.ok("app", "list")


def test_app_create_leaves_no_key_file_when_the_database_fails(cascade: Cascade) -> None:
    """When the application cannot be stored, its freshly written private key is removed."""
    result = runner.invoke(cli.app, ["app", "create", "shop", "--database", "mysql://db/cascade"])
    assert result.exit_code == 1
    assert "unsupported database URL" in result.stderr
    assert not (cascade.directory / "shop.key").exists()


def test_app_create_with_a_public_key_uses_it(cascade: Cascade) -> None:
    """app create --public-key FILE stores that key and writes no private key."""
    key = cascade.other_key
    (cascade.directory / "given.pem").write_text(public_pem(key))
    app_id = cascade.create_app("given", "--public-key", "given.pem")
    assert not (cascade.directory / "given.key").exists()

    async def stored_key() -> str:
        store = SqliteStore(cascade.database)
        await store.open()
        try:
            application = await store.get_application(app_id)
        finally:
            await store.close()
        assert application is not None
        return application.public_key_pem

    assert asyncio.run(stored_key()) == public_pem(key)


def test_app_create_refuses_a_file_that_is_not_a_public_key(cascade: Cascade) -> None:
    """A --public-key file that is not a PEM public key fails with a clear message."""
    (cascade.directory / "junk.pem").write_text("not a key")
    result = cascade("app", "create", "junk", "--public-key", "junk.pem")
    assert result.exit_code == 1
    assert "cannot read a PEM public key" in result.stderr


def _decoded(token: str, key_file: Path) -> dict[str, object]:
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    public = private.public_key()
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT"}
    claims: dict[str, object] = jwt.decode(
        token,
        public,
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims


def test_jwt_generate_signs_a_token_with_a_lifetime(cascade: Cascade) -> None:
    """jwt generate KEY application_id=ID exp=60 prints a token that verifies, exp = iat + 60."""
    app_id = cascade.create_app("shop")
    token = cascade.ok(
        "jwt", "generate", "shop.key", f"application_id={app_id}", "exp=60", database=False
    )
    claims = _decoded(token.strip(), cascade.directory / "shop.key")
    assert claims["application_id"] == app_id
    assert claims["exp"] == claims["iat"] + 60
    assert isinstance(claims["jti"], str)
    assert claims["jti"]


def test_jwt_generate_measures_exp_from_the_same_instant_as_iat(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exp=60 is 60 s after iat even when the clock ticks over a second while signing."""
    cascade.create_app("shop")
    ticks = itertools.count()
    monkeypatch.setattr(cli.time, "time", lambda: 1_800_000_000.7 + 0.5 * next(ticks))
    token = cascade.ok("jwt", "generate", "shop.key", "application_id=a", "exp=60", database=False)
    claims = _decoded(token.strip(), cascade.directory / "shop.key")
    assert claims["exp"] == claims["iat"] + 60


def test_jwt_generate_keeps_an_absolute_exp_and_extra_claims(cascade: Cascade) -> None:
    """An absolute exp is kept as given; other claims pass through, JSON ones decoded."""
    cascade.create_app("shop")
    token = cascade.ok(
        "jwt",
        "generate",
        "shop.key",
        "application_id=a",
        "exp=2000000000",
        "sub=ada",
        'acl={"paths":{"/*/messages/**":{}}}',
        database=False,
    )
    claims = _decoded(token.strip(), cascade.directory / "shop.key")
    assert claims["exp"] == 2_000_000_000
    assert claims["sub"] == "ada"
    assert claims["acl"] == {"paths": {"/*/messages/**": {}}}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["shop.key"], "application_id=ID is required", id="no-application_id"),
        pytest.param(["shop.key", "exp=60"], "application_id=ID is required", id="only-exp"),
        pytest.param(["shop.key", "application_id"], "is not name=value", id="no-equals"),
        pytest.param(
            ["shop.key", "application_id=a", "exp=soon"], "whole number", id="exp-not-a-number"
        ),
        pytest.param(["missing.key", "application_id=a"], "cannot read", id="no-key-file"),
        pytest.param(["not-a-key.txt", "application_id=a"], "cannot sign", id="not-a-key"),
    ],
)
def test_jwt_generate_fails_clearly(arguments: list[str], message: str, cascade: Cascade) -> None:
    """Wrong jwt generate arguments exit with code 1 and say what is wrong, printing no token."""
    (cascade.directory / "shop.key").write_bytes(b"")
    (cascade.directory / "not-a-key.txt").write_text("hello")
    result = cascade("jwt", "generate", *arguments, database=False)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_a_generated_token_is_accepted_by_the_api(cascade: Cascade) -> None:
    """A token from jwt generate, for an app from app create, gets a 202 from the API."""
    app_id = cascade.create_app("shop")
    token = cascade.ok("jwt", "generate", "shop.key", f"application_id={app_id}", database=False)

    async def send() -> httpx.Response:
        store = SqliteStore(cascade.database)
        await store.open()
        try:
            transport = httpx.ASGITransport(app=create_app(store, clock=SystemClock()))
            async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as c:
                return await c.post(
                    "/v0.1/messages",
                    json={
                        "to": {"type": "sms", "number": "447700900000"},
                        "from": {"type": "sms", "number": "Acme"},
                        "message": {"content": {"type": "text", "text": "hi"}},
                    },
                    headers={"Authorization": f"Bearer {token.strip()}"},
                )
        finally:
            await store.close()

    response = asyncio.run(send())
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("group", "commands"),
    [
        ([], ["serve", "db", "account", "app", "jwt", "send", "dispatch"]),
        (["db"], ["upgrade"]),
        (["account"], ["show", "set"]),
        (["app"], ["create", "list"]),
        (["jwt"], ["generate"]),
    ],
    ids=["cascade", "db", "account", "app", "jwt"],
)
def test_help_lists_each_command(group: list[str], commands: list[str]) -> None:
    """--help of the main command and of each group exits 0 and lists its commands."""
    result = runner.invoke(cli.app, [*group, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    for command in commands:
        assert re.search(rf"^  {command}\s", result.stdout, re.MULTILINE), command


@pytest.mark.parametrize(
    "command",
    [
        ["db", "upgrade"],
        ["account", "show"],
        ["account", "set"],
        ["app", "create"],
        ["app", "list"],
        ["jwt", "generate"],
    ],
    ids=" ".join,
)
def test_help_of_each_command_describes_it(command: list[str]) -> None:
    """--help of each command exits 0 with a description and its --database option where used."""
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    assert ("--database" in result.stdout) is (command[0] != "jwt")


def test_a_group_without_a_command_shows_its_help() -> None:
    """Running a group with no command prints its help instead of failing obscurely."""
    result = runner.invoke(cli.app, ["app"])
    assert "Usage:" in result.output
    assert "create" in result.output


def test_worker_refuses_an_unknown_job_kind() -> None:
    """`cascade worker --jobs` names the kind it does not know and starts nothing."""
    result = runner.invoke(cli.app, ["worker", "--jobs", "webhook,sms"])
    assert result.exit_code == 2
    assert "unknown job kind(s) sms" in result.output


def test_engine_jobs_are_all_or_known_kinds() -> None:
    """CASCADE_ENGINE_JOBS is tidied into the kinds an engine runs; all means no limit."""
    assert Settings(engine_jobs="all").job_kinds is None
    assert Settings(engine_jobs=" webhook, send,webhook").job_kinds == {"webhook", "send"}
    with pytest.raises(ValueError, match="expected all or a comma list"):
        Settings(engine_jobs="webhooks")


def test_a_person_at_a_terminal_sees_the_new_secrets_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When stdout is a terminal (a person, not a log) the new account's secrets are printed
    beside the credentials file's path; otherwise only the api_key and the path are."""
    credentials = tmp_path / "x.db.credentials"
    owner = Account("id", "key1", "0" * 64, "signature-1", None, None, 0.0)
    announce = cli._announcer(credentials)
    announce(owner, "api-secret-1")
    piped = capsys.readouterr().out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    announce(owner, "api-secret-1")
    at_terminal = capsys.readouterr().out
    for shown in (piped, at_terminal):
        assert str(credentials) in shown
        assert "key1" in shown
    assert "api-secret-1" not in piped
    assert "signature-1" not in piped
    assert "api-secret-1" in at_terminal
    assert "signature-1" in at_terminal


def test_version_prints_the_installed_version() -> None:
    """``cascade --version`` prints the package version and exits 0."""
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"cascade {cascade_version}"


def test_help_shows_its_text_as_written_with_the_defaults() -> None:
    """Bracketed text in an option's help is not eaten as markup, and defaults are shown."""
    result = runner.invoke(cli.app, ["serve", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "(TOML, e.g. [smpp])" in text
    assert "sqlite:///cascade.db" in text


@pytest.mark.parametrize(
    "command",
    [
        ["show", "0190a1b2-0000-7000-8000-000000000000"],
        ["app", "list"],
        ["account", "show"],
        ["webhooks", "list"],
    ],
    ids=["show", "app-list", "account-show", "webhooks-list"],
)
def test_a_read_only_command_never_creates_a_database(cascade: Cascade, command: list[str]) -> None:
    """From a directory without the database, a command that only reads fails naming the
    file it looked for, and creates neither a database nor an account's credentials."""
    result = cascade(*command)
    assert result.exit_code == 1
    assert f"no database at {cascade.database}" in result.stderr
    assert list(cascade.directory.iterdir()) == []


def test_a_read_only_command_on_a_database_without_an_account_creates_none(
    cascade: Cascade,
) -> None:
    """``app list`` on a database with no account yet says so instead of making one (and
    printing new credentials)."""
    SqliteStore(cascade.database).migrate()
    result = cascade("app", "list")
    assert result.exit_code == 1
    assert "no account yet" in result.stderr
    assert not cascade.credentials_file.exists()


def test_app_create_quiet_prints_the_id_alone_for_a_script(cascade: Cascade) -> None:
    """``app create --quiet`` prints only the new id (what the guide captures in APP_ID), even
    on a new database whose default account it creates (that notice goes to stderr)."""
    result = cascade("app", "create", "demo", "--quiet")
    assert result.exit_code == 0, result.stderr
    (app_id,) = result.stdout.split()
    assert "Created the default account" in result.stderr
    listed = json.loads(cascade.ok("app", "list", "--json"))
    assert [(a["application_id"], a["name"]) for a in listed] == [(app_id, "demo")]


def test_app_create_json_prints_the_application_and_its_key_file(cascade: Cascade) -> None:
    """``app create --json`` prints one JSON object: the id, name, URLs and key file."""
    shown = json.loads(
        cascade.ok("app", "create", "shop", "--json", "--status-url", "https://h.test/s")
    )
    assert shown["name"] == "shop"
    assert shown["status_url"] == "https://h.test/s"
    assert shown["private_key_file"] == "shop.key"
    assert uuid.UUID(shown["application_id"])


def test_account_create_makes_a_second_account_with_its_own_secrets(cascade: Cascade) -> None:
    """``account create --json`` prints a new account's key and secrets once; only the API
    secret's digest is stored, and applications made with its key are its own."""
    cascade.ok("db", "upgrade")
    shown = json.loads(cascade.ok("account", "create", "--json"))
    first = cascade.credentials()["CASCADE_API_KEY"]
    assert shown["api_key"] != first
    stored = asyncio.run(_account_by_key(cascade.database, shown["api_key"]))
    assert stored is not None
    assert stored.api_secret_sha256 == hash_secret(shown["api_secret"])
    assert shown["api_secret"] not in cascade.database.read_bytes().decode(errors="replace")
    cascade.ok("app", "create", "theirs", "--api-key", shown["api_key"], "--quiet")
    assert cascade.ok("app", "list", "--api-key", first, "--json").strip() == "[]"


def test_rotate_api_secret_replaces_the_stored_digest(cascade: Cascade) -> None:
    """``account rotate-api-secret`` shows a new secret once and stores its digest instead of
    the old one's."""
    cascade.ok("db", "upgrade")
    old = cascade.credentials()["CASCADE_API_SECRET"]
    shown = json.loads(cascade.ok("account", "rotate-api-secret", "--json"))
    assert shown["api_secret"] != old
    stored = asyncio.run(_account_by_key(cascade.database, shown["api_key"]))
    assert stored is not None
    assert stored.api_secret_sha256 == hash_secret(shown["api_secret"])


async def _account_by_key(database: Path, api_key: str) -> Account | None:
    """The account of this api_key in the SQLite file."""
    store = SqliteStore(database)
    await store.open()
    try:
        return await store.get_account_by_api_key(api_key)
    finally:
        await store.close()


def test_app_update_changes_its_urls_and_refuses_another_accounts_app(cascade: Cascade) -> None:
    """``app update`` sets and clears an application's URLs; an id the account does not own
    is an error that changes nothing."""
    app_id = cascade.ok(
        "app", "create", "shop", "--quiet", "--status-url", "https://h.test/a"
    ).strip()
    shown = json.loads(
        cascade.ok(
            "app",
            "update",
            app_id,
            "--status-url",
            "",
            "--inbound-url",
            "https://h.test/i",
            "--json",
        )
    )
    assert (shown["status_url"], shown["inbound_url"]) == (None, "https://h.test/i")
    other = json.loads(cascade.ok("account", "create", "--json"))
    refused = cascade(
        "app", "update", app_id, "--status-url", "https://x.test/", "--api-key", other["api_key"]
    )
    assert refused.exit_code == 1
    assert "no application" in refused.stderr
    (listed,) = json.loads(cascade.ok("app", "list", "--json"))
    assert listed["status_url"] is None


def test_app_delete_removes_it(cascade: Cascade) -> None:
    """``app delete`` removes the application; deleting it again is an error."""
    app_id = cascade.ok("app", "create", "shop", "--quiet").strip()
    assert f"deleted application {app_id}" in cascade.ok("app", "delete", app_id)
    assert json.loads(cascade.ok("app", "list", "--json")) == []
    assert cascade("app", "delete", app_id).exit_code == 1


def test_app_rotate_key_writes_a_new_private_key_whose_public_half_is_stored(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``app rotate-key`` writes a new private key (mode 0600) and stores its public key in
    place of the old one."""
    app_id = cascade.ok("app", "create", "shop", "--quiet").strip()
    monkeypatch.setattr(tenancy.rsa, "generate_private_key", lambda **_: cascade.other_key)
    shown = json.loads(
        cascade.ok("app", "rotate-key", app_id, "--private-key-file", "new.key", "--json")
    )
    assert shown["private_key_file"] == "new.key"
    assert (cascade.directory / "new.key").stat().st_mode & 0o777 == 0o600
    stored = asyncio.run(_application(cascade.database, app_id))
    assert stored is not None
    assert stored.public_key_pem == public_pem(cascade.other_key)


async def _application(database: Path, application_id: str) -> Application | None:
    """The application of this id in the SQLite file."""
    store = SqliteStore(database)
    await store.open()
    try:
        return await store.get_application(application_id)
    finally:
        await store.close()


def _every_command(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every command under a click command (groups included)."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _every_command(sub, (*path, name))
    return found


@pytest.mark.parametrize("command", _every_command(typer.main.get_command(cli.app)), ids=" ".join)
def test_help_names_value_types_plainly(command: tuple[str, ...]) -> None:
    """No command's help shows Typer's ``<str>``/``<bool>``-style type labels."""
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert not re.search(r"<[\w\[\], |]+>", result.output), result.output


def test_serve_help_names_each_value_type() -> None:
    """``serve --help`` names values as TEXT, INTEGER, URL and FILE; flags show none."""
    text = " ".join(runner.invoke(cli.app, ["serve", "--help"]).output.split())
    assert "--host TEXT" in text
    assert "--port INTEGER" in text
    assert "--database URL" in text
    assert "--config FILE" in text
    arguments = " ".join(runner.invoke(cli.app, ["jwt", "generate", "--help"]).output.split())
    assert "{PRIVATE_KEY} [CLAIMS]..." in arguments
    flags = " ".join(runner.invoke(cli.app, ["account", "show", "--help"]).output.split())
    assert re.search(r"--show-secrets / --no-show-secrets Print", flags), flags


#: the keys of an account and of an application as every command's --json prints them
ACCOUNT_KEYS = {
    "account_id",
    "api_key",
    "api_secret",
    "signature_secret",
    "sandbox",
    "status_url",
    "inbound_url",
    "created_at",
}
APPLICATION_KEYS = {
    "application_id",
    "name",
    "status_url",
    "inbound_url",
    "webhook_version",
    "created_at",
    "private_key_file",
}


@pytest.mark.parametrize(
    "command",
    [
        ["account", "show"],
        ["account", "set"],
        ["account", "create"],
        ["account", "rotate-api-secret"],
        ["account", "rotate-signature-secret"],
        ["app", "create"],
        ["app", "show"],
        ["app", "list"],
        ["app", "update"],
        ["app", "rotate-key"],
        ["app", "delete"],
        ["webhooks", "list"],
        ["webhooks", "replay"],
        ["show"],
        ["status"],
    ],
    ids=" ".join,
)
def test_every_command_that_prints_a_record_has_json(command: list[str]) -> None:
    """Each command that prints a record (or a list of them) offers --json."""
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output


def test_account_commands_print_one_json_shape(cascade: Cascade) -> None:
    """Every account command's --json prints the same keys; secrets appear only where the
    command shows them (the API secret when made, the signature secret when asked or new)."""
    cascade.ok("db", "upgrade")
    credentials = cascade.credentials()
    shown = json.loads(cascade.ok("account", "show", "--json"))
    assert set(shown) == ACCOUNT_KEYS
    assert shown["api_key"] == credentials["CASCADE_API_KEY"]
    assert shown["signature_secret"] is None
    assert shown["api_secret"] is None
    revealed = json.loads(cascade.ok("account", "show", "--json", "--show-secrets"))
    assert revealed["signature_secret"] == credentials["CASCADE_SIGNATURE_SECRET"]
    changed = json.loads(cascade.ok("account", "set", "--status-url", "https://h.test/s", "--json"))
    assert set(changed) == ACCOUNT_KEYS
    assert changed["status_url"] == "https://h.test/s"
    rotated = json.loads(cascade.ok("account", "rotate-signature-secret", "--json"))
    assert set(rotated) == ACCOUNT_KEYS
    assert rotated["signature_secret"] not in (None, credentials["CASCADE_SIGNATURE_SECRET"])
    stored = asyncio.run(_account_by_key(cascade.database, shown["api_key"]))
    assert stored is not None
    assert stored.signature_secret == rotated["signature_secret"]
    for command in (["account", "create"], ["account", "rotate-api-secret"]):
        made = json.loads(cascade.ok(*command, "--json"))
        assert set(made) == ACCOUNT_KEYS, command
        assert made["api_secret"]
        assert made["created_at"].endswith("Z")


def test_application_commands_print_one_json_shape(cascade: Cascade) -> None:
    """create, show, list, update, rotate-key and delete print an application with the same
    keys; private_key_file names the key a command wrote, else null."""
    created = json.loads(cascade.ok("app", "create", "shop", "--json"))
    app_id = created["application_id"]
    assert set(created) == APPLICATION_KEYS
    shown = json.loads(cascade.ok("app", "show", app_id, "--json"))
    assert shown == {**created, "private_key_file": None}
    (listed,) = json.loads(cascade.ok("app", "list", "--json"))
    assert listed == shown
    updated = json.loads(
        cascade.ok("app", "update", app_id, "--inbound-url", "https://h.test/i", "--json")
    )
    assert updated == {**shown, "inbound_url": "https://h.test/i"}
    rotated = json.loads(
        cascade.ok("app", "rotate-key", app_id, "--private-key-file", "k2.key", "--json")
    )
    assert rotated == {**updated, "private_key_file": "k2.key"}
    deleted = json.loads(cascade.ok("app", "delete", app_id, "--json"))
    assert deleted == updated
    missing = cascade("app", "show", app_id)
    assert missing.exit_code == 1
    assert f"no application {app_id}" in missing.stderr


def test_app_show_prints_the_application_for_a_person(cascade: Cascade) -> None:
    """``app show ID`` without --json prints the id, name and URLs as lines."""
    app_id = cascade.ok("app", "create", "shop", "--quiet", "--status-url", "https://h.t/s")
    text = cascade.ok("app", "show", app_id.strip())
    assert f"application_id: {app_id.strip()}" in text
    assert "name:           shop" in text
    assert "status_url:     https://h.t/s" in text


async def _add_webhooks(database: Path) -> list[int]:
    """Queue a status webhook and an inbound one for the first account; their ids."""
    store = SqliteStore(database)
    await store.open()
    try:
        (account,) = await store.list_accounts()
        await store.add_webhooks(
            [
                NewWebhook(
                    WebhookKind.STATUS,
                    account.id,
                    None,
                    None,
                    "0190a1b2-0000-7000-8000-00000000000a",
                    "https://h.test/s",
                    b"{}",
                ),
                NewWebhook(WebhookKind.INBOUND, account.id, None, None, None, None, b"{}"),
            ],
            1_700_000_000.0,
        )
        return sorted(hook.id for hook in await store.latest_webhooks(limit=10))
    finally:
        await store.close()


def test_webhooks_list_and_replay_print_json(cascade: Cascade) -> None:
    """``webhooks list --json`` prints each webhook, newest first, with the same keys;
    ``replay --json`` says how many were queued."""
    cascade.ok("db", "upgrade")
    first, second = asyncio.run(_add_webhooks(cascade.database))
    listed = json.loads(cascade.ok("webhooks", "list", "--json"))
    assert [hook["id"] for hook in listed] == [second, first]
    assert {frozenset(hook) for hook in listed} == {
        frozenset(
            {
                "id",
                "kind",
                "state",
                "workflow_uuid",
                "message_uuid",
                "url",
                "attempt_count",
                "created_at",
                "last_attempt_at",
                "next_attempt_at",
                "delivered_at",
                "last_status",
                "last_error",
            }
        )
    }
    status = listed[1]
    assert status["kind"] == "message-status"
    assert status["state"] == "pending"
    assert status["message_uuid"] == "0190a1b2-0000-7000-8000-00000000000a"
    assert status["created_at"] == "2023-11-14T22:13:20.000Z"
    assert json.loads(cascade.ok("webhooks", "replay", str(first), "--json")) == {"queued": 1}


def test_status_on_a_missing_database_names_the_file_and_creates_nothing(
    cascade: Cascade,
) -> None:
    """``cascade status`` where the SQLite file is not fails naming it and creates nothing."""
    result = cascade("status")
    assert result.exit_code == 1
    assert f"no database at {cascade.database}" in result.stderr
    assert list(cascade.directory.iterdir()) == []


def test_status_reports_the_database_schema_and_counts(cascade: Cascade) -> None:
    """``status --json`` names the SQLite file, says the schema is up to date, counts the
    account, jobs and webhooks, and names the configuration file; the text says the same."""
    cascade.ok("db", "upgrade")
    asyncio.run(_add_webhooks(cascade.database))
    config = cascade.directory / "cascade.toml"
    config.write_text('[smpp]\n[[smpp.connections]]\nhost = "127.0.0.1"\n')
    report = json.loads(cascade.ok("status", "--json", "--config", str(config)))
    assert report["database"] == {
        "url": f"sqlite:///{cascade.database}",
        "kind": "sqlite",
        "file": str(cascade.database),
    }
    schema = report["schema"]
    assert schema["up_to_date"] is True
    assert schema["missing"] == []
    assert schema["version"] == max(schema["expected"])
    assert report["accounts"] == 1
    # the inbound webhook has no URL to go to: it is neither queued nor pending
    assert report["jobs"] == {"queued": 1, "due": 1}
    assert report["webhooks"] == {"pending": 1, "dead": 0}
    assert report["config_file"] == {"path": str(config), "tables": ["smpp"], "error": None}
    text = cascade.ok("status", "--config", str(config))
    assert f"database:     {cascade.database} (SQLite)" in text
    assert f"schema:       up to date (version {schema['version']})" in text
    assert "accounts:     1" in text
    assert "webhooks:     1 pending, 0 dead" in text
    assert f"config file:  {config} ([smpp])" in text


def test_status_reports_a_schema_behind_without_migrating_it(cascade: Cascade) -> None:
    """On a database made by an older release, status lists the missing migrations and
    leaves the database as it was (it never migrates)."""
    first = migrations("sqlite")[0]
    conn = sqlite3.connect(cascade.database)
    conn.executescript(
        f"{first.sql}\nCREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
        f"name TEXT NOT NULL, applied_at REAL NOT NULL);\n"
        f"INSERT INTO schema_migrations VALUES ({first.version}, '{first.name}', 0);"
    )
    conn.close()
    report = json.loads(cascade.ok("status", "--json"))
    assert report["schema"]["version"] == first.version
    assert report["schema"]["up_to_date"] is False
    assert report["schema"]["missing"] == [m.version for m in migrations("sqlite")[1:]]
    assert report["accounts"] is None
    assert "run `cascade db upgrade`" in cascade.ok("status")
    conn = sqlite3.connect(cascade.database)
    assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(first.version,)]
    conn.close()


def test_status_on_an_empty_file_says_the_schema_is_not_created(cascade: Cascade) -> None:
    """An empty SQLite file (no tables) is reported as having no schema, and stays empty."""
    cascade.database.touch()
    report = json.loads(cascade.ok("status", "--json"))
    assert report["schema"]["version"] is None
    assert report["schema"]["applied"] == []
    assert "not created" in cascade.ok("status")
    conn = sqlite3.connect(cascade.database)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    conn.close()


def test_status_redacts_a_postgresql_password() -> None:
    """A database URL is shown without its password, wherever it was written."""
    assert (
        redacted_url("postgresql://app:s3cret@db:5432/cascade?sslmode=require&password=x")
        == "postgresql://app:***@db:5432/cascade?sslmode=require&password=***"
    )
    assert redacted_url("postgresql://app@db/cascade") == "postgresql://app@db/cascade"


def test_serve_on_a_port_in_use_fails_before_opening_the_database(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the port taken, serve exits 1 at once naming the address, before it builds the
    app: no database is created and no engine starts."""
    built: list[object] = []
    monkeypatch.setattr(runtime, "build_app", lambda *args, **kwargs: built.append(args))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        try:
            result = cascade("serve", "--port", str(port))
        finally:
            root.handlers[:], root.level = handlers, level
            structlog.reset_defaults()
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert time.monotonic() - started < 5
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr
    assert built == []
    assert not cascade.database.exists()
