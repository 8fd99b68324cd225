"""The running service: the HTTP API on uvicorn with the store (and engine) beside it."""

from __future__ import annotations

from collections.abc import Callable

import structlog
import uvicorn
from starlette.applications import Starlette

from cascade.api.app import create_app
from cascade.clock import Clock, SystemClock
from cascade.config import Settings
from cascade.domain.records import Account
from cascade.log import configure_logging
from cascade.service import ensure_default_account, open_store

log = structlog.get_logger(__name__)

Announce = Callable[[Account, str], None]


def build_app(
    settings: Settings, *, clock: Clock | None = None, announce: Announce | None = None
) -> Starlette:
    """The ASGI app for ``settings``, opening its store on start-up and closing it on shutdown."""
    clock = clock or SystemClock()
    store = open_store(settings.database_url, settings)

    async def start() -> None:
        await store.open()
        created = await ensure_default_account(store, clock)
        if created is not None and announce is not None:
            announce(created.account, created.api_secret)
        log.info("cascade.started", database=_redacted(settings.database_url))

    async def stop() -> None:
        await store.close()
        log.info("cascade.stopped")

    return create_app(
        store, clock=clock, max_body_bytes=settings.max_body_bytes, lifespan_hooks=(start, stop)
    )


def _redacted(url: str) -> str:
    """A database URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def run_server(settings: Settings, *, announce: Announce | None = None) -> None:
    """Serve the API until interrupted."""
    configure_logging(settings.log_level, settings.log_format)
    app = build_app(settings, announce=announce)
    log.info("cascade.listening", url=f"http://{settings.host}:{settings.port}")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
    )
