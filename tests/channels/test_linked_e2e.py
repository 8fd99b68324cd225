"""Linked channels end to end through HTTP: the real app of ``cascade serve``
(``runtime.build_app``) on uvicorn on 127.0.0.1 with its engine, SQLite in a temp dir, live
accounts whose pages, number and bot are linked, the fake Graph and Viber platforms sending
their signed callbacks to Cascade's intake, and a webhook receiver for the accounts' status and
inbound webhooks.

The service's clock is real time that a test may jump forward (:class:`JumpClock`), so a
15-second ``expiry_time`` (the smallest v0.1 allows) passes without waiting 15 seconds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from cascade.config import Settings
from cascade.domain.records import ChannelLink, LinkedChannel
from cascade.runtime import build_app
from cascade.sealing import Sealer
from cascade.store.sqlite import SqliteStore
from tests.conftest import Tenant, make_tenant
from tests.peers import graph as fake_graph
from tests.peers import viber as fake_viber
from tests.peers.graph import FakeGraph
from tests.peers.viber import FakeViber
from tests.webhooks.receiver import Receiver

PSID = "6783241905021357"
WA_NUMBER = "15550783881"
WA_NUMBER_ID = "106540352242922"
WA_TOKEN = "wa-access-token"
WA_SECRET = "whatsapp-app-secret"
BOT = "acme-bot"
BOT_TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
VIBER_USER = "01234567890A="
SMS_TO = "447700900000"
#: the tables a callback may write to
TABLES = ("events", "webhooks", "orphan_receipts", "jobs")


class JumpClock:
    """Real time plus an offset that :meth:`jump` moves forward; a jump wakes every sleeper,
    which then sleeps on to its deadline in the new time (a timer due within the jump runs)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._jumped = asyncio.Event()

    def now(self) -> float:
        """Real time, jumped."""
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of this clock's time have passed."""
        deadline = self.now() + seconds
        while (left := deadline - self.now()) > 0:
            jumped = self._jumped
            try:
                await asyncio.wait_for(jumped.wait(), left)
            except TimeoutError:
                return
        await asyncio.sleep(0)

    def jump(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.offset += seconds
        jumped, self._jumped = self._jumped, asyncio.Event()
        jumped.set()


@dataclass(frozen=True)
class Page:
    """A Facebook page linked to an account."""

    page_id: str
    token: str
    secret: str


@dataclass
class Service:
    """Cascade serving on loopback, the platforms, the webhook receiver and the accounts."""

    url: str
    http: httpx.AsyncClient
    graph: FakeGraph
    viber: FakeViber
    hooks: Receiver
    clock: JumpClock
    db: Path
    tenants: list[Tenant]
    pages: dict[str, list[Page]]  # by account id
    settings: Settings

    async def dispatch(self, tenant: Tenant, *steps: dict[str, Any]) -> str:
        """POST a failover workflow; its id."""
        body = {"template": "failover", "workflow": list(steps)}
        response = await self.http.post(
            self.url + "/v0.1/dispatch", json=body, headers=tenant.bearer()
        )
        assert response.status_code == 202, response.text
        return str(response.json()["dispatch_uuid"])

    async def send(self, tenant: Tenant, message: dict[str, Any]) -> str:
        """POST one v0.1 message; its id."""
        response = await self.http.post(
            self.url + "/v0.1/messages", json=message, headers=tenant.bearer()
        )
        assert response.status_code == 202, response.text
        return str(response.json()["message_uuid"])

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The webhook bodies received at ``path``, in order."""
        return [r.json() for r in self.hooks.requests if r.path == path]

    async def wait_for(
        self, condition: Callable[[list[dict[str, Any]]], bool], path: str = "/status"
    ) -> list[dict[str, Any]]:
        """Wait (5 s at most) until the webhooks at ``path`` meet ``condition``."""
        async with asyncio.timeout(5):
            while not condition(self.bodies(path)):
                await self.hooks.wait_for(len(self.hooks.requests) + 1, within=5)
        return self.bodies(path)

    def rows(self) -> dict[str, int]:
        """How many rows each table a callback may write holds."""
        with closing(sqlite3.connect(self.db)) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def on(channel: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The status webhooks of messages on ``channel`` (not the final reports), in order."""
    return [b for b in bodies if "to" in b and b["to"]["type"] == channel]


def statuses(bodies: list[dict[str, Any]], channel: str) -> list[str]:
    """The statuses reported for messages on ``channel``, in order."""
    return [b["status"] for b in on(channel, bodies)]


def has(channel: str, status: str) -> Callable[[list[dict[str, Any]]], bool]:
    """Whether a status webhook says a ``channel`` message reached ``status``."""
    return lambda bodies: status in statuses(bodies, channel)


def messenger(psid: str, page: str, expiry: int | None = None) -> dict[str, Any]:
    """A Messenger text step from ``page`` to ``psid``, failing over unless read."""
    return step({"type": "messenger", "id": psid}, {"type": "messenger", "id": page}, expiry)


def step(to: dict[str, str], from_: dict[str, str], expiry: int | None = None) -> dict[str, Any]:
    """A text step; ``expiry`` adds a failover on ``read``."""
    body: dict[str, Any] = {
        "to": to,
        "from": from_,
        "message": {"content": {"type": "text", "text": "Your code is 1234"}},
    }
    if expiry is not None:
        body["failover"] = {"expiry_time": expiry, "condition_status": "read"}
    return body


SMS = step({"type": "sms", "number": SMS_TO}, {"type": "sms", "number": "Acme"})


def free_socket() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def link(tenant: Tenant, channel: LinkedChannel, address: str, **credentials: str) -> ChannelLink:
    """A link of ``address`` for the tenant's account."""
    return ChannelLink(
        id=str(uuid.uuid4()),
        account_id=tenant.account.id,
        channel=channel,
        address=address,
        credentials=credentials,
        created_at=time.time(),
    )


async def prepare(
    db: Path, key: str, hooks: Receiver, graph: FakeGraph, viber: FakeViber, viber_hook: str
) -> tuple[list[Tenant], dict[str, list[Page]]]:
    """Two live accounts in a fresh database: each with two pages, the first also with the
    WhatsApp number and the Viber bot; the platforms know them all."""
    store = SqliteStore(db, synchronous="NORMAL", sealer=Sealer(key))
    await store.open()
    tenants: list[Tenant] = []
    pages: dict[str, list[Page]] = {}
    try:
        for index in range(2):
            tenant = await make_tenant(store)
            await store.update_account(
                tenant.account.id,
                sandbox=False,
                status_url=hooks.url("/status"),
                inbound_url=hooks.url("/inbound"),
            )
            tenants.append(tenant)
            pages[tenant.account.id] = []
            for number in range(2):
                page = Page(f"10411606253{index}{number}", f"token-{index}-{number}", f"s{index}")
                graph.add_page(page.page_id, page.token, page.secret)
                pages[tenant.account.id].append(page)
                await store.add_channel_link(
                    link(
                        tenant,
                        LinkedChannel.MESSENGER,
                        page.page_id,
                        page_access_token=page.token,
                        app_secret=page.secret,
                        verify_token="m-verify",
                    )
                )
        first = tenants[0]
        graph.add_number(WA_NUMBER_ID, WA_NUMBER, WA_TOKEN, WA_SECRET, "WABA")
        await store.add_channel_link(
            link(
                first,
                LinkedChannel.WHATSAPP,
                WA_NUMBER,
                phone_number_id=WA_NUMBER_ID,
                business_account_id="WABA",
                access_token=WA_TOKEN,
                app_secret=WA_SECRET,
                verify_token="w-verify",
            )
        )
        viber.add_bot(BOT_TOKEN, BOT, "Acme", webhook=viber_hook)
        await store.add_channel_link(
            link(first, LinkedChannel.VIBER, BOT, auth_token=BOT_TOKEN, sender_name="Acme")
        )
    finally:
        await store.close()
    return tenants, pages


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """Cascade serving with its engine, wired to the fake platforms and a webhook receiver."""
    key = Sealer.generate_key()
    clock = JumpClock()
    hooks = await Receiver(clock).up()
    listener = free_socket()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    async with FakeGraph() as graph, FakeViber() as viber:
        db = tmp_path / "cascade.db"
        tenants, pages = await prepare(db, key, hooks, graph, viber, url + "/channels/viber")
        settings = Settings(
            database_url=f"sqlite:///{db}",
            sqlite_synchronous="NORMAL",
            channel_key=key,  # type: ignore[arg-type]
            public_url=url,
            credentials_file=tmp_path / "credentials",
            graph_base_url=graph.url,
            graph_api_version=graph.version,
            viber_base_url=viber.url,
            sandbox_speed=100.0,
        )
        try:
            async with (
                serving(build_app(settings, clock=clock), listener),
                httpx.AsyncClient(timeout=5.0, trust_env=False) as http,
            ):
                yield Service(url, http, graph, viber, hooks, clock, db, tenants, pages, settings)
        finally:
            await hooks.down()


@contextlib.asynccontextmanager
async def serving(app: Any, listener: socket.socket) -> AsyncIterator[None]:
    """``app`` served by uvicorn on ``listener`` (started, its lifespan run) until the block
    ends."""
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                await task
            await asyncio.sleep(0.005)
        yield
    finally:
        server.should_exit = True
        await task
        listener.close()


async def test_messenger_delivered_never_read_fails_over_to_sms_when_the_window_closes(
    service: Service,
) -> None:
    """Messenger (read within 15 s) delivered but never read: no SMS before the window
    closes, the SMS when it does."""
    tenant = service.tenants[0]
    page = service.pages[tenant.account.id][0]
    service.graph.callback_url = service.url + "/channels/messenger"
    service.graph.behave(PSID, fake_graph.NEVER_READS)
    await service.dispatch(tenant, messenger(PSID, page.page_id, expiry=15), SMS)
    await service.wait_for(has("messenger", "delivered"))
    await asyncio.sleep(0.3)
    assert statuses(service.bodies("/status"), "sms") == []
    service.clock.jump(15)
    await service.wait_for(has("sms", "delivered"))
    [sent] = service.graph.received
    assert (sent.api, sent.status) == ("messenger", 200)
    # webhooks are POSTed concurrently, and a delivery the platform reports before its send is
    # recorded keeps the platform's (earlier) time: neither arrival nor timestamps give an order
    assert sorted(statuses(service.bodies("/status"), "messenger")) == ["delivered", "submitted"]


async def test_a_read_that_beats_the_graph_answer_still_completes_the_step(
    service: Service,
) -> None:
    """Meta posts the delivery and the read watermark before it answers the send: the message
    still reads as delivered then read, the step succeeds and no SMS goes out."""
    tenant = service.tenants[0]
    page = service.pages[tenant.account.id][0]
    service.graph.callback_url = service.url + "/channels/messenger"
    service.graph.behave(PSID, fake_graph.Behaviour(callbacks_first=True))
    await service.dispatch(tenant, messenger(PSID, page.page_id, expiry=15), SMS)
    await service.wait_for(has("messenger", "read"))
    service.clock.jump(15)
    await asyncio.sleep(0.3)
    assert statuses(service.bodies("/status"), "sms") == []
    assert sorted(statuses(service.bodies("/status"), "messenger")) == ["delivered", "read"]
    [sent] = service.graph.received
    assert (sent.api, sent.status) == ("messenger", 200)


async def test_an_api_process_without_the_engine_applies_a_callback_at_once(
    service: Service,
) -> None:
    """A callback taken by an API process that runs no engine (as each API process of
    ``serve``) is applied there: the message reads delivered by the time Meta heard 200, and no
    receipt is kept for a worker's sweep."""
    tenant = service.tenants[0]
    page = service.pages[tenant.account.id][0]
    api_only = build_app(service.settings.model_copy(update={"run_worker": False}))
    listener = free_socket()
    async with serving(api_only, listener):
        service.graph.callback_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        service.graph.callback_url += "/channels/messenger"
        # the delivery comes after the send is recorded (a delivery that beats it is kept, as
        # with an engine, until the engine of the send matches it)
        service.graph.behave(PSID, fake_graph.Behaviour(deliver_after=1.0, read_after=None))
        message_id = await service.send(tenant, messenger(PSID, page.page_id))
        await service.wait_for(has("messenger", "submitted"))
        await service.graph.settled()
        with closing(sqlite3.connect(service.db)) as db:
            (status,) = db.execute(
                "SELECT status FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            (kept,) = db.execute("SELECT count(*) FROM orphan_receipts").fetchone()
    assert (status, kept) == ("delivered", 0)


async def test_whatsapp_failed_sends_the_sms_at_once(service: Service) -> None:
    """WhatsApp accepts the message, then reports it failed (131026): the SMS goes out at
    once, well before the 15-second window ends."""
    tenant = service.tenants[0]
    service.graph.callback_url = service.url + "/channels/whatsapp"
    service.graph.behave("16505551234", fake_graph.failing(131026))
    started = time.monotonic()
    whatsapp = step(
        {"type": "whatsapp", "number": "16505551234"},
        {"type": "whatsapp", "number": WA_NUMBER},
        expiry=15,
    )
    await service.dispatch(tenant, whatsapp, SMS)
    bodies = await service.wait_for(has("sms", "delivered"))
    assert time.monotonic() - started < 5
    assert service.clock.offset == 0
    [failed] = [b for b in on("whatsapp", bodies) if b["status"] != "submitted"]
    assert failed["status"] in ("rejected", "undeliverable")
    assert failed["error"]["code"]
    assert [r.body["to"] for r in service.graph.received] == ["16505551234"]


async def test_viber_seen_before_expiry_sends_nothing_more(service: Service) -> None:
    """A Viber message seen before its window closes: read, the workflow done, no SMS even
    after the window would have closed."""
    tenant = service.tenants[0]
    service.viber.behave(VIBER_USER, fake_viber.SEES)
    viber = step(
        {"type": "viber_service_msg", "id": VIBER_USER},
        {"type": "viber_service_msg", "id": BOT},
        expiry=15,
    )
    await service.dispatch(tenant, viber, SMS)
    await service.wait_for(has("viber_service_msg", "read"))
    service.clock.jump(30)
    await asyncio.sleep(0.5)
    assert statuses(service.bodies("/status"), "sms") == []
    assert [r.path for r in service.viber.received] == ["/pa/send_message"]


async def test_an_inbound_whatsapp_message_reaches_the_inbound_webhook(service: Service) -> None:
    """A user's WhatsApp text, posted by the platform to the intake, becomes a v0.1 inbound
    webhook to the number's account, with the sender and the text."""
    service.graph.callback_url = service.url + "/channels/whatsapp"
    await service.graph.whatsapp_inbound(WA_NUMBER_ID, "447700900123", "Yes, please")
    [received] = await service.wait_for(lambda bodies: len(bodies) == 1, path="/inbound")
    assert received["from"]["number"] == "447700900123"
    assert received["to"]["number"] == WA_NUMBER
    assert received["message"]["content"] == {"type": "text", "text": "Yes, please"}
    assert service.graph.callbacks.sent[-1].status == 200


async def test_a_forged_callback_is_refused_and_records_nothing(service: Service) -> None:
    """A WhatsApp inbound message signed with a wrong secret, or unsigned: 401/403, no row
    written, no webhook sent."""
    before = service.rows()
    document = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": WA_NUMBER,
                                "phone_number_id": WA_NUMBER_ID,
                            },
                            "messages": [
                                {
                                    "from": "447700900123",
                                    "id": "wamid.forged",
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": "forged"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    raw = msgspec.json.encode(document)
    forged = "sha256=" + hmac.new(b"not-the-secret", raw, hashlib.sha256).hexdigest()
    for headers in ({"X-Hub-Signature-256": forged}, {}):
        response = await service.http.post(
            service.url + "/channels/whatsapp",
            content=raw,
            headers={"Content-Type": "application/json", **headers},
        )
        assert response.status_code in (401, 403)
    await asyncio.sleep(0.2)
    assert service.rows() == before
    assert service.hooks.requests == []


async def test_two_accounts_reach_only_their_own_pages(service: Service) -> None:
    """Two live accounts with two pages each: every send goes out with its own page's token;
    a send from the other account's page is rejected (1120) and never reaches Graph."""
    service.graph.callback_url = service.url + "/channels/messenger"
    expected: list[tuple[str, str]] = []
    for tenant in service.tenants:
        for page in service.pages[tenant.account.id]:
            psid = f"psid-{page.page_id}"
            await service.send(tenant, messenger(psid, page.page_id))
            expected.append((psid, page.token))
    await service.wait_for(lambda bodies: statuses(bodies, "messenger").count("read") == 4)
    sent = {(r.body["recipient"]["id"], r.headers["authorization"]) for r in service.graph.received}
    assert sent == {(psid, f"Bearer {token}") for psid, token in expected}
    first, second = service.tenants
    foreign = service.pages[second.account.id][0]
    message_id = await service.send(first, messenger("psid-foreign", foreign.page_id))
    bodies = await service.wait_for(has("messenger", "rejected"))
    [rejected] = [b for b in bodies if b.get("message_uuid") == message_id]
    assert rejected["error"]["code"] == 1120
    assert len(service.graph.received) == 4
