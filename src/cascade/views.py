"""Read-back views of workflows and messages: the whole timeline, as the API and CLI show it.

This is what the hosted APIs never offered: the state of every step, every status with its
time, source and reason, why each failover happened, what each message cost.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cascade.domain.records import (
    Event,
    MessageRecord,
    Surface,
    WebhookAttempt,
    WebhookRecord,
    WorkflowRecord,
)
from cascade.domain.reports import reported_error
from cascade.webhooks.payloads import timestamp, total_usage, usage

_ID_FIELDS = {
    Surface.DISPATCH: "dispatch_uuid",
    Surface.WORKFLOWS: "workflow_uuid",
    Surface.MESSAGES: "workflow_uuid",
    Surface.MESSAGES_V1: "workflow_id",
}


def _event(event: Event) -> dict[str, Any]:
    view: dict[str, Any] = {"timestamp": timestamp(event.at), "event": event.kind}
    if event.message_id is not None:
        view["message_uuid"] = event.message_id
    if event.status is not None:
        view["status"] = event.status
    if event.code is not None:
        view["error"] = {"code": event.code, "reason": event.reason or ""}
    elif event.reason is not None:
        view["reason"] = event.reason
    if event.source is not None:
        view["source"] = event.source
    return view


def message_view(message: MessageRecord, events: tuple[Event, ...] = ()) -> dict[str, Any]:
    """One message: its addresses, content, state, current status, statuses over time, cost."""
    view: dict[str, Any] = {
        "message_uuid": message.id,
        "workflow_uuid": message.workflow_id,
        "step": message.step + 1,
        "channel": message.channel,
        "to": msgspec.json.decode(message.to),
        "from": msgspec.json.decode(message.from_),
        "message": msgspec.json.decode(message.body),
        "state": message.state.value,
        "status": message.status,
    }
    if message.condition_status is not None:
        view["failover"] = {
            "expiry_time": message.expiry_time,
            "condition_status": message.condition_status,
        }
    if message.client_ref is not None:
        view["client_ref"] = message.client_ref
    error = reported_error(message)
    if error is not None:
        view["error"] = {"code": error[0], "reason": error[1]}
    cost = usage(message)
    if cost is not None:
        view["usage"] = cost
    if message.provider_message_id is not None:
        # the id the provider (for SMPP, the SMSC account) knows it by, to find it in its logs
        view["provider"] = {"name": message.provider, "message_id": message.provider_message_id}
    if message.started_at is not None:
        view["started_at"] = timestamp(message.started_at)
    mine = [e for e in events if e.message_id == message.id]
    view["statuses"] = [_event(e) for e in mine if e.kind == "status"]
    failover = next((e for e in mine if e.kind == "failover"), None)
    if failover is not None:
        view["failover_reason"] = failover.reason
    return view


def webhook_views(
    webhooks: list[WebhookRecord], attempts: list[WebhookAttempt]
) -> list[dict[str, Any]]:
    """Each webhook with every delivery attempt and its result."""
    by_webhook: dict[int, list[dict[str, Any]]] = {}
    for attempt in attempts:
        entry: dict[str, Any] = {
            "timestamp": timestamp(attempt.at),
            "duration_ms": round(attempt.duration * 1000, 1),
        }
        if attempt.status_code is not None:
            entry["status_code"] = attempt.status_code
        if attempt.error is not None:
            entry["error"] = attempt.error
        by_webhook.setdefault(attempt.webhook_id, []).append(entry)
    return [
        {
            "id": hook.id,
            "kind": hook.kind,
            "message_uuid": hook.message_id,
            "url": hook.url,
            "state": hook.state,
            "attempts": by_webhook.get(hook.id, []),
        }
        for hook in webhooks
    ]


def workflow_view(
    workflow: WorkflowRecord, webhooks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A workflow with every step, the whole timeline and, when given, its webhooks."""
    timeline = [
        {"timestamp": timestamp(workflow.created_at), "event": "accepted"},
    ]
    first = workflow.messages[0] if workflow.messages else None
    if first is not None and first.started_at is not None:
        timeline.append(
            {
                "timestamp": timestamp(first.started_at),
                "event": "step_started",
                "message_uuid": first.id,
            }
        )
    timeline += [_event(e) for e in workflow.events]
    view: dict[str, Any] = {
        _ID_FIELDS[workflow.surface]: workflow.id,
        "template": "failover",
        "status": workflow.state.value,
        "created_at": timestamp(workflow.created_at),
        "finished_at": timestamp(workflow.finished_at) if workflow.finished_at else None,
        "usage": total_usage(workflow),
        "steps": [message_view(m, workflow.events) for m in workflow.messages],
        "timeline": timeline,
    }
    if webhooks is not None:
        view["webhooks"] = webhooks
    return view


def workflow_summary(workflow: WorkflowRecord) -> dict[str, Any]:
    """A workflow in a list: its id, state, times and each step's channel and status."""
    return {
        _ID_FIELDS[workflow.surface]: workflow.id,
        "status": workflow.state.value,
        "created_at": timestamp(workflow.created_at),
        "finished_at": timestamp(workflow.finished_at) if workflow.finished_at else None,
        "steps": [
            {
                "message_uuid": m.id,
                "channel": m.channel,
                "state": m.state.value,
                "status": m.status,
            }
            for m in workflow.messages
        ],
    }


def render_timeline(workflow: WorkflowRecord, webhooks: list[dict[str, Any]] | None = None) -> str:
    """The timeline as text for a person (``cascade show``)."""
    view = workflow_view(workflow, webhooks)
    lines = [
        f"workflow {workflow.id} ({workflow.surface.value}): {workflow.state.value}",
        f"  cost: {view['usage']['price']} {view['usage']['currency']}",
        "  steps:",
    ]
    for step in view["steps"]:
        to = step["to"].get("number") or step["to"].get("id")
        condition = step.get("failover")
        rule = (
            f" (needs {condition['condition_status']} within {condition['expiry_time']} s)"
            if condition
            else ""
        )
        lines.append(
            f"    {step['step']}. {step['channel']:<17} to {to:<16} {step['state']:<9} "
            f"status={step['status'] or '-'}{rule}"
        )
        if "provider" in step:
            lines.append(
                f"       provider {step['provider']['name']} id {step['provider']['message_id']}"
            )
    lines.append("  timeline:")
    index = {m.id: m.step + 1 for m in workflow.messages}
    for entry in view["timeline"]:
        where = f"step {index[entry['message_uuid']]} " if "message_uuid" in entry else ""
        what = entry["event"]
        if "status" in entry:
            what = f"{what} {entry['status']}"
        detail = ""
        if "error" in entry:
            detail = f" error {entry['error']['code']} {entry['error']['reason']}"
        elif "reason" in entry:
            detail = f": {entry['reason']}"
        source = f" [{entry['source']}]" if "source" in entry else ""
        lines.append(f"    {entry['timestamp']}  {where}{what}{detail}{source}")
    if webhooks:
        lines.append("  webhooks:")
        for hook in webhooks:
            where = f"step {index[hook['message_uuid']]} " if hook["message_uuid"] in index else ""
            lines.append(
                f"    #{hook['id']} {where}{hook['kind']} -> {hook['url']}: {hook['state']}"
            )
            for attempt in hook["attempts"]:
                result = attempt.get("status_code", attempt.get("error", "?"))
                lines.append(
                    f"      {attempt['timestamp']}  {result} ({attempt['duration_ms']} ms)"
                )
    return "\n".join(lines)
