"""Strict validation of the accept API: every bad field named in one 400, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import SharedApi
from tests.api.support import (
    APIS,
    CHANNELS,
    IMAGE_URL,
    MESSAGES,
    WORKFLOW_APIS,
    Api,
    bad_names,
    failover,
    message,
    reasons,
    text,
    workflow,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _image(url: str = IMAGE_URL, caption: str | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"url": url}
    if caption is not None:
        image["caption"] = caption
    return {"type": "image", "image": image}


WHATSAPP_TEMPLATE = {
    "type": "template",
    "template": {"name": "acme:order_ready", "parameters": [{"default": "Ada"}]},
}

#: single messages every surface must accept (wrapped in a one-step workflow for Dispatch)
VALID: list[Any] = [
    *(pytest.param(message(channel), id=f"{channel}-default") for channel in CHANNELS),
    pytest.param(text("messenger", "m" * 640), id="messenger-text-640"),
    pytest.param(text("sms", "s" * 1000), id="sms-text-1000"),
    pytest.param(text("viber_service_msg", "v" * 1000), id="viber-text-1000"),
    pytest.param(text("whatsapp", "w" * 4096), id="whatsapp-text-4096"),
    pytest.param(text("sms", "héllo ✓ unicode"), id="sms-unicode"),
    pytest.param(message("whatsapp", _image("https://e.io/" + "a" * 1987)), id="url-2000"),
    pytest.param(message("messenger", _image(caption="c" * 3000)), id="caption-3000"),
    pytest.param(message("viber_service_msg", _image()), id="viber-image"),
    pytest.param(
        message("whatsapp", {"type": "file", "file": {"url": IMAGE_URL, "caption": "Invoice"}}),
        id="whatsapp-file",
    ),
    pytest.param(
        message("whatsapp", {"type": "custom", "custom": {"type": "location"}}),
        id="whatsapp-custom",
    ),
    pytest.param(
        message("whatsapp", WHATSAPP_TEMPLATE, options={"whatsapp": {"locale": "en-GB"}}),
        id="whatsapp-template-with-locale",
    ),
    pytest.param(
        message(
            "whatsapp",
            WHATSAPP_TEMPLATE,
            options={"whatsapp": {"locale": "en_GB", "policy": "deterministic"}},
        ),
        id="whatsapp-deterministic",
    ),
    pytest.param(
        text("messenger", "hi", options={"messenger": {"category": "message_tag", "tag": "T"}}),
        id="messenger-message-tag",
    ),
    pytest.param(
        text("messenger", "hi", options={"messenger": {"category": "update"}}),
        id="messenger-update",
    ),
    pytest.param(
        text(
            "viber_service_msg",
            "hi",
            options={"viber_service_msg": {"category": "promotion", "ttl": 30}},
        ),
        id="viber-ttl-30",
    ),
    pytest.param(
        text("viber_service_msg", "hi", options={"viber_service_msg": {"ttl": 86400}}),
        id="viber-ttl-86400",
    ),
    pytest.param(
        text("viber_service_msg", "hi", to={"type": "viber_service_msg", "id": "01234567890A="}),
        id="viber-bot-user-id",
    ),
    pytest.param(text("sms", "hi", client_ref="r" * 40), id="client_ref-40"),
    pytest.param(text("sms", "hi", from_={"type": "sms", "number": "Acme"}), id="sms-alpha-from"),
]


@pytest.mark.parametrize("single", VALID)
@pytest.mark.parametrize("api", APIS, ids=str)
async def test_valid_messages_are_accepted(
    api: Api, single: dict[str, Any], shared_api: SharedApi
) -> None:
    """Each channel's documented shapes, at their limits, are accepted on every surface."""
    response, added = await shared_api.post(api.path, api.body(single))
    assert response.status_code == 202, response.text
    assert set(response.json()) == {api.id_field}
    assert added["messages"] == 1


def _over(channel: str, length: int) -> dict[str, Any]:
    return text(channel, "x" * length)


#: single messages every surface must refuse, with the fields each refusal must name
INVALID: list[Any] = [
    pytest.param(
        message("telegram", to={"type": "telegram", "number": "1"}),
        {"to.type", "from.type"},
        id="unknown-channel",
    ),
    pytest.param(
        text("sms", "hi", to={"type": ["sms"], "number": "447700900000"}),
        {"to.type"},
        id="channel-as-array",
    ),
    pytest.param(
        text("sms", "hi", to={"type": "sms", "id": "abc"}), {"to.number", "to.id"}, id="sms-to-id"
    ),
    pytest.param(
        text("sms", "hi", from_={"type": "sms", "id": "abc"}),
        {"from.number", "from.id"},
        id="sms-from-id",
    ),
    pytest.param(
        message("mms", to={"type": "mms", "id": "abc"}), {"to.number", "to.id"}, id="mms-to-id"
    ),
    pytest.param(
        text("whatsapp", "hi", from_={"type": "whatsapp", "id": "waba"}),
        {"from.number", "from.id"},
        id="whatsapp-from-id",
    ),
    pytest.param(
        text("messenger", "hi", to={"type": "messenger", "number": "447700900000"}),
        {"to.id", "to.number"},
        id="messenger-to-number",
    ),
    pytest.param(
        text("viber_service_msg", "hi", from_={"type": "viber_service_msg", "number": "4477"}),
        {"from.id", "from.number"},
        id="viber-from-number",
    ),
    pytest.param(
        text(
            "viber_service_msg",
            "hi",
            to={"type": "viber_service_msg", "id": "user", "number": "447700900000"},
        ),
        {"to.id"},
        id="viber-to-id-and-number",
    ),
    pytest.param(
        text("sms", "hi", to={"type": "sms", "number": "+447700900000"}),
        {"to.number"},
        id="sms-to-plus-number",
    ),
    pytest.param(
        text("sms", "hi", from_={"type": "whatsapp", "number": "447700900001"}),
        {"from.type"},
        id="from-type-differs",
    ),
    pytest.param(message("sms", _image()), {"message.content.type"}, id="image-on-sms"),
    pytest.param(
        message("messenger", WHATSAPP_TEMPLATE),
        {"message.content.type"},
        id="template-on-messenger",
    ),
    pytest.param(
        message("viber_service_msg", {"type": "audio", "audio": {"url": IMAGE_URL}}),
        {"message.content.type"},
        id="audio-on-viber",
    ),
    pytest.param(text("mms", "hi"), {"message.content.type"}, id="text-on-mms"),
    pytest.param(message("sms", {"type": "sticker"}), {"message.content.type"}, id="unknown-type"),
    pytest.param(
        message("sms", {"type": "text"}), {"message.content.text"}, id="text-type-without-text"
    ),
    pytest.param(
        message("whatsapp", {**_image(), "text": "also"}),
        {"message.content.text"},
        id="two-contents",
    ),
    pytest.param(text("sms", ""), {"message.content.text"}, id="empty-text"),
    pytest.param(_over("messenger", 641), {"message.content.text"}, id="messenger-text-641"),
    pytest.param(_over("sms", 1001), {"message.content.text"}, id="sms-text-1001"),
    pytest.param(_over("viber_service_msg", 1001), {"message.content.text"}, id="viber-text-1001"),
    pytest.param(_over("whatsapp", 4097), {"message.content.text"}, id="whatsapp-text-4097"),
    pytest.param(
        message("whatsapp", _image("https://e.io/" + "a" * 1988)),
        {"message.content.image.url"},
        id="url-2001",
    ),
    pytest.param(
        message("messenger", _image(caption="c" * 3001)),
        {"message.content.image.caption"},
        id="caption-3001",
    ),
    pytest.param(
        text("viber_service_msg", "hi", options={"viber_service_msg": {"ttl": 29}}),
        {"message.viber_service_msg.ttl"},
        id="viber-ttl-29",
    ),
    pytest.param(
        text("viber_service_msg", "hi", options={"viber_service_msg": {"ttl": 259201}}),
        {"message.viber_service_msg.ttl"},
        id="viber-ttl-259201",
    ),
    pytest.param(
        text("viber_service_msg", "hi", options={"viber_service_msg": {"category": "news"}}),
        {"message.viber_service_msg.category"},
        id="viber-category",
    ),
    pytest.param(
        text("messenger", "hi", options={"messenger": {"category": "promotion"}}),
        {"message.messenger.category"},
        id="messenger-category",
    ),
    pytest.param(
        text("messenger", "hi", options={"messenger": {"category": "message_tag"}}),
        {"message.messenger.tag"},
        id="messenger-message-tag-without-tag",
    ),
    pytest.param(
        text("whatsapp", "hi", options={"whatsapp": {"policy": "fallback"}}),
        {"message.whatsapp.policy"},
        id="whatsapp-fallback-policy",
    ),
    pytest.param(
        message("whatsapp", WHATSAPP_TEMPLATE), {"message.whatsapp.locale"}, id="template-no-locale"
    ),
    pytest.param(
        text("sms", "hi", options={"messenger": {"category": "update"}}),
        {"message.messenger"},
        id="messenger-options-on-sms",
    ),
    pytest.param(text("sms", "hi", client_ref="r" * 41), {"client_ref"}, id="client_ref-41"),
    pytest.param(text("sms", "hi", callback="https://x"), {"callback"}, id="unknown-top-field"),
    pytest.param(
        message("sms", {"type": "text", "text": "hi", "font": "bold"}),
        {"message.content.font"},
        id="unknown-content-field",
    ),
    pytest.param(
        text("sms", "hi", to={"type": "sms", "number": "447700900000", "name": "Ada"}),
        {"to.name"},
        id="unknown-address-field",
    ),
    pytest.param(
        text("sms", "hi", to={"type": "sms", "number": 447700900000}),
        {"to.number"},
        id="number-as-integer",
    ),
    pytest.param(text("sms", "hi", client_ref=7), {"client_ref"}, id="client_ref-as-integer"),
    pytest.param(
        text("sms", "hi", to={"type": "sms", "number": "4" * 51}), {"to.number"}, id="number-51"
    ),
    pytest.param({"from": message("sms")["from"]}, {"to", "message"}, id="missing-fields"),
]


@pytest.mark.parametrize(("single", "names"), INVALID)
@pytest.mark.parametrize("api", APIS, ids=str)
async def test_invalid_messages_name_every_bad_field(
    api: Api,
    single: dict[str, Any],
    names: set[str],
    shared_api: SharedApi,
) -> None:
    """Each broken rule gets a 400 naming exactly the bad fields, on every surface."""
    response, added = await shared_api.post(api.path, api.body(single))
    assert bad_names(response) == {api.name(name) for name in names}
    assert set(added.values()) == {0}


async def test_several_errors_in_one_message_are_all_listed(shared_api: SharedApi) -> None:
    """Schema errors and channel-rule errors in one body come back together in one 400."""
    body = message(
        "sms",
        _image(),
        to={"type": "sms", "id": "abc"},
        client_ref="r" * 41,
        options={"whatsapp": {"policy": "fallback"}},
        priority="high",
    )
    response, added = await shared_api.post(MESSAGES.path, body, shared_api.tenant.bearer())
    assert bad_names(response) == {
        "to.number",
        "to.id",
        "message.content.type",
        "message.whatsapp",
        "client_ref",
        "priority",
    }
    assert set(added.values()) == {0}


def _step(single: dict[str, Any], fail: dict[str, Any] | None) -> dict[str, Any]:
    return single if fail is None else {**single, "failover": fail}


MESSENGER = text("messenger", "Hi")
SMS = text("sms", "Hi by SMS")

#: Dispatch bodies and what each must name (workflow rules, beyond the single message's)
INVALID_WORKFLOWS: list[Any] = [
    pytest.param(workflow(SMS, template="fallback"), {"template"}, id="template-not-failover"),
    pytest.param({"workflow": [SMS]}, {"template"}, id="template-missing"),
    pytest.param(workflow(), {"workflow"}, id="empty-workflow"),
    pytest.param({"template": "failover", "workflow": SMS}, {"workflow"}, id="workflow-object"),
    pytest.param(
        workflow(_step(MESSENGER, None), SMS),
        {"workflow[0].failover"},
        id="failover-missing-on-first-step",
    ),
    pytest.param(
        workflow(_step(MESSENGER, failover()), _step(SMS, failover())),
        {"workflow[1].failover"},
        id="failover-on-last-step",
    ),
    pytest.param(
        workflow(_step(SMS, failover())), {"workflow[0].failover"}, id="failover-on-only-step"
    ),
    pytest.param(
        workflow(_step(MESSENGER, failover(14)), SMS),
        {"workflow[0].failover.expiry_time"},
        id="expiry_time-14",
    ),
    pytest.param(
        workflow(_step(MESSENGER, failover(86401)), SMS),
        {"workflow[0].failover.expiry_time"},
        id="expiry_time-86401",
    ),
    pytest.param(
        workflow(_step(MESSENGER, failover("600")), SMS),
        {"workflow[0].failover.expiry_time"},
        id="expiry_time-string",
    ),
    pytest.param(
        workflow(_step(MESSENGER, failover(600.5)), SMS),
        {"workflow[0].failover.expiry_time"},
        id="expiry_time-float",
    ),
    pytest.param(
        workflow(_step(MESSENGER, {"expiry_time": 600}), SMS),
        {"workflow[0].failover.condition_status"},
        id="condition_status-missing",
    ),
    pytest.param(
        workflow(_step(MESSENGER, failover(condition_status="seen")), SMS),
        {"workflow[0].failover.condition_status"},
        id="condition_status-unknown",
    ),
    pytest.param(
        workflow(_step(SMS, failover(condition_status="read")), MESSENGER),
        {"workflow[0].failover.condition_status"},
        id="read-on-sms",
    ),
    pytest.param(
        workflow(_step(message("mms"), failover(condition_status="read")), SMS),
        {"workflow[0].failover.condition_status"},
        id="read-on-mms",
    ),
    pytest.param(
        workflow(_step(MESSENGER, {**failover(), "retries": 3}), SMS),
        {"workflow[0].failover.retries"},
        id="unknown-failover-field",
    ),
    pytest.param(
        workflow(
            _step(
                text("viber_service_msg", "hi", options={"viber_service_msg": {"ttl": 86401}}),
                failover(),
            ),
            SMS,
        ),
        {"workflow[0].message.viber_service_msg.ttl"},
        id="viber-ttl-over-dispatch-ceiling",
    ),
    pytest.param({**workflow(SMS), "callback": "x"}, {"callback"}, id="unknown-top-field"),
]


@pytest.mark.parametrize(("body", "names"), INVALID_WORKFLOWS)
@pytest.mark.parametrize("api", WORKFLOW_APIS, ids=str)
async def test_invalid_workflows_name_every_bad_field(
    api: Api,
    body: dict[str, Any],
    names: set[str],
    shared_api: SharedApi,
) -> None:
    """Each broken workflow rule gets a 400 naming exactly the bad fields, and stores nothing."""
    response, added = await shared_api.post(api.path, body)
    assert bad_names(response) == names
    assert set(added.values()) == {0}


VALID_WORKFLOWS: list[Any] = [
    pytest.param(workflow(_step(MESSENGER, failover(15)), SMS), id="expiry_time-15"),
    pytest.param(workflow(_step(MESSENGER, failover(86400)), SMS), id="expiry_time-86400"),
    pytest.param(workflow(_step(MESSENGER, failover(600, "read")), SMS), id="read-on-messenger"),
    pytest.param(
        workflow(_step(text("whatsapp", "hi"), failover(60, "read")), SMS), id="read-on-whatsapp"
    ),
    pytest.param(
        workflow(_step(text("viber_service_msg", "hi"), failover(60, "read")), SMS),
        id="read-on-viber",
    ),
    pytest.param(workflow(_step(SMS, failover(60, "delivered")), MESSENGER), id="delivered-on-sms"),
    pytest.param(
        workflow(
            _step(MESSENGER, failover(60, "read")),
            _step(text("viber_service_msg", "hi"), failover(60)),
            _step(text("whatsapp", "hi"), failover(60)),
            SMS,
        ),
        id="four-steps",
    ),
]


@pytest.mark.parametrize("body", VALID_WORKFLOWS)
@pytest.mark.parametrize("api", WORKFLOW_APIS, ids=str)
async def test_valid_workflows_are_accepted(
    api: Api,
    body: dict[str, Any],
    shared_api: SharedApi,
) -> None:
    """Workflows at the failover limits are accepted with one message row per step."""
    response, added = await shared_api.post(api.path, body, shared_api.tenant.bearer())
    assert response.status_code == 202, response.text
    assert added["messages"] == len(body["workflow"])


async def test_read_on_an_sms_step_gets_a_clear_reason(shared_api: SharedApi) -> None:
    """Refusing 'read' on an SMS step says SMS has no read receipts and to use 'delivered'."""
    body = workflow(_step(SMS, failover(condition_status="read")), MESSENGER)
    response, _ = await shared_api.post("/v0.1/dispatch", body)
    reason = reasons(response)["workflow[0].failover.condition_status"]
    assert "read" in reason
    assert "delivered" in reason


async def test_viber_ttl_above_the_dispatch_ceiling_is_fine_for_messages(
    shared_api: SharedApi,
) -> None:
    """Messages v0.1 allows a Viber ttl up to 259200 s, above Dispatch's 86400."""
    body = text("viber_service_msg", "hi", options={"viber_service_msg": {"ttl": 259200}})
    response, _ = await shared_api.post("/v0.1/messages", body)
    assert response.status_code == 202


@pytest.mark.parametrize("api", WORKFLOW_APIS, ids=str)
async def test_several_errors_across_a_workflow_are_all_listed(
    api: Api, shared_api: SharedApi
) -> None:
    """Template, schema and channel-rule errors in several steps come back in one 400."""
    body = workflow(
        _step(message("sms", _image(), client_ref="r" * 41), failover(14, "read")),
        _step(text("messenger", "m" * 641, to={"type": "messenger", "number": "4477"}), None),
        _step(SMS, failover("600")),
        template="cascade",
    )
    response, added = await shared_api.post(api.path, body)
    assert bad_names(response) == {
        "template",
        "workflow[0].message.content.type",
        "workflow[0].client_ref",
        "workflow[0].failover.expiry_time",
        "workflow[0].failover.condition_status",
        "workflow[1].to.id",
        "workflow[1].to.number",
        "workflow[1].message.content.text",
        "workflow[1].failover",
        "workflow[2].failover",
        "workflow[2].failover.expiry_time",
    }
    assert set(added.values()) == {0}
