"""The operator's side of webhooks from the command line, over one SQLite file: `account set
--status-url`, `webhooks list [--failed]`, `webhooks replay ID | --all-failed` and `account
rotate-signature-secret`, each followed by a delivery run against a real receiver."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner
from vonage_jwt import verify_signature

from cascade import cli
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import FakeClock
from cascade.domain.records import NewWebhook, WebhookKind
from cascade.engine.engine import Engine, Providers
from cascade.store.sqlite import SqliteStore
from tests.webhooks.conftest import sender
from tests.webhooks.receiver import Action, Receiver, Request, Respond, free_port, verify

runner = CliRunner()


class Operator:
    """Runs `cascade` commands and delivery runs against one SQLite file."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def __call__(self, *args: str) -> Result:
        """Run ``cascade ARGS --database sqlite:///FILE``."""
        return runner.invoke(cli.app, [*args, "--database", f"sqlite:///{self.database}"])

    def ok(self, *args: str) -> str:
        """Run a command that must succeed; its standard output."""
        result = self(*args)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    def secret(self) -> str:
        """The account's signature secret, as `account show --show-secrets` prints it."""
        match = re.search(r"signature_secret: (\S+)", self.ok("account", "show", "--show-secrets"))
        assert match is not None
        return match.group(1)

    def queue(self, count: int) -> None:
        """Queue ``count`` status webhooks of the account (to its status URL)."""

        async def work() -> None:
            store = SqliteStore(self.database)
            await store.open()
            try:
                (account,) = await store.list_accounts()
                hooks = [
                    NewWebhook(
                        WebhookKind.STATUS, account.id, None, None, None, None, b'{"n":%d}' % i
                    )
                    for i in range(count)
                ]
                await store.add_webhooks(hooks, time.time())
            finally:
                await store.close()

        asyncio.run(work())

    def deliver(self, answer: Action) -> list[Request]:
        """A delivery run: a receiver on the status URL's port answering ``answer``, and an
        engine with the real sender running every job due now; what the receiver got."""

        async def work() -> list[Request]:
            store = SqliteStore(self.database)
            await store.open()
            clock = FakeClock(time.time())
            receiver = await Receiver(clock, port=self.port, default=answer).up()
            engine = Engine(
                store,
                Providers(SandboxProvider(store, clock)),
                clock,
                job_kinds=[sender(store, clock)],
            )
            await engine.start(run_loop=False)
            try:
                await engine.drain()
            finally:
                await engine.stop()
                await receiver.down()
                await store.close()
            return receiver.requests

        return asyncio.run(work())

    def listed(self, *options: str) -> dict[int, str]:
        """`webhooks list` as {id: state}."""
        rows = self.ok("webhooks", "list", *options).splitlines()
        return {int(line.split()[0]): line.split()[2] for line in rows if line.strip()}


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Operator:
    """A fresh database with its account's status URL set to a free local port."""
    monkeypatch.chdir(tmp_path)
    for name in ("CASCADE_DATABASE_URL", "CASCADE_URL", "CASCADE_API_KEY", "CASCADE_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    operator = Operator(tmp_path / "cascade.db")
    operator.ok("db", "upgrade")
    shown = operator.ok("account", "set", "--status-url", operator.url)
    assert f"status_url:       {operator.url}" in shown
    return operator


def test_dead_letters_are_listed_replayed_by_id_and_all_failed_then_delivered(
    operator: Operator,
) -> None:
    """410 makes three dead letters; replay 1 id, then --all-failed; later runs deliver them."""
    operator.queue(3)
    assert len(operator.deliver(Respond(410))) == 3
    listing = operator.ok("webhooks", "list", "--failed")
    assert listing.count("dead") == 3
    assert listing.count("last=HTTP 410") == 3
    assert operator.url in listing
    first, second, third = sorted(operator.listed("--failed"))

    assert "queued 1 webhook(s) for delivery" in operator.ok("webhooks", "replay", str(first))
    assert operator.listed("--failed") == {second: "dead", third: "dead"}
    (request,) = operator.deliver(Respond(204))
    assert request.json() == {"n": 0}
    verify(request, operator.secret())
    assert operator.listed() == {first: "delivered", second: "dead", third: "dead"}

    assert "queued 2 webhook(s)" in operator.ok("webhooks", "replay", "--all-failed")
    assert operator.listed("--failed") == {}
    got = operator.deliver(Respond(200))
    assert sorted(r.json()["n"] for r in got) == [1, 2]
    assert operator.listed() == {first: "delivered", second: "delivered", third: "delivered"}
    assert operator.ok("webhooks", "list", "--failed").strip() == ""
    assert operator.deliver(Respond(204)) == []  # nothing left to send


def test_a_replayed_webhook_that_fails_again_is_retried_on_the_schedule(
    operator: Operator,
) -> None:
    """A replayed dead letter is pending again with a job: a 500 leaves it pending, not dead,
    and its schedule starts over (one attempt since the replay)."""
    operator.queue(1)
    operator.deliver(Respond(410))
    (hook_id,) = operator.listed("--failed")
    operator.ok("webhooks", "replay", str(hook_id))
    assert len(operator.deliver(Respond(500))) == 1
    assert operator.listed() == {hook_id: "pending"}
    assert "attempts=1" in operator.ok("webhooks", "list")


def test_replay_needs_ids_or_all_failed_but_not_both(operator: Operator) -> None:
    """Neither, or both, is an error that changes nothing."""
    assert operator("webhooks", "replay").exit_code == 1
    assert operator("webhooks", "replay", "1", "--all-failed").exit_code == 1


def test_webhooks_list_is_newest_first_and_filters_pending_and_dead(operator: Operator) -> None:
    """The listing starts with the newest; --pending shows those still being retried (with
    their next attempt), --dead the dead letters, --before the next page."""
    operator.queue(2)
    first, second = sorted(operator.listed())
    rows = operator.ok("webhooks", "list").splitlines()
    assert [int(row.split()[0]) for row in rows] == [second, first]
    assert [
        int(row.split()[0])
        for row in operator.ok("webhooks", "list", "--before", str(second)).splitlines()
    ] == [first]
    operator.deliver(Respond(500))  # both retried later: still pending, with a next attempt
    pending = operator.ok("webhooks", "list", "--pending")
    assert sorted(operator.listed("--pending")) == [first, second]
    assert "next=-" not in pending
    assert operator.ok("webhooks", "list", "--dead").strip() == ""
    assert operator("webhooks", "list", "--pending", "--dead").exit_code == 1


def test_replaying_an_id_that_does_not_exist_fails_and_queues_nothing(operator: Operator) -> None:
    """`replay 9999` (no such webhook) exits non-zero naming it; a known id given with it is not
    queued either."""
    operator.queue(1)
    operator.deliver(Respond(410))
    (hook_id,) = operator.listed("--failed")
    result = operator("webhooks", "replay", str(hook_id), "9999")
    assert result.exit_code == 1
    assert "no webhook 9999" in result.stderr
    assert operator.listed("--failed") == {hook_id: "dead"}


def test_account_set_refuses_a_url_that_is_not_http(operator: Operator) -> None:
    """`account set --status-url ftp://…` fails and keeps the URL that was set."""
    result = operator("account", "set", "--status-url", "ftp://127.0.0.1/hook")
    assert result.exit_code == 1
    assert operator.url in operator.ok("account", "show")


def test_rotating_the_signature_secret_from_the_cli_signs_the_next_webhooks(
    operator: Operator,
) -> None:
    """After `account rotate-signature-secret`, webhooks verify with the printed secret only."""
    old = operator.secret()
    operator.queue(1)
    (before,) = operator.deliver(Respond(204))
    verify(before, old)
    printed = re.search(
        r"signature_secret: (\S+)", operator.ok("account", "rotate-signature-secret")
    )
    assert printed is not None
    new = printed.group(1)
    assert new != old
    assert operator.secret() == new
    operator.queue(1)
    (after,) = operator.deliver(Respond(204))
    verify(after, new)
    assert verify_signature(after.token, old) is False
