"""The bodies of customer webhooks, in the Messages v0.1 and Dispatch v0.1 shapes.

- message status: ``message_uuid, to, from, timestamp, status, error{code, reason},
  usage{currency, price}, client_ref`` plus, for a step of a workflow,
  ``_links.workflow{dispatch_uuid, href}`` (``workflow_uuid`` for the 2018 ``/beta/workflows``
  surface);
- final report: ``dispatch_uuid, template, status completed|error, timestamp, usage,
  _links.messages[{message_uuid, href, channel, usage, status}]``.

The Dispatch spec's enum spells one channel ``viber_sevice_msg``; Cascade sends the channel
names requests use (``viber_service_msg``), which is what a client compares against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from cascade.channels.base import InboundMessage
from cascade.domain.records import MessageRecord, Surface, WorkflowRecord, WorkflowState

_encoder = msgspec.json.Encoder()


def timestamp(at: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Nexmo sends it: ``2020-01-01T14:00:00.000Z``."""
    moment = datetime.fromtimestamp(at, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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


def message_status(
    workflow: WorkflowRecord, message: MessageRecord, at: float, base: str = ""
) -> bytes:
    """The status webhook of ``message`` as it stands now."""
    body: dict[str, Any] = {
        "message_uuid": message.id,
        "to": msgspec.json.decode(message.to),
        "from": msgspec.json.decode(message.from_),
        "timestamp": timestamp(at),
        "status": message.status,
    }
    if message.error_code is not None and message.status in ("rejected", "undeliverable"):
        body["error"] = {"code": message.error_code, "reason": message.error_reason or ""}
    cost = usage(message)
    if cost is not None:
        body["usage"] = cost
    if message.client_ref is not None:
        body["client_ref"] = message.client_ref
    link = _workflow_link(workflow, base)
    if link is not None:
        body["_links"] = {"workflow": link}
    return _encoder.encode(body)


def total_usage(workflow: WorkflowRecord) -> dict[str, str]:
    """The summed price of every message of the workflow."""
    priced = [m for m in workflow.messages if m.price is not None]
    total = sum((Decimal(m.price or "0") for m in priced), Decimal(0))
    currency = priced[0].currency if priced and priced[0].currency else "EUR"
    return {"price": f"{total:.4f}" if priced else "0", "currency": currency}


def final_report(workflow: WorkflowRecord, at: float, base: str = "") -> bytes:
    """The Dispatch final report of a finished workflow."""
    id_field = "workflow_uuid" if workflow.surface is Surface.WORKFLOWS else "dispatch_uuid"
    links = []
    for message in workflow.messages:
        if message.started_at is None:
            continue  # never started: cancelled after an earlier step succeeded
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
        "status": "completed" if workflow.state is WorkflowState.COMPLETED else "error",
        "timestamp": timestamp(at),
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
