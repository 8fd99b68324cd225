"""The official Vonage Python SDK (``vonage`` 4.x), unchanged, against Cascade over HTTPS.

One real ``cascade serve`` per module, on 127.0.0.1 with a self-signed certificate this module
makes (trusted through ``REQUESTS_CA_BUNDLE``, which the SDK's ``requests`` session honours),
its engine on the sandbox (20 times faster), and a webhook receiver on 127.0.0.1. The account
and an application whose webhooks are v1 are made with ``cascade app create --webhook-version
v1``; a WhatsApp business number is linked with ``cascade channel add whatsapp``, and the fake
Graph (tests/peers/graph.py, on a thread of its own) is its Cloud API: it posts the users'
messages to Cascade's intake over HTTPS and takes the read marks. The SDK's user changes only
the host (``HttpClientOptions(api_host=...)``), the CA and the credentials; everything else is
what they would write against Vonage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from typer.testing import CliRunner
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import AuthenticationError, HttpRequestError, NotFoundError
from vonage_jwt import verify_signature
from vonage_messages.models import RcsText, ReplyingIndicatorText, Sms, WhatsappText

from cascade import cli
from cascade.sealing import Sealer
from tests.api.test_connections import free_port
from tests.peers.graph import FakeGraph
from tests.peers.server import CallbackClient
from tests.tls import make_certificate

CASCADE = str(Path(sys.executable).with_name("cascade"))
#: how long a test waits for the webhooks a request causes
PATIENCE = 10.0
V1_STATUS_FIELDS = {"message_uuid", "to", "from", "timestamp", "status", "channel"}
OLYMPUS = "https://developer.nexmo.com/api-errors/messages-olympus"
#: the WhatsApp business number the account links, as the fake Graph knows it
WA_NUMBER = "447700900200"
WA_NUMBER_ID = "106540352242922"
WA_TOKEN = "EAAG-sdk-system-user-token"
WA_SECRET = "sdk-whatsapp-app-secret"


@dataclass
class Hook:
    """One webhook as the receiver got it."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 that answers 204 and records every POST."""

    server: ThreadingHTTPServer
    hooks: list[Hook] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, wanted: Callable[[list[Hook]], list[Hook]], count: int) -> list[Hook]:
        """The hooks ``wanted`` picks, once there are ``count`` of them (fails after PATIENCE)."""
        deadline = time.monotonic() + PATIENCE
        while True:
            with self.lock:
                picked = wanted(list(self.hooks))
            if len(picked) >= count or time.monotonic() > deadline:
                assert len(picked) == count, [hook.json() for hook in picked]
                return picked
            time.sleep(0.02)


def start_receiver() -> Receiver:
    """A receiver listening on a thread of its own."""
    hooks: list[Hook] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        """Records a POST and answers 204."""

        def do_POST(self) -> None:
            """Record the request; answer 204 No Content."""
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                hooks.append(Hook(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what arrived, not a log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Receiver(server, hooks, lock)


@dataclass
class Platform:
    """The fake Graph on an event loop of its own thread (the SDK is synchronous)."""

    graph: FakeGraph
    loop: asyncio.AbstractEventLoop

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run ``work`` on the fake's loop; its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(PATIENCE)

    def read_marks(self) -> list[Any]:
        """The mark-as-read requests the fake received."""
        return [r for r in list(self.graph.received) if r.api == "whatsapp_read"]


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    """The fake Graph serving on 127.0.0.1, with the business number the account links."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def up() -> FakeGraph:
        graph = await FakeGraph().__aenter__()
        graph.add_number(WA_NUMBER_ID, WA_NUMBER, WA_TOKEN, WA_SECRET)
        return graph

    fake = Platform(asyncio.run_coroutine_threadsafe(up(), loop).result(PATIENCE), loop)
    try:
        yield fake
    finally:
        fake.run(fake.graph.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(PATIENCE)
        loop.close()


@dataclass
class Cascade:
    """The running service and what an SDK user has: host, CA, credentials."""

    host: str
    ca: Path
    application_id: str
    private_key: Path
    api_key: str
    api_secret: str
    signature_secret: str
    receiver: Receiver

    def jwt_client(self) -> Vonage:
        """The SDK as a JWT user makes it, pointed at Cascade."""
        return Vonage(
            Auth(application_id=self.application_id, private_key=str(self.private_key)),
            HttpClientOptions(api_host=self.host),
        )

    def basic_client(self, secret: str | None = None) -> Vonage:
        """The SDK as a Basic-auth user makes it, pointed at Cascade."""
        return Vonage(
            Auth(api_key=self.api_key, api_secret=secret or self.api_secret),
            HttpClientOptions(api_host=self.host),
        )

    def get(self, path: str) -> Any:
        """GET a read endpoint over HTTPS with Basic auth; the JSON answer."""
        response = httpx.get(
            f"https://{self.host}{path}",
            auth=(self.api_key, self.api_secret),
            verify=ssl.create_default_context(cafile=self.ca),
        )
        assert response.status_code == 200, response.text
        return response.json()

    def statuses(self, *message_uuids: str, count: int) -> list[dict[str, Any]]:
        """The status webhooks of these messages, once ``count`` arrived, each verified as a
        Vonage receiver verifies one (vonage_jwt, then the body's payload_hash)."""
        wanted = set(message_uuids)

        def pick(hooks: list[Hook]) -> list[Hook]:
            return [hook for hook in hooks if hook.json().get("message_uuid") in wanted]

        hooks = self.receiver.wait_for(pick, count)
        for hook in hooks:
            verify(hook, self.signature_secret)
        return [hook.json() for hook in hooks]


def verify(hook: Hook, secret: str) -> dict[str, Any]:
    """Check a webhook with vonage_jwt and its payload_hash claim; its claims."""
    token = hook.headers["authorization"].removeprefix("Bearer ")
    assert verify_signature(token, secret) is True
    claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["payload_hash"] == hashlib.sha256(hook.body).hexdigest()
    return claims


def _credentials(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory, platform: Platform) -> Iterator[Cascade]:
    """``cascade serve`` over HTTPS with the engine, an account and a v1 application whose
    webhooks go to a receiver, and a WhatsApp number linked on the fake Graph, which posts its
    callbacks to Cascade trusting the module's certificate; REQUESTS_CA_BUNDLE names the
    certificate for the module."""
    directory = tmp_path_factory.mktemp("sdk")
    cert, key = make_certificate(directory)
    receiver = start_receiver()
    database = f"sqlite:///{directory / 'cascade.db'}"
    channel_key = Sealer.generate_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADE_", "REQUESTS_"))}
    runner = CliRunner(
        env={
            **{k: None for k in os.environ if k.startswith("CASCADE_")},
            "CASCADE_CHANNEL_KEY": channel_key,
        }
    )
    created = runner.invoke(
        cli.app,
        [
            "app",
            "create",
            "sdk",
            "--webhook-version",
            "v1",
            "--status-url",
            f"{receiver.url}/app-status",
            "--private-key-file",
            str(directory / "sdk.key"),
            "--json",
            "--database",
            database,
        ],
    )
    assert created.exit_code == 0, (created.stdout, created.stderr)
    application = json.loads(created.stdout)
    account_set = runner.invoke(
        cli.app,
        [
            "account",
            "set",
            "--status-url",
            f"{receiver.url}/account-status",
            "--inbound-url",
            f"{receiver.url}/inbound",
            "-d",
            database,
        ],
    )
    assert account_set.exit_code == 0, account_set.stderr
    linked = runner.invoke(
        cli.app,
        [
            "channel",
            "add",
            "whatsapp",
            "--number",
            WA_NUMBER,
            "--phone-number-id",
            WA_NUMBER_ID,
            "--business-account-id",
            "102290129340398",
            "--access-token",
            WA_TOKEN,
            "--app-secret",
            WA_SECRET,
            "--database",
            database,
        ],
    )
    assert linked.exit_code == 0, (linked.stdout, linked.stderr)
    credentials = _credentials(directory / "cascade.db.credentials")
    port = free_port()
    env.update(
        CASCADE_DATABASE_URL=database,
        CASCADE_SQLITE_SYNCHRONOUS="NORMAL",
        CASCADE_SANDBOX_SPEED="20",
        CASCADE_LOG_FORMAT="json",
        CASCADE_CHANNEL_KEY=channel_key,
        CASCADE_GRAPH_BASE_URL=platform.graph.url,
        CASCADE_GRAPH_API_VERSION=platform.graph.version,
    )
    trust = ssl.create_default_context(cafile=cert)
    log = directory / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                CASCADE,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ssl-certfile",
                str(cert),
                "--ssl-keyfile",
                str(key),
            ],
            env=env,
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                health = httpx.get(f"https://127.0.0.1:{port}/health", verify=trust, timeout=1)
                if health.status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("cascade serve did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.05)
        platform.graph.callback_url = f"https://127.0.0.1:{port}/channels/whatsapp"
        platform.graph.callbacks = CallbackClient(verify=trust)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("REQUESTS_CA_BUNDLE", str(cert))
            yield Cascade(
                host=f"127.0.0.1:{port}",
                ca=cert,
                application_id=application["application_id"],
                private_key=Path(application["private_key_file"]),
                api_key=credentials["CASCADE_API_KEY"],
                api_secret=credentials["CASCADE_API_SECRET"],
                signature_secret=credentials["CASCADE_SIGNATURE_SECRET"],
                receiver=receiver,
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        receiver.server.shutdown()


def test_plain_http_clients_are_refused_and_https_ones_served(cascade: Cascade) -> None:
    """Cascade speaks only TLS on its port once given a certificate: the SDK's https URLs
    reach it, and the certificate is the one the module trusts."""
    trust = ssl.create_default_context(cafile=cascade.ca)
    response = httpx.get(f"https://{cascade.host}/health", verify=trust)
    assert response.json() == {"status": "ok"}
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{cascade.host}/health", timeout=2)


def test_an_sms_sent_with_a_jwt_is_accepted_and_reported_in_v1(cascade: Cascade) -> None:
    """messages.send(Sms(...)) with application credentials answers a message_uuid; its
    status webhooks go to the application's URL in the v1 shape and verify with vonage_jwt."""
    sent = cascade.jwt_client().messages.send(
        Sms(to="447700900000", from_="Acme", text="Your code is 1234", client_ref="sdk-1")
    )
    assert sent.workflow_id is None
    submitted, delivered = cascade.statuses(sent.message_uuid, count=2)
    assert (submitted["status"], delivered["status"]) == ("submitted", "delivered")
    for status in (submitted, delivered):
        assert set(status) >= V1_STATUS_FIELDS
        assert (status["channel"], status["to"], status["from"]) == ("sms", "447700900000", "Acme")
        assert status["client_ref"] == "sdk-1"
        assert "workflow" not in status
    assert submitted["usage"] == {"currency": "EUR", "price": "0.0333"}
    hooks = [h for h in cascade.receiver.hooks if h.json().get("message_uuid") == sent.message_uuid]
    assert {hook.path for hook in hooks} == {"/app-status"}
    assert verify(hooks[0], cascade.signature_secret)["application_id"] == cascade.application_id


def test_whatsapp_fails_over_to_the_second_sms_after_the_first_is_rejected(
    cascade: Cascade,
) -> None:
    """send(WhatsappText(...), failover=[Sms, Sms]): the WhatsApp message is undeliverable,
    the first SMS rejected, the second delivered. The answer carries workflow_id, each
    status webhook names the workflow and the message's place in it, and GET
    /v0.1/dispatch/{workflow_id} shows the three steps and the failovers on the timeline."""
    sent = cascade.jwt_client().messages.send(
        WhatsappText(to="447700900004", from_="447700900100", text="Your code is 1234"),
        failover=[
            Sms(to="447700900001", from_="Acme", text="Your code is 1234"),
            Sms(to="447700900000", from_="Acme", text="Your code is 1234"),
        ],
    )
    assert sent.workflow_id is not None
    view = cascade.get(f"/v0.1/dispatch/{sent.workflow_id}")
    ids = [step["message_uuid"] for step in view["steps"]]
    assert ids[0] == sent.message_uuid
    statuses = cascade.statuses(*ids, count=4)
    assert [(s["message_uuid"], s["status"], s["channel"]) for s in statuses] == [
        (ids[0], "undeliverable", "whatsapp"),
        (ids[1], "rejected", "sms"),
        (ids[2], "submitted", "sms"),
        (ids[2], "delivered", "sms"),
    ]
    assert statuses[0]["error"] == {
        "type": f"{OLYMPUS}#1100",
        "title": "1100",
        "detail": "Communication failed",
        "instance": statuses[0]["error"]["instance"],
    }
    assert statuses[1]["error"]["title"] == "1300"
    assert [s["workflow"]["item_number"] for s in statuses] == ["1", "2", "3", "3"]
    assert {s["workflow"]["id"] for s in statuses} == {sent.workflow_id}
    assert {s["workflow"]["items_number"] for s in statuses} == {"3"}
    done = cascade.get(f"/v0.1/dispatch/{sent.workflow_id}")
    assert done["status"] == "completed"
    assert [step["status"] for step in done["steps"]] == ["undeliverable", "rejected", "delivered"]
    assert [entry["event"] for entry in done["timeline"]].count("failover") == 2


def test_basic_auth_sends_and_a_message_may_ask_for_v1_webhooks_itself(
    cascade: Cascade,
) -> None:
    """With API key and secret the SDK sends Basic auth; without an application the status
    webhooks go to the account's URL, in v1 because the message asks for it."""
    sent = cascade.basic_client().messages.send(
        Sms(to="447700900002", from_="Acme", text="Basic", webhook_version="v1")
    )
    submitted, delivered = cascade.statuses(sent.message_uuid, count=2)
    assert (submitted["status"], delivered["status"]) == ("submitted", "delivered")
    assert submitted["to"] == "447700900002"
    hooks = [h for h in cascade.receiver.hooks if h.json().get("message_uuid") == sent.message_uuid]
    assert {hook.path for hook in hooks} == {"/account-status"}
    assert "application_id" not in verify(hooks[0], cascade.signature_secret)


def test_a_request_cascade_refuses_raises_the_sdks_error_with_v1s_fields(
    cascade: Cascade,
) -> None:
    """A text over the SMS limit reaches the caller as the SDK's HttpRequestError holding v1's
    422 problem: type, title, detail, instance and the bad field."""
    with pytest.raises(HttpRequestError) as raised:
        cascade.jwt_client().messages.send(Sms(to="447700900000", from_="Acme", text="x" * 1001))
    assert type(raised.value) is HttpRequestError
    response = raised.value.response
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == f"{OLYMPUS}#1020"
    assert problem["title"] == "Invalid params"
    assert problem["detail"]
    assert problem["instance"]
    assert [p["name"] for p in problem["invalid_parameters"]] == ["text"]
    assert "422 response from" in raised.value.message


def test_a_channel_cascade_does_not_offer_is_a_v1_unsupported_channel(cascade: Cascade) -> None:
    """An RCS message is refused as v1 refuses a channel it does not support (422, 1400)."""
    with pytest.raises(HttpRequestError) as raised:
        cascade.jwt_client().messages.send(RcsText(to="447700900000", from_="agent", text="hi"))
    assert raised.value.response.status_code == 422
    problem = raised.value.response.json()
    assert (problem["title"], problem["type"]) == ("Unsupported channel", f"{OLYMPUS}#1400")


def test_wrong_credentials_raise_the_sdks_authentication_error(cascade: Cascade) -> None:
    """A wrong API secret raises AuthenticationError carrying v1's 401 problem."""
    with pytest.raises(AuthenticationError) as raised:
        cascade.basic_client("not-the-secret").messages.send(
            Sms(to="447700900000", from_="Acme", text="hi")
        )
    problem = raised.value.response.json()
    assert raised.value.response.status_code == 401
    assert problem["title"] == "You did not provide correct credentials."
    assert set(problem) >= {"type", "title", "detail", "instance"}


def test_an_inbound_whatsapp_message_is_marked_read_through_the_sdk(
    cascade: Cascade, platform: Platform
) -> None:
    """A user's WhatsApp message comes in through the fake Graph and reaches the inbound URL
    (v1, signed); messages.mark_whatsapp_message_read(its uuid) returns as against Vonage, and
    the fake Graph saw the read mark of its wamid with the number's token; with a replying
    indicator (and Basic auth), the typing indicator too."""
    wamid = platform.run(platform.graph.whatsapp_inbound(WA_NUMBER_ID, "447700900123", "Shipped?"))
    assert platform.graph.callbacks.sent[-1].status == 200

    def pick(hooks: list[Hook]) -> list[Hook]:
        return [h for h in hooks if h.path == "/inbound" and h.json().get("text") == "Shipped?"]

    (hook,) = cascade.receiver.wait_for(pick, 1)
    verify(hook, cascade.signature_secret)
    inbound = hook.json()
    assert (inbound["channel"], inbound["to"]) == ("whatsapp", WA_NUMBER)
    message_uuid = inbound["message_uuid"]
    assert cascade.jwt_client().messages.mark_whatsapp_message_read(message_uuid) is None
    cascade.basic_client().messages.mark_whatsapp_message_read(
        message_uuid, ReplyingIndicatorText(show=True)
    )
    first, second = platform.read_marks()
    for mark in (first, second):
        assert mark.status == 200
        assert mark.path == f"/{platform.graph.version}/{WA_NUMBER_ID}/messages"
        assert mark.headers["authorization"] == f"Bearer {WA_TOKEN}"
        assert (mark.body["status"], mark.body["message_id"]) == ("read", wamid)
    assert "typing_indicator" not in first.body
    assert second.body["typing_indicator"] == {"type": "text"}


def test_marking_a_message_cascade_does_not_have_raises_the_sdks_not_found(
    cascade: Cascade, platform: Platform
) -> None:
    """A uuid the account has no message of raises the SDK's NotFoundError with the 404
    problem; Graph is not asked."""
    before = len(platform.read_marks())
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFoundError) as raised:
        cascade.jwt_client().messages.mark_whatsapp_message_read(unknown)
    assert unknown in raised.value.response.json()["detail"]
    assert len(platform.read_marks()) == before


def test_revoking_an_rcs_message_raises_the_sdks_error_saying_it_is_not_offered(
    cascade: Cascade,
) -> None:
    """revoke_rcs_message raises the SDK's HttpRequestError holding v1's 422 problem: an
    unsupported channel, saying Cascade has no RCS; never a 404."""
    with pytest.raises(HttpRequestError) as raised:
        cascade.jwt_client().messages.revoke_rcs_message(str(uuid.uuid4()))
    assert type(raised.value) is HttpRequestError
    assert raised.value.response.status_code == 422
    problem = raised.value.response.json()
    assert (problem["title"], problem["type"]) == ("Unsupported channel", f"{OLYMPUS}#1400")
    assert "RCS" in problem["detail"]
    assert set(problem) >= {"type", "title", "detail", "instance"}
