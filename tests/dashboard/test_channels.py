"""The dashboard's Channels page, in-process: linking a page, number or bot by the same rules
as ``cascade channel add`` (secrets never shown back, bad input said inline and nothing
stored, no key, an address linked already, the form's token), and the SMPP bind states the
engine process published to the store."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cascade.api.app import create_app
from cascade.clock import FakeClock
from cascade.domain.records import LinkedChannel
from cascade.sealing import Sealer
from cascade.store.base import SmppBind
from cascade.store.sqlite import SqliteStore
from tests.conftest import Tenant, make_tenant
from tests.dashboard.test_pages import signed_in

KEY = Sealer.generate_key()
PAGE_TOKEN = "EAAGpageAccessToken0123456789"
APP_SECRET = "0123456789abcdef0123456789abcdef"
PAGE = {"page_id": "1234567890", "page_access_token": PAGE_TOKEN, "app_secret": APP_SECRET}


@pytest.fixture
async def keyed_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened SQLite store with a key to seal channel credentials."""
    store = SqliteStore(tmp_path / "keyed.db", sealer=Sealer(KEY))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def web(keyed_store: SqliteStore, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of an app whose store can seal links (as an API process of
    ``serve``: no engine in it)."""
    transport = httpx.ASGITransport(app=create_app(keyed_store, clock=clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as http:
        yield http


@pytest.fixture
async def tenant(keyed_store: SqliteStore, clock: FakeClock) -> Tenant:
    """An account (with an application) in the keyed store."""
    return await make_tenant(keyed_store, clock)


async def test_a_page_is_linked_and_its_secrets_are_never_shown_back(
    web: httpx.AsyncClient, tenant: Tenant, keyed_store: SqliteStore
) -> None:
    """A Messenger page linked from the form is stored with its secrets; the answer shows the
    generated verify token once and the secrets masked, never in full."""
    csrf = await signed_in(web, tenant)
    answer = await web.post("/dashboard/channels/add/messenger", data={"csrf_token": csrf, **PAGE})
    assert answer.status_code == 200, answer.text
    (link,) = await keyed_store.channel_links(tenant.account.id)
    assert link.channel is LinkedChannel.MESSENGER
    assert link.address == "1234567890"
    assert link.credentials["page_access_token"] == PAGE_TOKEN
    assert link.credentials["app_secret"] == APP_SECRET
    assert link.credentials["verify_token"] in answer.text  # made here, shown this once
    for secret in (PAGE_TOKEN, APP_SECRET):
        assert secret not in answer.text
    later = (await web.get("/dashboard/channels")).text
    assert "page_access_token=EAAG…" in later
    for secret in (PAGE_TOKEN, APP_SECRET, link.credentials["verify_token"]):
        assert secret not in later


async def test_a_whatsapp_number_is_stored_as_digits_and_a_viber_avatar_is_optional(
    web: httpx.AsyncClient, tenant: Tenant, keyed_store: SqliteStore
) -> None:
    """The other channels' forms link by the CLI's rules: a number as its digits, an empty
    optional avatar left out."""
    csrf = await signed_in(web, tenant)
    whatsapp = {
        "number": "+447700900123",
        "phone_number_id": "106540352242922",
        "business_account_id": "102290129340398",
        "access_token": "EAAGwhatsappToken0123456789",
        "app_secret": APP_SECRET,
        "verify_token": "my-verify-token",
    }
    viber = {"bot_id": "acme", "sender_name": "Acme", "sender_avatar": "", "auth_token": "vt"}
    for channel, fields in (("whatsapp", whatsapp), ("viber", viber)):
        answer = await web.post(
            f"/dashboard/channels/add/{channel}", data={"csrf_token": csrf, **fields}
        )
        assert answer.status_code == 200, answer.text
    links = {link.channel: link for link in await keyed_store.channel_links(tenant.account.id)}
    number, bot = links[LinkedChannel.WHATSAPP], links[LinkedChannel.VIBER]
    assert number.address == "447700900123"
    assert number.credentials["verify_token"] == "my-verify-token"
    assert bot.credentials == {"sender_name": "Acme", "auth_token": "vt"}


@pytest.mark.parametrize(
    ("channel", "fields", "problem"),
    [
        ("messenger", {**PAGE, "page_id": "  "}, "Page id is empty."),
        ("messenger", {**PAGE, "app_secret": ""}, "App secret is empty."),
        (
            "whatsapp",
            {
                "number": "44 7700 900123",
                "phone_number_id": "1",
                "business_account_id": "2",
                "access_token": "t",
                "app_secret": "s",
            },
            "Number must be an E.164 number: up to 15 digits.",
        ),
        (
            "viber",
            {"bot_id": "b", "sender_name": "x" * 29, "auth_token": "t"},
            "Sender name is 29 characters; Viber shows up to 28.",
        ),
        (
            "viber",
            {"bot_id": "b", "sender_name": "A", "sender_avatar": "ftp://x", "auth_token": "t"},
            "Sender avatar &#39;ftp://x&#39; is not an http(s) URL.",
        ),
    ],
)
async def test_bad_input_is_said_on_the_page_and_nothing_is_stored(
    web: httpx.AsyncClient,
    tenant: Tenant,
    keyed_store: SqliteStore,
    channel: str,
    fields: dict[str, str],
    problem: str,
) -> None:
    """A refused field is named inline with a 400, the secrets typed are not sent back, and
    no link is stored."""
    csrf = await signed_in(web, tenant)
    answer = await web.post(
        f"/dashboard/channels/add/{channel}", data={"csrf_token": csrf, **fields}
    )
    assert answer.status_code == 400
    assert problem in answer.text
    for name in ("app_secret", "access_token", "auth_token", "page_access_token"):
        if fields.get(name):
            assert f'value="{fields[name]}"' not in answer.text
    assert await keyed_store.channel_links() == []


async def test_without_a_key_the_page_says_so_and_links_nothing(
    tenant: Tenant, sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """A server without CASCADE_CHANNEL_KEY says on the page that it cannot link and why,
    and a posted link is refused (409) with nothing stored."""
    keyless = await make_tenant(sqlite_store, clock)
    transport = httpx.ASGITransport(app=create_app(sqlite_store, clock=clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as http:
        csrf = await signed_in(http, keyless)
        page = (await http.get("/dashboard/channels")).text
        assert "CASCADE_CHANNEL_KEY" in page
        assert "cascade channel key" in page
        answer = await http.post(
            "/dashboard/channels/add/messenger", data={"csrf_token": csrf, **PAGE}
        )
    assert answer.status_code == 409
    assert "This server cannot link channels" in answer.text
    assert await sqlite_store.channel_links() == []


async def test_an_address_linked_to_another_account_is_refused(
    web: httpx.AsyncClient, tenant: Tenant, keyed_store: SqliteStore, clock: FakeClock
) -> None:
    """A page another account linked already is refused (409, said inline); the other
    account's link stays as it was and nothing is linked to this one."""
    other = await make_tenant(keyed_store, clock)
    other_web = httpx.AsyncClient(transport=web._transport, base_url="http://cascade.test")
    async with other_web:
        other_csrf = await signed_in(other_web, other)
        first = await other_web.post(
            "/dashboard/channels/add/messenger", data={"csrf_token": other_csrf, **PAGE}
        )
        assert first.status_code == 200
    (held,) = await keyed_store.channel_links()
    csrf = await signed_in(web, tenant)
    again = await web.post(
        "/dashboard/channels/add/messenger",
        data={"csrf_token": csrf, **PAGE, "page_access_token": "EAAGstolen0123456789"},
    )
    assert again.status_code == 409
    assert "messenger 1234567890 is linked already" in again.text
    assert await keyed_store.channel_links() == [held]


async def test_a_link_without_the_forms_token_is_refused(
    web: httpx.AsyncClient, tenant: Tenant, keyed_store: SqliteStore
) -> None:
    """A link posted without the session's token, with a wrong one or from another site is
    refused (403) and stores nothing."""
    csrf = await signed_in(web, tenant)
    for extra, headers in (
        ({}, {}),
        ({"csrf_token": "not-it"}, {}),
        ({"csrf_token": csrf}, {"Origin": "https://evil.example"}),
    ):
        answer = await web.post(
            "/dashboard/channels/add/messenger", data={**PAGE, **extra}, headers=headers
        )
        assert answer.status_code == 403, (extra, headers)
    assert await keyed_store.channel_links() == []


async def test_bind_states_published_by_the_engine_process_are_shown(
    web: httpx.AsyncClient, tenant: Tenant, keyed_store: SqliteStore
) -> None:
    """An API process (no engine of its own) shows the SMPP bind states another process
    wrote to the store: bound or not, the last error, since when."""
    await signed_in(web, tenant)
    before = (await web.get("/dashboard/channels")).text
    assert "No SMPP connection has reported" in before
    await keyed_store.put_smpp_bind(SmppBind("smsc-a", True, None, 1_700_000_000.0))
    await keyed_store.put_smpp_bind(
        SmppBind("smsc-b", False, "bind failed: invalid password", 1_700_000_060.0)
    )
    page = (await web.get("/dashboard/channels")).text
    rows = re.findall(r"<tr><td>(smsc-\w)</td><td><span class=\"state state-(\w+)\">", page)
    assert rows == [("smsc-a", "bound"), ("smsc-b", "unbound")]
    assert "bind failed: invalid password" in page
    assert "2023-11-14 22:14:20" in page
