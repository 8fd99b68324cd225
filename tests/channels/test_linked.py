"""LinkedProvider: a message goes out only with its own account's link; without one, to the
sandbox for a sandbox account, else rejected; links are cached briefly; the shared client
lives as long as its providers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from cascade.channels.base import OutboundMessage, SendResult
from cascade.channels.http import ChannelHttp
from cascade.channels.linked import LinkedProvider, linked_providers
from cascade.channels.messenger import MessengerAdapter
from cascade.channels.sandbox import SandboxProvider
from cascade.channels.viber import ViberAdapter
from cascade.channels.whatsapp import WhatsAppAdapter
from cascade.clock import FakeClock
from cascade.config import Settings
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.errors import ChannelRejected, ChannelUnavailable
from cascade.store.sqlite import SqliteStore
from tests.channels.support import RecordingSink
from tests.peers.graph import FakeGraph
from tests.peers.support import make_link, outbound, text

PAGE = "104500000000001"


@dataclass(frozen=True)
class FakeAccount:
    """An account as the lookup returns it: only whether it is a sandbox account."""

    sandbox: bool


@dataclass
class MemoryLookup:
    """The store's two lookups over dicts, counting the reads."""

    links: dict[tuple[str, str], ChannelLink] = field(default_factory=dict)
    accounts: dict[str, FakeAccount] = field(default_factory=dict)
    link_reads: int = 0
    account_reads: int = 0

    def add(self, link: ChannelLink) -> ChannelLink:
        """Link an address."""
        self.links[(link.channel.value, link.address)] = link
        return link

    async def find_channel_link(self, channel: LinkedChannel, address: str) -> ChannelLink | None:
        """The link of ``address`` on ``channel``."""
        self.link_reads += 1
        return self.links.get((channel.value, address))

    async def get_account(self, account_id: str) -> FakeAccount | None:
        """The account, if known."""
        self.account_reads += 1
        return self.accounts.get(account_id)


@dataclass
class RecordingAdapter:
    """An adapter that records what it was asked to send and with which link."""

    channel: LinkedChannel
    sent: list[tuple[ChannelLink, OutboundMessage]] = field(default_factory=list)
    started: int = 0

    async def start(self) -> None:
        """Count a start."""
        self.started += 1

    async def stop(self) -> None:
        """Count a stop."""
        self.started -= 1

    async def send(self, link: ChannelLink, message: OutboundMessage) -> SendResult:
        """Record the send; answer with an id of the channel's space."""
        self.sent.append((link, message))
        return SendResult(f"id-{len(self.sent)}", provider=self.channel.value)


@pytest.fixture
async def sandbox(sqlite_store: SqliteStore, clock: FakeClock) -> SandboxProvider:
    """The sandbox on the test store (its timer not running)."""
    provider = SandboxProvider(sqlite_store, clock)
    await provider.start(RecordingSink(), run_timer=False)
    return provider


@pytest.fixture
def lookup() -> MemoryLookup:
    """Two accounts: acct-1 a production account, acct-sbx a sandbox account."""
    return MemoryLookup(accounts={"acct-1": FakeAccount(False), "acct-sbx": FakeAccount(True)})


def provider_for(
    channel: LinkedChannel, sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> tuple[LinkedProvider, RecordingAdapter]:
    """A linked provider of ``channel`` over a recording adapter."""
    adapter = RecordingAdapter(channel)
    return LinkedProvider(adapter, sandbox, lookup, clock=clock), adapter


async def test_a_message_goes_out_with_its_own_accounts_link(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """from.id names a page linked to the message's account: the adapter sends with it."""
    link = lookup.add(make_link(LinkedChannel.MESSENGER, PAGE, "acct-1", page_access_token="t"))
    provider, adapter = provider_for(LinkedChannel.MESSENGER, sandbox, lookup, clock)
    result = await provider.send(outbound("messenger", "psid", PAGE, text()))
    assert [sent_link for sent_link, _ in adapter.sent] == [link]
    assert result.provider == "messenger"
    assert provider.name == "messenger"
    assert provider.ids_can_repeat is False


async def test_another_accounts_link_is_never_used(
    sandbox: SandboxProvider,
    sqlite_store: SqliteStore,
    lookup: MemoryLookup,
    clock: FakeClock,
) -> None:
    """A page linked by another account: a production account is rejected 1120 (the reason
    does not say who linked it), a sandbox account goes to the sandbox; the adapter never
    sends with the other account's link."""
    lookup.add(make_link(LinkedChannel.MESSENGER, PAGE, "acct-other", page_access_token="t"))
    provider, adapter = provider_for(LinkedChannel.MESSENGER, sandbox, lookup, clock)
    with pytest.raises(ChannelRejected) as caught:
        await provider.send(outbound("messenger", "psid", PAGE, text(), account_id="acct-1"))
    assert caught.value.code == 1120
    assert caught.value.reason == f"no messenger page {PAGE} is linked to this account"
    result = await provider.send(outbound("messenger", "psid", PAGE, text(), account_id="acct-sbx"))
    assert adapter.sent == []
    assert result.provider == "sandbox"
    assert len(await sqlite_store.sandbox_messages()) == 1


async def test_an_unlinked_from_goes_to_the_sandbox_only_for_a_sandbox_account(
    sandbox: SandboxProvider,
    sqlite_store: SqliteStore,
    lookup: MemoryLookup,
    clock: FakeClock,
) -> None:
    """No link at all: a sandbox account's message is the sandbox's (its receipts' id space),
    a production or unknown account's is rejected naming the channel's kind of address."""
    whatsapp, _ = provider_for(LinkedChannel.WHATSAPP, sandbox, lookup, clock)
    viber, _ = provider_for(LinkedChannel.VIBER, sandbox, lookup, clock)
    sent = await whatsapp.send(
        outbound("whatsapp", "447700900123", "15550001111", text(), account_id="acct-sbx")
    )
    assert sent.provider == "sandbox"
    assert sent.provider_message_id.startswith("sandbox-")
    [journaled] = await sqlite_store.sandbox_messages()
    assert journaled.provider_message_id == sent.provider_message_id
    with pytest.raises(ChannelRejected) as caught:
        await whatsapp.send(outbound("whatsapp", "447700900123", "15550001111", text()))
    assert caught.value.reason == "no whatsapp number 15550001111 is linked to this account"
    with pytest.raises(ChannelRejected) as caught:
        await viber.send(
            outbound("viber_service_msg", "447700900123", "pa:1", text(), account_id="nobody")
        )
    assert caught.value.reason == "no viber bot pa:1 is linked to this account"


async def test_whatsapp_finds_its_link_by_from_number_and_viber_by_from_id(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """WhatsApp's link is named by from.number, Viber's by from.id."""
    number = lookup.add(make_link(LinkedChannel.WHATSAPP, "15550001111", "acct-1"))
    bot = lookup.add(make_link(LinkedChannel.VIBER, "pa:1", "acct-1"))
    whatsapp, wa_adapter = provider_for(LinkedChannel.WHATSAPP, sandbox, lookup, clock)
    viber, viber_adapter = provider_for(LinkedChannel.VIBER, sandbox, lookup, clock)
    await whatsapp.send(outbound("whatsapp", "447700900123", "15550001111", text()))
    await viber.send(outbound("viber_service_msg", "447700900123", "pa:1", text()))
    assert [link for link, _ in wa_adapter.sent] == [number]
    assert [link for link, _ in viber_adapter.sent] == [bot]


async def test_links_are_cached_and_a_removed_link_stops_within_the_ttl(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """Sends within 5 s read the link once; after the link is removed it is still used until
    the 5 s pass, then the message is rejected."""
    lookup.add(make_link(LinkedChannel.MESSENGER, PAGE, "acct-1"))
    provider, adapter = provider_for(LinkedChannel.MESSENGER, sandbox, lookup, clock)
    for _ in range(3):
        await provider.send(outbound("messenger", "psid", PAGE, text()))
    assert lookup.link_reads == 1
    lookup.links.clear()
    clock.advance(4.9)
    await provider.send(outbound("messenger", "psid", PAGE, text()))
    assert len(adapter.sent) == 4
    clock.advance(0.2)
    with pytest.raises(ChannelRejected):
        await provider.send(outbound("messenger", "psid", PAGE, text()))
    assert lookup.link_reads == 2


async def test_the_sandbox_flag_is_cached_too(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """Repeated unlinked sends of one account read the account once per TTL."""
    provider, _ = provider_for(LinkedChannel.MESSENGER, sandbox, lookup, clock)
    for _ in range(3):
        await provider.send(outbound("messenger", "psid", PAGE, text(), account_id="acct-sbx"))
    assert lookup.account_reads == 1
    clock.advance(5.1)
    await provider.send(outbound("messenger", "psid", PAGE, text(), account_id="acct-sbx"))
    assert lookup.account_reads == 2


async def test_a_cache_of_zero_seconds_reads_every_time(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """With cache_seconds=0 each send reads the store."""
    lookup.add(make_link(LinkedChannel.MESSENGER, PAGE, "acct-1"))
    provider = LinkedProvider(
        RecordingAdapter(LinkedChannel.MESSENGER), sandbox, lookup, clock=clock, cache_seconds=0
    )
    for _ in range(3):
        await provider.send(outbound("messenger", "psid", PAGE, text()))
    assert lookup.link_reads == 3


async def test_the_shared_client_opens_with_the_first_provider_and_closes_with_the_last(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """Three providers on one ChannelHttp: it runs from the first start to the last stop."""
    http = ChannelHttp(timeout=1.0, max_connections=4)
    adapters = [
        MessengerAdapter(http, base_url="http://127.0.0.1:9", api_version="v25.0"),
        WhatsAppAdapter(http, base_url="http://127.0.0.1:9", api_version="v25.0"),
        ViberAdapter(http, base_url="http://127.0.0.1:9"),
    ]
    providers = [LinkedProvider(adapter, sandbox, lookup, clock=clock) for adapter in adapters]
    for provider in providers:
        await provider.start(RecordingSink())
        assert http.running
    for provider in providers[:2]:
        await provider.stop()
        assert http.running
    await providers[2].stop()
    assert not http.running


async def test_a_linked_page_sends_through_the_graph_api(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """End to end through the seam: the account's page link reaches the fake Graph server
    with that page's token, and the message id comes back in the messenger id space."""
    lookup.add(
        make_link(
            LinkedChannel.MESSENGER, PAGE, "acct-1", page_access_token="tok-1", app_secret="s"
        )
    )
    lookup.add(
        make_link(
            LinkedChannel.MESSENGER, "2002", "acct-2", page_access_token="tok-2", app_secret="s"
        )
    )
    lookup.accounts["acct-2"] = FakeAccount(False)
    http = ChannelHttp(timeout=2.0, max_connections=4)
    async with FakeGraph() as graph:
        graph.add_page(PAGE, "tok-1", "s")
        graph.add_page("2002", "tok-2", "s")
        provider = LinkedProvider(
            MessengerAdapter(http, base_url=graph.url, api_version="v25.0"),
            sandbox,
            lookup,
            clock=clock,
        )
        await provider.start(RecordingSink())
        try:
            first = await provider.send(outbound("messenger", "psid", PAGE, text()))
            second = await provider.send(
                outbound("messenger", "psid", "2002", text(), account_id="acct-2")
            )
            with pytest.raises(ChannelRejected):
                await provider.send(
                    outbound("messenger", "psid", "2002", text(), account_id="acct-1")
                )
        finally:
            await provider.stop()
    assert [request.headers["authorization"] for request in graph.received] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]
    assert first.provider == second.provider == "messenger"
    assert first.provider_message_id.startswith("m_")


async def test_the_settings_build_three_providers_on_one_client(
    sandbox: SandboxProvider, lookup: MemoryLookup, clock: FakeClock
) -> None:
    """linked_providers gives messenger, whatsapp and viber_service_msg providers pointed at
    the configured Graph URL and version; they share one client, which closes with the last."""
    lookup.add(make_link(LinkedChannel.MESSENGER, PAGE, "acct-1", page_access_token="tok-1"))
    async with FakeGraph(version="v26.0") as graph:
        graph.add_page(PAGE, "tok-1", "s")
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            graph_base_url=graph.url + "/",
            graph_api_version="v26.0",
            channel_http_timeout_seconds=2,
        )
        providers = linked_providers(settings, sandbox, lookup, clock)
        assert sorted(providers) == ["messenger", "viber_service_msg", "whatsapp"]
        for provider in providers.values():
            await provider.start(RecordingSink())
        await providers["whatsapp"].stop()
        await providers["viber_service_msg"].stop()
        result = await providers["messenger"].send(outbound("messenger", "psid", PAGE, text()))
        assert result.provider_message_id.startswith("m_")
        assert graph.received[-1].path == "/v26.0/me/messages"
        await providers["messenger"].stop()
        with pytest.raises(ChannelUnavailable):
            await providers["messenger"].send(outbound("messenger", "psid", PAGE, text()))


@pytest.mark.parametrize(
    "wrong",
    [
        {"graph_base_url": "graph.facebook.com"},
        {"viber_base_url": "ftp://chatapi.viber.com"},
        {"graph_api_version": "25.0"},
        {"channel_http_max_connections": 0},
    ],
)
def test_bad_channel_settings_fail_at_start(wrong: dict[str, object]) -> None:
    """A base URL without http(s), a version not like v25.0 or no connections is refused."""
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **wrong)  # type: ignore[call-arg, arg-type]
