"""Read-back views of workflows and messages: the whole timeline, as the API and CLI show it.

This is what the hosted APIs never offered: the state of every step, every status with its
time, source and reason, every send retried (why, and when it is tried next), why each
failover happened, what each message cost, and each webhook with the status it carried.
A plain message (``POST /v0.1/messages``) is a workflow of one step, but it is shown as a
message: no template, no step numbers, no failover.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cascade.domain.records import (
    Event,
    MessageRecord,
    Surface,
    WebhookAttempt,
    WebhookKind,
    WebhookRecord,
    WebhookState,
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
    if event.next_at is not None:
        view["next_attempt_at"] = timestamp(event.next_at)
    return view


#: how a webhook's kind reads in a timeline
_KIND_NAMES = {
    WebhookKind.STATUS: "status webhook",
    WebhookKind.FINAL_REPORT: "final report",
    WebhookKind.INBOUND: "inbound message",
}


def _reported_status(body: bytes) -> str | None:
    """The status a webhook's body carried (a message's, or a final report's outcome)."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    status = decoded.get("status") if isinstance(decoded, dict) else None
    return status if isinstance(status, str) else None


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
    views = []
    for hook in webhooks:
        view: dict[str, Any] = {
            "id": hook.id,
            "kind": hook.kind,
            "message_uuid": hook.message_id,
            "url": hook.url,
            "state": hook.state,
        }
        reported = _reported_status(hook.body)
        if reported is not None:
            view["reported_status"] = reported
        view["attempts"] = by_webhook.get(hook.id, [])
        if hook.state is WebhookState.PENDING and hook.next_attempt_at is not None:
            view["next_attempt_at"] = timestamp(hook.next_attempt_at)
        views.append(view)
    return views


def _plain(workflow: WorkflowRecord) -> bool:
    """Whether the workflow is a plain message (one step, sent through /v0.1/messages)."""
    return workflow.surface is Surface.MESSAGES


def timeline(workflow: WorkflowRecord) -> list[dict[str, Any]]:
    """Everything that happened to a workflow, in order: accepted, then its timeline."""
    entries = [
        {"timestamp": timestamp(workflow.created_at), "event": "accepted"},
    ]
    first = workflow.messages[0] if workflow.messages else None
    if first is not None and first.started_at is not None and not _plain(workflow):
        # the first step starts with the accept (no event of its own is stored); a plain
        # message has no steps to start
        entries.append(
            {
                "timestamp": timestamp(first.started_at),
                "event": "step_started",
                "message_uuid": first.id,
            }
        )
    entries += [_event(e) for e in workflow.events]
    return entries


def message_timeline(workflow: WorkflowRecord, message_id: str) -> list[dict[str, Any]]:
    """What happened to one message: for a plain message its workflow's whole timeline,
    for a step of a dispatch its own entries (started, retries, statuses, failover)."""
    entries = timeline(workflow)
    if _plain(workflow):
        return entries
    return [entry for entry in entries if entry.get("message_uuid") == message_id]


def workflow_view(
    workflow: WorkflowRecord, webhooks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A workflow with every step, the whole timeline and, when given, its webhooks. A
    dispatch names its template; a plain message does not (it has none) and names its
    message."""
    view: dict[str, Any] = {_ID_FIELDS[workflow.surface]: workflow.id}
    if _plain(workflow):
        if workflow.messages:
            view["message_uuid"] = workflow.messages[0].id
    else:
        view["template"] = "failover"
    view |= {
        "status": workflow.state.value,
        "created_at": timestamp(workflow.created_at),
        "finished_at": timestamp(workflow.finished_at) if workflow.finished_at else None,
        "usage": total_usage(workflow),
        "steps": [message_view(m, workflow.events) for m in workflow.messages],
        "timeline": timeline(workflow),
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
    plain = _plain(workflow)
    title = (
        f"message {view.get('message_uuid', '-')} (workflow {workflow.id})"
        if plain
        else f"workflow {workflow.id} ({workflow.surface.value})"
    )
    lines = [
        f"{title}: {workflow.state.value}",
        f"  cost: {view['usage']['price']} {view['usage']['currency']}",
        "  message:" if plain else "  steps:",
    ]
    for step in view["steps"]:
        to = step["to"].get("number") or step["to"].get("id")
        condition = step.get("failover")
        rule = (
            f" (needs {condition['condition_status']} within {condition['expiry_time']} s)"
            if condition
            else ""
        )
        number = "" if plain else f"{step['step']}. "  # a plain message has no steps
        lines.append(
            f"    {number}{step['channel']:<17} to {to:<16} {step['state']:<9} "
            f"status={step['status'] or '-'}{rule}"
        )
        if "provider" in step:
            lines.append(
                f"       provider {step['provider']['name']} id {step['provider']['message_id']}"
            )
    lines.append("  timeline:")
    # step numbers tell the steps of a dispatch apart; a plain message has one
    index = {} if plain else {m.id: m.step + 1 for m in workflow.messages}
    for entry in view["timeline"]:
        where = (
            f"step {index[entry['message_uuid']]} " if entry.get("message_uuid") in index else ""
        )
        what = entry["event"]
        if "status" in entry:
            what = f"{what} {entry['status']}"
        detail = ""
        if "error" in entry:
            detail = f" error {entry['error']['code']} {entry['error']['reason']}"
        elif "reason" in entry:
            detail = f": {entry['reason']}"
        source = f" [{entry['source']}]" if "source" in entry else ""
        then = f"; next attempt {entry['next_attempt_at']}" if "next_attempt_at" in entry else ""
        lines.append(f"    {entry['timestamp']}  {where}{what}{detail}{source}{then}")
    if webhooks:
        lines.append("  webhooks:")
        for hook in webhooks:
            where = f"step {index[hook['message_uuid']]} " if hook["message_uuid"] in index else ""
            kind = _KIND_NAMES.get(hook["kind"], str(hook["kind"]))
            carried = f" ({hook['reported_status']})" if "reported_status" in hook else ""
            state = str(hook["state"])
            if "next_attempt_at" in hook:
                tried = len(hook["attempts"])
                state += f", {tried} attempt{'s' if tried != 1 else ''} so far"
                state += f", next attempt {hook['next_attempt_at']}"
            url = hook["url"] or "(no URL set)"
            lines.append(f"    #{hook['id']} {where}{kind}{carried} -> {url}: {state}")
            for attempt in hook["attempts"]:
                result = attempt.get("status_code", attempt.get("error", "?"))
                lines.append(
                    f"      {attempt['timestamp']}  {result} ({attempt['duration_ms']} ms)"
                )
    elif webhooks is not None:  # say why, rather than list nothing
        lines.append(
            "  webhooks: none (a status webhook is stored only where the request, its"
            " application or its account names a status URL)"
        )
    return "\n".join(lines)
