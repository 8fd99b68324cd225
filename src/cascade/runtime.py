"""The running service: the HTTP API on uvicorn with the store (and engine) beside it."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

import structlog
import uvicorn
from starlette.types import ASGIApp

from cascade.api.app import create_app
from cascade.api.server import connection_limits, limited_protocol, raise_file_limit
from cascade.channels.base import ChannelProvider
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import Clock, SystemClock
from cascade.config import Settings, read_config_file
from cascade.domain.records import Account
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.engine.retention import Retention, RetentionSettings
from cascade.errors import ConfigError
from cascade.log import configure_logging
from cascade.service import credentials_path, ensure_default_account, open_store
from cascade.store.base import Purging, Store
from cascade.supervision import OnFatal
from cascade.webhooks.delivery import DeliverySettings, WebhookSender

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
    engine = build_engine(settings, store, clock, on_fatal) if settings.run_worker else None

    async def start() -> None:
        await store.open()
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
        if engine is not None:
            await engine.start()
            start_retention(settings, store, engine)
        log.info(
            "cascade.started",
            database=_redacted(settings.database_url),
            engine="in-process" if engine else "off",
        )

    async def stop() -> None:
        if engine is not None:
            await engine.stop()
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
        access_log=settings.access_log,
    )


def build_engine(
    settings: Settings, store: Store, clock: Clock, on_fatal: OnFatal | None = None
) -> Engine:
    """The engine with the providers the settings name (the sandbox for every channel they do
    not name) and the webhook sender."""
    sandbox = SandboxProvider(store, clock, speed=settings.sandbox_speed)
    sender = WebhookSender(store, clock, DeliverySettings(timeout=settings.webhook_timeout_seconds))
    return Engine(
        store,
        Providers(sandbox, configured_providers(settings, clock)),
        clock,
        EngineSettings(
            batch_size=settings.worker_batch_size,
            lease=settings.job_lease_seconds,
            report_horizon=settings.report_horizon_seconds,
            public_url=settings.public_url or "",
            kinds=settings.job_kinds,
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


def configured_providers(settings: Settings, clock: Clock) -> dict[str, ChannelProvider]:
    """The real providers the configuration file names, by channel (SMS over SMPP when it
    has an ``[smpp]`` table); channels it does not name stay on the sandbox."""
    if settings.config_file is None:
        return {}
    tables = read_config_file(settings.config_file)
    providers: dict[str, ChannelProvider] = {}
    if "smpp" in tables:
        from cascade.channels.smpp import SmppProvider
        from cascade.channels.smpp.config import SmppSettings

        smpp = tables["smpp"]
        if not isinstance(smpp, dict):
            raise ConfigError(f"{settings.config_file}: [smpp] must be a table")
        providers["sms"] = SmppProvider(SmppSettings.from_mapping(smpp), clock=clock)
    return providers


async def run_worker(settings: Settings) -> None:
    """Run the engine alone (no HTTP API) until SIGINT or SIGTERM."""
    configure_logging(settings.log_level, settings.log_format)
    clock = SystemClock()
    store = open_store(settings.database_url, settings)
    await store.open()
    fatal = FatalExit()
    engine = build_engine(settings, store, clock, fatal)
    tune_gc()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await engine.start()
    start_retention(settings, store, engine)
    log.info("cascade.worker", database=_redacted(settings.database_url), worker=engine.worker_id)
    try:
        await stopped.wait()
    finally:
        await engine.stop()
        await store.close()
    fatal.exit_if_fatal()


def _redacted(url: str) -> str:
    """A database URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


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


def run_server(settings: Settings, *, announce: Announce | None = None) -> None:
    """Serve the API until interrupted, with the connection limits of ``settings``."""
    configure_logging(settings.log_level, settings.log_format)
    fatal = FatalExit()
    app = build_app(settings, announce=announce, on_fatal=fatal)
    tune_gc()
    limits = connection_limits(settings, raise_file_limit())
    log.info(
        "cascade.listening",
        url=f"http://{settings.host}:{settings.port}",
        max_connections=limits.max_connections,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=limited_protocol(limits),
        access_log=False,
        log_config=None,
        lifespan="on",
    )
    fatal.exit_if_fatal()
