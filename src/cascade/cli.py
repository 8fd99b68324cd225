"""The ``cascade`` command: run the service, manage tenants, make JWTs, send from a terminal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import jwt
import pydantic
import typer
import typer.core
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from cascade import __version__, linking, tenancy
from cascade.cli_records import account_json, application_json, webhook_json
from cascade.clock import SystemClock
from cascade.config import JOB_KINDS, Settings, engine_jobs
from cascade.domain.records import (
    Account,
    Application,
    ChannelLink,
    LinkedChannel,
    WebhookRecord,
    WebhookState,
    WebhookVersion,
    WorkflowRecord,
)
from cascade.errors import CascadeError, ConfigError
from cascade.sealing import KEY_SETTING, Sealer
from cascade.service import (
    channel_sealer,
    credentials_path,
    ensure_default_account,
    new_account,
    open_store,
)
from cascade.store.base import Store

T = TypeVar("T")

#: Typer's type labels as help shows them instead (click's names; a flag shows none)
_PLAIN_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "bool": ""}


class _PlainOption(typer.core.TyperOption):
    """An option whose help names its value's type as click does (TEXT, INTEGER, PATH), not
    as Typer's ``<str>``."""

    def display_type(self, ctx: Any) -> str:
        """The value's type name, without Typer's brackets (``<int range>`` is INTEGER)."""
        label = super().display_type(ctx).strip("<>").removesuffix(" range")
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        return _PLAIN_TYPES.get(label, label.upper())


class _PlainArgument(typer.core.TyperArgument):
    """An argument shown by its name in capitals, without a type label after it."""

    def display_type(self, ctx: Any) -> str:
        """Nothing: the argument's name and help say what it is."""
        return ""


class _PlainHelpGroup(typer.core.TyperGroup):
    """The ``cascade`` group: every option and argument under it (subgroups too) has plain
    type names in its help, so each command added anywhere gets them without asking."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _plain_help(self)


def _plain_help(command: Any) -> None:
    """Give ``command`` and every command under it plain type names in their help."""
    for param in command.params:
        if type(param) is typer.core.TyperOption:
            param.__class__ = _PlainOption
        elif type(param) is typer.core.TyperArgument:
            param.__class__ = _PlainArgument
            param.metavar = param.metavar or (param.name or "").upper()
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


app = typer.Typer(
    cls=_PlainHelpGroup,
    rich_markup_mode=None,
    help="Cascade: self-hosted Nexmo Messages and Dispatch (failover) API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(asked: bool) -> None:
    """Print the version and stop (``--version``)."""
    if asked:
        typer.echo(f"cascade {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Cascade: self-hosted Nexmo Messages and Dispatch (failover) API."""


db_app = typer.Typer(rich_markup_mode=None, help="Database schema.", no_args_is_help=True)
account_app = typer.Typer(
    rich_markup_mode=None,
    help="The account: API credentials and webhook URLs.",
    no_args_is_help=True,
)
app_app = typer.Typer(
    rich_markup_mode=None, help="Applications: JWT keys and webhook URLs.", no_args_is_help=True
)
jwt_app = typer.Typer(
    rich_markup_mode=None, help="JSON Web Tokens for the API.", no_args_is_help=True
)
webhooks_app = typer.Typer(
    rich_markup_mode=None,
    help="Customer webhooks: delivery state and replay.",
    no_args_is_help=True,
)
channel_app = typer.Typer(
    rich_markup_mode=None,
    help="Linked channels: the Messenger pages, WhatsApp numbers and Viber bots an account "
    "sends from, their credentials sealed with CASCADE_CHANNEL_KEY.",
    no_args_is_help=True,
)
channel_add_app = typer.Typer(
    rich_markup_mode=None,
    help="Link a Messenger page, a WhatsApp number or a Viber bot to the account.",
    no_args_is_help=True,
)
channel_app.add_typer(channel_add_app, name="add")
app.add_typer(db_app, name="db")
app.add_typer(account_app, name="account")
app.add_typer(app_app, name="app")
app.add_typer(channel_app, name="channel")
app.add_typer(jwt_app, name="jwt")
app.add_typer(webhooks_app, name="webhooks")
dev_app = typer.Typer(
    rich_markup_mode=None, help="Tools for trying Cascade on one machine.", no_args_is_help=True
)
app.add_typer(dev_app, name="dev")

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        "-d",
        metavar="URL",
        help="sqlite:///FILE or postgresql://... [default: $CASCADE_DATABASE_URL or "
        "sqlite:///cascade.db]",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Provider settings (TOML, e.g. [smpp]) [default: $CASCADE_CONFIG_FILE]",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", help="Which account (default: the first one)", show_default=False),
]
UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="CASCADE_URL", metavar="URL", help="Where the Cascade API is"),
]
AppIdOption = Annotated[
    str | None,
    typer.Option("--app-id", envvar="CASCADE_APPLICATION_ID", help="Sign a JWT for this app"),
]
KeyOption = Annotated[
    Path | None,
    typer.Option("--private-key", envvar="CASCADE_PRIVATE_KEY", help="The app's private key"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print it as JSON")]
BasicKeyOption = Annotated[
    str | None, typer.Option("--basic-key", envvar="CASCADE_API_KEY", help="Basic auth api_key")
]
BasicSecretOption = Annotated[
    str | None,
    typer.Option("--basic-secret", envvar="CASCADE_API_SECRET", help="Basic auth api_secret"),
]


def _settings(database: str | None, config: Path | None = None) -> Settings:
    settings = Settings()
    if database:
        settings.database_url = database
    if config is not None:
        settings.config_file = config
    return settings


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _with_store(
    database: str | None, work: Callable[[Store], Awaitable[T]], *, existing: bool = False
) -> T:
    """Run ``work`` against the opened store, turning Cascade errors into a clean exit; with
    ``existing`` (a command that only reads), a database that is not there is an error."""

    async def run() -> T:
        settings = _settings(database)
        store = open_store(settings.database_url, settings, existing=existing)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except CascadeError as exc:
        raise _fail(f"error: {exc}") from exc


def _announcer(credentials: Path, *, err: bool = False) -> Callable[[Account, str], None]:
    """What tells the operator about the account a first start created: where its
    credentials file is, and the secrets themselves only when stdout is a terminal (a person
    reads it there; anything else, e.g. a service manager's journal, is a log). With ``err``
    it all goes to standard error (standard output is a command's machine-readable answer)."""

    def announce(account: Account, api_secret: str) -> None:
        typer.echo(
            f"Created the default account (api_key {account.api_key}). Its credentials are in "
            f"{credentials} (mode 0600); the API secret is stored nowhere else.",
            err=err,
        )
        if (sys.stderr if err else sys.stdout).isatty():
            typer.echo("The API secret is shown only this once:", err=err)
            typer.echo(f"  api_key:          {account.api_key}", err=err)
            typer.echo(f"  api_secret:       {api_secret}", err=err)
            typer.echo(f"  signature_secret: {account.signature_secret}", err=err)

    return announce


async def _account(
    store: Store,
    api_key: str | None,
    database: str | None,
    *,
    create: bool = True,
    quiet: bool = False,
) -> Account:
    """The account ``api_key`` names, else the first one; a command that writes creates the
    default account of a new database (and says where its credentials are), one that only
    reads never does."""
    if create:
        credentials = credentials_path(_settings(database))
        created = await ensure_default_account(store, SystemClock(), credentials)
        if created is not None:
            _announcer(credentials, err=quiet)(created.account, created.api_secret)
    if api_key is None:
        accounts = await store.list_accounts()
        if not accounts:
            raise ConfigError("the database has no account yet: start `cascade serve` first")
        return accounts[0]
    account = await store.get_account_by_api_key(api_key)
    if account is None:
        raise ConfigError(f"no account with api_key {api_key}")
    return account


# --- serve -----------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [default: 3000]")] = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            help="Serve HTTPS with this PEM certificate (chain) [default: $CASCADE_SSL_CERTFILE]"
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option(
            help="The certificate's PEM private key [default: $CASCADE_SSL_KEYFILE]",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            help="Processes to run: 1 keeps the API and the engine in one; more run the engine "
            "in one and the API in the rest [default: $CASCADE_PROCESSES, else one per core]",
            min=1,
            max=64,
        ),
    ] = None,
) -> None:
    """Run the HTTP API and the engine, creating and migrating the database on first start:
    by default the engine in one process and the API in one per further core (restarted if
    they die); over HTTPS with --ssl-certfile and --ssl-keyfile."""
    from cascade.runtime import run_server

    settings = _settings(database, config)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    if ssl_certfile is not None:
        settings.ssl_certfile = ssl_certfile
    if ssl_keyfile is not None:
        settings.ssl_keyfile = ssl_keyfile
    if processes is not None:
        settings.processes = processes
    try:
        run_server(settings, announce=_announcer(credentials_path(settings)))
    except CascadeError as exc:
        raise _fail(f"error: {exc}") from exc


@app.command()
def worker(
    database: DatabaseOption = None,
    config: ConfigOption = None,
    jobs: Annotated[
        str | None,
        typer.Option(
            help=f"The jobs to run: all, or a comma list of {', '.join(JOB_KINDS)} "
            "[default: $CASCADE_ENGINE_JOBS or all]"
        ),
    ] = None,
) -> None:
    """Run the engine alone (sends, timers, webhooks), beside API nodes started with
    CASCADE_RUN_WORKER=false, or beside engines that run the other jobs."""
    import uvloop

    from cascade.runtime import run_worker

    settings = _settings(database, config)
    if jobs is not None:
        try:
            settings.engine_jobs = engine_jobs(jobs)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--jobs") from exc
    try:
        # the event loop serve runs on too (uvicorn's loop="uvloop"): about half the CPU of
        # asyncio's own for the same SMPP and HTTP traffic
        uvloop.run(run_worker(settings))
    except CascadeError as exc:
        raise _fail(f"error: {exc}") from exc


@app.command()
def status(
    database: DatabaseOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Say which database and configuration file commands here use, and what the database
    holds: its schema version against this release's, accounts, queued jobs and webhooks.
    Changes nothing, and never creates a database."""
    from cascade.overview import render_status, status_report

    settings = _settings(database, config)
    try:
        report = status_report(settings)
    except CascadeError as exc:
        raise _fail(f"error: {exc}") from exc
    typer.echo(json.dumps(report, indent=2) if as_json else render_status(report))


# --- db --------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(database: DatabaseOption = None) -> None:
    """Create the database or bring its schema up to date."""

    async def work(store: Store) -> None:
        await _account(store, None, database)

    _with_store(database, work)
    typer.echo("The database schema is up to date.")


# --- account ---------------------------------------------------------------------------------


def _echo_account(account: Account, show_secrets: bool, as_json: bool = False) -> None:
    """Print an account as a person or a script reads it."""
    if as_json:
        typer.echo(json.dumps(account_json(account, show_signature_secret=show_secrets)))
        return
    secret = account.signature_secret if show_secrets else "(hidden; --show-secrets shows it)"
    typer.echo(f"api_key:          {account.api_key}")
    typer.echo(f"signature_secret: {secret}")
    typer.echo(f"status_url:       {account.status_url or '-'}")
    typer.echo(f"inbound_url:      {account.inbound_url or '-'}")
    typer.echo(f"mode:             {_mode(account)}")


def _mode(account: Account) -> str:
    """What happens to an account's messages from no linked channel, in a word or two."""
    if account.sandbox:
        return "sandbox (messages from no linked channel go to the sandbox)"
    return "live (messages from no linked channel are rejected)"


@account_app.command("show")
def account_show(
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    show_secrets: Annotated[bool, typer.Option(help="Print the signature secret")] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the account's API key and webhook URLs."""
    account = _with_store(
        database, lambda store: _account(store, api_key, database, create=False), existing=True
    )
    _echo_account(account, show_secrets, as_json)


@account_app.command("set")
def account_set(
    status_url: Annotated[
        str | None, typer.Option(help="Where message statuses and final reports go ('' clears)")
    ] = None,
    inbound_url: Annotated[
        str | None, typer.Option(help="Where inbound messages go ('' clears)")
    ] = None,
    sandbox: Annotated[
        bool | None,
        typer.Option(
            "--sandbox/--live",
            help="Sandbox: messages from no linked channel go to the sandbox; live: they are "
            "rejected [default: unchanged]",
            show_default=False,
        ),
    ] = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set the account's default webhook URLs (applications may override them) and whether it
    is a sandbox or a live account."""
    changes = _url_changes(status_url, inbound_url)
    if sandbox is not None:
        changes["sandbox"] = sandbox

    async def work(store: Store) -> Account:
        account = await _account(store, api_key, database)
        return await store.update_account(account.id, **changes)

    _echo_account(_with_store(database, work), False, as_json)


def _url_changes(status_url: str | None, inbound_url: str | None) -> dict[str, Any]:
    """The webhook URLs an ``account set`` or ``app update`` changes ('' clears one)."""
    changes: dict[str, Any] = {}
    if status_url is not None:
        changes["status_url"] = _webhook_url(status_url)
    if inbound_url is not None:
        changes["inbound_url"] = _webhook_url(inbound_url)
    return changes


def _webhook_url(url: str) -> str | None:
    """The URL as stored; an error when it is not http(s), or when the service's webhook
    rule (CASCADE_WEBHOOK_ALLOW_PRIVATE) refuses its host by itself."""
    try:
        return tenancy.webhook_url(url, Settings().webhook_reach)
    except ValueError as exc:
        raise _fail(f"error: {exc}") from exc


@account_app.command("rotate-signature-secret")
def account_rotate(
    database: DatabaseOption = None, api_key: ApiKeyOption = None, as_json: JsonOption = False
) -> None:
    """Replace the secret that signs webhooks; prints the new one (update your receivers)."""

    async def work(store: Store) -> Account:
        account = await _account(store, api_key, database)
        return await tenancy.rotate_signature_secret(store, account.id)

    account = _with_store(database, work)
    if as_json:
        typer.echo(json.dumps(account_json(account, show_signature_secret=True)))
    else:
        typer.echo(f"signature_secret: {account.signature_secret}")


@account_app.command("create")
def account_create(
    status_url: Annotated[str | None, typer.Option(help="Status webhook URL")] = None,
    inbound_url: Annotated[str | None, typer.Option(help="Inbound webhook URL")] = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="A live account: its messages from no linked channel are rejected instead "
            "of going to the sandbox",
        ),
    ] = False,
    database: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the account as JSON")] = False,
) -> None:
    """Create another account; prints its API key and secrets (the API secret only this once:
    only its digest is stored). It is a sandbox account unless --live."""
    created = new_account(SystemClock())
    account = dataclasses.replace(
        created.account,
        status_url=_webhook_url(status_url) if status_url else None,
        inbound_url=_webhook_url(inbound_url) if inbound_url else None,
        sandbox=not live,
    )

    async def work(store: Store) -> None:
        await store.create_account(account)

    _with_store(database, work)
    _echo_new_secret(account, created.api_secret, as_json)


@account_app.command("rotate-api-secret")
def account_rotate_api_secret(
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the account as JSON")] = False,
) -> None:
    """Replace the account's API secret (Basic auth); prints the new one only this once. The
    old one stops working at once here, and within seconds on a running API."""

    async def work(store: Store) -> tuple[Account, str]:
        account = await _account(store, api_key, database, create=False)
        return await tenancy.rotate_api_secret(store, account.id)

    _echo_new_secret(*_with_store(database, work, existing=True), as_json)


def _echo_new_secret(account: Account, api_secret: str, as_json: bool) -> None:
    """Print an account with the API secret it was just given (shown this once)."""
    if as_json:
        shown = account_json(account, show_signature_secret=True, api_secret=api_secret)
        typer.echo(json.dumps(shown))
        return
    typer.echo(f"api_key:          {account.api_key}")
    typer.echo(f"api_secret:       {api_secret}  (shown only this once)")
    typer.echo(f"signature_secret: {account.signature_secret}")
    typer.echo(f"mode:             {_mode(account)}")


# --- app -------------------------------------------------------------------------------------


def _generate_key_pair(private_key_file: Path) -> str:
    """Write a new RSA private key (mode 0600) and return its public key in PEM."""
    pair = tenancy.generate_key_pair()
    fd = os.open(private_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pair.private_pem)
    return pair.public_pem


def _read_public_key(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(f"error: cannot read a PEM public key from {path}: {exc}") from exc
    try:
        return tenancy.public_key_pem(data)
    except ValueError as exc:
        raise _fail(f"error: cannot read a PEM public key from {path}: {exc}") from exc


WebhookVersionOption = Annotated[
    WebhookVersion | None,
    typer.Option(
        help="The shape of the status webhooks of the messages it sends (and, once every "
        "application of the account says v1, of inbound ones): v0.1 or v1 (Messages v1) "
        "[default: v0.1]",
        show_default=False,
    ),
]


@app_app.command("create")
def app_create(
    name: Annotated[str, typer.Argument(help="A name for the application")],
    status_url: Annotated[str | None, typer.Option(help="Status webhook URL")] = None,
    inbound_url: Annotated[str | None, typer.Option(help="Inbound webhook URL")] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="An RSA public key (PEM); without it a key pair is generated"),
    ] = None,
    private_key_file: Annotated[
        Path | None,
        typer.Option(help="Where to write the generated private key [default: ./NAME.key]"),
    ] = None,
    webhook_version: WebhookVersionOption = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the application id alone")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the application as JSON")] = False,
) -> None:
    """Create an application; prints its id (and writes a private key unless --public-key)."""
    status = _webhook_url(status_url) if status_url else None
    inbound = _webhook_url(inbound_url) if inbound_url else None
    key_path = None
    if public_key is not None:
        pem = _read_public_key(public_key)
    else:
        key_path = private_key_file or Path(f"{name}.key")
        if key_path.exists():
            raise _fail(f"error: {key_path} exists; choose another --private-key-file")
        pem = _generate_key_pair(key_path)

    async def work(store: Store) -> Application:
        account = await _account(store, api_key, database, quiet=quiet or as_json)
        application = tenancy.new_application(
            account.id,
            name,
            pem,
            status_url=status,
            inbound_url=inbound,
            webhook_version=webhook_version,
            now=time.time(),
        )
        await store.create_application(application)
        return application

    try:
        application = _with_store(database, work)
    except typer.Exit:
        if key_path is not None:  # no application holds its public key: do not leave it behind
            key_path.unlink()
        raise
    if as_json:
        typer.echo(json.dumps(application_json(application, key_path)))
    elif quiet:
        typer.echo(application.id)
    else:
        typer.echo(f"application_id: {application.id}")
        if key_path is not None:
            typer.echo(f"private key:    {key_path} (mode 0600; keep it secret)")


@app_app.command("list")
def app_list(
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array")] = False,
) -> None:
    """List the account's applications."""

    async def work(store: Store) -> list[Application]:
        account = await _account(store, api_key, database, create=False)
        return await store.list_applications(account.id)

    applications = _with_store(database, work, existing=True)
    if as_json:
        typer.echo(json.dumps([application_json(application) for application in applications]))
        return
    for application in applications:
        typer.echo(
            f"{application.id}  {application.name}  status={application.status_url or '-'}  "
            f"inbound={application.inbound_url or '-'}"
        )


async def _own_application(
    store: Store, application_id: str, api_key: str | None, database: str | None
) -> Application:
    """The account's application of this id (an error when it has none of that id)."""
    account = await _account(store, api_key, database, create=False)
    application = await tenancy.own_application(store, account.id, application_id)
    if application is None:
        raise ConfigError(f"the account has no application {application_id}")
    return application


@app_app.command("show")
def app_show(
    application_id: Annotated[str, typer.Argument(help="The application's id")],
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one of the account's applications: its name and webhook URLs."""
    application = _with_store(
        database,
        lambda store: _own_application(store, application_id, api_key, database),
        existing=True,
    )
    _echo_application(application, None, as_json)


@app_app.command("update")
def app_update(
    application_id: Annotated[str, typer.Argument(help="The application's id")],
    status_url: Annotated[
        str | None, typer.Option(help="Status webhook URL ('' clears: the account's is used)")
    ] = None,
    inbound_url: Annotated[
        str | None, typer.Option(help="Inbound webhook URL ('' clears: the account's is used)")
    ] = None,
    webhook_version: WebhookVersionOption = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the application as JSON")] = False,
) -> None:
    """Change an application's webhook URLs or webhook shape (a running API sees it within
    seconds; messages accepted before keep the shape they were accepted with)."""
    changes = _url_changes(status_url, inbound_url)
    if webhook_version is not None:
        changes["webhook_version"] = webhook_version.value

    async def work(store: Store) -> Application:
        application = await _own_application(store, application_id, api_key, database)
        return await store.update_application(application.id, **changes)

    _echo_application(_with_store(database, work, existing=True), None, as_json)


@app_app.command("delete")
def app_delete(
    application_id: Annotated[str, typer.Argument(help="The application's id")],
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the deleted application as JSON")
    ] = False,
) -> None:
    """Delete an application: its JWTs stop working (within seconds on a running API); its
    workflows stay readable by the account."""

    async def work(store: Store) -> Application:
        application = await _own_application(store, application_id, api_key, database)
        await store.delete_application(application.id)
        return application

    deleted = _with_store(database, work, existing=True)
    if as_json:
        typer.echo(json.dumps(application_json(deleted)))
    else:
        typer.echo(f"deleted application {application_id}")


@app_app.command("rotate-key")
def app_rotate_key(
    application_id: Annotated[str, typer.Argument(help="The application's id")],
    private_key_file: Annotated[
        Path | None,
        typer.Option(help="Where to write the new private key [default: ./ID.key]"),
    ] = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the application as JSON")] = False,
) -> None:
    """Give an application a new key pair: JWTs signed with the old key stop working (within
    seconds on a running API)."""
    key_path = private_key_file or Path(f"{application_id}.key")
    if key_path.exists():
        raise _fail(f"error: {key_path} exists; choose another --private-key-file")
    pem = _generate_key_pair(key_path)

    async def work(store: Store) -> Application:
        application = await _own_application(store, application_id, api_key, database)
        return await store.update_application(application.id, public_key_pem=pem)

    try:
        application = _with_store(database, work, existing=True)
    except typer.Exit:
        key_path.unlink()  # no application holds its public key: do not leave it behind
        raise
    _echo_application(application, key_path, as_json)


def _echo_application(application: Application, key_path: Path | None, as_json: bool) -> None:
    """Print an application as a person or a script reads it."""
    if as_json:
        typer.echo(json.dumps(application_json(application, key_path)))
        return
    typer.echo(f"application_id: {application.id}")
    typer.echo(f"name:           {application.name}")
    typer.echo(f"status_url:     {application.status_url or '-'}")
    typer.echo(f"inbound_url:    {application.inbound_url or '-'}")
    typer.echo(f"webhooks:       {application.webhook_version}")
    if key_path is not None:
        typer.echo(f"private key:    {key_path} (mode 0600; keep it secret)")


# --- channel ---------------------------------------------------------------------------------

LinkJsonOption = Annotated[bool, typer.Option("--json", help="Print the link as JSON")]
VerifyTokenOption = Annotated[
    str | None,
    typer.Option(
        help="The token the platform's webhook handshake sends back (hub.verify_token) "
        "[default: a random one, printed once]",
        show_default=False,
    ),
]
AppSecretOption = Annotated[
    str | None,
    typer.Option(
        help="The Meta app's secret, which signs callbacks [default: asked for, not echoed]",
        show_default=False,
    ),
]


@channel_app.command("key")
def channel_key() -> None:
    """Print a new key for CASCADE_CHANNEL_KEY (and, on standard error, how to set it)."""
    key = Sealer.generate_key()
    typer.echo(key)
    typer.echo(
        "Set it wherever Cascade runs (serve, worker and these commands), e.g. in .env:\n"
        f"  {KEY_SETTING}=<the key above>\n"
        "Keep a copy: links sealed with it cannot be read without it. To change keys, put "
        f"the new one first and keep the old one after it: {KEY_SETTING}=new,old",
        err=True,
    )


def _require_channel_key(database: str | None) -> None:
    """Fail before asking for anything when no key can seal the credentials."""
    try:
        sealer = channel_sealer(_settings(database))
    except CascadeError as exc:
        raise _fail(f"error: {exc}") from exc
    if sealer is None:
        raise _fail(f"error: {linking.NO_KEY}")


def _link_fields(
    channel: LinkedChannel, given: dict[str, str | None], prompts: dict[str, str]
) -> dict[str, str | None]:
    """The fields of a link: the options given, checked (by the shared rules) before the
    secrets left off the command line are asked for without echo (so that they need not
    sit in the shell's history) and checked in turn. An error names the option (or the
    prompt) refused."""

    def refused(exc: linking.LinkFieldError, asked: set[str]) -> typer.Exit:
        label = prompts[exc.field] if exc.field in asked else "--" + exc.field.replace("_", "-")
        return _fail(f"error: {label} {exc.problem}")

    try:
        linking.check_fields(channel, given, complete=False)
    except linking.LinkFieldError as exc:
        raise refused(exc, set()) from exc
    fields = dict(given)
    for name, prompt in prompts.items():
        if fields.get(name) is None:
            fields[name] = typer.prompt(prompt, hide_input=True)
    try:
        linking.check_fields(channel, fields)
    except linking.LinkFieldError as exc:
        raise refused(exc, {name for name in prompts if given.get(name) is None}) from exc
    return fields


def _add_link(
    channel: LinkedChannel,
    fields: dict[str, str | None],
    *,
    database: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Link the channel of ``fields`` (checked already) to the account and print the link,
    with the values made for it (a generated verify token) that are printed only now."""

    async def work(store: Store) -> tuple[linking.NewLink, Account]:
        account = await _account(store, api_key, database, quiet=as_json)
        new = linking.new_channel_link(channel, account.id, fields, now=SystemClock().now())
        await store.add_channel_link(new.link)
        return new, account

    new, account = _with_store(database, work)
    link = new.link
    if as_json:
        typer.echo(json.dumps({**_link_json(link, account.api_key), **new.shown_once}))
        return
    typer.echo(f"link_id:  {link.id}")
    typer.echo(f"channel:  {link.channel}")
    typer.echo(f"address:  {link.address}")
    typer.echo(f"api_key:  {account.api_key}")
    for name, value in new.shown_once.items():
        typer.echo(
            f"{name}: {value}  (shown only this once; the platform's webhook setup asks for it)"
        )
    public_url = _settings(database).public_url
    path = linking.CALLBACK_PATHS[channel]
    callback = f"{(public_url or '$CASCADE_PUBLIC_URL').rstrip('/')}{path}"
    typer.echo(f"Register this callback URL with the platform: {callback}")


def _masked(name: str, value: str) -> str:
    """A credential as a listing shows it: a secret's first 4 characters (none of a short
    one) and "…"; anything else in full."""
    return tenancy.masked_credential(name, value)


def _link_json(link: ChannelLink, api_key: str) -> dict[str, Any]:
    """A link as ``--json`` prints it, its secrets masked."""
    return {
        "link_id": link.id,
        "channel": link.channel.value,
        "address": link.address,
        "api_key": api_key,
        "created_at": _utc(link.created_at),
        "credentials": {name: _masked(name, v) for name, v in sorted(link.credentials.items())},
    }


def _utc(at: float) -> str:
    """A time as ISO 8601 in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


@channel_add_app.command("messenger")
def channel_add_messenger(
    page_id: Annotated[
        str, typer.Option(help="The Facebook page's id: what from.id names", show_default=False)
    ],
    page_access_token: Annotated[
        str | None,
        typer.Option(
            help="The page access token (Send API) [default: asked for, not echoed]",
            show_default=False,
        ),
    ] = None,
    app_secret: AppSecretOption = None,
    verify_token: VerifyTokenOption = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: LinkJsonOption = False,
) -> None:
    """Link a Facebook page: messages from.id = the page id go out on Messenger with its
    token."""
    _require_channel_key(database)
    channel = LinkedChannel.MESSENGER
    given = {
        "page_id": page_id,
        "page_access_token": page_access_token,
        "app_secret": app_secret,
        "verify_token": verify_token,
    }
    fields = _link_fields(channel, given, _prompts(channel, "page_access_token", "app_secret"))
    _add_link(channel, fields, database=database, api_key=api_key, as_json=as_json)


@channel_add_app.command("whatsapp")
def channel_add_whatsapp(
    number: Annotated[
        str,
        typer.Option(
            help="The business number in E.164 (447700900000 or +447700900000): what "
            "from.number names",
            show_default=False,
        ),
    ],
    phone_number_id: Annotated[
        str, typer.Option(help="The Cloud API's id of that number", show_default=False)
    ],
    business_account_id: Annotated[
        str, typer.Option(help="The WhatsApp Business Account id", show_default=False)
    ],
    access_token: Annotated[
        str | None,
        typer.Option(
            help="A system user's access token [default: asked for, not echoed]",
            show_default=False,
        ),
    ] = None,
    app_secret: AppSecretOption = None,
    verify_token: VerifyTokenOption = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: LinkJsonOption = False,
) -> None:
    """Link a WhatsApp business number: messages from.number = that number go out on the
    Cloud API with its token."""
    _require_channel_key(database)
    channel = LinkedChannel.WHATSAPP
    given = {
        "number": number,
        "phone_number_id": phone_number_id,
        "business_account_id": business_account_id,
        "access_token": access_token,
        "app_secret": app_secret,
        "verify_token": verify_token,
    }
    fields = _link_fields(channel, given, _prompts(channel, "access_token", "app_secret"))
    _add_link(channel, fields, database=database, api_key=api_key, as_json=as_json)


@channel_add_app.command("viber")
def channel_add_viber(
    bot_id: Annotated[
        str, typer.Option(help="The Viber bot's id: what from.id names", show_default=False)
    ],
    sender_name: Annotated[
        str,
        typer.Option(
            help=f"The name messages show (up to {linking.VIBER_SENDER_NAME_CHARS} characters)",
            show_default=False,
        ),
    ],
    auth_token: Annotated[
        str | None,
        typer.Option(
            help="The bot's auth token (X-Viber-Auth-Token) [default: asked for, not echoed]",
            show_default=False,
        ),
    ] = None,
    sender_avatar: Annotated[
        str | None, typer.Option(help="The sender's avatar (an https URL)", show_default=False)
    ] = None,
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
    as_json: LinkJsonOption = False,
) -> None:
    """Link a Viber bot: messages from.id = the bot id go out on the Viber REST API with its
    token."""
    _require_channel_key(database)
    channel = LinkedChannel.VIBER
    given = {
        "bot_id": bot_id,
        "sender_name": sender_name,
        "sender_avatar": sender_avatar,
        "auth_token": auth_token,
    }
    fields = _link_fields(channel, given, _prompts(channel, "auth_token"))
    _add_link(channel, fields, database=database, api_key=api_key, as_json=as_json)


def _prompts(channel: LinkedChannel, *names: str) -> dict[str, str]:
    """What the CLI asks for each of ``names`` when it is left off the command line: the
    field's label."""
    return {field.name: field.label for field in linking.FIELDS[channel] if field.name in names}


@channel_app.command("list")
def channel_list(
    database: DatabaseOption = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="One account's links (default: every account's)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array")] = False,
) -> None:
    """List linked channels, oldest first: id, channel, address, account, when, and their
    credentials with every secret masked."""

    async def work(store: Store) -> tuple[list[ChannelLink], dict[str, str]]:
        accounts = {account.id: account.api_key for account in await store.list_accounts()}
        if api_key is None:
            return await store.channel_links(), accounts
        account = await _account(store, api_key, database, create=False)
        return await store.channel_links(account.id), accounts

    links, api_keys = _with_store(database, work, existing=True)
    shown = [_link_json(link, api_keys.get(link.account_id, "-")) for link in links]
    if as_json:
        typer.echo(json.dumps(shown))
        return
    for item in shown:
        credentials = " ".join(f"{name}={value}" for name, value in item["credentials"].items())
        typer.echo(
            f"{item['link_id']}  {item['channel']:<17} {item['address']:<16} "
            f"api_key={item['api_key']:<10} {item['created_at']}  {credentials}"
        )


@channel_app.command("remove")
def channel_remove(
    link_id: Annotated[str, typer.Argument(help="The link's id (cascade channel list)")],
    database: DatabaseOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Unlink a channel of the account: its credentials are deleted, and the address is free
    to link again (by any account). Needs no key."""

    async def work(store: Store) -> bool:
        account = await _account(store, api_key, database, create=False)
        return await store.remove_channel_link(account.id, link_id)

    if not _with_store(database, work, existing=True):
        raise _fail(f"error: the account has no channel link {link_id}")
    typer.echo(f"removed channel link {link_id}")


# --- jwt -------------------------------------------------------------------------------------


def make_jwt(
    private_key: bytes | RSAPrivateKey, claims: dict[str, Any], now: int | None = None
) -> str:
    """An RS256 JWT with ``iat``, ``jti`` and a 15-minute ``exp`` unless ``claims`` set them;
    ``iat`` is ``now`` (default: the current time). A key read once serves many tokens: reading
    a PEM checks the key, which takes tens of milliseconds."""
    now = int(time.time()) if now is None else now
    payload: dict[str, Any] = {"iat": now, "jti": str(uuid.uuid4()), "exp": now + 900}
    payload.update(claims)
    return jwt.encode(payload, private_key, algorithm="RS256", headers={"typ": "JWT"})


def _claim_value(name: str, raw: str, now: int) -> Any:
    if name in ("exp", "nbf", "iat"):
        if not raw.isdigit():
            raise _fail(f"error: {name} must be a whole number of seconds")
        value = int(raw)
        # like the Nexmo CLI, an absolute time is accepted; a small number is seconds from now
        return value if value >= 1_000_000_000 else now + value
    if raw.startswith(("{", "[")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


@jwt_app.command("generate")
def jwt_generate(
    private_key: Annotated[Path, typer.Argument(help="The application's private key file")],
    claims: Annotated[
        list[str] | None,
        typer.Argument(
            help="Claims as name=value: application_id=ID (required), exp=SECONDS (a lifetime, "
            "or an absolute UNIX time), any other claim"
        ),
    ] = None,
) -> None:
    """Print a JWT for the API, in the style of the Nexmo CLI's jwt:generate."""
    now = int(time.time())
    parsed: dict[str, Any] = {}
    for claim in claims or []:
        name, sep, raw = claim.partition("=")
        if not sep or not name:
            raise _fail(f"error: {claim!r} is not name=value")
        parsed[name] = _claim_value(name, raw, now)
    if "application_id" not in parsed:
        raise _fail("error: application_id=ID is required")
    try:
        key = private_key.read_bytes()
    except OSError as exc:
        raise _fail(f"error: cannot read {private_key}: {exc}") from exc
    try:
        typer.echo(make_jwt(key, parsed, now))
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise _fail(f"error: cannot sign with {private_key}: {exc}") from exc


# --- show ----------------------------------------------------------------------------------


@app.command()
def show(
    uuid_: Annotated[
        str, typer.Argument(metavar="UUID", help="A dispatch, workflow or message id")
    ],
    database: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON view")] = False,
) -> None:
    """Print the timeline of a workflow: each step, every status with its time, each failover."""
    from cascade.views import render_timeline, webhook_views, workflow_view

    async def work(store: Store) -> tuple[WorkflowRecord, list[dict[str, Any]]] | None:
        message = await store.find_message(uuid_)
        workflow_id = message.workflow_id if message else uuid_
        for account in await store.list_accounts():
            workflow = await store.get_workflow(account.id, workflow_id)
            if workflow is not None:
                hooks = await store.list_webhooks(workflow_id=workflow.id, limit=1000)
                attempts = await store.webhook_attempts([hook.id for hook in hooks])
                return workflow, webhook_views(hooks, attempts)
        return None

    found = _with_store(database, work, existing=True)
    if found is None:
        raise _fail(f"error: no dispatch, workflow or message {uuid_}")
    workflow, webhooks = found
    if as_json:
        typer.echo(json.dumps(workflow_view(workflow, webhooks), indent=2))
    else:
        typer.echo(render_timeline(workflow, webhooks))


# --- webhooks ------------------------------------------------------------------------------


@webhooks_app.command("list")
def webhooks_list(
    pending: Annotated[
        bool, typer.Option("--pending", help="Only those still being delivered (or retried)")
    ] = False,
    dead: Annotated[bool, typer.Option("--dead", "--failed", help="Only dead letters")] = False,
    limit: Annotated[int, typer.Option(help="At most this many", min=1)] = 100,
    before: Annotated[
        int | None, typer.Option(help="Only those older than this id (the next page)")
    ] = None,
    database: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array")] = False,
) -> None:
    """List webhooks, newest first: delivery state, attempts, the next one, the last result."""
    if pending and dead:
        raise _fail("error: --pending or --dead, not both")
    state = WebhookState.PENDING if pending else WebhookState.DEAD if dead else None

    async def work(store: Store) -> list[WebhookRecord]:
        return await store.latest_webhooks(state=state, before_id=before, limit=limit)

    hooks = _with_store(database, work, existing=True)
    if as_json:
        typer.echo(json.dumps([webhook_json(hook) for hook in hooks]))
        return
    for hook in hooks:
        last = hook.last_error or (str(hook.last_status) if hook.last_status else "-")
        about = hook.workflow_id or hook.message_id or "-"
        upcoming = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hook.next_attempt_at))
            if hook.state == WebhookState.PENDING and hook.next_attempt_at is not None
            else "-"
        )
        typer.echo(
            f"{hook.id:>6}  {hook.kind:<15} {hook.state:<9} {about:<36} "
            f"attempts={hook.attempts:<3} next={upcoming:<20} last={last}  "
            f"{hook.url or '(no URL set)'}"
        )


@webhooks_app.command("replay")
def webhooks_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Webhook ids to deliver again")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every dead letter")] = False,
    database: DatabaseOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"queued": N} (how many were queued)')
    ] = False,
) -> None:
    """Deliver webhooks again (after fixing a receiver); a running engine picks them up."""
    if bool(ids) == all_failed:
        raise _fail("error: give webhook ids or --all-failed (not both)")

    async def work(store: Store) -> int:
        if ids:
            unknown = sorted(set(ids) - set(await store.get_webhooks(ids)))
            if unknown:
                raise ConfigError(f"no webhook {', '.join(map(str, unknown))}: nothing was queued")
        return await store.replay_webhooks(None if all_failed else ids, time.time())

    queued = _with_store(database, work)
    if as_json:
        typer.echo(json.dumps({"queued": queued}))
    else:
        typer.echo(f"queued {queued} webhook(s) for delivery")


# --- thin clients ----------------------------------------------------------------------------


def _auth_headers(
    app_id: str | None, private_key: Path | None, basic_key: str | None, basic_secret: str | None
) -> dict[str, str]:
    if app_id and private_key:
        token = make_jwt(private_key.read_bytes(), {"application_id": app_id})
        return {"Authorization": f"Bearer {token}"}
    if basic_key and basic_secret:
        return {}
    raise _fail("error: give --app-id and --private-key (JWT), or --basic-key and --basic-secret")


def _post(
    url: str, path: str, body: bytes, headers: dict[str, str], basic: tuple[str, str] | None
) -> None:
    try:
        response = httpx.post(
            url.rstrip("/") + path,
            content=body,
            headers={**headers, "Content-Type": "application/json"},
            auth=basic,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"error: cannot reach {url}: {exc}") from exc
    typer.echo(response.text)
    if response.status_code >= 300:
        raise typer.Exit(1)


@app.command()
def send(
    to: Annotated[str, typer.Option(help="Recipient number (or id for messenger)")],
    sender: Annotated[str, typer.Option("--from", help="Sender number or id")],
    text: Annotated[str, typer.Option(help="The text to send")],
    channel: Annotated[
        str, typer.Option(help="sms, whatsapp, messenger, viber_service_msg")
    ] = "sms",
    url: UrlOption = "http://127.0.0.1:3000",
    app_id: AppIdOption = None,
    private_key: KeyOption = None,
    basic_key: BasicKeyOption = None,
    basic_secret: BasicSecretOption = None,
) -> None:
    """Send one text message through the API (POST /v0.1/messages)."""
    to_field = "id" if channel == "messenger" else "number"
    from_field = "number" if channel in ("sms", "mms", "whatsapp") else "id"
    body = {
        "to": {"type": channel, to_field: to},
        "from": {"type": channel, from_field: sender},
        "message": {"content": {"type": "text", "text": text}},
    }
    headers = _auth_headers(app_id, private_key, basic_key, basic_secret)
    basic = (basic_key, basic_secret) if basic_key and basic_secret and not headers else None
    _post(url, "/v0.1/messages", json.dumps(body).encode(), headers, basic)


@app.command()
def dispatch(
    file: Annotated[Path, typer.Argument(help="A Dispatch request body (JSON); - reads stdin")],
    url: UrlOption = "http://127.0.0.1:3000",
    app_id: AppIdOption = None,
    private_key: KeyOption = None,
    basic_key: BasicKeyOption = None,
    basic_secret: BasicSecretOption = None,
) -> None:
    """Send a failover workflow through the API (POST /v0.1/dispatch)."""
    body = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    headers = _auth_headers(app_id, private_key, basic_key, basic_secret)
    basic = (basic_key, basic_secret) if basic_key and basic_secret and not headers else None
    _post(url, "/v0.1/dispatch", body, headers, basic)


# --- dev -------------------------------------------------------------------------------------


@dev_app.command("smsc")
def dev_smsc(
    host: Annotated[str, typer.Option(help="Listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port", min=0, max=65535)] = 2775,
    system_id: Annotated[str, typer.Option(help="The system_id a bind must give")] = "cascade",
    # the local test SMSC's well-known default, as in the README's cascade.toml
    password: Annotated[str, typer.Option(help="The password a bind must give")] = "secret",  # noqa: S107
    receipt_delay: Annotated[
        float, typer.Option(help="Seconds from a submit to its delivery receipt", min=0)
    ] = 1.0,
    receipt_stat: Annotated[
        str,
        typer.Option(
            help="The receipts' stat: DELIVRD, UNDELIV, REJECTD, EXPIRED, ... (none: no receipt)"
        ),
    ] = "DELIVRD",
) -> None:
    """Run a local SMSC (SMPP 3.4) to try SMS over SMPP: it accepts binds with the given
    system_id and password, accepts every submit_sm and sends a delivery receipt for each,
    printing what it does. Needs the smpp34 package: pip install 'cascade[smsc]'."""
    try:
        from cascade.devtools.smsc import Behaviour, Smsc, run_smsc
    except ModuleNotFoundError as exc:
        if exc.name != "smpp34":
            raise
        raise _fail(
            "error: cascade dev smsc needs the smpp34 package: pip install 'cascade[smsc]' "
            "(or 'cascade[dev]')"
        ) from exc
    stat = receipt_stat.strip().upper()

    def say(line: str) -> None:
        typer.echo(f"{time.strftime('%H:%M:%S')} {line}")

    smsc = Smsc(
        host=host,
        port=port,
        credentials={system_id: password},
        default=Behaviour(receipt=None if stat == "NONE" else stat, receipt_delay=receipt_delay),
        record=False,
        on_event=say,
    )
    try:
        asyncio.run(run_smsc(smsc, say))
    except CascadeError as exc:
        raise _fail(f"error: {exc}") from exc
    # smpp34's tokio threads can still hand a finished future back to Python while the
    # interpreter finalizes, which aborts the process (about one stop in five, "PyGILState_Release:
    # thread state ... must be current"); everything is stopped and said by now, so end here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    """Entry point of the ``cascade`` command. A setting with a bad value ends it with one
    line per setting, naming it and saying what is wrong (never the value, which may be a
    secret), and exit status 2, instead of a traceback."""
    try:
        app()
    except pydantic.ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        for error in exc.errors(include_url=False, include_input=False):
            name = "CASCADE_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.secho(f"error: {name}: {error['msg']}", fg=typer.colors.RED, err=True)
        sys.exit(2)
