"""Signed intake over HTTP: the real app on SQLite with linked channels, an engine in the process
(or none, as with ``CASCADE_RUN_WORKER=false``), and messages sent through stand-in platform
providers, so each callback's effect on statuses and webhooks can be read back."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
from starlette.types import ASGIApp

from cascade.api import intake as intake_module
from cascade.api.app import create_app
from cascade.channels.base import ChannelProvider, OutboundMessage, SendResult
from cascade.channels.sandbox import SandboxProvider
from cascade.clock import FakeClock
from cascade.domain.records import (
    ChannelLink,
    JobKindName,
    LinkedChannel,
    WebhookKind,
    WebhookRecord,
)
from cascade.engine.engine import Engine, EngineSettings, Providers
from cascade.sealing import Sealer
from cascade.store.sqlite import SqliteStore
from tests.conftest import Tenant, make_tenant
from tests.peers.graph import FakeGraph
from tests.peers.server import LoopbackServer
from tests.peers.viber import FakeViber

PAGE = "104116062535871"
PSID = "6783241905021357"
APP_SECRET = "messenger-app-secret"
WA_NUMBER = "15550783881"
WA_NUMBER_ID = "106540352242922"
WA_SECRET = "whatsapp-app-secret"
BOT = "acme-bot"
BOT_TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
#: a Viber bot knows its users by per-bot ids
VIBER_USER = "01234567890A="
#: the tables a callback may write to
TABLES = ("events", "webhooks", "orphan_receipts", "jobs")


class Platform(ChannelProvider):
    """Stands in for a platform's send API: accepts every message and answers with the next
    id of its own, under its channel's provider name."""

    deduplicates = False
    ids_can_repeat = False

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self._prefix = prefix
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        """Accept the message; its id is the prefix and a count."""
        self.sent.append(message)
        return SendResult(f"{self._prefix}{len(self.sent)}", provider=self.name)


@dataclass
class Intake:
    """The service with three linked channels, and helpers to send and call back."""

    store: SqliteStore
    clock: FakeClock
    tenant: Tenant
    http: httpx.AsyncClient
    engine: Engine
    app: ASGIApp
    links: dict[LinkedChannel, ChannelLink] = field(default_factory=dict)

    async def send(self, to: dict[str, str], from_: dict[str, str]) -> str:
        """POST a text message and let the engine send it; its message id."""
        body = {"to": to, "from": from_, "message": {"content": {"type": "text", "text": "hi"}}}
        response = await self.http.post("/v0.1/messages", json=body, headers=self.tenant.bearer())
        assert response.status_code == 202, response.text
        await self.engine.drain()
        return str(response.json()["message_uuid"])

    async def messenger_message(self) -> tuple[str, str]:
        """A Messenger message from the page to the user: its id and its mid."""
        message_id = await self.send(
            {"type": "messenger", "id": PSID}, {"type": "messenger", "id": PAGE}
        )
        return message_id, await self.provider_id(message_id)

    async def whatsapp_message(self) -> tuple[str, str]:
        """A WhatsApp message from the linked number: its id and its wamid."""
        message_id = await self.send(
            {"type": "whatsapp", "number": "16505551234"}, {"type": "whatsapp", "number": WA_NUMBER}
        )
        return message_id, await self.provider_id(message_id)

    async def viber_message(self) -> tuple[str, str]:
        """A Viber message from the linked bot: its id and its message token."""
        message_id = await self.send(
            {"type": "viber_service_msg", "id": VIBER_USER},
            {"type": "viber_service_msg", "id": BOT},
        )
        return message_id, await self.provider_id(message_id)

    async def provider_id(self, message_id: str) -> str:
        """The platform's id of a sent message."""
        message = await self.store.find_message(message_id)
        assert message is not None
        assert message.provider_message_id is not None
        return message.provider_message_id

    async def status(self, message_id: str) -> str | None:
        """A message's status now."""
        message = await self.store.find_message(message_id)
        assert message is not None
        return message.status

    async def webhooks(self, kind: WebhookKind) -> list[WebhookRecord]:
        """The account's webhooks of one kind, oldest first."""
        found = await self.store.list_webhooks(account_id=self.tenant.account.id)
        return [hook for hook in found if hook.kind == kind]

    def rows(self) -> dict[str, int]:
        """How many rows each table a callback may write holds."""
        with closing(sqlite3.connect(self.store.path)) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}

    async def meta(
        self, path: str, document: dict[str, Any], secret: str | None, **headers: str
    ) -> httpx.Response:
        """POST a Meta callback signed with ``secret`` (None: unsigned)."""
        raw = msgspec.json.encode(document)
        if secret is not None:
            headers["X-Hub-Signature-256"] = "sha256=" + sign(secret, raw)
        headers.setdefault("Content-Type", "application/json")
        return await self.http.post(path, content=raw, headers=headers)

    async def viber(
        self, document: dict[str, Any], token: str | None = BOT_TOKEN, path: str = "/channels/viber"
    ) -> httpx.Response:
        """POST a Viber callback signed with ``token`` (None: unsigned)."""
        raw = msgspec.json.encode(document)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["X-Viber-Content-Signature"] = sign(token, raw)
        return await self.http.post(path, content=raw, headers=headers)


def sign(key: str, raw: bytes) -> str:
    """The hex HMAC-SHA256 of ``raw`` under ``key``."""
    return hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()


def link(tenant: Tenant, channel: LinkedChannel, address: str, **credentials: str) -> ChannelLink:
    """A link of the tenant's account."""
    return ChannelLink(
        id=str(uuid.uuid4()),
        account_id=tenant.account.id,
        channel=channel,
        address=address,
        credentials=credentials,
        created_at=0.0,
    )


async def open_intake(tmp: Any, *, with_engine: bool) -> AsyncIterator[Intake]:
    """The service on a fresh SQLite file; receipts go to the engine, or (without) the store."""
    store = SqliteStore(
        tmp / "cascade.db", synchronous="NORMAL", sealer=Sealer(Sealer.generate_key())
    )
    await store.open()
    clock = FakeClock(time.time())
    tenant = await make_tenant(store, clock)
    await store.update_account(
        tenant.account.id,
        status_url="https://hooks.example/status",
        inbound_url="https://hooks.example/in",
    )
    links = {
        LinkedChannel.MESSENGER: link(
            tenant,
            LinkedChannel.MESSENGER,
            PAGE,
            page_access_token="page-token",
            app_secret=APP_SECRET,
            verify_token="m-verify",
        ),
        LinkedChannel.WHATSAPP: link(
            tenant,
            LinkedChannel.WHATSAPP,
            WA_NUMBER,
            phone_number_id=WA_NUMBER_ID,
            business_account_id="WABA",
            access_token="wa-token",
            app_secret=WA_SECRET,
            verify_token="w-verify",
        ),
        LinkedChannel.VIBER: link(
            tenant, LinkedChannel.VIBER, BOT, auth_token=BOT_TOKEN, sender_name="Acme"
        ),
    }
    for added in links.values():
        await store.add_channel_link(added)
    platforms = {
        "messenger": Platform("messenger", "m_"),
        "whatsapp": Platform("whatsapp", "wamid.OUT"),
        "viber_service_msg": Platform("viber_service_msg", "5741311803571721"),
    }
    # the engine sends and applies receipts; the webhooks it queues stay queued, to be read
    kinds = frozenset({JobKindName.SEND, JobKindName.STEP_TIMEOUT, JobKindName.REPORT_HORIZON})
    engine = Engine(
        store,
        Providers(SandboxProvider(store, clock), platforms),
        clock,
        EngineSettings(kinds=kinds),
    )
    await engine.start(run_loop=False)
    app = create_app(
        store,
        clock=clock,
        max_body_bytes=64 * 1024,
        receipts=engine if with_engine else None,
        on_accepted=engine.wake,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cascade.test"
    ) as http:
        yield Intake(store, clock, tenant, http, engine, app, links)
    await engine.stop()
    await store.close()


@pytest.fixture
async def intake(tmp_path: Any) -> AsyncIterator[Intake]:
    """The service with its engine in the process."""
    async for opened in open_intake(tmp_path, with_engine=True):
        yield opened


def messenger_body(*events: dict[str, Any], page: str = PAGE) -> dict[str, Any]:
    """A Messenger callback of one page's events from the user."""
    messaging = [{"sender": {"id": PSID}, "recipient": {"id": page}, **e} for e in events]
    return {"object": "page", "entry": [{"id": page, "time": 1, "messaging": messaging}]}


def whatsapp_body(value: dict[str, Any], number: str = WA_NUMBER) -> dict[str, Any]:
    """A WhatsApp callback of one ``messages`` change of the linked number."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": number, "phone_number_id": WA_NUMBER_ID},
        **value,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
    }


def status_bodies(hooks: list[WebhookRecord]) -> list[tuple[str, str]]:
    """(message_uuid, status) of each status webhook."""
    bodies = [msgspec.json.decode(hook.body) for hook in hooks]
    return [(body["message_uuid"], body["status"]) for body in bodies]


class TestHandshake:
    """Meta's GET verification handshake."""

    async def test_the_links_verify_token_gets_the_challenge_back(self, intake: Intake) -> None:
        """Subscribe with a link's token: 200, the raw challenge as text/plain."""
        query = {
            "hub.mode": "subscribe",
            "hub.verify_token": "m-verify",
            "hub.challenge": "1158201444",
        }
        response = await intake.http.get("/channels/messenger", params=query)
        assert response.status_code == 200
        assert response.text == "1158201444"
        assert response.headers["content-type"].startswith("text/plain")
        query["hub.verify_token"] = "w-verify"
        assert (await intake.http.get("/channels/whatsapp", params=query)).text == "1158201444"

    @pytest.mark.parametrize(
        ("path", "query"),
        [
            (
                "/channels/messenger",
                {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
            ),
            ("/channels/messenger", {"hub.mode": "subscribe", "hub.challenge": "1"}),
            (
                "/channels/messenger",
                {"hub.mode": "unsubscribe", "hub.verify_token": "m-verify", "hub.challenge": "1"},
            ),
            ("/channels/messenger", {"hub.mode": "subscribe", "hub.verify_token": "m-verify"}),
            (
                "/channels/whatsapp",
                {"hub.mode": "subscribe", "hub.verify_token": "m-verify", "hub.challenge": "1"},
            ),
        ],
        ids=["wrong-token", "no-token", "wrong-mode", "no-challenge", "other-channels-token"],
    )
    async def test_anything_else_is_403(
        self, intake: Intake, path: str, query: dict[str, str]
    ) -> None:
        """A wrong or missing token (or another channel's), another mode or no challenge:
        a 403 problem that does not echo the challenge."""
        response = await intake.http.get(path, params=query)
        assert response.status_code == 403
        assert response.json()["title"] == "Forbidden"


class TestRefused:
    """Callbacks that record nothing."""

    async def test_a_forged_signature_is_refused_and_records_nothing(self, intake: Intake) -> None:
        """A delivery signed with another secret, or not signed, is a 403 problem; the
        message stays submitted and no row is written."""
        message_id, mid = await intake.messenger_message()
        before = intake.rows()
        document = messenger_body({"delivery": {"mids": [mid], "watermark": 2_000_000_000_000}})
        for secret in ("not-the-app-secret", None):
            response = await intake.meta("/channels/messenger", document, secret)
            assert response.status_code == 403
            assert response.headers["content-type"] == "application/json"
            assert response.json()["type"].endswith("#forbidden")
        assert await intake.status(message_id) == "submitted"
        assert intake.rows() == before

    async def test_an_unknown_page_is_403(self, intake: Intake) -> None:
        """A body naming a page that is not linked is refused even when signed with a linked
        app's secret, and records nothing; so is one page of a batch."""
        before = intake.rows()
        stranger = messenger_body({"message": {"mid": "m_x", "text": "hi"}}, page="999")
        response = await intake.meta("/channels/messenger", stranger, APP_SECRET)
        assert response.status_code == 403
        both = messenger_body({"message": {"mid": "m_y", "text": "hi"}})
        both["entry"] += stranger["entry"]
        assert (await intake.meta("/channels/messenger", both, APP_SECRET)).status_code == 403
        assert intake.rows() == before

    async def test_an_unknown_number_or_bot_is_403(self, intake: Intake) -> None:
        """A WhatsApp number or a Viber bot that is not linked is refused."""
        stranger = whatsapp_body({"statuses": []}, number="15559999999")
        stranger["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "1"
        assert (await intake.meta("/channels/whatsapp", stranger, WA_SECRET)).status_code == 403
        seen = {"event": "seen", "timestamp": 1, "message_token": 1}
        assert (await intake.viber(seen, path="/channels/viber/other-bot")).status_code == 403
        assert (await intake.viber(seen, token="not-the-token")).status_code == 403
        assert (await intake.viber(seen, token=None)).status_code == 403

    async def test_a_whatsapp_body_is_checked_with_the_whatsapp_secret(
        self, intake: Intake
    ) -> None:
        """The Messenger app's secret does not sign for the WhatsApp number."""
        document = whatsapp_body({"statuses": []})
        assert (await intake.meta("/channels/whatsapp", document, APP_SECRET)).status_code == 403
        assert (await intake.meta("/channels/whatsapp", document, WA_SECRET)).status_code == 200

    @pytest.mark.parametrize(
        ("raw", "content_type", "status"),
        [
            (b"{not json", "application/json", 400),
            (b'{"object": "page"}', "application/json", 400),
            (b'{"object":"page","entry":[]}', "text/plain", 415),
            (b'{"object":"page","entry":[]}', "application/json", 403),
            (b"x" * (64 * 1024 + 1), "application/json", 413),
        ],
        ids=["not-json", "no-entry", "content-type", "no-page", "too-big"],
    )
    async def test_bodies_that_are_not_callbacks(
        self, intake: Intake, raw: bytes, content_type: str, status: int
    ) -> None:
        """Malformed JSON or shape is a 400, another content type 415, a body naming no page
        403 (no link can vouch for it), a body over the limit 413: problems, nothing kept."""
        before = intake.rows()
        headers = {
            "Content-Type": content_type,
            "X-Hub-Signature-256": "sha256=" + sign(APP_SECRET, raw),
        }
        response = await intake.http.post("/channels/messenger", content=raw, headers=headers)
        assert response.status_code == status
        assert set(response.json()) >= {"type", "title", "detail", "instance"}
        assert intake.rows() == before


class TestMessenger:
    """Messenger deliveries, reads and inbound messages."""

    async def test_a_delivery_changes_the_status_and_sends_the_status_webhook(
        self, intake: Intake
    ) -> None:
        """A signed delivery naming the mid makes the message delivered, queues its status
        webhook and answers 200."""
        message_id, mid = await intake.messenger_message()
        document = messenger_body({"delivery": {"mids": [mid], "watermark": 1}, "timestamp": 5})
        response = await intake.meta("/channels/messenger", document, APP_SECRET)
        assert response.status_code == 200
        assert await intake.status(message_id) == "delivered"
        hooks = await intake.webhooks(WebhookKind.STATUS)
        assert status_bodies(hooks) == [(message_id, "submitted"), (message_id, "delivered")]

    async def test_a_repeated_callback_changes_nothing_twice(self, intake: Intake) -> None:
        """The same delivery three times (and its mid listed twice): one delivered event, one
        status webhook."""
        message_id, mid = await intake.messenger_message()
        document = messenger_body({"delivery": {"mids": [mid, mid], "watermark": 1}})
        for _ in range(3):
            assert (
                await intake.meta("/channels/messenger", document, APP_SECRET)
            ).status_code == 200
        hooks = await intake.webhooks(WebhookKind.STATUS)
        assert status_bodies(hooks) == [(message_id, "submitted"), (message_id, "delivered")]
        workflow = await intake.store.find_message(message_id)
        assert workflow is not None
        record = await intake.store.get_workflow(intake.tenant.account.id, workflow.workflow_id)
        assert record is not None
        assert [e.status for e in record.events if e.kind == "status"].count("delivered") == 1

    async def test_a_read_watermark_covers_every_earlier_message(self, intake: Intake) -> None:
        """Two messages sent before the watermark become read (neither was reported
        delivered); one sent after it stays submitted until a later watermark."""
        first, _ = await intake.messenger_message()
        intake.clock.advance(1)
        second, _ = await intake.messenger_message()
        mark = int(intake.clock.now() * 1000)
        intake.clock.advance(10)
        later, _ = await intake.messenger_message()
        read = messenger_body({"read": {"watermark": mark}, "timestamp": mark + 100})
        assert (await intake.meta("/channels/messenger", read, APP_SECRET)).status_code == 200
        assert [await intake.status(m) for m in (first, second, later)] == [
            "read",
            "read",
            "submitted",
        ]
        delivered = messenger_body({"delivery": {"watermark": int(intake.clock.now() * 1000)}})
        assert (await intake.meta("/channels/messenger", delivered, APP_SECRET)).status_code == 200
        assert [await intake.status(m) for m in (first, second, later)] == [
            "read",
            "read",
            "delivered",
        ]

    async def test_an_inbound_message_reaches_the_pages_account(self, intake: Intake) -> None:
        """A user's text becomes one inbound webhook to the page's account in the v0.1 shape,
        however often Messenger sends it."""
        document = messenger_body(
            {"message": {"mid": "m_in", "text": "hello"}, "timestamp": 1_900_000_000_000}
        )
        for _ in range(2):
            assert (
                await intake.meta("/channels/messenger", document, APP_SECRET)
            ).status_code == 200
        (hook,) = await intake.webhooks(WebhookKind.INBOUND)
        assert hook.url == "https://hooks.example/in"
        assert [job.kind for job in await intake.store.pending_jobs(str(hook.id))] == ["webhook"]
        body = msgspec.json.decode(hook.body)
        assert body["to"] == {"type": "messenger", "id": PAGE}
        assert body["from"] == {"type": "messenger", "id": PSID}
        assert body["message"] == {"content": {"type": "text", "text": "hello"}}
        assert body["timestamp"] == "2030-03-17T17:46:40.000Z"


class TestWhatsApp:
    """WhatsApp statuses and inbound messages."""

    async def test_read_before_delivered_and_the_late_delivered(self, intake: Intake) -> None:
        """A read without delivered makes the message read; the delivered that follows
        changes nothing (one webhook per change)."""
        message_id, wamid = await intake.whatsapp_message()
        statuses = [
            {
                "id": wamid,
                "status": "read",
                "timestamp": "1900000010",
                "recipient_id": "16505551234",
            },
            {
                "id": wamid,
                "status": "delivered",
                "timestamp": "1900000005",
                "recipient_id": "16505551234",
            },
        ]
        response = await intake.meta(
            "/channels/whatsapp", whatsapp_body({"statuses": statuses}), WA_SECRET
        )
        assert response.status_code == 200
        assert await intake.status(message_id) == "read"
        hooks = await intake.webhooks(WebhookKind.STATUS)
        assert status_bodies(hooks) == [(message_id, "submitted"), (message_id, "read")]

    async def test_failed_is_rejected_with_its_code(self, intake: Intake) -> None:
        """A failed status with errors[] rejects the message with the mapped code and
        WhatsApp's words, in the status webhook too."""
        message_id, wamid = await intake.whatsapp_message()
        error = {"code": 131047, "title": "Re-engagement message", "error_data": {"details": "24h"}}
        failed = {"id": wamid, "status": "failed", "timestamp": "1900000001", "errors": [error]}
        response = await intake.meta(
            "/channels/whatsapp", whatsapp_body({"statuses": [failed]}), WA_SECRET
        )
        assert response.status_code == 200
        message = await intake.store.find_message(message_id)
        assert message is not None
        assert (message.status, message.error_code) == ("rejected", 1340)
        assert message.error_reason == "WhatsApp error 131047: Re-engagement message (24h)"
        last = msgspec.json.decode((await intake.webhooks(WebhookKind.STATUS))[-1].body)
        assert last["error"] == {"code": 1340, "reason": message.error_reason}

    async def test_an_inbound_message_reaches_the_linked_accounts_inbound_webhook(
        self, intake: Intake
    ) -> None:
        """A user's text to the number is one inbound webhook of the number's account, from
        the user's number to the linked number; the same wamid again adds none."""
        incoming = {
            "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "16505551234"}],
            "messages": [
                {
                    "from": "16505551234",
                    "id": "wamid.IN1",
                    "timestamp": "1900000000",
                    "type": "text",
                    "text": {"body": "Is my order on its way?"},
                }
            ],
        }
        for _ in range(2):
            response = await intake.meta("/channels/whatsapp", whatsapp_body(incoming), WA_SECRET)
            assert response.status_code == 200
        (hook,) = await intake.webhooks(WebhookKind.INBOUND)
        assert hook.account_id == intake.tenant.account.id
        body = msgspec.json.decode(hook.body)
        assert body["from"] == {"type": "whatsapp", "number": "16505551234"}
        assert body["to"] == {"type": "whatsapp", "number": WA_NUMBER}
        assert body["message"]["content"] == {"type": "text", "text": "Is my order on its way?"}
        uuid.UUID(body["message_uuid"])


class TestViber:
    """Viber receipts, inbound messages and the probe."""

    async def test_delivered_then_seen_by_either_path(self, intake: Intake) -> None:
        """Delivered to /channels/viber (the bot found by its token) and seen to
        /channels/viber/{bot} move the message to delivered, then read."""
        message_id, token = await intake.viber_message()
        delivered = {
            "event": "delivered",
            "timestamp": 1,
            "message_token": int(token),
            "user_id": "u",
        }
        assert (await intake.viber(delivered)).status_code == 200
        assert await intake.status(message_id) == "delivered"
        seen = {**delivered, "event": "seen"}
        assert (await intake.viber(seen, path=f"/channels/viber/{BOT}")).status_code == 200
        assert await intake.status(message_id) == "read"

    async def test_failed_is_rejected(self, intake: Intake) -> None:
        """Failed rejects the message with code 1260 and Viber's description."""
        message_id, token = await intake.viber_message()
        failed = {
            "event": "failed",
            "timestamp": 1,
            "message_token": int(token),
            "desc": "no device",
        }
        assert (await intake.viber(failed)).status_code == 200
        message = await intake.store.find_message(message_id)
        assert message is not None
        assert (message.status, message.error_code, message.error_reason) == (
            "rejected",
            1260,
            "Viber: no device",
        )

    async def test_the_probe_and_subscriptions_are_answered_and_record_nothing(
        self, intake: Intake
    ) -> None:
        """The webhook probe and the subscription events get 200 and leave no row."""
        before = intake.rows()
        for event in ("webhook", "subscribed", "unsubscribed", "conversation_started"):
            response = await intake.viber({"event": event, "timestamp": 1, "message_token": 2})
            assert response.status_code == 200
        assert intake.rows() == before

    async def test_an_inbound_message_reaches_the_bots_account(self, intake: Intake) -> None:
        """A user's message is one inbound webhook to the bot's account."""
        message = {
            "event": "message",
            "timestamp": 1457764197627,
            "message_token": 4912661846655238145,
            "sender": {"id": "01234567890A=", "name": "John"},
            "message": {"type": "text", "text": "hi bot"},
        }
        assert (await intake.viber(message)).status_code == 200
        (hook,) = await intake.webhooks(WebhookKind.INBOUND)
        body = msgspec.json.decode(hook.body)
        assert body["from"] == {"type": "viber_service_msg", "id": "01234567890A="}
        assert body["to"] == {"type": "viber_service_msg", "id": BOT}


class TestWithoutEngine:
    """An API process without an engine (CASCADE_RUN_WORKER=false)."""

    async def test_a_receipt_is_stored_before_the_200_and_applied_by_an_engine(
        self, tmp_path: Any
    ) -> None:
        """The delivery is kept in the store when the 200 goes; the engine's sweep applies
        it, and the message is delivered."""
        async for intake in open_intake(tmp_path, with_engine=False):
            message_id, mid = await intake.messenger_message()
            document = messenger_body({"delivery": {"mids": [mid], "watermark": 1}})
            before = intake.rows()["orphan_receipts"]
            assert (
                await intake.meta("/channels/messenger", document, APP_SECRET)
            ).status_code == 200
            assert intake.rows()["orphan_receipts"] == before + 1
            assert await intake.status(message_id) == "submitted"
            assert await intake.engine.match_orphans() == 1
            assert await intake.status(message_id) == "delivered"
            assert intake.rows()["orphan_receipts"] == before


class TestAccounts:
    """Two accounts, each with its own page."""

    async def test_each_pages_inbound_goes_to_its_own_account(self, intake: Intake) -> None:
        """A message to another account's page goes to that account, not the first one's,
        and is checked with that page's own app secret."""
        other = await make_tenant(intake.store, intake.clock)
        second_page = link(
            other,
            LinkedChannel.MESSENGER,
            "209876543210987",
            page_access_token="t2",
            app_secret="second-secret",
        )
        await intake.store.add_channel_link(second_page)
        document = messenger_body(
            {"message": {"mid": "m_2", "text": "hey"}}, page="209876543210987"
        )
        assert (await intake.meta("/channels/messenger", document, APP_SECRET)).status_code == 403
        assert (
            await intake.meta("/channels/messenger", document, "second-secret")
        ).status_code == 200
        assert await intake.webhooks(WebhookKind.INBOUND) == []
        (hook,) = await intake.store.list_webhooks(account_id=other.account.id)
        assert hook.kind == WebhookKind.INBOUND


class RecordingLog:
    """Stands in for the intake module's logger and keeps every line, at any level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        """A recorder for any level (info, warning, debug...)."""

        def record(event: str, **values: Any) -> None:
            """Keep one line."""
            self.lines.append((event, values))

        return record


class TestLogging:
    """What intake writes to the log."""

    async def test_no_body_and_no_secret_reach_the_log(
        self, intake: Intake, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Refused, taken and handshake lines name the channel and why, never a body's text, a
        signature or a secret."""
        recorded = RecordingLog()
        monkeypatch.setattr(intake_module, "log", recorded)
        marker = "TOP-SECRET-CONTENT"
        document = messenger_body({"message": {"mid": "m_log", "text": marker}})
        await intake.meta("/channels/messenger", document, "forged-secret")
        await intake.meta("/channels/messenger", document, APP_SECRET)
        stranger = messenger_body({"message": {"mid": "m_s", "text": marker}}, page="31337")
        await intake.meta("/channels/messenger", stranger, APP_SECRET)
        query = {"hub.mode": "subscribe", "hub.verify_token": "m-verify", "hub.challenge": "7"}
        await intake.http.get("/channels/messenger", params=query)
        await intake.viber({"event": "seen", "message_token": 1, "timestamp": 1}, token="forged")
        text = repr(recorded.lines)
        assert [event for event, _ in recorded.lines].count("intake.refused") == 3
        for secret in (
            marker,
            APP_SECRET,
            "m-verify",
            BOT_TOKEN,
            "forged-secret",
            sign(APP_SECRET, msgspec.json.encode(document)),
        ):
            assert secret not in text


class TestWithTheFakePlatforms:
    """The callbacks of the test peers (tests/peers), as the platforms send them, over real
    HTTP on 127.0.0.1: the shapes and signatures both sides use agree."""

    async def test_messenger_handshake_and_delivery_from_the_fake_graph(
        self, intake: Intake
    ) -> None:
        """The fake Graph's handshake gets its challenge back; its signed delivery makes the
        message delivered."""
        message_id, mid = await intake.messenger_message()
        async with served(intake) as url, FakeGraph() as graph:
            graph.add_page(PAGE, "page-token", APP_SECRET)
            graph.callback_url = f"{url}/channels/messenger"
            assert await graph.subscribe("m-verify") == (200, True)
            assert await graph.subscribe("not-the-token") == (403, False)
            assert await graph.messenger_delivery(PAGE, PSID, [mid]) == 200
        assert await intake.status(message_id) == "delivered"

    async def test_whatsapp_failed_and_inbound_from_the_fake_graph(self, intake: Intake) -> None:
        """The fake Graph's failed status rejects the message with 1300; its inbound text
        reaches the account's inbound webhook."""
        message_id, wamid = await intake.whatsapp_message()
        async with served(intake) as url, FakeGraph() as graph:
            graph.add_number(WA_NUMBER_ID, WA_NUMBER, "wa-token", WA_SECRET)
            graph.callback_url = f"{url}/channels/whatsapp"
            status = await graph.whatsapp_status(WA_NUMBER_ID, wamid, "16505551234", "failed")
            assert status == 200
            wamid_in = await graph.whatsapp_inbound(WA_NUMBER_ID, "16505551234", "hello")
        message = await intake.store.find_message(message_id)
        assert message is not None
        assert (message.status, message.error_code) == ("rejected", 1300)
        (hook,) = await intake.webhooks(WebhookKind.INBOUND)
        assert msgspec.json.decode(hook.body)["message"]["content"]["text"] == "hello"
        assert wamid_in.startswith("wamid.")

    async def test_viber_probe_and_seen_from_the_fake_viber(self, intake: Intake) -> None:
        """Setting the webhook on the fake Viber succeeds (its probe is answered 200), and its
        signed seen makes the message read."""
        message_id, token = await intake.viber_message()
        async with served(intake) as url, FakeViber() as bots:
            bots.add_bot(BOT_TOKEN, BOT, "Acme")
            async with httpx.AsyncClient(trust_env=False) as http:
                answer = await http.post(
                    f"{bots.url}/pa/set_webhook",
                    json={"url": f"{url}/channels/viber/{BOT}"},
                    headers={"X-Viber-Auth-Token": BOT_TOKEN},
                )
            assert answer.json()["status"] == 0
            assert await bots.event(BOT_TOKEN, "seen", int(token), VIBER_USER) == 200
        assert await intake.status(message_id) == "read"


@asynccontextmanager
async def served(intake: Intake) -> AsyncIterator[str]:
    """The intake's app served over HTTP on 127.0.0.1; its base URL."""
    server = LoopbackServer(intake.app)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


async def test_an_inbound_message_of_an_all_v1_account_is_in_the_v1_shape(intake: Intake) -> None:
    """Once every application of the account is set to webhook_version v1, a platform's
    inbound message becomes a flat v1 inbound webhook (channel, to/from strings, text)."""
    await intake.store.update_application(intake.tenant.application.id, webhook_version="v1")
    incoming = {
        "messages": [
            {
                "from": "16505551234",
                "id": "wamid.IN-V1",
                "timestamp": "1900000000",
                "type": "text",
                "text": {"body": "Is my order on its way?"},
            }
        ],
    }
    response = await intake.meta("/channels/whatsapp", whatsapp_body(incoming), WA_SECRET)
    assert response.status_code == 200
    (hook,) = await intake.webhooks(WebhookKind.INBOUND)
    body = msgspec.json.decode(hook.body)
    assert (body["channel"], body["from"], body["to"]) == ("whatsapp", "16505551234", WA_NUMBER)
    assert (body["message_type"], body["text"]) == ("text", "Is my order on its way?")
    uuid.UUID(body["message_uuid"])
