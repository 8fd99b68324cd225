"""The ``cascade channel`` commands (key, add, list, remove) and sandbox or live accounts."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import Result
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from cascade import cli
from cascade.domain.records import LINK_CREDENTIALS, ChannelLink, LinkedChannel
from cascade.sealing import Sealer
from cascade.store.sqlite import SqliteStore

runner = CliRunner()
KEY = Sealer.generate_key()
PAGE_TOKEN = "EAAGpageAccessToken0123456789"
APP_SECRET = "0123456789abcdef0123456789abcdef"


class Cli:
    """Runs ``cascade`` against one SQLite file in a temporary working directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.database = directory / "x.db"

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        """Run ``cascade ARGS --database ...`` with ``stdin`` as its input."""
        return runner.invoke(
            cli.app, [*args, "--database", f"sqlite:///{self.database}"], input=stdin
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """Run a command that must succeed; its standard output."""
        result = self(*args, stdin=stdin)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    def links(self) -> list[ChannelLink]:
        """Every link in the database, opened with KEY."""

        async def read() -> list[ChannelLink]:
            store = SqliteStore(self.database, sealer=Sealer(KEY))
            await store.open()
            try:
                return await store.channel_links()
            finally:
                await store.close()

        return asyncio.run(read())

    def add_page(self, page_id: str = "1234567890", *extra: str) -> dict[str, str]:
        """Link a Messenger page with every secret given; the --json output."""
        shown: dict[str, str] = json.loads(
            self.ok(
                "channel",
                "add",
                "messenger",
                "--page-id",
                page_id,
                "--page-access-token",
                PAGE_TOKEN,
                "--app-secret",
                APP_SECRET,
                "--json",
                *extra,
            )
        )
        return shown


@pytest.fixture
def cascade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI in a fresh working directory, with CASCADE_CHANNEL_KEY set and no other
    CASCADE_* settings."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "CASCADE_DATABASE_URL",
        "CASCADE_API_KEY",
        "CASCADE_CREDENTIALS_FILE",
        "CASCADE_PUBLIC_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CASCADE_CHANNEL_KEY", KEY)
    return Cli(tmp_path)


def test_channel_key_prints_a_new_fernet_key_alone_on_stdout() -> None:
    """``channel key`` prints a working key as the only line of stdout (KEY=$(...) works), and
    how to set it on stderr; two runs give two keys."""
    first, second = (
        runner.invoke(cli.app, ["channel", "key"]),
        runner.invoke(cli.app, ["channel", "key"]),
    )
    assert first.exit_code == 0
    key = first.stdout.strip()
    assert "\n" not in key
    assert Fernet(key.encode())
    assert key != second.stdout.strip()
    assert "CASCADE_CHANNEL_KEY=" in first.stderr
    assert "new,old" in first.stderr


def test_add_messenger_links_the_page_and_shows_a_generated_verify_token_once(
    cascade: Cli,
) -> None:
    """A page linked with its token and secret is stored sealed with them and a random verify
    token, which the add prints (it is not shown again by list)."""
    shown = cascade.add_page()
    assert shown["channel"] == "messenger"
    assert shown["address"] == "1234567890"
    verify_token = shown["verify_token"]
    assert len(verify_token) >= 24
    (link,) = cascade.links()
    assert link.id == shown["link_id"]
    assert link.credentials == {
        "page_access_token": PAGE_TOKEN,
        "app_secret": APP_SECRET,
        "verify_token": verify_token,
    }
    listed = cascade.ok("channel", "list")
    assert verify_token not in listed


def test_add_prints_the_callback_url_to_register(
    cascade: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --json, the add says which callback URL the platform needs, under
    CASCADE_PUBLIC_URL."""
    monkeypatch.setenv("CASCADE_PUBLIC_URL", "https://cascade.example.com/")
    out = cascade.ok(
        "channel", "add", "viber", "--bot-id", "acme", "--sender-name", "Acme", "--auth-token", "t"
    )
    assert "https://cascade.example.com/channels/viber" in out
    assert re.search(r"^link_id:\s+\S+", out, re.MULTILINE)


def test_a_given_verify_token_is_kept_and_not_printed(cascade: Cli) -> None:
    """--verify-token is stored as given, and the add does not print it back."""
    shown = cascade.add_page("42", "--verify-token", "my-verify-token")
    assert "verify_token" not in shown
    (link,) = cascade.links()
    assert link.credentials["verify_token"] == "my-verify-token"


def test_secrets_left_off_the_command_line_are_asked_for_without_echo(cascade: Cli) -> None:
    """Without --page-access-token and --app-secret, both are read from a hidden prompt: they
    are stored, and the output does not echo them."""
    result = cascade(
        "channel", "add", "messenger", "--page-id", "77", stdin=f"{PAGE_TOKEN}\n{APP_SECRET}\n"
    )
    assert result.exit_code == 0, result.output
    assert "Page access token" in result.output
    assert PAGE_TOKEN not in result.output
    assert APP_SECRET not in result.output
    (link,) = cascade.links()
    assert link.credentials["page_access_token"] == PAGE_TOKEN
    assert link.credentials["app_secret"] == APP_SECRET


def test_add_whatsapp_stores_the_number_as_digits(cascade: Cli) -> None:
    """A WhatsApp number given with a leading + is linked as its digits, with the ids and
    secrets the channel needs."""
    shown = json.loads(
        cascade.ok(
            "channel",
            "add",
            "whatsapp",
            "--number",
            "+447700900123",
            "--phone-number-id",
            "106540352242922",
            "--business-account-id",
            "102290129340398",
            "--access-token",
            "EAAGwhatsappToken0123456789",
            "--app-secret",
            APP_SECRET,
            "--json",
        )
    )
    assert shown["address"] == "447700900123"
    (link,) = cascade.links()
    assert link.channel is LinkedChannel.WHATSAPP
    assert set(LINK_CREDENTIALS[LinkedChannel.WHATSAPP]) <= set(link.credentials)
    assert link.credentials["phone_number_id"] == "106540352242922"


@pytest.mark.parametrize("number", ["44 7700 900123", "44-7700", "+", "1234567890123456", "٤٤"])
def test_add_whatsapp_refuses_a_number_that_is_not_digits(cascade: Cli, number: str) -> None:
    """A number with anything but digits (after one leading +), or too long, is refused
    before anything is asked or stored."""
    result = cascade(
        "channel",
        "add",
        "whatsapp",
        "--number",
        number,
        "--phone-number-id",
        "1",
        "--business-account-id",
        "2",
    )
    assert result.exit_code == 1
    assert "--number" in result.stderr
    assert not cascade.database.exists()


def test_add_viber_stores_the_sender_and_checks_it(cascade: Cli) -> None:
    """A Viber bot is linked with its token, sender name and avatar; a name longer than
    Viber shows, an avatar that is not a URL and an empty id are refused."""
    base = ("channel", "add", "viber", "--auth-token", "viber-token")
    for bad, message in [
        (("--bot-id", "b", "--sender-name", "x" * 29), "up to 28"),
        (("--bot-id", "b", "--sender-name", "A", "--sender-avatar", "ftp://x"), "http(s)"),
        (("--bot-id", " ", "--sender-name", "A"), "--bot-id is empty"),
    ]:
        result = cascade(*base, *bad)
        assert result.exit_code == 1
        assert message in result.stderr
    cascade.ok(
        *base, "--bot-id", "acme", "--sender-name", "Acme", "--sender-avatar", "https://a.test/a"
    )
    (link,) = cascade.links()
    assert link.credentials == {
        "auth_token": "viber-token",
        "sender_name": "Acme",
        "sender_avatar": "https://a.test/a",
    }


def test_add_without_a_key_says_how_to_make_one_and_changes_nothing(
    cascade: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without CASCADE_CHANNEL_KEY the add fails at once, naming the setting and the command
    that makes a key, asking for nothing and creating no database."""
    monkeypatch.delenv("CASCADE_CHANNEL_KEY")
    result = cascade("channel", "add", "messenger", "--page-id", "1")
    assert result.exit_code == 1
    assert "CASCADE_CHANNEL_KEY" in result.stderr
    assert "cascade channel key" in result.stderr
    assert "token" not in result.stdout.lower()
    assert list(cascade.directory.iterdir()) == []


def test_an_address_linked_already_is_refused(cascade: Cli) -> None:
    """A second link of the same page, by the same or another account, fails and the first
    link stays."""
    first = cascade.add_page("555")
    other = json.loads(cascade.ok("account", "create", "--json"))["api_key"]
    for extra in ((), ("--api-key", other)):
        result = cascade(
            "channel",
            "add",
            "messenger",
            "--page-id",
            "555",
            "--page-access-token",
            "x",
            "--app-secret",
            "y",
            *extra,
        )
        assert result.exit_code == 1
        assert "messenger 555 is linked already" in result.stderr
    assert [link.id for link in cascade.links()] == [first["link_id"]]


def test_list_shows_every_accounts_links_with_secrets_masked(cascade: Cli) -> None:
    """``channel list`` shows each link's id, channel, address and account; secrets show at
    most their first 4 characters; --api-key lists one account's."""
    mine = cascade.add_page("111")
    other = json.loads(cascade.ok("account", "create", "--json"))["api_key"]
    theirs = cascade.add_page("222", "--api-key", other)
    listed = json.loads(cascade.ok("channel", "list", "--json"))
    assert [(item["link_id"], item["address"]) for item in listed] == [
        (mine["link_id"], "111"),
        (theirs["link_id"], "222"),
    ]
    assert listed[1]["api_key"] == other
    assert listed[0]["credentials"]["page_access_token"] == PAGE_TOKEN[:4] + "…"
    assert listed[0]["credentials"]["app_secret"] == APP_SECRET[:4] + "…"
    text = cascade.ok("channel", "list")
    for secret in (PAGE_TOKEN, APP_SECRET, mine["verify_token"]):
        assert secret not in text
    assert mine["link_id"] in text
    assert f"api_key={other}" in text
    only_theirs = json.loads(cascade.ok("channel", "list", "--api-key", other, "--json"))
    assert [item["link_id"] for item in only_theirs] == [theirs["link_id"]]


def test_remove_takes_only_the_accounts_own_link(cascade: Cli) -> None:
    """``channel remove`` refuses another account's link (exit 1, the link stays) and
    removes the account's own, once."""
    mine = cascade.add_page("333")
    other = json.loads(cascade.ok("account", "create", "--json"))["api_key"]
    refused = cascade("channel", "remove", mine["link_id"], "--api-key", other)
    assert refused.exit_code == 1
    assert f"no channel link {mine['link_id']}" in refused.stderr
    assert len(cascade.links()) == 1
    assert f"removed channel link {mine['link_id']}" in cascade.ok(
        "channel", "remove", mine["link_id"]
    )
    assert cascade.links() == []
    assert cascade("channel", "remove", mine["link_id"]).exit_code == 1


@pytest.mark.parametrize(
    "command", [["channel", "list"], ["channel", "remove", "x"]], ids=["list", "remove"]
)
def test_channel_commands_that_do_not_add_create_no_database(
    cascade: Cli, command: list[str]
) -> None:
    """From a directory without the database, list and remove fail naming the file and
    create nothing."""
    result = cascade(*command)
    assert result.exit_code == 1
    assert "no database at" in result.stderr
    assert list(cascade.directory.iterdir()) == []


def test_accounts_are_sandbox_accounts_unless_made_live(cascade: Cli) -> None:
    """``account create`` makes a sandbox account, ``--live`` a live one; ``account set
    --live/--sandbox`` switches, and ``account show`` says which."""
    cascade.ok("db", "upgrade")
    assert "mode:             sandbox" in cascade.ok("account", "show")
    live = json.loads(cascade.ok("account", "create", "--live", "--json"))
    assert live["sandbox"] is False
    assert json.loads(cascade.ok("account", "create", "--json"))["sandbox"] is True
    assert "mode:             live" in cascade.ok("account", "show", "--api-key", live["api_key"])
    assert "mode:             live" in cascade.ok("account", "set", "--live")
    assert "mode:             sandbox" in cascade.ok("account", "set", "--sandbox")
    assert "mode:             sandbox" in cascade.ok("account", "show")


@pytest.mark.parametrize(
    ("group", "commands"),
    [
        (["channel"], ["key", "add", "list", "remove"]),
        (["channel", "add"], ["messenger", "whatsapp", "viber"]),
    ],
    ids=["channel", "channel-add"],
)
def test_help_lists_the_channel_commands(group: list[str], commands: list[str]) -> None:
    """--help of the channel groups lists their commands."""
    result = runner.invoke(cli.app, [*group, "--help"])
    assert result.exit_code == 0
    for command in commands:
        assert re.search(rf"^  {command}\s", result.stdout, re.MULTILINE), command
