"""The dashboard in a real browser: a new user signs in, sets a webhook URL, creates an
application and downloads its key, sends the sample workflow and watches it fail over on its
timeline without reloading, and replays a dead letter; and what the dashboard refuses."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

import httpx
import jwt
from playwright.sync_api import Page, expect

from cascade.dashboard.routes import SIGN_IN_REFUSED
from tests.dashboard.conftest import Hooks, Server

#: where the README's screenshot of the timeline page is kept (written when
#: CASCADE_DOCS_SCREENSHOT=1, by the test that draws it)
DOCS_SCREENSHOT = Path(__file__).parents[2] / "docs" / "dashboard-timeline.png"


def sign_in(page: Page, server: Server, api_key: str, api_secret: str) -> None:
    """Open the dashboard and sign in with an account's key and secret."""
    page.goto(server.url + "/dashboard")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill(api_key)
    page.get_by_label("API secret").fill(api_secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()


def account_json(server: Server, api_key: str) -> dict[str, object]:
    """The account as `cascade account show --json` reads it from the database."""
    shown: dict[str, object] = json.loads(
        server.cascade("account", "show", "--json", "--api-key", api_key)
    )
    return shown


def test_first_failover_in_the_browser(
    page: Page, server: Server, hooks: Hooks, tmp_path: Path
) -> None:
    """Sign in, set the status URL, send the sample workflow and see its failover appear on
    the timeline without a reload (creating an application and downloading its key while the
    window runs), then replay a dead letter once the receiver is fixed."""
    sign_in(page, server, server.api_key, server.api_secret)

    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Status URL").fill(hooks.url)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    assert account_json(server, server.api_key)["status_url"] == hooks.url

    page.get_by_role("link", name="Try it").click()
    page.get_by_label("never answers").check()
    page.get_by_role("spinbutton", name=re.compile("Window")).fill("15")
    page.get_by_role("button", name="Send the sample workflow").click()
    expect(page).to_have_url(re.compile(r"/dashboard/workflows/[0-9a-f-]{36}$"))
    expect(page.locator(".summary")).to_contain_text("running")
    expect(page.get_by_role("heading", name=re.compile("Step 2: sms"))).to_be_visible()
    page.evaluate("window.cascadeNotReloaded = true")

    # while the Messenger step's window runs: an application, its key downloaded once
    other = page.context.new_page()
    other.goto(server.url + "/dashboard/applications")
    other.get_by_label("Name").fill("demo")
    other.get_by_role("button", name="Create").click()
    application_id = other.locator("#created-id").inner_text()
    with other.expect_download() as download:
        other.get_by_role("link", name=re.compile("Download its private key")).click()
    assert download.value.suggested_filename == "demo.key"
    key = Path(download.value.path()).read_bytes()
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")
    token = jwt.encode(
        {"application_id": application_id, "iat": int(time.time()), "jti": str(uuid.uuid4())},
        key,
        algorithm="RS256",
    )
    listed = httpx.get(server.url + "/v0.1/messages", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200  # the stored public key is the downloaded key's
    other.goto(server.url + "/dashboard/applications")  # the key is offered only once
    expect(other.get_by_role("heading", name="demo", exact=True)).to_have_count(1)
    expect(other.get_by_role("link", name=re.compile("Download"))).to_have_count(0)
    other.close()

    failover = page.locator(".failover-note")
    expect(failover).to_contain_text("from step 1 (messenger) to step 2 (sms)", timeout=45_000)
    expect(failover).to_contain_text("did not reach read within 15 s")
    expect(page.locator(".summary")).to_contain_text("completed", timeout=20_000)
    expect(page.locator(".event-failover")).to_have_count(1)
    assert page.evaluate("window.cascadeNotReloaded") is True
    shot = tmp_path / "timeline.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("CASCADE_DOCS_SCREENSHOT") == "1":
        page.set_viewport_size({"width": 1100, "height": 900})
        page.screenshot(path=DOCS_SCREENSHOT, full_page=True)

    page.get_by_role("link", name="Webhooks").click()
    page.get_by_role("link", name="Dead letters").click()
    replay = page.get_by_role("button", name=re.compile(r"Replay #\d+")).first
    expect(replay).to_be_visible()  # the receiver answered 400: dead at once
    hooks.status = 200
    replay.click()
    expect(page.get_by_role("status")).to_contain_text("queued for delivery again")
    assert hooks.accepted.wait(timeout=30), hooks.received


def test_refusals(page: Page, server: Server) -> None:
    """Pages without a session lead to the sign-in; a wrong secret is refused; a form posted
    without its token changes nothing; another account's workflow is not found."""
    page.goto(server.url + "/dashboard/webhooks")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next="))
    live = page.request.get(server.url + "/dashboard/workflows/x?live=1", max_redirects=0)
    assert live.status == 401

    page.get_by_label("API key").fill(server.api_key)
    page.get_by_label("API secret").fill("not-the-secret")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    expect(page.get_by_role("alert")).to_have_text(SIGN_IN_REFUSED)

    page.get_by_label("API secret").fill(server.api_secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard/webhooks$"))  # where it was going
    before = account_json(server, server.api_key)["status_url"]
    forged = page.request.post(
        server.url + "/dashboard/settings", form={"status_url": "http://127.0.0.1:9/forged"}
    )
    assert forged.status == 403
    assert account_json(server, server.api_key)["status_url"] == before

    other = json.loads(server.cascade("account", "create", "--json"))
    sent = httpx.post(
        server.url + "/v0.1/messages",
        headers=server.basic(other["api_key"], other["api_secret"]),
        json={
            "to": {"type": "sms", "number": "447700900000"},
            "from": {"type": "sms", "number": "Other"},
            "message": {"content": {"type": "text", "text": "not yours"}},
        },
    )
    assert sent.status_code == 202
    message = httpx.get(
        server.url + f"/v0.1/messages/{sent.json()['message_uuid']}",
        headers=server.basic(other["api_key"], other["api_secret"]),
    ).json()
    shown = page.goto(server.url + f"/dashboard/workflows/{message['workflow_uuid']}")
    assert shown is not None
    assert shown.status == 404
    expect(page.get_by_role("alert")).to_have_text("No workflow with this id in your account.")
    expect(page.get_by_text("not yours")).to_have_count(0)
