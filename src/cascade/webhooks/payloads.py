"""Customer webhooks on the wire: the bodies of reports, in the Messages v0.1 and Dispatch v0.1
shapes and in the Messages v1 shape. What a report says is decided in
:mod:`cascade.domain.reports`; this module writes it, in the shape its message asks for (its
application's ``webhook_version``, or the v1 request's own).

- message status: ``message_uuid, to, from, timestamp, status, error{code, reason},
  usage{currency, price}, client_ref`` plus, for a step of a workflow,
  ``_links.workflow{dispatch_uuid, href}`` (``workflow_uuid`` for the 2018 ``/beta/workflows``
  surface);
- final report: ``dispatch_uuid, template, status completed|error, timestamp, usage,
  _links.messages[{message_uuid, href, channel, usage, status}]``.

The Dispatch spec's enum spells one channel ``viber_sevice_msg``; Cascade sends the channel
names requests use (``viber_service_msg``), which is what a client compares against.

The v1 shapes (the Messages v1 specification, 1.3.0) are flat:

- message status: ``message_uuid, to, from`` (strings), ``timestamp, status, channel`` (v1's
  names: ``viber_service``), ``error{type, title, detail, instance}`` (``title`` the error
  code as a string, ``type`` a link naming it), ``usage{currency, price}``, ``client_ref``,
  ``sms{count_total}`` (the parts an SMS was sent as), and for a message of a workflow of several
  (a v1 message with failover, or a dispatch) ``workflow{id, item_number, items_number}``:
  the workflow's id, the message's place in it and how many it has, as strings. The saved
  specification does not define ``workflow``; these fields are the ones Vonage's failover
  callbacks carry;
- inbound: ``channel, message_uuid, to, from, timestamp, message_type`` and the content under
  its type's name (``text`` a string); an SMS adds ``sms{num_messages}`` and ``usage``.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from cascade.channels.base import InboundMessage
from cascade.domain.message_v1 import V1_CHANNEL_NAMES
from cascade.domain.records import (
    Application,
    MessageRecord,
    NewWebhook,
    Surface,
    WebhookVersion,
    WorkflowRecord,
)
from cascade.domain.reports import FinalReport, Report, StatusReport

_encoder = msgspec.json.Encoder()


@functools.lru_cache(maxsize=8)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))


def timestamp(at: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Nexmo sends it: ``2020-01-01T14:00:00.000Z``.

    Rounded to the microsecond as ``datetime.fromtimestamp`` rounds, then cut to the
    millisecond. The formatted second is kept, since the reports of a moment share it: 0.9 µs
    a call, against 3.9 for a ``datetime`` and its ``strftime`` each time."""
    fraction, whole = math.modf(at)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    return f"{_second(int(whole))}{micro // 1000:03d}Z"


def _href(base: str, path: str) -> str:
    return f"{base.rstrip('/')}{path}"


def _workflow_link(workflow: WorkflowRecord, base: str) -> dict[str, str] | None:
    if workflow.surface is Surface.DISPATCH:
        return {
            "dispatch_uuid": workflow.id,
            "href": _href(base, f"/v0.1/dispatch/{workflow.id}"),
        }
    if workflow.surface is Surface.WORKFLOWS:
        return {"workflow_uuid": workflow.id, "href": _href(base, f"/workflows/{workflow.id}")}
    return None


def usage(message: MessageRecord) -> dict[str, str | int] | None:
    """What a message cost: ``{currency, price}``, plus ``segments`` for an SMS (sent and
    priced per segment)."""
    if message.price is None:
        return None
    cost: dict[str, str | int] = {"currency": message.currency or "EUR", "price": message.price}
    if message.segments is not None and message.channel == "sms":
        cost["segments"] = message.segments
    return cost


def webhooks(reports: Sequence[Report], base: str = "") -> list[NewWebhook]:
    """The customer webhooks that carry ``reports``, their bodies written (links under
    ``base``); each goes to its message's own URL, else to the one its application or account
    sets. Without that (the workflow's ``status_url_set`` false, as its transition read it) a
    report with no URL of its own has nowhere to go: it is left out, and no body is written
    for it."""
    hooks = []
    for report in reports:
        workflow = report.workflow
        url = None
        if isinstance(report, StatusReport):
            message_id: str | None = report.message.id
            url = report.message.webhook_url
            if url is None and not workflow.status_url_set:
                continue
            if report.message.webhook_version == WebhookVersion.V1:
                body = message_status_v1(report)
            else:
                body = message_status(report, base)
        else:
            if not workflow.status_url_set:
                continue
            message_id = None
            body = final_report(report, base)
        hooks.append(
            NewWebhook(
                kind=report.kind,
                account_id=workflow.account_id,
                application_id=workflow.application_id,
                workflow_id=workflow.id,
                message_id=message_id,
                url=url,
                body=body,
            )
        )
    return hooks


def message_status(report: StatusReport, base: str = "") -> bytes:
    """The body of a status webhook."""
    message = report.message
    body: dict[str, Any] = {
        "message_uuid": message.id,
        "to": msgspec.json.decode(message.to),
        "from": msgspec.json.decode(message.from_),
        "timestamp": timestamp(report.at),
        "status": message.status,
    }
    error = report.error
    if error is not None:
        body["error"] = {"code": error[0], "reason": error[1]}
    cost = usage(message)
    if cost is not None:
        body["usage"] = cost
    if message.client_ref is not None:
        body["client_ref"] = message.client_ref
    link = _workflow_link(report.workflow, base)
    if link is not None:
        body["_links"] = {"workflow": link}
    return _encoder.encode(body)


def total_usage(workflow: WorkflowRecord) -> dict[str, str]:
    """The summed price of every message of the workflow."""
    priced = [m for m in workflow.messages if m.price is not None]
    total = sum((Decimal(m.price or "0") for m in priced), Decimal(0))
    currency = priced[0].currency if priced and priced[0].currency else "EUR"
    return {"price": f"{total:.4f}" if priced else "0", "currency": currency}


def final_report(report: FinalReport, base: str = "") -> bytes:
    """The body of a Dispatch final report."""
    workflow = report.workflow
    id_field = "workflow_uuid" if workflow.surface is Surface.WORKFLOWS else "dispatch_uuid"
    links = []
    for message in report.messages:
        link: dict[str, Any] = {
            "message_uuid": message.id,
            "href": _href(base, f"/v0.1/messages/{message.id}"),
            "channel": message.channel,
        }
        cost = usage(message)
        if cost is not None:
            link["usage"] = cost
        if message.status is not None:
            link["status"] = message.status
        links.append(link)
    body = {
        id_field: workflow.id,
        "template": "failover",
        "status": "completed" if report.completed else "error",
        "timestamp": timestamp(report.at),
        "usage": total_usage(workflow),
        "_links": {"messages": links},
    }
    return _encoder.encode(body)


def inbound(message: InboundMessage, message_uuid: str) -> bytes:
    """The v0.1 inbound webhook of a message a customer's customer sent in."""
    body: dict[str, Any] = {
        "message_uuid": message_uuid,
        "to": message.to,
        "from": message.from_,
        "timestamp": timestamp(message.at),
        "message": {"content": message.content},
    }
    if message.channel == "sms":
        parts = message.extra.get("num_messages", 1)
        body["message"]["sms"] = {"num_messages": str(parts)}
        body["usage"] = {"currency": "EUR", "price": "0.0000"}
    return _encoder.encode(body)


#: where the v1 error types point: the asynchronous codes' list (1000..1382)
V1_ERRORS = "https://developer.nexmo.com/api-errors/messages-olympus"


def _address(stored: bytes) -> str:
    """A v1 address (a string) of a stored v0.1 ``to``/``from`` object: its number or id."""
    address = msgspec.json.decode(stored)
    return str(address.get("number") or address.get("id") or "")


def message_status_v1(report: StatusReport) -> bytes:
    """The body of a status webhook in the Messages v1 shape."""
    message = report.message
    workflow = report.workflow
    body: dict[str, Any] = {
        "message_uuid": message.id,
        "to": _address(message.to),
        "from": _address(message.from_),
        "timestamp": timestamp(report.at),
        "status": message.status,
        "channel": V1_CHANNEL_NAMES.get(message.channel, message.channel),
    }
    error = report.error
    if error is not None:
        code, reason = error
        body["error"] = {
            "type": f"{V1_ERRORS}#{code}",
            "title": str(code),
            "detail": reason,
            # the same for every report of this error of this message
            "instance": uuid.uuid5(uuid.NAMESPACE_URL, f"{message.id}#{code}").hex,
        }
    if message.price is not None:
        body["usage"] = {"currency": message.currency or "EUR", "price": message.price}
    if message.channel == "sms" and message.segments is not None:
        body["sms"] = {"count_total": str(message.segments)}
    if message.client_ref is not None:
        body["client_ref"] = message.client_ref
    if len(workflow.messages) > 1:
        body["workflow"] = {
            "id": workflow.id,
            "item_number": str(message.step + 1),
            "items_number": str(len(workflow.messages)),
        }
    return _encoder.encode(body)


def inbound_v1(message: InboundMessage, message_uuid: str) -> bytes:
    """The v1 inbound webhook of a message a customer's customer sent in."""
    content = message.content
    message_type = str(content.get("type", "unsupported"))
    body: dict[str, Any] = {
        "channel": V1_CHANNEL_NAMES.get(message.channel, message.channel),
        "message_uuid": message_uuid,
        "to": str(message.to.get("number") or message.to.get("id") or ""),
        "from": str(message.from_.get("number") or message.from_.get("id") or ""),
        "timestamp": timestamp(message.at),
        "message_type": message_type,
    }
    if message_type in content:
        body[message_type] = content[message_type]
    if message.channel == "sms":
        parts = message.extra.get("num_messages", 1)
        body["sms"] = {"num_messages": str(parts)}
        body["usage"] = {"currency": "EUR", "price": "0.0000"}
    return _encoder.encode(body)


def inbound_version(applications: Sequence[Application]) -> str:
    """The shape of an account's inbound webhooks, from its applications. Inbound messages go
    to the account, not to one of its applications, so they are v1 only when every one of
    them is set to v1 (a receiver that still expects v0.1 never gets a shape it cannot read)."""
    if applications and all(app.webhook_version == WebhookVersion.V1 for app in applications):
        return WebhookVersion.V1.value
    return WebhookVersion.V0_1.value


def inbound_body(message: InboundMessage, message_uuid: str, version: str | None) -> bytes:
    """The inbound webhook body in the shape ``version`` names (None: v0.1)."""
    if version == WebhookVersion.V1:
        return inbound_v1(message, message_uuid)
    return inbound(message, message_uuid)
