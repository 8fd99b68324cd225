"""Customer webhooks on the wire: the bodies of reports, in the Messages v0.1 and Dispatch v0.1
shapes. What a report says is decided in :mod:`cascade.domain.reports`; this module writes it.

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

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from cascade.channels.base import InboundMessage
from cascade.domain.records import MessageRecord, NewWebhook, Surface, WorkflowRecord
from cascade.domain.reports import FinalReport, Report, StatusReport

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


def webhooks(reports: Sequence[Report], base: str = "") -> list[NewWebhook]:
    """The customer webhooks that carry ``reports``, their bodies written (links under
    ``base``); each goes to the URL its account or application sets for its kind."""
    hooks = []
    for report in reports:
        workflow = report.workflow
        if isinstance(report, StatusReport):
            message_id: str | None = report.message.id
            body = message_status(report, base)
        else:
            message_id = None
            body = final_report(report, base)
        hooks.append(
            NewWebhook(
                kind=report.kind,
                account_id=workflow.account_id,
                application_id=workflow.application_id,
                workflow_id=workflow.id,
                message_id=message_id,
                url=None,
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
