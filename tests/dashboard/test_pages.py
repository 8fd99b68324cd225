"""The dashboard over HTTP, in-process: sessions and their cookie, the sign-in lockout, the
token every form needs, and that an account never sees or changes another's data."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import structlog

from cascade.api.app import create_app
from cascade.clock import FakeClock
from cascade.dashboard.routes import SESSION_COOKIE
from cascade.dashboard.sessions import LOCKOUT_SECONDS, MAX_FAILURES
from cascade.domain.records import NewWebhook, WebhookKind, WebhookState
from cascade.reach import AddressRule
from cascade.store.sqlite import SqliteStore
from tests.conftest import Tenant, make_tenant

DISPATCH = {
    "template": "failover",
    "workflow": [
        {
            "to": {"type": "messenger", "id": "1234560003"},
            "from": {"type": "messenger", "id": "page"},
            "message": {"content": {"type": "text", "text": "Hi"}},
            "failover": {"expiry_time": 600, "condition_status": "read"},
            "client_ref": "order-9",
        },
        {
            "to": {"type": "sms", "number": "447700900111"},
            "from": {"type": "sms", "number": "Acme"},
            "message": {"content": {"type": "text", "text": "Hi by SMS"}},
        },
    ],
}


@pytest.fixture
async def web(sqlite_store: SqliteStore, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of the app (cookies kept), in-process."""
    app = create_app(sqlite_store, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as http:
        yield http


def token_in(page: str, name: str = "csrf_token") -> str:
    """The value of a page's hidden form field."""
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


async def post_sign_in(web: httpx.AsyncClient, api_key: str, api_secret: str) -> httpx.Response:
    """Fill in the sign-in form as a browser does."""
    form = await web.get("/dashboard/sign-in")
    return await web.post(
        "/dashboard/sign-in",
        data={
            "sign_in_token": token_in(form.text, "sign_in_token"),
            "api_key": api_key,
            "api_secret": api_secret,
        },
    )


async def signed_in(web: httpx.AsyncClient, tenant: Tenant) -> str:
    """Sign in as ``tenant``; the session's form token."""
    answer = await post_sign_in(web, tenant.account.api_key, tenant.api_secret)
    assert answer.status_code == 303
    return token_in((await web.get("/dashboard/settings")).text)


async def test_the_session_cookie_is_http_only_lax_and_ends_at_sign_out(
    web: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Signing in sets an HttpOnly, SameSite=Lax cookie for /dashboard; signing out ends the
    session, so the same cookie opens nothing afterwards."""
    answer = await post_sign_in(web, tenant.account.api_key, tenant.api_secret)
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie")
    assert "cascade_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain http here; over TLS it is Secure
    session = web.cookies["cascade_session"]
    csrf = token_in((await web.get("/dashboard/settings")).text)
    assert (await web.post("/dashboard/sign-out", data={"csrf_token": csrf})).status_code == 303
    web.cookies.set("cascade_session", session, domain="cascade.test", path="/dashboard")
    again = await web.get("/dashboard/settings")
    assert again.status_code == 303
    assert again.headers["location"].startswith("/dashboard/sign-in")


async def test_the_cookie_is_secure_over_tls(
    sqlite_store: SqliteStore, clock: FakeClock, tenant: Tenant
) -> None:
    """Served over https, the session cookie is Secure."""
    app = create_app(sqlite_store, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://cascade.test") as web:
        answer = await post_sign_in(web, tenant.account.api_key, tenant.api_secret)
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie")
    assert "Secure" in cookie


async def test_repeated_failures_lock_the_sign_in_until_the_lockout_passes(
    web: httpx.AsyncClient, tenant: Tenant, clock: FakeClock, sqlite_store: SqliteStore
) -> None:
    """After MAX_FAILURES wrong secrets even the right one is refused until LOCKOUT_SECONDS
    after the last failure; then it works and the count is cleared."""
    for _ in range(MAX_FAILURES):
        answer = await post_sign_in(web, tenant.account.api_key, "wrong")
        assert answer.status_code == 401
    assert await sqlite_store.sign_in_failures(tenant.account.id) is not None
    refused = await post_sign_in(web, tenant.account.api_key, tenant.api_secret)
    assert refused.status_code == 401
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    clock.advance(LOCKOUT_SECONDS + 1)
    admitted = await post_sign_in(web, tenant.account.api_key, tenant.api_secret)
    assert admitted.status_code == 303
    assert await sqlite_store.sign_in_failures(tenant.account.id) is None


def _alert(page: str) -> str:
    """The error paragraph of a sign-in page."""
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', page, re.S)
    assert found is not None
    return found.group(1)


async def test_an_unknown_api_key_reads_like_a_wrong_secret(web: httpx.AsyncClient) -> None:
    """A key no account has gets the same answer as a wrong secret."""
    answer = await post_sign_in(web, "nosuchkey", "whatever")
    assert answer.status_code == 401
    assert "Wrong API key or API secret" in _alert(answer.text)


async def test_a_locked_sign_in_reads_like_an_unknown_key(
    web: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A locked account's sign-in gets the answer an unknown key gets, so that trying a key
    MAX_FAILURES times does not tell whether it exists."""
    for _ in range(MAX_FAILURES + 1):
        locked = await post_sign_in(web, tenant.account.api_key, "wrong")
    for _ in range(MAX_FAILURES + 1):
        unknown = await post_sign_in(web, "nosuchkey", "wrong")
    assert locked.status_code == unknown.status_code == 401
    assert _alert(locked.text) == _alert(unknown.text)


async def test_the_sign_in_form_needs_its_token(web: httpx.AsyncClient, tenant: Tenant) -> None:
    """A sign-in posted without the form's token (a login CSRF) is refused."""
    answer = await web.post(
        "/dashboard/sign-in",
        data={"api_key": tenant.account.api_key, "api_secret": tenant.api_secret},
    )
    assert answer.status_code == 403
    assert "cascade_session" not in web.cookies


FORMS = [
    ("/dashboard/settings", {"status_url": "http://127.0.0.1:9/x"}),
    ("/dashboard/settings/signature-secret", {"action": "rotate"}),
    ("/dashboard/settings/api-secret", {"confirm": "yes"}),
    ("/dashboard/applications", {"name": "sneaky"}),
    ("/dashboard/try", {"behaviour": "0003", "window": "15"}),
    ("/dashboard/sign-out", {"confirm": "yes"}),
]


@pytest.mark.parametrize(("path", "fields"), FORMS)
async def test_every_form_needs_the_session_token(
    web: httpx.AsyncClient,
    tenant: Tenant,
    sqlite_store: SqliteStore,
    path: str,
    fields: dict[str, str],
) -> None:
    """A form posted without the session's token, with a wrong one, or from another site's
    page is refused with 403 and changes nothing."""
    csrf = await signed_in(web, tenant)
    for extra, headers in (
        ({}, {}),
        ({"csrf_token": "not-it"}, {}),
        ({"csrf_token": csrf}, {"Origin": "https://evil.example"}),
    ):
        answer = await web.post(path, data={**fields, **extra}, headers=headers)
        assert answer.status_code == 403, (path, extra, headers)
    account = await sqlite_store.get_account(tenant.account.id)
    assert account == tenant.account
    assert [a.name for a in await sqlite_store.list_applications(tenant.account.id)] == ["test-app"]
    assert (await web.get("/dashboard/settings")).status_code == 200  # still signed in


async def test_forms_without_a_session_are_refused(web: httpx.AsyncClient) -> None:
    """A form posted with no session is a 401, a page asked for with none leads to the
    sign-in."""
    assert (await web.post("/dashboard/settings", data={"csrf_token": "x"})).status_code == 401
    page = await web.get("/dashboard/webhooks?state=dead")
    assert page.status_code == 303
    assert (
        page.headers["location"] == "/dashboard/sign-in?next=%2Fdashboard%2Fwebhooks%3Fstate%3Ddead"
    )


async def test_another_accounts_records_are_not_found_nor_changed(
    web: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Signed in as one account, another account's workflow, application and webhook read as
    not found, and updating, deleting or replaying them changes nothing."""
    other = await make_tenant(sqlite_store, clock)
    sent = await web.post("/v0.1/dispatch", json=DISPATCH, headers=other.bearer())
    workflow_id = sent.json()["dispatch_uuid"]
    await sqlite_store.add_webhooks(
        [
            NewWebhook(
                account_id=other.account.id,
                application_id=None,
                workflow_id=workflow_id,
                message_id=None,
                kind=WebhookKind.FINAL_REPORT,
                url="http://127.0.0.1:9/hook",
                body=b"{}",
            )
        ],
        clock.now(),
    )
    hook = (await sqlite_store.list_webhooks(account_id=other.account.id))[0]
    csrf = await signed_in(web, tenant)

    assert (await web.get(f"/dashboard/workflows/{workflow_id}")).status_code == 404
    assert (await web.get(f"/dashboard/workflows/{workflow_id}?live=1")).status_code == 404
    listed = await web.get("/dashboard/messages")
    assert workflow_id not in listed.text
    application = other.application.id
    update = await web.post(
        f"/dashboard/applications/{application}",
        data={"csrf_token": csrf, "status_url": "http://127.0.0.1:9/stolen"},
    )
    assert update.status_code == 404
    delete = await web.post(
        f"/dashboard/applications/{application}/delete", data={"csrf_token": csrf}
    )
    assert delete.status_code == 404
    assert await sqlite_store.get_application(application) == other.application
    replay = await web.post(f"/dashboard/webhooks/{hook.id}/replay", data={"csrf_token": csrf})
    assert replay.status_code == 404
    assert (await sqlite_store.get_webhook(hook.id)) == hook
    webhooks = await web.get("/dashboard/webhooks")
    assert "127.0.0.1:9/hook" not in webhooks.text


async def test_secrets_show_only_when_asked_and_are_never_logged(
    web: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """The signature secret appears only after Reveal; a rotated API secret once, and it
    signs in; neither secret reaches the log."""
    with structlog.testing.capture_logs() as logs:
        csrf = await signed_in(web, tenant)
        settings = await web.get("/dashboard/settings")
        assert tenant.account.signature_secret not in settings.text
        revealed = await web.post(
            "/dashboard/settings/signature-secret", data={"csrf_token": csrf, "action": "reveal"}
        )
        assert tenant.account.signature_secret in revealed.text
        assert revealed.headers["cache-control"] == "no-store"
        rotated = await web.post("/dashboard/settings/api-secret", data={"csrf_token": csrf})
        new_secret = re.search(r'id="api-secret">([^<]+)<', rotated.text)
        assert new_secret is not None
        assert new_secret.group(1) not in (await web.get("/dashboard/settings")).text
    logged = repr(logs)
    for secret in (tenant.api_secret, tenant.account.signature_secret, new_secret.group(1)):
        assert secret not in logged
    web.cookies.clear()
    again = await post_sign_in(web, tenant.account.api_key, new_secret.group(1))
    assert again.status_code == 303


async def test_settings_refuse_a_url_that_is_not_http(
    web: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """A status URL that is not http(s) is refused with 400 and nothing changes."""
    csrf = await signed_in(web, tenant)
    answer = await web.post(
        "/dashboard/settings", data={"csrf_token": csrf, "status_url": "ftp://x/y"}
    )
    assert answer.status_code == 400
    assert "is not an http(s) URL" in answer.text
    assert await sqlite_store.get_account(tenant.account.id) == tenant.account


async def test_settings_refuse_a_private_url_where_webhooks_may_not_go(
    sqlite_store: SqliteStore, clock: FakeClock, tenant: Tenant
) -> None:
    """Where private addresses are refused, a status URL naming one is refused with 400 and
    the reason, and nothing changes."""
    app = create_app(sqlite_store, clock=clock, webhook_reach=AddressRule(allow_private=False))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as web:
        csrf = await signed_in(web, tenant)
        answer = await web.post(
            "/dashboard/settings",
            data={"csrf_token": csrf, "status_url": "http://169.254.169.254/latest"},
        )
    assert answer.status_code == 400
    assert "169.254.169.254 is not a public address" in answer.text
    assert await sqlite_store.get_account(tenant.account.id) == tenant.account


async def test_messages_are_searched_by_recipient_and_client_ref(
    web: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The messages page filters by recipient and client_ref, and says what is wrong with a
    bad date."""
    await web.post("/v0.1/dispatch", json=DISPATCH, headers=tenant.bearer())
    await signed_in(web, tenant)
    by_ref = await web.get("/dashboard/messages", params={"client_ref": "order-9"})
    assert by_ref.text.count("/dashboard/workflows/") == 1
    assert "1234560003" in by_ref.text
    by_number = await web.get("/dashboard/messages", params={"recipient": "447700900111"})
    assert "447700900111" in by_number.text
    assert "1234560003" not in by_number.text
    bad = await web.get("/dashboard/messages", params={"since": "yesterday"})
    assert bad.status_code == 400
    assert "a date as YYYY-MM-DD" in bad.text


async def test_a_pasted_public_key_makes_an_application_without_a_download(
    web: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore
) -> None:
    """An application made with a pasted public key stores that key, and the page offers no
    private key; a paste that is not a key is refused."""
    csrf = await signed_in(web, tenant)
    pem = tenant.application.public_key_pem
    answer = await web.post(
        "/dashboard/applications",
        data={"csrf_token": csrf, "name": "pasted", "public_key": pem, "webhook_version": "v1"},
    )
    assert answer.status_code == 200
    assert "Download its private key" not in answer.text
    made = [
        a for a in await sqlite_store.list_applications(tenant.account.id) if a.name == "pasted"
    ]
    assert [(a.public_key_pem, a.webhook_version) for a in made] == [(pem, "v1")]
    bad = await web.post(
        "/dashboard/applications",
        data={"csrf_token": csrf, "name": "bad", "public_key": "not a key"},
    )
    assert bad.status_code == 400


async def test_a_dead_letter_of_ones_own_is_replayed(
    web: httpx.AsyncClient, tenant: Tenant, sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """Replaying one's own dead letter queues it again (pending)."""
    await sqlite_store.add_webhooks(
        [
            NewWebhook(
                account_id=tenant.account.id,
                application_id=None,
                workflow_id=None,
                message_id=None,
                kind=WebhookKind.INBOUND,
                url="http://127.0.0.1:9/hook",
                body=b"{}",
            )
        ],
        clock.now(),
    )
    hook = (await sqlite_store.list_webhooks(account_id=tenant.account.id))[0]
    csrf = await signed_in(web, tenant)
    answer = await web.post(f"/dashboard/webhooks/{hook.id}/replay", data={"csrf_token": csrf})
    assert answer.status_code == 200
    assert "queued for delivery again" in answer.text
    replayed = await sqlite_store.get_webhook(hook.id)
    assert replayed is not None
    assert replayed.state is WebhookState.PENDING
