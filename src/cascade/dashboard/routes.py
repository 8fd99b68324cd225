"""The dashboard's pages: sign-in, messages and workflow timelines, Try it, settings,
applications, channels and webhooks, rendered on the server from the same store roles and
service functions as the API and the ``cascade`` command.

Every page but the sign-in needs a session; a page asked for without one redirects to the
sign-in, and anything else (a form, a live update) is refused. Every form carries the
session's token (the sign-in form a token of its own cookie), and every read and change is
scoped to the signed-in account: another account's id reads as one that does not exist.
Secrets appear in a page only when asked for (the signature secret's reveal) or once (a new
API secret, a generated private key), and pages are never cached.
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from cascade import linking, tenancy
from cascade.api.auth import Principal
from cascade.api.messages import AcceptEndpoint
from cascade.api.reads import decode_cursor, encode_cursor
from cascade.clock import Clock
from cascade.dashboard import timeline
from cascade.dashboard.forms import FormRefused, check_origin, read_form
from cascade.dashboard.sessions import (
    LOCKOUT_SECONDS,
    MAX_FAILURES,
    Sessions,
    SignedIn,
    SignInRefused,
    same_token,
)
from cascade.domain.records import Account, LinkedChannel, WebhookState, WebhookVersion
from cascade.domain.status import Status
from cascade.errors import CascadeError, InvalidRequest, StoreConflict
from cascade.reach import ANYWHERE, AddressRule
from cascade.store.base import (
    ChannelLinks,
    DashboardSessions,
    ListQuery,
    Reading,
    SmppBinds,
    Tenants,
    Webhooks,
)
from cascade.views import webhook_views

log = structlog.get_logger(__name__)

#: the answer to every refused sign-in, wrong credentials and a locked sign-in alike
SIGN_IN_REFUSED = (
    f"Wrong API key or API secret, or sign-in locked: after {MAX_FAILURES} failed tries in a "
    f"row an account's sign-in is locked for {LOCKOUT_SECONDS // 60} minutes."
)

HERE = Path(__file__).parent
SESSION_COOKIE = "cascade_session"
#: the sign-in form's own token, before there is a session (a double-submitted cookie)
SIGN_IN_COOKIE = "cascade_sign_in"
PREFIX = "/dashboard"
PAGE_SIZE = 25
CHANNELS = ("sms", "mms", "whatsapp", "messenger", "viber_service_msg")

#: Try it: what the sandbox does with the Messenger step, by the recipient's last four digits
#: (README, "The sandbox"); each but the default fails over to SMS
BEHAVIOURS: dict[str, tuple[str, str]] = {
    "0003": ("never answers", "the window expires: failover when it closes"),
    "0002": ("delivered, never read", "delivered but not read in time: failover"),
    "0001": ("rejected at once", "error 1300: failover at once"),
    "0004": ("undeliverable at once", "error 1100: failover at once"),
    "0006": ("throttled twice, then read", "two retries, then read: no failover"),
    "0000": ("read after 2 s", "read in time: completed, no failover"),
}

#: security headers of every dashboard answer: nothing from elsewhere, never framed, never
#: cached (pages can hold secrets shown once)
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class DashboardStore(
    Tenants, ChannelLinks, Reading, Webhooks, DashboardSessions, SmppBinds, Protocol
):
    """What the dashboard uses of the store: the roles the API and the CLI use for the same
    things, and the dashboard's sessions."""


def _environment() -> jinja2.Environment:
    """Templates, escaped automatically (every value a template prints is HTML-escaped unless
    it is marked safe, and none is)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda x: f"{x * 100:.2f}"
    env.filters["svgx"] = lambda x: f"{x * 1000:.1f}"
    return env


class Redirect(Exception):
    """Answer with a redirect (a page asked for without a session)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class Refused(Exception):
    """Answer with an error page: its status and what the person reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Awaitable[Response]]


class Dashboard:
    """The dashboard's routes over a store, with the accept endpoint Try it sends through."""

    def __init__(
        self,
        store: DashboardStore,
        clock: Clock,
        dispatch: AcceptEndpoint,
        *,
        wake: Callable[[], None] | None = None,
        smpp_status: Callable[[], dict[str, dict[str, Any]]] | None = None,
        webhook_reach: AddressRule = ANYWHERE,
    ) -> None:
        self._store = store
        self._reach = webhook_reach
        self._clock = clock
        self._dispatch = dispatch
        self._wake = wake
        self._smpp_status = smpp_status
        self._sessions = Sessions(store, clock)
        self._templates = _environment()

    # --- plumbing --------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """Every route of the dashboard, under /dashboard (and / leading to it)."""
        pages: list[tuple[str, Handler, list[str]]] = [
            ("", self.home, ["GET"]),
            ("/sign-in", self.sign_in_page, ["GET"]),
            ("/sign-in", self.sign_in, ["POST"]),
            ("/sign-out", self.sign_out, ["POST"]),
            ("/messages", self.messages, ["GET"]),
            ("/workflows/{workflow_id}", self.workflow, ["GET"]),
            ("/try", self.try_page, ["GET"]),
            ("/try", self.try_send, ["POST"]),
            ("/settings", self.settings, ["GET"]),
            ("/settings", self.settings_update, ["POST"]),
            ("/settings/signature-secret", self.signature_secret, ["POST"]),
            ("/settings/api-secret", self.api_secret, ["POST"]),
            ("/applications", self.applications, ["GET"]),
            ("/applications", self.application_create, ["POST"]),
            ("/applications/{application_id}", self.application_update, ["POST"]),
            ("/applications/{application_id}/delete", self.application_delete, ["POST"]),
            ("/channels", self.channels, ["GET"]),
            ("/channels/{link_id}/remove", self.channel_remove, ["POST"]),
            ("/channels/add/{channel}", self.channel_add, ["POST"]),
            ("/webhooks", self.webhooks, ["GET"]),
            ("/webhooks/{webhook_id:int}/replay", self.webhook_replay, ["POST"]),
        ]
        routes: list[BaseRoute] = [
            Route(PREFIX + path, self._guarded(handler), methods=methods)
            for path, handler, methods in pages
        ]
        routes.append(Route("/", _to_dashboard, methods=["GET"]))
        routes.append(
            Mount(PREFIX + "/static", app=StaticFiles(directory=HERE / "static"), name="static")
        )
        return routes

    def _guarded(self, handler: Handler) -> Handler:
        """The handler with the dashboard's answers to its refusals, and its headers."""

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except Redirect as redirect:
                response = RedirectResponse(redirect.location, status_code=303)
            except Refused as refused:
                response = self._render(
                    request, "error.html", {"message": refused.message}, refused.status
                )
            except FormRefused:
                response = self._render(
                    request,
                    "error.html",
                    {
                        "message": "This form was not sent from this dashboard's page (or the page "
                        "was too old). Go back, reload the page and try again."
                    },
                    403,
                )
            response.headers.update(HEADERS)
            return response

        return guarded

    def _render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        status: int = 200,
        signed_in: SignedIn | None = None,
    ) -> HTMLResponse:
        """A page: the template with the signed-in account (if any) and the nav."""
        page = self._templates.get_template(template).render(
            {
                "prefix": PREFIX,
                "path": request.url.path,
                "account": signed_in.account if signed_in else None,
                "csrf": signed_in.session.csrf_token if signed_in else "",
                **context,
            }
        )
        return HTMLResponse(page, status_code=status)

    async def _signed_in(self, request: Request, *, page: bool = True) -> SignedIn:
        """The request's session; without one a page redirects to the sign-in, anything else
        is refused (401)."""
        signed_in = await self._sessions.current(request.cookies.get(SESSION_COOKIE))
        if signed_in is not None:
            return signed_in
        if page:
            wanted = request.url.path
            if request.url.query:
                wanted += "?" + request.url.query
            raise Redirect(f"{PREFIX}/sign-in?next={urllib.parse.quote(wanted, safe='')}")
        raise Refused(401, "You are not signed in (or your session ended): sign in again.")

    async def _form(self, request: Request) -> tuple[SignedIn, dict[str, str]]:
        """A posted form and its session: refused without a session, from another site, or
        without the session's token."""
        signed_in = await self._signed_in(request, page=False)
        check_origin(request)
        form = await read_form(request)
        if not same_token(signed_in.session.csrf_token, form.get("csrf_token")):
            raise FormRefused("no or a wrong csrf_token")
        return signed_in, form

    # --- sign-in ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        """The dashboard's front: the messages list, or the sign-in."""
        await self._signed_in(request)
        raise Redirect(f"{PREFIX}/messages")

    def _sign_in_form(
        self,
        request: Request,
        error: str = "",
        status: int = 200,
        api_key: str = "",
        following: str = "",
    ) -> Response:
        """The sign-in page with a fresh token, set as its cookie too; after it, the page at
        ``following`` (a path of the dashboard)."""
        token = secrets.token_urlsafe(24)
        response = self._render(
            request,
            "sign_in.html",
            {"sign_in_token": token, "error": error, "next": following, "api_key": api_key},
            status,
        )
        response.set_cookie(
            SIGN_IN_COOKIE,
            token,
            max_age=3600,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def sign_in_page(self, request: Request) -> Response:
        """The sign-in form."""
        return self._sign_in_form(
            request, following=_local_path(request.query_params.get("next", ""))
        )

    async def sign_in(self, request: Request) -> Response:
        """Sign in with the account's API key and secret: a session cookie, then the page the
        person wanted. Wrong credentials and a locked sign-in are the same 401, so that
        nothing tells whether the key exists."""
        check_origin(request)
        form = await read_form(request)
        if not same_token(request.cookies.get(SIGN_IN_COOKIE, ""), form.get("sign_in_token")) or (
            not request.cookies.get(SIGN_IN_COOKIE)
        ):
            raise FormRefused("the sign-in token does not match its cookie")
        api_key = form.get("api_key", "").strip()
        following = _local_path(form.get("next", ""))
        try:
            token, signed_in = await self._sessions.sign_in(api_key, form.get("api_secret", ""))
        except SignInRefused as refused:
            # the operator's log tells a locked sign-in apart; the answer does not, or it would
            # tell which API keys exist (only an existing key can be locked)
            log.info("dashboard.sign_in_refused", locked=refused.locked_until is not None)
            return self._sign_in_form(request, SIGN_IN_REFUSED, 401, api_key, following)
        log.info("dashboard.signed_in", account=signed_in.account.id)
        response = RedirectResponse(following or f"{PREFIX}/messages", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            path=PREFIX,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
        return response

    async def sign_out(self, request: Request) -> Response:
        """End the session and go to the sign-in."""
        signed_in, _ = await self._form(request)
        await self._sessions.sign_out(signed_in.session)
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # --- messages and workflows ------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        """The account's messages, newest first, filtered and paged."""
        signed_in = await self._signed_in(request)
        params = request.query_params
        filters = {
            name: params.get(name, "").strip()
            for name in ("status", "channel", "since", "until", "recipient", "client_ref")
        }
        problems: list[str] = []
        if filters["status"] and filters["status"] not in {s.value for s in Status}:
            problems.append("status: not a status")
        if filters["channel"] and filters["channel"] not in CHANNELS:
            problems.append("channel: not a channel")
        since = _day(filters["since"], "from", problems)
        until = _day(filters["until"], "to", problems)
        before = None
        if params.get("cursor"):
            try:
                before = decode_cursor(params["cursor"])
            except InvalidRequest:
                problems.append("cursor: not a page of this list")
        rows = []
        following = None
        if not problems:
            query = ListQuery(
                limit=PAGE_SIZE,
                before=before,
                state=filters["status"] or None,
                channel=filters["channel"] or None,
                created_after=since,
                created_before=until + 86400 if until is not None else None,
                recipient=filters["recipient"] or None,
                client_ref=filters["client_ref"] or None,
            )
            found = await self._store.list_messages(signed_in.account.id, query)
            if len(found) == PAGE_SIZE:
                kept = {k: v for k, v in filters.items() if v}
                kept["cursor"] = encode_cursor(found[-1].created_at, found[-1].id)
                following = f"{PREFIX}/messages?{urllib.parse.urlencode(kept)}"
            rows = [
                {
                    "id": m.id,
                    "workflow_id": m.workflow_id,
                    "created": _clock_time(m.created_at),
                    "channel": m.channel,
                    "to": timeline.recipient(m),
                    "step": m.step + 1,
                    "state": m.state.value,
                    "status": m.status or "",
                    "client_ref": m.client_ref or "",
                }
                for m in found
            ]
        return self._render(
            request,
            "messages.html",
            {
                "rows": rows,
                "filters": filters,
                "problems": problems,
                "next_page": following,
                "statuses": [s.value for s in Status],
                "channels": CHANNELS,
            },
            400 if problems else 200,
            signed_in,
        )

    async def workflow(self, request: Request) -> Response:
        """A workflow's timeline; ``?live=1`` is the part that updates while it runs."""
        live = request.query_params.get("live") == "1"
        signed_in = await self._signed_in(request, page=not live)
        workflow_id = str(request.path_params["workflow_id"])
        workflow = (
            await self._store.get_workflow(signed_in.account.id, workflow_id)
            if _plausible(workflow_id)
            else None
        )
        if workflow is None:
            raise Refused(404, "No workflow with this id in your account.")
        hooks = await self._store.list_webhooks(workflow_id=workflow.id, limit=1000)
        attempts = await self._store.webhook_attempts([hook.id for hook in hooks])
        drawn = timeline.build(workflow, webhook_views(hooks, attempts), self._clock.now())
        context = {"t": drawn, "surface": workflow.surface.value}
        if live:
            return self._render(request, "_timeline.html", context, signed_in=signed_in)
        return self._render(request, "workflow.html", context, signed_in=signed_in)

    # --- try it ----------------------------------------------------------------------------

    async def try_page(self, request: Request) -> Response:
        """The Try it form."""
        signed_in = await self._signed_in(request)
        return self._render(
            request, "try.html", {"behaviours": BEHAVIOURS, "error": ""}, signed_in=signed_in
        )

    async def try_send(self, request: Request) -> Response:
        """Send a sample workflow to sandbox recipients (Messenger, then SMS) through the
        same accept path as ``POST /v0.1/dispatch``, then show its timeline."""
        signed_in, form = await self._form(request)
        behaviour = form.get("behaviour", "0003")
        window = form.get("window", "15")
        error = ""
        if behaviour not in BEHAVIOURS:
            error = "Choose one of the behaviours."
        elif not (window.isascii() and window.isdigit() and 15 <= int(window) <= 600):
            error = "The window is a whole number of seconds from 15 to 600."
        elif not signed_in.account.sandbox:
            error = (
                "This account is live: its messages from unlinked channels are rejected, so "
                "Try it would not show the sandbox's behaviour. Use a sandbox account."
            )
        if error:
            return self._render(
                request,
                "try.html",
                {"behaviours": BEHAVIOURS, "error": error},
                400,
                signed_in,
            )
        text = "Hello from Cascade's Try it"
        body = msgspec.json.encode(
            {
                "template": "failover",
                "workflow": [
                    {
                        "to": {"type": "messenger", "id": f"100000{behaviour}"},
                        "from": {"type": "messenger", "id": "cascade-try-it"},
                        "message": {"content": {"type": "text", "text": text}},
                        "failover": {"expiry_time": int(window), "condition_status": "read"},
                        "client_ref": "try-it",
                    },
                    {
                        "to": {"type": "sms", "number": "447700900000"},
                        "from": {"type": "sms", "number": "Cascade"},
                        "message": {"content": {"type": "text", "text": text}},
                        "client_ref": "try-it",
                    },
                ],
            }
        )
        answer = await self._dispatch.submit(Principal(signed_in.account, None), body)
        workflow_id = msgspec.json.decode(bytes(answer.body))["dispatch_uuid"]
        raise Redirect(f"{PREFIX}/workflows/{workflow_id}")

    # --- settings --------------------------------------------------------------------------

    def _settings_page(
        self,
        request: Request,
        signed_in: SignedIn,
        *,
        account: Account | None = None,
        shown: dict[str, str] | None = None,
        error: str = "",
        notice: str = "",
    ) -> Response:
        return self._render(
            request,
            "settings.html",
            {
                "shown": shown or {},
                "error": error,
                "notice": notice,
                "current": account or signed_in.account,
            },
            400 if error else 200,
            signed_in,
        )

    async def settings(self, request: Request) -> Response:
        """The account's webhook URLs, mode and secrets."""
        signed_in = await self._signed_in(request)
        return self._settings_page(request, signed_in)

    async def settings_update(self, request: Request) -> Response:
        """Set the account's status and inbound URLs ('' clears one) and its mode."""
        signed_in, form = await self._form(request)
        try:
            status_url = tenancy.webhook_url(form.get("status_url", "").strip(), self._reach)
            inbound_url = tenancy.webhook_url(form.get("inbound_url", "").strip(), self._reach)
        except ValueError as exc:
            return self._settings_page(request, signed_in, error=str(exc))
        changes: dict[str, Any] = {"status_url": status_url, "inbound_url": inbound_url}
        if form.get("mode") in ("sandbox", "live"):
            changes["sandbox"] = form["mode"] == "sandbox"
        account = await self._store.update_account(signed_in.account.id, **changes)
        return self._settings_page(request, signed_in, account=account, notice="Saved.")

    async def signature_secret(self, request: Request) -> Response:
        """Show the signature secret (``reveal``) or replace it (``rotate``), on this page
        only."""
        signed_in, form = await self._form(request)
        account = signed_in.account
        notice = ""
        if form.get("action") == "rotate":
            account = await tenancy.rotate_signature_secret(self._store, account.id)
            notice = "A new signature secret signs webhooks from now on: update your receivers."
        return self._settings_page(
            request,
            signed_in,
            account=account,
            shown={"signature_secret": account.signature_secret},
            notice=notice,
        )

    async def api_secret(self, request: Request) -> Response:
        """Replace the API secret and show the new one this once (it is stored nowhere)."""
        signed_in, _ = await self._form(request)
        account, api_secret = await tenancy.rotate_api_secret(self._store, signed_in.account.id)
        log.info("dashboard.api_secret_rotated", account=account.id)
        return self._settings_page(
            request,
            signed_in,
            account=account,
            shown={"api_secret": api_secret},
            notice="The old API secret no longer works (within seconds on every node). Copy "
            "the new one now: it is shown only this once.",
        )

    # --- applications ----------------------------------------------------------------------

    async def _applications_page(
        self,
        request: Request,
        signed_in: SignedIn,
        *,
        error: str = "",
        notice: str = "",
        created: dict[str, str] | None = None,
    ) -> Response:
        applications = await self._store.list_applications(signed_in.account.id)
        return self._render(
            request,
            "applications.html",
            {
                "applications": applications,
                "versions": [v.value for v in WebhookVersion],
                "error": error,
                "notice": notice,
                "created": created,
            },
            400 if error else 200,
            signed_in,
        )

    async def applications(self, request: Request) -> Response:
        """The account's applications."""
        signed_in = await self._signed_in(request)
        return await self._applications_page(request, signed_in)

    async def application_create(self, request: Request) -> Response:
        """Create an application with a new key pair (its private key offered for download
        this once, kept nowhere) or a pasted public key."""
        signed_in, form = await self._form(request)
        name = form.get("name", "").strip()
        try:
            if not name or len(name) > 200:
                raise ValueError("the name is 1 to 200 characters")
            status_url = tenancy.webhook_url(form.get("status_url", "").strip(), self._reach)
            inbound_url = tenancy.webhook_url(form.get("inbound_url", "").strip(), self._reach)
            version = WebhookVersion(form.get("webhook_version", "v0.1"))
            pasted = form.get("public_key", "").strip()
            pair = None
            if pasted:
                public_pem = tenancy.public_key_pem(pasted.encode())
            else:
                pair = tenancy.generate_key_pair()
                public_pem = pair.public_pem
        except ValueError as exc:
            return await self._applications_page(request, signed_in, error=str(exc))
        application = tenancy.new_application(
            signed_in.account.id,
            name,
            public_pem,
            status_url=status_url,
            inbound_url=inbound_url,
            webhook_version=version,
            now=self._clock.now(),
        )
        await self._store.create_application(application)
        created = {"id": application.id, "name": application.name}
        if pair is not None:
            created["key_href"] = "data:application/x-pem-file;base64," + base64.b64encode(
                pair.private_pem
            ).decode("ascii")
            created["key_file"] = f"{_file_name(application.name)}.key"
        return await self._applications_page(
            request, signed_in, created=created, notice=f"Created application {name}."
        )

    async def _own_application_id(self, request: Request, signed_in: SignedIn) -> str:
        application_id = str(request.path_params["application_id"])
        found = (
            await tenancy.own_application(self._store, signed_in.account.id, application_id)
            if _plausible(application_id)
            else None
        )
        if found is None:
            raise Refused(404, "No application with this id in your account.")
        return found.id

    async def application_update(self, request: Request) -> Response:
        """Change an application's webhook URLs ('' clears: the account's are used) and its
        webhook version."""
        signed_in, form = await self._form(request)
        application_id = await self._own_application_id(request, signed_in)
        try:
            changes: dict[str, Any] = {
                "status_url": tenancy.webhook_url(form.get("status_url", "").strip(), self._reach),
                "inbound_url": tenancy.webhook_url(
                    form.get("inbound_url", "").strip(), self._reach
                ),
                "webhook_version": WebhookVersion(form.get("webhook_version", "v0.1")).value,
            }
        except ValueError as exc:
            return await self._applications_page(request, signed_in, error=str(exc))
        updated = await self._store.update_application(application_id, **changes)
        return await self._applications_page(
            request, signed_in, notice=f"Saved application {updated.name}."
        )

    async def application_delete(self, request: Request) -> Response:
        """Delete an application: its JWTs stop working; its workflows stay readable."""
        signed_in, _ = await self._form(request)
        application_id = await self._own_application_id(request, signed_in)
        await self._store.delete_application(application_id)
        return await self._applications_page(
            request, signed_in, notice=f"Deleted application {application_id}."
        )

    # --- channels --------------------------------------------------------------------------

    async def _channels_page(
        self,
        request: Request,
        signed_in: SignedIn,
        notice: str = "",
        *,
        form: tuple[LinkedChannel, dict[str, str], str] | None = None,
        shown_once: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        error = ""
        links = []
        try:
            found = await self._store.channel_links(signed_in.account.id)
        except CascadeError as exc:  # links stored, and no key (or a wrong one) to open them
            found = []
            error = str(exc)
        for link in found:
            links.append(
                {
                    "id": link.id,
                    "channel": link.channel.value,
                    "address": link.address,
                    "created": _clock_time(link.created_at),
                    "credentials": {
                        name: tenancy.masked_credential(name, value)
                        for name, value in sorted(link.credentials.items())
                    },
                }
            )
        # a form sent back with its problem keeps what was typed, but never a secret
        failed, typed, problem = form if form is not None else (None, {}, "")
        forms = [
            {
                "name": name,
                "channel": channel.value,
                "open": channel is failed,
                "problem": problem if channel is failed else "",
                "fields": [
                    {
                        "name": field.name,
                        "label": field.label,
                        "help": field.help,
                        "secret": field.secret,
                        "optional": field.optional,
                        "value": ""
                        if field.secret or channel is not failed
                        else typed.get(field.name, ""),
                    }
                    for field in linking.FIELDS[channel]
                ],
            }
            for name, channel in linking.BY_NAME.items()
        ]
        return self._render(
            request,
            "channels.html",
            {
                "links": links,
                "binds": await self._binds(),
                "error": error,
                "notice": notice,
                "can_link": self._store.can_seal(),
                "no_key": linking.NO_KEY,
                "forms": forms,
                "shown_once": shown_once or {},
            },
            status,
            signed_in=signed_in,
        )

    async def _binds(self) -> list[dict[str, Any]]:
        """The SMPP connections' states: this process's own when it runs the engine (with
        submits in flight), else as the engine process last published them to the store."""
        if self._smpp_status is not None:
            return [
                {
                    "name": name,
                    "bound": state["bound"],
                    "last_error": state["last_error"],
                    "in_flight": state["in_flight"],
                    "changed": None,
                }
                for name, state in sorted(self._smpp_status().items())
            ]
        return [
            {
                "name": bind.name,
                "bound": bind.bound,
                "last_error": bind.last_error,
                "in_flight": None,
                "changed": _clock_time(bind.changed_at),
            }
            for bind in await self._store.smpp_binds()
        ]

    async def channels(self, request: Request) -> Response:
        """The account's linked pages, numbers and bots, and this process's SMPP binds."""
        signed_in = await self._signed_in(request)
        return await self._channels_page(request, signed_in)

    async def channel_add(self, request: Request) -> Response:
        """Link a page, number or bot to the account (as ``cascade channel add``, by the same
        rules): a refused field, a server without a key or an address linked already is
        said on the page, and nothing is stored."""
        signed_in, form = await self._form(request)
        channel = linking.BY_NAME.get(str(request.path_params["channel"]))
        if channel is None:
            raise Refused(404, "No such channel to link.")
        labels = {field.name: field.label for field in linking.FIELDS[channel]}
        # an optional field left empty is not given (a verify token is then made here)
        given: dict[str, str | None] = {
            field.name: (form.get(field.name, "").strip() or None)
            if field.optional
            else form.get(field.name, "")
            for field in linking.FIELDS[channel]
        }

        async def refused(problem: str, status: int) -> Response:
            return await self._channels_page(
                request, signed_in, form=(channel, form, problem), status=status
            )

        if not self._store.can_seal():
            return await refused(f"This server cannot link channels: {linking.NO_KEY}.", 409)
        try:
            new = linking.new_channel_link(
                channel, signed_in.account.id, given, now=self._clock.now()
            )
        except linking.LinkFieldError as exc:
            return await refused(f"{labels[exc.field]} {exc.problem}.", 400)
        try:
            await self._store.add_channel_link(new.link)
        except StoreConflict:
            return await refused(
                f"{channel.value} {new.link.address} is linked already (to this or another "
                "account): unlink it there first.",
                409,
            )
        return await self._channels_page(
            request,
            signed_in,
            f"Linked {channel.value} {new.link.address}. Register this callback URL with the "
            f"platform: {linking.CALLBACK_PATHS[channel]} under this server's public URL.",
            shown_once=new.shown_once,
        )

    async def channel_remove(self, request: Request) -> Response:
        """Unlink one of the account's channels (as ``cascade channel remove``)."""
        signed_in, _ = await self._form(request)
        link_id = str(request.path_params["link_id"])
        removed = _plausible(link_id) and await self._store.remove_channel_link(
            signed_in.account.id, link_id
        )
        if not removed:
            raise Refused(404, "No channel link with this id in your account.")
        return await self._channels_page(request, signed_in, f"Removed channel link {link_id}.")

    # --- webhooks --------------------------------------------------------------------------

    async def webhooks(self, request: Request) -> Response:
        """The account's webhooks, newest first: all, pending or dead letters, with attempts."""
        signed_in = await self._signed_in(request)
        return await self._webhooks_page(request, signed_in)

    async def _webhooks_page(
        self, request: Request, signed_in: SignedIn, notice: str = ""
    ) -> Response:
        params = request.query_params
        shown = params.get("state", "")
        state = (
            WebhookState(shown)
            if shown in (WebhookState.PENDING.value, WebhookState.DEAD.value)
            else None
        )
        before_raw = params.get("before", "")
        before = int(before_raw) if before_raw.isascii() and before_raw.isdigit() else None
        if before is not None and before > 2**62:
            before = None
        hooks = await self._store.latest_webhooks(
            account_id=signed_in.account.id, state=state, before_id=before, limit=PAGE_SIZE
        )
        attempts = await self._store.webhook_attempts([hook.id for hook in hooks])
        views = webhook_views(hooks, attempts)
        for view, hook in zip(views, hooks, strict=True):
            view["workflow_uuid"] = hook.workflow_id
            view["created"] = _clock_time(hook.created_at)
            view["last_error"] = hook.last_error or ""
        following = None
        if len(hooks) == PAGE_SIZE:
            kept = {"state": shown} if state is not None else {}
            kept["before"] = str(hooks[-1].id)
            following = f"{PREFIX}/webhooks?{urllib.parse.urlencode(kept)}"
        return self._render(
            request,
            "webhooks.html",
            {
                "hooks": views,
                "state": state.value if state is not None else "",
                "next_page": following,
                "notice": notice,
            },
            signed_in=signed_in,
        )

    async def webhook_replay(self, request: Request) -> Response:
        """Deliver one of the account's webhooks again (as ``cascade webhooks replay``)."""
        signed_in, _ = await self._form(request)
        webhook_id = int(request.path_params["webhook_id"])
        queued = await self._store.replay_webhooks(
            [webhook_id], self._clock.now(), account_id=signed_in.account.id
        )
        if not queued:
            raise Refused(404, "No webhook with this id and a URL in your account.")
        if self._wake is not None:
            self._wake()
        return await self._webhooks_page(
            request, signed_in, f"Webhook {webhook_id} is queued for delivery again."
        )


async def _to_dashboard(request: Request) -> Response:
    """``/``: the dashboard."""
    return RedirectResponse(PREFIX, status_code=303)


def _local_path(value: str) -> str:
    """``value`` when it is a path of the dashboard (where a sign-in may lead), else ''."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""


def _plausible(value: str) -> bool:
    """Whether ``value`` can be an id Cascade gave out (short printable ASCII): any other is
    not looked up (PostgreSQL refuses some characters)."""
    return 0 < len(value) <= 100 and value.isascii() and value.isprintable()


def _clock_time(at: float) -> str:
    """A time as people read it in a list, in UTC to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _day(value: str, name: str, problems: list[str]) -> float | None:
    """The start (UTC) of a day given as YYYY-MM-DD; None when empty."""
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        problems.append(f"{name}: a date as YYYY-MM-DD")
        return None
    return day.timestamp()


def _file_name(name: str) -> str:
    """An application's name as a safe file name."""
    kept = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "-" for ch in name)
    return kept.strip(".-")[:60] or "application"
