"""The running service: the HTTP API on uvicorn with the store (and engine) beside it."""

from __future__ import annotations

import asyncio
import errno
import gc
import signal
import socket
import ssl
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
import uvloop
from starlette.types import ASGIApp

from cascade.api.app import create_app
from cascade.api.server import connection_limits, limited_protocol, raise_file_limit
from cascade.channels.base import ChannelProvider
from cascade.channels.http import ChannelHttp
from cascade.channels.linked import channel_http, linked_providers
from cascade.channels.sandbox import SandboxProvider
from cascade.channels.whatsapp import WhatsAppAdapter
from cascade.clock import Clock, SystemClock
from cascade.config import Settings, read_config_file
from cascade.domain.records import Account, JobKindName
from cascade.engine.binds import BindPublisher
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.engine.retention import Retention, RetentionSettings
from cascade.engine.shares import ThroughputShares
from cascade.errors import ConfigError
from cascade.log import configure_logging
from cascade.processes import Child, ProcessSupervisor, process_count, stop_when_orphaned
from cascade.sealing import KEY_SETTING
from cascade.service import (
    channel_sealer,
    credentials_path,
    ensure_default_account,
    open_store,
    redacted_url,
)
from cascade.store.base import ChannelLinks, Purging, SmppBinds, SmppNodes, Store
from cascade.store.sqlite import SqliteStore
from cascade.supervision import OnFatal, log_fatal
from cascade.webhooks.delivery import DeliverySettings, WebhookHttp, WebhookSender

if TYPE_CHECKING:
    from cascade.channels.smpp.config import SmppSettings

log = structlog.get_logger(__name__)

Announce = Callable[[Account, str], None]


class FatalExit:
    """What a process does when one of its supervised loops ended: stop the whole process (as
    SIGTERM would) and remember why, so that it exits with a failure status its service manager
    sees and restarts it, instead of staying half alive."""

    def __init__(self) -> None:
        #: the loop that ended first, None while all run
        self.task: str | None = None

    def __call__(self, task: str, exc: BaseException | None) -> None:
        if self.task is None:
            self.task = task
            signal.raise_signal(signal.SIGTERM)

    def exit_if_fatal(self) -> None:
        """Exit with a failure status (1) if a loop ended."""
        if self.task is not None:
            raise SystemExit(f"cascade stopped: its task {self.task!r} ended (see the log)")


async def _first_account(
    settings: Settings, store: Store, clock: Clock, announce: Announce | None
) -> None:
    """Create the first account when there is none, saying its credentials once."""
    credentials = credentials_path(settings)
    created = await ensure_default_account(store, clock, credentials)
    if created is not None:
        log.warning(
            "cascade.account_created",
            api_key=created.account.api_key,
            credentials_file=str(credentials),
        )
        if announce is not None:
            announce(created.account, created.api_secret)


#: the task of :func:`watch_parent` (one per process)
_parent_watch: set[asyncio.Task[None]] = set()


def watch_parent() -> None:
    """In a child process of ``serve``, stop gracefully (SIGTERM to itself) once the parent is
    gone; nothing in a process ``serve`` did not fork."""

    def stop() -> None:
        signal.raise_signal(signal.SIGTERM)

    def ended(task: asyncio.Task[None]) -> None:
        _parent_watch.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the watch is gone: the process would outlive a killed parent, so say so loudly
            log_fatal("parent-watch", task.exception())

    task = asyncio.ensure_future(stop_when_orphaned(stop))
    _parent_watch.add(task)
    task.add_done_callback(ended)


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    announce: Announce | None = None,
    on_fatal: OnFatal | None = None,
) -> ASGIApp:
    """The ASGI app for ``settings``, opening its store on start-up and closing it on shutdown."""
    clock = clock or SystemClock()
    store = open_store(settings.database_url, settings)
    if not settings.run_worker and isinstance(store, SqliteStore):
        store.announce_intake_waits()  # the engine runs apart: it yields to the accepts
    # one pool of connections to the platforms for the engine's sends and the API's read marks
    http = channel_http(settings)
    engine = (
        build_engine(settings, store, clock, on_fatal, http=http) if settings.run_worker else None
    )
    receipts = engine if engine is not None else receipt_engine(settings, store, clock, on_fatal)

    async def start() -> None:
        await store.open()
        try:
            await check_channel_links(settings, store)
        except BaseException:
            await store.close()
            raise
        await _first_account(settings, store, clock, announce)
        watch_parent()
        if engine is not None:
            start_throughput_shares(settings, store, engine)
            await engine.start()
            start_retention(settings, store, engine)
            start_bind_publisher(store, engine)
        else:
            receipts.start_rechecks()
        log.info(
            "cascade.started",
            database=redacted_url(settings.database_url),
            engine="in-process" if engine else "off",
        )

    async def stop() -> None:
        if engine is not None:
            await engine.stop()
        else:
            await receipts.supervisor.stop()
        await store.close()
        log.info("cascade.stopped")

    return create_app(
        store,
        clock=clock,
        max_body_bytes=settings.max_body_bytes,
        report_horizon=settings.report_horizon_seconds,
        lifespan_hooks=(start, stop),
        on_accepted=engine.wake if engine else None,
        engine_health=engine.health if engine else None,
        receipts=receipts,
        access_log=settings.access_log,
        smpp_status=partial(smpp_binds, engine) if engine else None,
        whatsapp=WhatsAppAdapter(
            http, base_url=settings.graph_base_url, api_version=settings.graph_api_version
        ),
        webhook_reach=settings.webhook_reach,
    )


def smpp_binds(engine: Engine) -> dict[str, dict[str, Any]]:
    """Each SMPP connection of the engine's providers: bound or not, its last error, its
    submits in flight (the dashboard's Channels page)."""
    from cascade.channels.smpp import SmppProvider

    binds: dict[str, dict[str, Any]] = {}
    for provider in engine.providers.all():
        if isinstance(provider, SmppProvider):
            binds.update(provider.status())
    return binds


async def check_channel_links(settings: Settings, store: ChannelLinks) -> None:
    """Refuse to start (ConfigError naming CASCADE_CHANNEL_KEY) when channel links are stored
    but there is no key, or one of them does not open with the key: a service that cannot read
    its links would send nothing on them. Without a key and without links, say once that
    linking is off."""
    links = await store.channel_links()  # opens every link: a bad key fails here, not later
    if channel_sealer(settings) is None:
        log.info("cascade.channel_links_off", reason=f"{KEY_SETTING} is not set")
    else:
        log.info("cascade.channel_links", links=len(links))


#: the least time a receipt the sandbox journal owes must be overdue before a worker takes it
#: over from another (seconds)
TAKEOVER_AT_LEAST = 10.0


def build_engine(
    settings: Settings,
    store: Store,
    clock: Clock,
    on_fatal: OnFatal | None = None,
    *,
    http: ChannelHttp | None = None,
    webhook_http: WebhookHttp | None = None,
    worker_only: bool = False,
) -> Engine:
    """The engine with its providers (Messenger, WhatsApp and Viber through each account's linked
    page, number or bot, on ``http`` or a client of their own; SMS over SMPP when the
    configuration file says so; the sandbox for the rest) and the webhook sender.
    ``webhook_http``: the client the webhook sender POSTs with (by default a pooled one of its
    own). ``worker_only``: the engine of a process that serves no API, beside API processes that
    take the platforms' callbacks."""
    sandbox = SandboxProvider(
        store,
        clock,
        speed=settings.sandbox_speed,
        # a killed worker's receipts, once overdue by a lease (10 s at least, so that a
        # loaded worker's own receipts are rarely taken)
        takeover_after=max(settings.job_lease_seconds, TAKEOVER_AT_LEAST),
    )
    sender = WebhookSender(
        store,
        clock,
        DeliverySettings(timeout=settings.webhook_timeout_seconds, reach=settings.webhook_reach),
        http=webhook_http,
    )
    return Engine(
        store,
        Providers(
            sandbox,
            {
                **linked_providers(settings, sandbox, store, clock, http=http),
                **configured_providers(settings, clock),
            },
        ),
        clock,
        EngineSettings(
            batch_size=settings.worker_batch_size,
            lease=settings.job_lease_seconds,
            report_horizon=settings.report_horizon_seconds,
            public_url=settings.public_url or "",
            kinds=settings.job_kinds,
            # the engine of `cascade worker` or of serve's engine process: API processes
            # elsewhere take the platforms' callbacks and apply a receipt that beat its send
            # themselves once the send is recorded (Engine.recheck_kept); one they gave up on,
            # or kept as they were killed, waits for this sweep
            orphan_sweep_interval=1.0 if worker_only else EngineSettings().orphan_sweep_interval,
        ),
        job_kinds=[sender],
        on_fatal=on_fatal,
    )


def start_retention(settings: Settings, store: Purging, engine: Engine) -> None:
    """Run the retention sweep beside the engine, under its supervisor (the sweep's loop logs
    and outlives store errors)."""
    sweep = Retention(
        store,
        engine.clock,
        RetentionSettings(
            idempotency_ttl=settings.idempotency_ttl_seconds,
            days=settings.retention_days,
            interval=settings.retention_interval_seconds,
            batch_size=settings.retention_batch_size,
        ),
    )
    engine.supervisor.start("retention", sweep.run())


def start_bind_publisher(store: SmppBinds, engine: Engine) -> None:
    """Publish the engine's SMPP bind states to the store when they change, under its
    supervisor, for the dashboards of processes without an engine (nothing to do without
    SMPP connections, or in an engine that does not send: its connections never bind, and
    writing them unbound would hide the sending engine's binds)."""
    if not engine.settings.sends or not smpp_binds(engine):
        return
    publisher = BindPublisher(store, partial(smpp_binds, engine), engine.clock)
    engine.supervisor.start("smpp-binds", publisher.run())


def start_throughput_shares(settings: Settings, store: SmppNodes, engine: Engine) -> None:
    """Share each SMPP connection's throughput with the other nodes holding it (see
    ``engine/shares.py``), under the engine's supervisor; nothing to do without a connection
    that has a throughput limit, or in an engine that does not send. Called before the engine
    starts, so that no submit goes out before this node knows its share."""
    from cascade.channels.smpp import SmppProvider

    if not engine.settings.sends:
        return
    limited = [
        connection
        for provider in engine.providers.all()
        if isinstance(provider, SmppProvider)
        for connection in provider.connections
        if connection.settings.throughput > 0
    ]
    if not limited:
        return
    shares = ThroughputShares(
        store, limited, engine.worker_id, engine.clock, lease=settings.job_lease_seconds
    )
    engine.supervisor.start("smpp-shares", shares.run())


def receipt_engine(
    settings: Settings, store: Store, clock: Clock, on_fatal: OnFatal | None = None
) -> Engine:
    """An engine that is never started, for an API process that runs none (each API process
    of ``serve``, or ``CASCADE_RUN_WORKER=false``): it applies the platforms' receipts as the
    intake takes them, by the same rules and in the same transaction as a running engine
    would, so a status needs no worker's sweep (which runs every few seconds) to show. The
    jobs those transitions queue (webhooks, the next step) are run by a worker, which sees
    them within its poll interval. A receipt that beat its send's answer is kept, and applied
    by this engine once the send is recorded (``Engine.start_rechecks``, which the caller
    runs; ``on_fatal`` if that loop ends)."""
    return Engine(
        store,
        Providers(SandboxProvider(store, clock, speed=settings.sandbox_speed), {}),
        clock,
        EngineSettings(
            report_horizon=settings.report_horizon_seconds,
            public_url=settings.public_url or "",
        ),
        on_fatal=on_fatal,
    )


def configured_smpp(settings: Settings) -> SmppSettings | None:
    """The SMPP settings of the configuration file's ``[smpp]`` table (None without one);
    ConfigError naming what is wrong in it."""
    if settings.config_file is None:
        return None
    tables = read_config_file(settings.config_file)
    if "smpp" not in tables:
        return None
    from cascade.channels.smpp.config import SmppSettings

    smpp = tables["smpp"]
    if not isinstance(smpp, dict):
        raise ConfigError(f"{settings.config_file}: [smpp] must be a table")
    return SmppSettings.from_mapping(smpp)


def configured_providers(settings: Settings, clock: Clock) -> dict[str, ChannelProvider]:
    """The real providers the configuration file names, by channel (SMS over SMPP when it
    has an ``[smpp]`` table); channels it does not name stay on the sandbox."""
    smpp = configured_smpp(settings)
    if smpp is None:
        return {}
    from cascade.channels.smpp import SmppProvider

    return {"sms": SmppProvider(smpp, clock=clock)}


async def run_worker(settings: Settings, *, log_setup: bool = True) -> None:
    """Run the engine alone (no HTTP API) until SIGINT or SIGTERM (``log_setup``: configure
    logging first, as a process of its own must)."""
    if log_setup:
        configure_logging(settings.log_level, settings.log_format)
    clock = SystemClock()
    store = open_store(settings.database_url, settings)
    await store.open()
    try:
        await check_channel_links(settings, store)
    except BaseException:
        await store.close()
        raise
    fatal = FatalExit()
    engine = build_engine(settings, store, clock, fatal, worker_only=True)
    tune_gc()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    start_throughput_shares(settings, store, engine)
    await engine.start()
    start_retention(settings, store, engine)
    start_bind_publisher(store, engine)
    watch_parent()
    log.info(
        "cascade.worker",
        database=redacted_url(settings.database_url),
        worker=engine.worker_id,
        jobs=settings.engine_jobs,
    )
    try:
        await stopped.wait()
    finally:
        await engine.stop()
        await store.close()
    fatal.exit_if_fatal()


#: allocations (net) between two young-generation collections of the cyclic garbage collector in
#: a running service; CPython's default is 700
GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cycles less often than CPython's defaults, and freeze what start-up created so
    that full collections do not walk it again. Running the engine's jobs with the defaults
    took ~140 young collections and one full one (~30 ms, a pause of the event loop) per second
    of CPU, 5 % of the CPU in all; with these settings, about one young collection per second
    of CPU and no full one (BENCHMARKS.md)."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


#: connections the kernel queues for the API before it accepts them (uvicorn's default)
LISTEN_BACKLOG = 2048
#: uvicorn's exit status when the app's start-up failed
STARTUP_FAILURE = 3


def bind_listener(host: str, port: int) -> socket.socket:
    """The API's socket, bound and listening: ``serve`` makes it before anything else, so a
    port in use (or an address this host lacks) fails at once, before the database is opened
    or the engine started; ConfigError says which address and why."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from exc
    listener = socket.socket(family, kind, proto)
    try:
        # a restart binds while the last run's connections are still in TIME_WAIT
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        hint = (
            ": the port is in use (another process listens there); stop it, or choose another "
            "--port or CASCADE_PORT"
            if exc.errno == errno.EADDRINUSE
            else f": {exc.strerror}"
        )
        raise ConfigError(f"cannot listen on {where}{hint}") from exc
    return listener


def tls_files(settings: Settings) -> tuple[str, str] | None:
    """The certificate and key files to serve HTTPS with, checked to load together; None for
    plain HTTP. ConfigError names the setting that is wrong, before anything starts."""
    certfile, keyfile = settings.ssl_certfile, settings.ssl_keyfile
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        missing = "CASCADE_SSL_CERTFILE" if certfile is None else "CASCADE_SSL_KEYFILE"
        raise ConfigError(f"HTTPS needs a certificate and its key: {missing} is not set")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the certificate {certfile} with the key {keyfile} "
            f"(CASCADE_SSL_CERTFILE, CASCADE_SSL_KEYFILE): {exc}"
        ) from exc
    return str(certfile), str(keyfile)


def run_server(settings: Settings, *, announce: Announce | None = None) -> None:
    """Serve the API until interrupted, with the connection limits of ``settings``, over
    HTTPS when it names a certificate and key, in one process or, by default, in one per core
    (:mod:`cascade.processes`). The certificate is loaded and the port bound first: when
    either fails, nothing else starts."""
    configure_logging(settings.log_level, settings.log_format)
    tls = tls_files(settings)
    listener = bind_listener(settings.host, settings.port)
    try:
        count = process_count(settings)
        if count == 1:
            serve_api(settings, listener, tls, announce=announce)
            return
        # (reads the channels' configuration: a mistake in it is said once, here, before the
        # database is touched, rather than by each child as it is restarted)
        children = engine_children(settings) if settings.run_worker else []
        asyncio.run(prepare_database(settings, announce))
        api = settings.model_copy(update={"run_worker": False})
        children += [
            Child(f"api-{n}", partial(_child_api, api, listener, tls))
            for n in range(1, max(count - 1 if children else count, 1) + 1)
        ]
        _log_listening(listener, tls, settings, processes=[child.name for child in children])
        status = ProcessSupervisor(children).run()
    finally:
        listener.close()
    if status:
        raise SystemExit(status)


async def prepare_database(settings: Settings, announce: Announce | None) -> None:
    """What the first process of ``serve`` does before the others start: create or migrate
    the database, check the channel links' key, create the first account (saying its
    credentials once); each fails here, once, before any child runs."""
    store = open_store(settings.database_url, settings)
    await store.open()
    try:
        await check_channel_links(settings, store)
        await _first_account(settings, store, SystemClock(), announce)
    finally:
        await store.close()


def engine_children(settings: Settings) -> list[Child]:
    """The engine's processes in a ``serve`` of several: one (``engine``) for the job kinds
    ``settings`` gives the engine or, when it holds SMPP connections, two: the webhook
    deliveries in one of their own (``webhooks``) and the rest (sends, receipts, timers) in
    ``engine``.

    Over SMPP the receipts arrive on the engine's binds, and with a message's two status
    webhooks (claim, sign, POST, record) the engine's process was the one busy core while the
    API's idled: 1,249-1,273 SMS/s end to end on two cores, 1,543-1,597/s with the webhooks
    apart. The platforms' receipts (Messenger, WhatsApp, Viber) arrive on the API
    instead, and there a third process writing the database cost more than it freed: Messenger
    end to end 1,526-1,594/s, 1,373-1,462/s with the webhooks apart (BENCHMARKS.md, "Where an
    SMS's CPU goes"). Several workers taking jobs of one database is what ``cascade worker``
    always did."""
    holds_smpp = configured_smpp(settings) is not None  # ConfigError when it is wrong
    kinds = settings.job_kinds or frozenset(JobKindName)
    rest = [kind.value for kind in JobKindName if kind in kinds and kind is not JobKindName.WEBHOOK]
    webhooks = JobKindName.WEBHOOK in kinds
    if not (rest and webhooks and holds_smpp):
        return [Child("engine", partial(_child_worker, settings))]
    return [
        Child(
            "engine",
            partial(_child_worker, settings.model_copy(update={"engine_jobs": ",".join(rest)})),
        ),
        Child(
            "webhooks",
            partial(
                _child_worker,
                settings.model_copy(update={"engine_jobs": JobKindName.WEBHOOK.value}),
            ),
        ),
    ]


def _child_api(settings: Settings, listener: socket.socket, tls: tuple[str, str] | None) -> int:
    """An API process of ``serve`` (forked): the API on the inherited socket."""
    serve_api(settings, listener, tls, announce=None, log_listening=False)
    return 0


def _child_worker(settings: Settings) -> int:
    """The engine process of ``serve`` (forked)."""
    uvloop.run(run_worker(settings, log_setup=False))
    return 0


def _log_listening(
    listener: socket.socket,
    tls: tuple[str, str] | None,
    settings: Settings,
    processes: list[str] | None = None,
) -> None:
    limits = connection_limits(settings, raise_file_limit())
    host, port = listener.getsockname()[:2]
    log.info(
        "cascade.listening",
        url=f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}",
        max_connections=limits.max_connections,
        processes=processes or ["api+engine" if settings.run_worker else "api"],
    )


def serve_api(
    settings: Settings,
    listener: socket.socket,
    tls: tuple[str, str] | None,
    *,
    announce: Announce | None,
    log_listening: bool = True,
) -> None:
    """Run uvicorn with Cascade's app on ``listener`` until SIGINT or SIGTERM (a graceful
    stop); SystemExit when the app could not start or one of its loops ended."""
    fatal = FatalExit()
    server: uvicorn.Server | None = None
    try:
        app = build_app(settings, announce=announce, on_fatal=fatal)
        tune_gc()
        limits = connection_limits(settings, raise_file_limit())
        if log_listening:
            _log_listening(listener, tls, settings)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                loop="uvloop",
                http=limited_protocol(limits),
                access_log=False,
                log_config=None,
                lifespan="on",
                ssl_certfile=tls[0] if tls else None,
                ssl_keyfile=tls[1] if tls else None,
            )
        )
        # uvicorn's own signal handling (SIGINT, SIGTERM: a graceful stop) runs as under
        # uvicorn.run; it serves on the socket given instead of binding one after start-up
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during the graceful stop, as uvicorn.run allows
    if server is None or not server.started:
        raise SystemExit(STARTUP_FAILURE)
    fatal.exit_if_fatal()
