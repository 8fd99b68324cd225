"""Which addresses webhooks may reach (server-side request forgery): the rule, the sender
against a real receiver on loopback, the settings that make the rule, and URLs refused when
they are set (v1's webhook_url, the CLI's and the dashboard's)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import httpx
import pytest
from pydantic import ValidationError

from cascade import tenancy
from cascade.api.app import create_app
from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.reach import AddressRule, parse_networks
from cascade.store.base import ListQuery
from cascade.store.sqlite import SqliteStore
from cascade.webhooks.delivery import RETRY_FOR, DeliverySettings
from tests.conftest import make_tenant
from tests.webhooks.conftest import FAST, MakeReceiver, delivering, queue

PUBLIC_ONLY = AddressRule(allow_private=False)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "0.0.0.0",  # connects to the host itself on Linux
        "::",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "169.254.169.254",  # the cloud metadata service
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",  # loopback through the NAT64 prefix
        "224.0.0.1",
        "255.255.255.255",
    ],
)
def test_private_and_special_addresses_are_refused_where_only_public_ones_are_allowed(
    address: str,
) -> None:
    """Loopback, private, link-local, metadata, mapped and NAT64 forms of them are refused."""
    assert not PUBLIC_ONLY.admits(ip_address(address))
    assert AddressRule().admits(ip_address(address))  # the default admits everything


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_admitted(address: str) -> None:
    """A public address, also written IPv4-mapped or through NAT64, may be reached."""
    assert PUBLIC_ONLY.admits(ip_address(address))


def test_the_networks_named_are_admitted_and_no_others() -> None:
    """An allowed network opens its addresses (and their mapped forms), not its neighbours'."""
    rule = AddressRule(allow_private=False, allowed_networks=parse_networks("10.1.2.0/24, ::1"))
    assert rule.admits(ip_address("10.1.2.200"))
    assert rule.admits(ip_address("::ffff:10.1.2.7"))
    assert rule.admits(ip_address("::1"))
    assert not rule.admits(ip_address("10.1.3.1"))
    assert not rule.admits(ip_address("127.0.0.1"))


def test_a_refusal_names_a_literal_but_not_what_a_name_resolves_to() -> None:
    """The record a tenant reads tells its own literal back, never a name's private address."""
    assert PUBLIC_ONLY.refusal("10.0.0.5").startswith("10.0.0.5 is not a public address")
    refusal = PUBLIC_ONLY.refusal("intranet.example")
    assert refusal.startswith("intranet.example resolves to no public address")
    assert "CASCADE_WEBHOOK_ALLOW_PRIVATE" in refusal


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_a_webhook_to_a_private_address_is_a_dead_letter_without_a_connection(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver, host: str
) -> None:
    """Private addresses refused: the receiver on loopback gets nothing, whether the URL names
    it by address, by name or IPv4-mapped; the webhook is dead at once, saying why."""
    receiver = await receivers()
    settings = DeliverySettings(timeout=FAST.timeout, reach=PUBLIC_ONLY)
    async with delivering(sqlite_store, clock, settings) as w:
        hook_id = await queue(w, url=f"http://{host}:{receiver.port}/hook")
        await w.advance(RETRY_FOR)
        assert receiver.peak_connections == 0
        assert receiver.requests == []
        hook = await w.store.get_webhook(hook_id)
        assert hook is not None
        assert (hook.state, hook.attempts, hook.last_status) == ("dead", 1, None)
        assert hook.last_error is not None
        assert "refused" in hook.last_error
        assert "CASCADE_WEBHOOK_ALLOW_PRIVATE" in hook.last_error
        assert await w.store.next_job_at() is None


async def test_a_webhook_to_an_allowed_network_is_delivered(
    sqlite_store: SqliteStore, clock: FakeClock, receivers: MakeReceiver
) -> None:
    """The operator's own receiver, named in the allowed networks, gets its webhook."""
    receiver = await receivers()
    rule = AddressRule(allow_private=False, allowed_networks=parse_networks("127.0.0.0/8"))
    settings = DeliverySettings(timeout=FAST.timeout, reach=rule)
    async with delivering(sqlite_store, clock, settings, status_url=receiver.url()) as w:
        hook_id = await queue(w)
        assert len(receiver.requests) == 1
        hook = await w.store.get_webhook(hook_id)
        assert hook is not None
        assert hook.state == "delivered"


def test_the_settings_make_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """CASCADE_WEBHOOK_ALLOW_PRIVATE and CASCADE_WEBHOOK_ALLOWED_NETWORKS become the rule."""
    assert Settings().webhook_reach == AddressRule()
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOW_PRIVATE", "false")
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOWED_NETWORKS", "10.1.2.0/24,fd00::/8")
    assert Settings().webhook_reach == AddressRule(
        allow_private=False,
        allowed_networks=(ip_network("10.1.2.0/24"), ip_network("fd00::/8")),
    )


def test_a_bad_network_fails_at_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that is not a network is refused when the settings are read, naming it."""
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOWED_NETWORKS", "10.1.2.0/24, intranet")
    with pytest.raises(ValidationError, match="webhook_allowed_networks") as caught:
        Settings()
    assert "'intranet' is not an IP network" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", True),
        ("https://10.0.0.5:8443/hook", True),
        ("http://[::ffff:127.0.0.1]/h", True),
        ("http://localhost:8000/status", True),
        ("http://api.localhost/status", True),
        ("https://hooks.example.com/s", False),  # a name: checked when a webhook goes out
        ("http://8.8.8.8/h", False),
        ("http://[::1/h", False),  # malformed: the URL's own checks refuse it
    ],
)
def test_a_url_is_refused_by_its_host_alone_only_when_the_host_tells(
    url: str, refused: bool
) -> None:
    """Addresses and localhost are judged from the URL; other names are not resolved."""
    assert (PUBLIC_ONLY.url_refusal(url) is not None) is refused
    assert AddressRule().url_refusal(url) is None


def test_localhost_is_admitted_when_loopback_is_an_allowed_network() -> None:
    """Naming 127.0.0.0/8 (or ::1) as allowed lets a localhost URL be set."""
    rule = AddressRule(allow_private=False, allowed_networks=parse_networks("127.0.0.0/8"))
    assert rule.url_refusal("http://localhost:8000/status") is None
    assert rule.url_refusal("http://10.0.0.1/status") is not None


async def test_a_v1_webhook_url_the_rule_refuses_is_a_422_and_nothing_is_stored(
    sqlite_store: SqliteStore, clock: FakeClock
) -> None:
    """POST /v1/messages naming a private webhook_url (its own or a failover message's) is
    refused with both named, beside any other problem of the body, and stores nothing; a
    public one is accepted."""
    tenant = await make_tenant(sqlite_store, clock)
    app = create_app(sqlite_store, clock=clock, webhook_reach=PUBLIC_ONLY)
    body = {
        "channel": "sms",
        "message_type": "text",
        "to": "447700900000",
        "from": "Acme",
        "text": "hi",
        "webhook_url": "http://169.254.169.254/latest/meta-data/",
        "failover": [
            {
                "channel": "sms",
                "message_type": "text",
                "to": "447700900000",
                "from": "Acme",
                "text": "hi",
                "webhook_url": "http://localhost:8000/s",
            }
        ],
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cascade.test") as http:
        refused = await http.post("/v1/messages", json=body, headers=tenant.basic())
        both = await http.post(
            "/v1/messages", json={**body, "to": "not-a-number"}, headers=tenant.basic()
        )
        public = await http.post(
            "/v1/messages",
            json={**body, "webhook_url": "https://hooks.example.com/s", "failover": None},
            headers=tenant.basic(),
        )
    assert refused.status_code == 422, refused.text
    reasons = {p["name"]: p["reason"] for p in refused.json()["invalid_parameters"]}
    assert set(reasons) == {"webhook_url", "failover[0].webhook_url"}
    assert "169.254.169.254 is not a public address" in reasons["webhook_url"]
    assert "localhost" in reasons["failover[0].webhook_url"]
    assert both.status_code == 422, both.text
    named = {p["name"] for p in both.json()["invalid_parameters"]}
    assert named == {"to", "webhook_url", "failover[0].webhook_url"}  # one answer names all
    assert public.status_code == 202, public.text
    assert len(await sqlite_store.list_workflows(tenant.account.id, ListQuery())) == 1


def test_setting_a_private_url_is_refused_where_the_rule_forbids_it() -> None:
    """The URL a person sets (CLI, dashboard) is refused with the reason; the default allows."""
    with pytest.raises(ValueError, match=r"10\.0\.0\.1 is not a public address"):
        tenancy.webhook_url("http://10.0.0.1/s", PUBLIC_ONLY)
    assert tenancy.webhook_url("http://10.0.0.1/s") == "http://10.0.0.1/s"
    assert tenancy.webhook_url("", PUBLIC_ONLY) is None
