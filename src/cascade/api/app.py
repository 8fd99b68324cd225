"""The ASGI application: routes of every API surface, problem documents for every error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cascade.api.access import AccessLog, RequestContext
from cascade.api.auth import Authenticator
from cascade.api.intake import IntakeEndpoints, KeptReceipts, ReceiptTaker
from cascade.api.messages import AcceptContext, AcceptEndpoint
from cascade.api.messages_v1 import MessagesV1Endpoint
from cascade.api.messages_v1_update import MessageUpdateEndpoint, ReadMarker
from cascade.api.openapi import docs_page, openapi_document
from cascade.api.problems import EXCEPTION_HANDLERS, problem_response
from cascade.api.reads import ReadEndpoints
from cascade.clock import Clock
from cascade.dashboard import Dashboard
from cascade.domain.records import Surface
from cascade.errors import TransientError
from cascade.reach import ANYWHERE, AddressRule
from cascade.store.base import Lifecycle, Store


class AcceptFastPath:
    """Sends the accept POSTs straight to their endpoint, past Starlette's middleware stack
    and router (about a quarter of a request's CPU on the hot path); everything else, the
    lifespan included, goes to the Starlette app through the access log's middleware. Errors
    become the same problem documents as through Starlette's handlers. An accept gets its
    request id and access line here, without a wrapper around ``send``."""

    def __init__(
        self, app: Starlette, endpoints: dict[str, AcceptEndpoint], *, access_log: bool = True
    ) -> None:
        self.app = AccessLog(app, enabled=access_log)
        self._endpoints = endpoints
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self._endpoints.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        context = RequestContext.begin(scope)
        status = 500  # what the client got if sending the answer failed before it began
        try:
            request = Request(scope, receive)
            try:
                response = await endpoint.handle(request)
            except Exception as exc:  # each kind answered as Starlette's handlers answer it
                response = await problem_response(request, exc)
            response.raw_headers.append(context.header)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            context.end(scope, status, log_it=self._access_log)


def create_app(
    store: Store,
    *,
    clock: Clock,
    max_body_bytes: int = 262_144,
    report_horizon: float = 72 * 3600,
    lifespan_hooks: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]
    | None = None,
    on_accepted: Callable[[], None] | None = None,
    engine_health: Callable[[], dict[str, object]] | None = None,
    receipts: ReceiptTaker | None = None,
    access_log: bool = True,
    smpp_status: Callable[[], dict[str, dict[str, Any]]] | None = None,
    whatsapp: ReadMarker | None = None,
    webhook_reach: AddressRule = ANYWHERE,
) -> ASGIApp:
    """The Cascade HTTP API over ``store``; ``lifespan_hooks`` start and stop what runs beside
    it (opening the store, the engine), whose health ``engine_health`` reports for readiness.
    ``receipts`` takes the receipts of the platforms' callbacks: the engine of this process,
    or (None) the store, for an engine elsewhere to apply (``api/intake.py``). ``whatsapp``
    marks inbound WhatsApp messages read (``PATCH /v1/messages/{uuid}``), started and stopped
    with the app. Every request gets an id (``X-Request-Id``) and, with ``access_log``, a line
    in the log. The dashboard (``/dashboard``) shows ``smpp_status``, this process's SMPP
    binds, when it has an engine. ``webhook_reach``: where webhooks may go, so that a URL set
    through the API or the dashboard that it refuses by its host alone is refused at once."""
    authenticator = Authenticator(store, clock)
    context = AcceptContext(
        store, authenticator, clock, max_body_bytes, report_horizon, on_accepted, webhook_reach
    )

    accept = [
        ("/v0.1/messages", Surface.MESSAGES, "message_uuid"),
        ("/beta/messages", Surface.MESSAGES, "message_uuid"),
        ("/v0.1/dispatch", Surface.DISPATCH, "dispatch_uuid"),
        ("/beta/workflows", Surface.WORKFLOWS, "workflow_uuid"),
    ]
    # the Nexmo specs put a bare "/" after the server URL, so SDK-built URLs may carry the
    # trailing slash: each path answers with and without it
    endpoints = {
        variant: AcceptEndpoint(context, surface, id_field)
        for path, surface, id_field in accept
        for variant in (path, path + "/")
    }
    v1 = MessagesV1Endpoint(context, Surface.MESSAGES_V1, "message_uuid")
    endpoints.update({"/v1/messages": v1, "/v1/messages/": v1})
    routes: list[BaseRoute] = [
        Route(path, endpoint.handle, methods=["POST"]) for path, endpoint in endpoints.items()
    ]
    reads = ReadEndpoints(store, authenticator)
    routes += [
        Route(variant, handler, methods=["GET"])
        for path, handler in reads.routes()
        for variant in (path, path + "/")
    ]
    intake = IntakeEndpoints(
        store,
        receipts if receipts is not None else KeptReceipts(store, clock),
        clock,
        max_body_bytes=max_body_bytes,
        on_inbound=on_accepted,
    )
    routes += intake.routes()
    routes += MessageUpdateEndpoint(
        store, authenticator, whatsapp, max_body_bytes=max_body_bytes
    ).routes()
    dashboard = Dashboard(
        store,
        clock,
        endpoints["/v0.1/dispatch"],
        wake=on_accepted,
        smpp_status=smpp_status,
        webhook_reach=webhook_reach,
    )
    routes += dashboard.routes()
    routes += [
        Route("/health", health, methods=["GET"]),
        Route("/ready", Readiness(store, engine_health).respond, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if lifespan_hooks is not None:
            await lifespan_hooks[0]()
        try:
            if whatsapp is not None:
                await whatsapp.start()
            try:
                yield
            finally:
                if whatsapp is not None:
                    await whatsapp.stop()
        finally:
            if lifespan_hooks is not None:
                await lifespan_hooks[1]()

    app = Starlette(
        routes=routes,
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    return AcceptFastPath(app, endpoints, access_log=access_log)


async def health(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


class Readiness:
    """Readiness: the database answers within :attr:`TIMEOUT` and the engine of this process
    (if it runs one) works; 503 otherwise, so a load balancer or orchestrator stops sending
    traffic to a node that would accept work it cannot do."""

    #: seconds the database gets to answer a ping
    TIMEOUT = 2.0

    def __init__(
        self, store: Lifecycle, engine_health: Callable[[], dict[str, object]] | None
    ) -> None:
        self._store = store
        self._engine_health = engine_health

    async def respond(self, request: Request) -> Response:
        """The readiness document."""
        database: dict[str, object] = {"status": "ok"}
        try:
            await asyncio.wait_for(self._store.ping(), self.TIMEOUT)
        except (TransientError, TimeoutError) as exc:
            database = {"status": "unavailable", "error": str(exc) or "no answer in time"}
        engine: dict[str, object] = (
            {"status": "off"} if self._engine_health is None else self._engine_health()
        )
        ready = database["status"] == "ok" and engine["status"] in ("ok", "off")
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "database": database, "engine": engine},
            status_code=200 if ready else 503,
        )


async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    """The OpenAPI document, generated from the request Structs."""
    return Response(openapi_document(), media_type="application/json")


async def docs(request: Request) -> Response:
    """A readable page of the API, rendered from the OpenAPI document (no external assets)."""
    return HTMLResponse(docs_page())
