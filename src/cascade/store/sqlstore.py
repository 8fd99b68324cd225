"""The store on SQL, whatever the database: every rule of what is read and written, once.

A store operation is a generator that yields the statements it needs, by name, and receives
each one's result: a plan the driver runs. The SQLite driver runs a plan on its reader
connection or inside its group-commit writer; the PostgreSQL driver on a pooled connection,
in a transaction when it writes. Neither knows what the plan does, and this module knows
nothing of either driver: what differs between the databases is in their query files
(``sql/<dialect>/queries.sql``) and in the drivers' transactions, batching and wake-ups.

How a transition is decided (docs/design.md §4): the workflow is read and the decision made
outside the write transaction; the transaction stores it only if the workflow's version is
still the one read, and otherwise reads it again (locked, on PostgreSQL) and decides again.
Every write that changes what a decision reads moves the version.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from functools import partial
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar, overload

from cascade.domain.failover import MessageChange
from cascade.domain.records import (
    Accepted,
    Account,
    Application,
    ChannelLink,
    InboundKeys,
    InboundRecord,
    JobKindName,
    LinkedChannel,
    MessageRecord,
    NewWebhook,
    NewWorkflow,
    Receipt,
    SandboxMessage,
    SendAttempt,
    StepState,
    StoredResponse,
    WebhookAttempt,
    WebhookKind,
    WebhookRecord,
    WebhookState,
    WorkflowRecord,
)
from cascade.domain.status import Status
from cascade.errors import (
    ConfigError,
    IdempotencyConflict,
    NotFound,
    SealError,
    StoreConflict,
    StoreUnavailable,
)
from cascade.sealing import KEY_SETTING, Sealer
from cascade.store import rows
from cascade.store.base import (
    UNSET,
    ClaimedIds,
    DashboardSession,
    Decide,
    Decision,
    Job,
    ListQuery,
    SignInFailures,
    SmppBind,
    Store,
    StoreOverview,
    WorkflowKey,
    _Unset,
)
from cascade.store.migrations import migrations

T = TypeVar("T")


class Fetch(Enum):
    """What a statement's result is taken as."""

    ROWS = "rows"  # every row
    ROW = "row"  # the first row, or None
    VALUE = "value"  # the first column of the first row, or None
    COUNT = "count"  # how many rows it changed
    MANY = "many"  # run once per parameter set (executemany); nothing
    ROWS_OF = "rows_of"  # run once per row of values in a named order (executemany); nothing
    EACH = "each"  # run once per parameter set; the rows of all runs


class Run(NamedTuple):
    """One named query of the dialect's file, with its parameters, in a plan (a tuple: plans
    make thousands a second)."""

    query: str
    #: by name; a sequence of those; or (ROWS_OF) the names and rows of values in their order
    params: (
        Mapping[str, Any]
        | Sequence[Mapping[str, Any]]
        | tuple[tuple[str, ...], Sequence[Sequence[Any]]]
    )
    fetch: Fetch


class Signal(Enum):
    """What a plan tells its driver besides statements."""

    #: this transaction queued or released jobs (PostgreSQL wakes other processes at commit)
    JOBS_QUEUED = "jobs_queued"


Step = Run | Signal
#: a store operation: yields statements, receives their results, returns its own
Plan = Generator[Step, Any, T]


#: a Run made without NamedTuple's Python-level ``__new__``, and the fetch modes as module
#: constants (an Enum member read through its class costs more): plans make thousands a second
_run = tuple.__new__
_ROWS, _ROW, _VALUE, _COUNT, _MANY = Fetch.ROWS, Fetch.ROW, Fetch.VALUE, Fetch.COUNT, Fetch.MANY
_ROWS_OF = Fetch.ROWS_OF


def select(query: str, **params: Any) -> Run:
    """Every row of a query."""
    return _run(Run, (query, params, _ROWS))


def first(query: str, **params: Any) -> Run:
    """The first row of a query, or None."""
    return _run(Run, (query, params, _ROW))


def value(query: str, **params: Any) -> Run:
    """The first column of a query's first row, or None."""
    return _run(Run, (query, params, _VALUE))


def change(query: str, **params: Any) -> Run:
    """A statement that changes rows; how many it changed."""
    return _run(Run, (query, params, _COUNT))


def each(query: str, params: Sequence[Mapping[str, Any]]) -> Run:
    """A statement run once per parameter set (nothing when there is none)."""
    return _run(Run, (query, params, _MANY))


def each_row(query: str, names: tuple[str, ...], values: Sequence[Sequence[Any]]) -> Run:
    """A statement run once per row of ``values``, each the parameters ``names`` names in
    that order: no dict a row, for the rows of an accept (a message's are 16 values)."""
    return _run(Run, (query, (names, values), _ROWS_OF))


# --- plans ---------------------------------------------------------------------------------


#: the parameters of an accept's rows, in the order its tuples hold them
WORKFLOW_ROW = ("id", "account_id", "application_id", "surface", "created_at")
MESSAGE_ROW = (
    "id",
    "workflow_id",
    "step",
    "account_id",
    "channel",
    "recipient",
    "sender",
    "body",
    "client_ref",
    "expiry_time",
    "condition_status",
    "state",
    "started_at",
    "created_at",
    "webhook_url",
    "webhook_version",
)
JOB_ROW = ("kind", "ref", "run_at", "created_at")
_ACTIVE, _WAITING = StepState.ACTIVE.value, StepState.WAITING.value


@dataclass(frozen=True, slots=True)
class AcceptRows:
    """The rows one accepted request adds, encoded before its transaction starts (a request
    that cannot be encoded fails alone, before it can break a batch): tuples of the values
    WORKFLOW_ROW, MESSAGE_ROW and JOB_ROW name, in that order."""

    workflow: NewWorkflow
    workflow_row: tuple[Any, ...]
    message_rows: list[tuple[Any, ...]]
    job_rows: list[tuple[Any, ...]]

    @classmethod
    def of(cls, workflow: NewWorkflow) -> AcceptRows:
        """The rows of ``workflow``."""
        now = workflow.accepted_at
        workflow_id, account_id = workflow.id, workflow.account_id
        return cls(
            workflow,
            (workflow_id, account_id, workflow.application_id, workflow.surface.value, now),
            [
                (
                    step.message_id,
                    workflow_id,
                    index,
                    account_id,
                    step.channel,
                    step.to.decode(),
                    step.from_.decode(),
                    step.body.decode(),
                    step.client_ref,
                    step.expiry_time,
                    step.condition_status,
                    _ACTIVE if index == 0 else _WAITING,
                    now if index == 0 else None,
                    now,
                    step.webhook_url,
                    step.webhook_version,
                )
                for index, step in enumerate(workflow.steps)
            ],
            [(job.kind, job.ref, job.run_at, now) for job in workflow.jobs],
        )


#: what one accepted request of a batch comes to: stored (or replayed), or its own error
AcceptOutcome = Accepted | Exception


def accept_plan(batch: Sequence[AcceptRows], idempotency_ttl: float) -> Plan[list[AcceptOutcome]]:
    """Store a batch of accepted requests as if they ran in turn, in one transaction.

    The first request of the batch naming an Idempotency-Key claims it (unless a live request
    holds it already); later ones replay the response of the one that holds it, or conflict.
    Keys are claimed in one order, so two batches in flight cannot deadlock on them."""
    outcomes: list[AcceptOutcome | None] = [None] * len(batch)
    leaders: dict[tuple[str, str], AcceptRows] = {}
    for request in batch:
        claim = request.workflow.idempotency
        if claim is not None:
            leaders.setdefault((request.workflow.account_id, claim.key), request)
    if leaders:
        keys = sorted(leaders)
        claims = []
        for account_id, key in keys:
            leader = leaders[account_id, key].workflow
            assert leader.idempotency is not None
            claims.append(
                {
                    "account_id": account_id,
                    "key": key,
                    "request_sha256": leader.idempotency.request_sha256,
                    "status_code": leader.idempotency.response.status_code,
                    "response": leader.idempotency.response.body.decode(),
                    "created_at": leader.accepted_at,
                    "ttl": idempotency_ttl,
                }
            )
        claimed_rows = yield Run("claim_idempotency_key", claims, Fetch.EACH)
        claimed = set(claimed_rows.pick("account_id", "key"))
        known: dict[tuple[str, str], tuple[str, StoredResponse]] = {}
        for name in claimed:
            leader_claim = leaders[name].workflow.idempotency
            assert leader_claim is not None
            known[name] = (leader_claim.request_sha256, leader_claim.response)
        taken = [name for name in keys if name not in claimed]
        if taken:
            held = yield select(
                "idempotency_keys",
                account_ids=[name[0] for name in taken],
                keys=[name[1] for name in taken],
            )
            for account_id, key, digest, status_code, response in held.pick(
                "account_id", "key", "request_sha256", "status_code", "response"
            ):
                known[account_id, key] = (digest, StoredResponse(status_code, response.encode()))
        for index, request in enumerate(batch):
            claim = request.workflow.idempotency
            if claim is None:
                continue
            name = (request.workflow.account_id, claim.key)
            if leaders[name] is request and name in claimed:
                continue  # this request claimed the key: it is written below
            if name not in known:
                outcomes[index] = StoreUnavailable(f"idempotency key {claim.key!r} vanished")
            elif known[name][0] != claim.request_sha256:
                outcomes[index] = IdempotencyConflict()
            else:
                outcomes[index] = Accepted(created=False, response=known[name][1])
    fresh = [request for request, outcome in zip(batch, outcomes, strict=True) if outcome is None]
    if fresh:
        yield each_row("insert_workflow", WORKFLOW_ROW, [request.workflow_row for request in fresh])
        yield each_row(
            "insert_message",
            MESSAGE_ROW,
            [row for request in fresh for row in request.message_rows],
        )
        jobs = [row for request in fresh for row in request.job_rows]
        if jobs:
            yield each_row("insert_job", JOB_ROW, jobs)
            yield Signal.JOBS_QUEUED
    created = Accepted(created=True)
    return [created if outcome is None else outcome for outcome in outcomes]


class WorkflowsRead:
    """The workflows a batch of transitions names, each with its version, found by any of
    the three kinds of key a transition may give."""

    __slots__ = ("by_message", "by_provider_id", "by_workflow")

    def __init__(self) -> None:
        self.by_workflow: dict[str, tuple[WorkflowRecord, int]] = {}
        self.by_message: dict[str, str] = {}
        self.by_provider_id: dict[tuple[str | None, str | None], str] = {}

    def add(self, found: rows.Rows) -> None:
        """Take in the rows of one of the reads (a workflow read twice is the same)."""
        for loaded in rows.transition_workflows(found):
            workflow = loaded[0]
            self.by_workflow[workflow.id] = loaded
            for message in workflow.messages:
                self.by_message[message.id] = workflow.id
                if message.provider_message_id is not None:
                    self.by_provider_id[(message.provider, message.provider_message_id)] = (
                        workflow.id
                    )

    def get(self, key: WorkflowKey) -> tuple[WorkflowRecord, int] | None:
        """The workflow ``key`` names and the version read, or None when none was found."""
        if key.workflow_id is not None:
            workflow_id: str | None = key.workflow_id
        elif key.message_id is not None:
            workflow_id = self.by_message.get(key.message_id)
        else:
            workflow_id = self.by_provider_id.get((key.provider, key.provider_message_id))
        return None if workflow_id is None else self.by_workflow.get(workflow_id)


def transitions_read_plan(keys: Sequence[WorkflowKey]) -> Plan[WorkflowsRead]:
    """Read the workflows some transitions name: one statement for those named by id, one
    for those named by a message, one per provider for those named by a provider's id."""
    workflow_ids: set[str] = set()
    message_ids: set[str] = set()
    provider_ids: dict[str | None, set[str | None]] = {}
    for key in keys:
        if key.workflow_id is not None:
            workflow_ids.add(key.workflow_id)
        elif key.message_id is not None:
            message_ids.add(key.message_id)
        else:
            provider_ids.setdefault(key.provider, set()).add(key.provider_message_id)
    found = WorkflowsRead()
    if workflow_ids:
        found.add((yield select("transition_read_by_workflows", ids=sorted(workflow_ids))))
    if message_ids:
        found.add((yield select("transition_read_by_messages", ids=sorted(message_ids))))
    for provider, ids in provider_ids.items():
        found.add(
            (
                yield select(
                    "transition_read_by_provider_ids", provider=provider, ids=sorted(map(str, ids))
                )
            )
        )
    return found


def _lock_workflow(key: WorkflowKey) -> Run:
    """The statement that finds (and on PostgreSQL locks) the workflow ``key`` names."""
    if key.workflow_id is not None:
        return value("lock_workflow", workflow_id=key.workflow_id)
    if key.message_id is not None:
        return value("lock_workflow_of_message", message_id=key.message_id)
    return value(
        "lock_workflow_of_provider",
        provider=key.provider,
        provider_message_id=key.provider_message_id,
    )


class TransitionToStore(NamedTuple):
    """One transition of a batch as its write sees it: what names the workflow, how to decide,
    the decision made from the read before the transaction (the workflow's id, the version read
    and the decision; None when the read found no workflow) and a job to delete."""

    key: WorkflowKey
    decide: Decide
    early: tuple[str, int, Decision] | None
    done_job: int | None


#: what each transition of a batch came to: the decision stored, None when no workflow
#: matched, or the error its decision raised (that transition's alone)
TransitionOutcome = Decision | None | Exception


def transitions_plan(batch: Sequence[TransitionToStore]) -> Plan[list[TransitionOutcome]]:
    """Store a batch of transitions in one transaction: each decision made from a read is
    stored if its workflow did not move since; else the workflow is read again and decided
    again (after the decisions before it are written, so that two transitions of one workflow
    each decide from the one before). What the decisions change is written with one statement
    a kind of row for the whole batch; each ``done_job`` is deleted either way.

    Workflows are claimed in the order of their ids, so that two batches on PostgreSQL take
    their row locks in one order and never wait for each other in a circle."""
    outcomes: list[TransitionOutcome] = [None] * len(batch)
    decided: list[tuple[str, Decision]] = []
    done_jobs: list[dict[str, Any]] = []
    order = sorted(range(len(batch)), key=lambda i: _claim_order(batch[i]))
    for index in order:
        transition = batch[index]
        if transition.done_job is not None:
            done_jobs.append({"id": transition.done_job})
        if transition.early is not None:
            workflow_id, version, decision = transition.early
            if (yield change("claim_version", id=workflow_id, version=version)):
                decided.append((workflow_id, decision))
                outcomes[index] = decision
                continue
        if decided:  # what this one reads again must hold the decisions before it
            yield from _persist(decided)
            decided = []
        workflow_id = yield _lock_workflow(transition.key)
        if workflow_id is None:
            continue
        loaded = rows.transition_workflow(
            (yield select("transition_read_by_workflows", ids=[workflow_id]))
        )
        if loaded is None:
            continue
        try:
            decision = transition.decide(loaded[0])
        except Exception as exc:  # (a bug in one decision): that caller's error alone
            outcomes[index] = exc
            continue
        yield change("bump_version", id=workflow_id)
        decided.append((workflow_id, decision))
        outcomes[index] = decision
    if done_jobs:
        yield each("delete_job", done_jobs)
    if decided:
        yield from _persist(decided)
    return outcomes


def _claim_order(transition: TransitionToStore) -> tuple[int, str]:
    """Those decided from a read first, by workflow id; those read again in the write after."""
    early = transition.early
    return (0, early[0]) if early is not None else (1, "")


_at = attrgetter("at")
#: a message change's fields read by one getter, named as change_message's parameters (its
#: message_id is the row's id); one that sets none has every value but the id None
_CHANGE_FIELDS = tuple(field.name for field in fields(MessageChange))
_change_values = attrgetter(*_CHANGE_FIELDS)
_CHANGE_PARAMS = tuple("id" if name == "message_id" else name for name in _CHANGE_FIELDS)
_CHANGE_UNSET = len(_CHANGE_FIELDS) - 1
_PROVIDER = _CHANGE_FIELDS.index("provider")
_PROVIDER_MESSAGE_ID = _CHANGE_FIELDS.index("provider_message_id")


def _persist(decided: Sequence[tuple[str, Decision]]) -> Plan[None]:
    """Store what transitions decided (inside their transaction), one statement a kind of row
    for all of them; a statement runs only when it has rows (a transition often has no jobs
    to cancel)."""
    updates: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []  # set no provider id: a statement leaving its indexes be
    finished: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    cancels: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    webhooks: list[dict[str, Any]] = []
    for workflow_id, (changes, decided_webhooks) in decided:
        now = max(map(_at, changes.events), default=None)
        for message_change in changes.messages.values():
            values = _change_values(message_change)  # None keeps the stored value
            if now is None and values.count(None) == _CHANGE_UNSET:
                continue  # it sets nothing, and no event moves updated_at
            update = dict(zip(_CHANGE_PARAMS, values))  # noqa: B905 (one value per field)
            update["updated_at"] = now
            if values[_PROVIDER] is None and values[_PROVIDER_MESSAGE_ID] is None:
                statuses.append(update)
            else:
                updates.append(update)
        if changes.workflow_state is not None:
            finished.append(
                {
                    "id": workflow_id,
                    "state": changes.workflow_state.value,
                    "finished_at": changes.finished_at,
                }
            )
        events += [{**rows.columns(event), "workflow_id": workflow_id} for event in changes.events]
        cancels += [{"kind": kind, "ref": ref} for kind, ref in changes.cancel_jobs]
        created = now if now is not None else time.time()
        jobs += [
            {"kind": job.kind, "ref": job.ref, "run_at": job.run_at, "created_at": created}
            for job in changes.jobs
        ]
        webhooks += _webhook_rows(decided_webhooks, created)
    if updates:
        yield each("change_message", updates)
    if statuses:
        yield each("change_message_status", statuses)
    if finished:
        yield each("finish_workflow", finished)
    if events:
        yield each("insert_event", events)
    if cancels:
        yield each("cancel_jobs", cancels)
    if jobs:
        yield each("insert_job", jobs)
    if webhooks:
        yield each("queue_webhook", webhooks)
    if jobs or webhooks:
        yield Signal.JOBS_QUEUED


def _webhook_rows(webhooks: Sequence[NewWebhook], created: float) -> list[dict[str, Any]]:
    """The parameters that queue webhooks, each to the URL of its kind unless it names one,
    with the job that delivers it."""
    return [
        {
            "account_id": webhook.account_id,
            "application_id": webhook.application_id,
            "workflow_id": webhook.workflow_id,
            "message_id": webhook.message_id,
            "kind": webhook.kind,
            "url": webhook.url,
            "inbound": webhook.kind == WebhookKind.INBOUND,
            "body": webhook.body.decode(),
            "created_at": created,
            "job_kind": JobKindName.WEBHOOK,
        }
        for webhook in webhooks
    ]


def _workflow_plan(account_id: str, workflow_id: str) -> Plan[WorkflowRecord | None]:
    """A workflow of an account with its messages and timeline."""
    found = yield first("workflow", id=workflow_id, account_id=account_id)
    if found is None:
        return None
    messages = yield select("workflow_messages", workflow_id=workflow_id)
    events = yield select("workflow_events", workflow_id=workflow_id)
    record = rows.workflow(found, rows.message.all(messages))
    return replace(record, events=tuple(rows.event.all(events)))


def _page(account_id: str, query: ListQuery) -> dict[str, Any]:
    """The parameters of a list query: unset bounds are infinite, so one statement serves."""
    before_at, before_id = query.before if query.before is not None else (float("inf"), "")
    return {
        "account_id": account_id,
        "before_at": before_at,
        "before_id": before_id,
        "created_after": (
            query.created_after if query.created_after is not None else float("-inf")
        ),
        "created_before": (
            query.created_before if query.created_before is not None else float("inf")
        ),
        "state": query.state,
        "channel": query.channel,
        "limit": query.limit,
    }


def _workflows_plan(account_id: str, query: ListQuery) -> Plan[list[WorkflowRecord]]:
    """A page of an account's workflows (or only its dispatches) with their messages."""
    page = _page(account_id, query)
    if query.dispatches_only:
        found = yield select("dispatches", **page)
    else:
        found = yield select("workflows", **page)
    if not found:
        return []
    messages = yield select("messages_of_workflows", workflow_ids=found.column("id"))
    return rows.workflows(found, messages)


def _retry_plan(
    job_id: int,
    run_at: float,
    message_id: str,
    error: tuple[int, str],
    at: float,
    source: str | None,
) -> Plan[None]:
    """Release a send job to run again and keep its error (a decision reads the last error,
    so the workflow's version moves; it is taken first, in the order transitions lock), and
    put the retry in the workflow's timeline with when it is tried next."""
    yield change("bump_version_of_messages", ids=[message_id])
    yield change("note_send_error", id=message_id, code=error[0], reason=error[1])
    yield change(
        "note_retry",
        message_id=message_id,
        at=at,
        code=error[0],
        reason=error[1],
        source=source,
        next_at=run_at,
    )
    yield change("release_job", id=job_id, run_at=run_at, attempted=1)
    # released: a worker elsewhere may take it when due, sooner than its next poll
    yield Signal.JOBS_QUEUED


def _part_receipt_plan(receipt: Receipt) -> Plan[tuple[str, list[Status | None]] | None]:
    """Record one part's receipt; the message and every part's status, in order."""
    parts = yield select(
        "lock_message_parts", provider=receipt.provider, part_id=receipt.provider_message_id
    )
    part = (receipt.provider, receipt.provider_message_id)
    found = parts.pick("provider", "part_id", "status", "message_id")
    if not any((provider, part_id) == part for provider, part_id, _, _ in found):
        return None
    yield change(
        "record_part_status",
        status=receipt.status.value,
        code=receipt.code,
        reason=receipt.reason,
        provider=receipt.provider,
        part_id=receipt.provider_message_id,
    )
    statuses = [
        receipt.status
        if (provider, part_id) == part
        else None
        if status is None
        else Status(status)
        for provider, part_id, status, _ in found
    ]
    return str(found[0][3]), statuses


def _claim_ids_plan(params: dict[str, Any]) -> Plan[ClaimedIds]:
    """Take provider ids away from older messages holding them (see Store.claim_provider_ids)."""
    released = (yield select("release_provider_ids", **params)).column("id")
    released += (yield select("release_part_ids", **params)).column("id")
    stale = yield change("drop_stale_orphan_receipts", **params)
    taken = list(dict.fromkeys(map(str, released)))
    if taken:
        # a transition decided on an older workflow before this decides again
        yield change("bump_version_of_messages", ids=taken)
    return ClaimedIds(tuple(taken), stale)


def _renew_smpp_node_plan(connection: str, node: str, expires_at: float, now: float) -> Plan[int]:
    """Renew a node's hold on an SMPP connection; how many nodes hold it now."""
    yield value("serialize_smpp_nodes", connection=connection)
    yield change("renew_smpp_node", connection=connection, node=node, expires_at=expires_at)
    yield change("forget_expired_smpp_nodes", connection=connection, now=now)
    live = yield value("live_smpp_nodes", connection=connection, now=now)
    return int(live)


def _replay_plan(
    webhook_ids: Sequence[int] | None, now: float, account_id: str | None
) -> Plan[int]:
    """Queue webhooks for delivery again, from their first attempt."""
    if webhook_ids is None:
        found = yield select("dead_webhooks", account_id=account_id)
    else:
        found = yield select("replayable_webhooks", ids=list(webhook_ids), account_id=account_id)
    ids = found.column("id")
    if ids:
        refs = [str(webhook_id) for webhook_id in ids]
        yield change("replay_webhooks", ids=ids, refs=refs, now=now, kind=JobKindName.WEBHOOK)
        yield Signal.JOBS_QUEUED
    return len(ids)


def _delete_webhooks(ids: Sequence[int]) -> Plan[None]:
    """Delete webhooks with their attempts and jobs."""
    if ids:
        refs = [str(webhook_id) for webhook_id in ids]
        yield change("delete_webhooks", ids=list(ids), refs=refs, kind=JobKindName.WEBHOOK)


def _purge_webhooks_plan(before: float, limit: int) -> Plan[int]:
    """Delete old webhooks of no workflow that are no longer pending."""
    ids = (yield select("purgeable_webhooks", before=before, limit=limit)).column("id")
    yield from _delete_webhooks(ids)
    return len(ids)


def _purge_workflows_plan(before: float, limit: int) -> Plan[int]:
    """Delete old finished workflows that owe no webhook, with what hangs off them."""
    found = yield select("purgeable_workflows", before=before, limit=limit)
    ids = found.column("id")
    if not ids:
        return 0
    hooks = yield select("webhooks_of_workflows", ids=ids)
    yield from _delete_webhooks(hooks.column("id"))
    yield change("delete_workflows", ids=ids)
    return len(ids)


def _matched_orphans_plan(
    provider: str | None, provider_message_id: str | None
) -> Plan[list[Receipt]]:
    """Kept receipts that now match a message, oldest first."""
    if provider is None:
        found = yield select("matched_orphan_receipts")
    else:
        found = yield select(
            "orphan_receipts_of", provider=provider, provider_message_id=provider_message_id
        )
    return rows.receipt.all(found.sorted_by("id"))


def _conversation(
    account_id: str,
    page_id: str,
    psid: str,
    sent_until: float,
    statuses: Collection[Status],
    limit: int,
) -> dict[str, Any]:
    """The parameters of a read of one Messenger conversation's messages up to a watermark."""
    return {
        "account_id": account_id,
        "page_id": page_id,
        "psid": psid,
        "sent_until": sent_until,
        # a status listed, or none; never empty (an empty list is not valid SQL)
        "statuses": [Status(status).value for status in statuses] or [""],
        "limit": limit,
    }


def _link_context(link_id: str, account_id: str, channel: LinkedChannel, address: str) -> str:
    """What a link's sealed credentials are bound to: the link itself, so a sealed value
    copied onto another row (another account's link) does not open there."""
    return json.dumps([link_id, account_id, channel.value, address])


def _settable(**given: Any) -> dict[str, Any]:
    """The parameters of an UPDATE that sets only the fields given: ``set_NAME`` says whether
    NAME is set (a value of None clears it; UNSET leaves it as stored)."""
    params: dict[str, Any] = {}
    for name, value in given.items():
        params[f"set_{name}"] = value is not UNSET
        params[name] = None if value is UNSET else value
    return params


def _claim_jobs_run(
    worker_id: str, now: float, limit: int, lease: float, kinds: Collection[str] | None
) -> Run:
    """The statement claiming due jobs (of every kind, of one, or of several)."""
    params: dict[str, Any] = {"worker_id": worker_id, "until": now + lease, "now": now}
    params["limit"] = limit
    if kinds is None:
        return select("claim_jobs", **params)
    if len(kinds) == 1:
        return select("claim_jobs_of_kind", kind=next(iter(kinds)), **params)
    return select("claim_jobs_of_kinds", kinds=list(kinds), **params)


def _next_job_run(kinds: Collection[str] | None) -> Run:
    """The statement finding when the earliest free job is due."""
    if kinds is None:
        return value("next_job_at")
    if len(kinds) == 1:
        return value("next_job_at_of_kind", kind=next(iter(kinds)))
    return value("next_job_at_of_kinds", kinds=list(kinds))


# --- the store -----------------------------------------------------------------------------


class _Asked(NamedTuple):
    """A transition asked for, waiting for its batch."""

    key: WorkflowKey
    decide: Decide
    done_job: int | None
    outcome: asyncio.Future[Decision | None]


class TransitionBatches:
    """Transitions asked for while a batch is being stored, stored together as the next batch:
    one read for all their workflows, the decisions made outside the transaction, then one
    write (:func:`transitions_plan`). An SMPP bind's receipts come dozens to a read, and the
    engine's submits as fast; one at a time, each cost a read, a write of five or six
    statements and the steps between (BENCHMARKS.md, issue 15).

    One batch is stored at a time: those asked for meanwhile wait for it (a commit, a few
    milliseconds), and make the next batch larger. A batch whose write fails is stored again
    one transition at a time, so that one transition the database refuses fails alone."""

    #: transitions in one batch at most: a larger backlog is stored in several
    MAX_BATCH = 200
    #: ...and while the API waits for the write lock behind such batches (SQLite): a batch of
    #: 200 is a transaction of several milliseconds that each accept meeting it waits out
    YIELDING_BATCH = 30

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._waiting: list[_Asked] = []
        self._running: asyncio.Task[None] | None = None
        #: batches stored so far
        self.batches = 0

    async def transition(
        self, key: WorkflowKey, decide: Decide, done_job: int | None
    ) -> Decision | None:
        """Ask for a transition (:meth:`Store.transition`); returns once it is stored."""
        outcome: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Asked(key, decide, done_job, outcome))
        if self._running is None:
            self._running = asyncio.create_task(self._store_waiting(), name="store.transitions")
        return await outcome

    async def wait(self) -> None:
        """Return once every transition asked for is stored (before the store closes)."""
        while self._running is not None:
            await asyncio.shield(self._running)

    async def _store_waiting(self) -> None:
        """Store batches until none waits; whatever happens, every caller is answered."""
        batch: list[_Asked] = []
        try:
            while self._waiting:
                most = self.YIELDING_BATCH if self._store.intake_waiting() else self.MAX_BATCH
                batch = self._waiting[:most]
                del self._waiting[:most]
                await self._store_batch(batch)
        except BaseException as exc:  # (cancelled: the loop is closing) every caller is told
            unanswered = batch + self._waiting
            self._waiting = []
            for asked in unanswered:
                if not asked.outcome.done():
                    failure = StoreUnavailable("the transition was not stored: the store stopped")
                    failure.__cause__ = exc
                    asked.outcome.set_exception(failure)
            raise
        finally:
            self._running = None

    async def _store_batch(self, batch: list[_Asked]) -> None:
        """Read, decide and write one batch; each caller gets its outcome."""
        store = self._store
        try:
            found = await store._read(transitions_read_plan([asked.key for asked in batch]))
            asking: list[_Asked] = []
            to_store: list[TransitionToStore] = []
            for asked in batch:
                seen = found.get(asked.key)
                early = None
                if seen is not None:
                    try:
                        early = (seen[0].id, seen[1], asked.decide(seen[0]))
                    except Exception as exc:  # (a bug in one decision): its caller's alone
                        _answer(asked, exc)
                        continue
                asking.append(asked)
                to_store.append(TransitionToStore(asked.key, asked.decide, early, asked.done_job))
            if not to_store:
                return
            outcomes = await store._write(partial(transitions_plan, to_store))
        except Exception as exc:
            if len(batch) == 1:
                _answer(batch[0], exc)
                return
            for asked in batch:  # so that what fails, fails alone
                if not asked.outcome.done():
                    await self._store_batch([asked])
            return
        self.batches += 1
        for asked, outcome in zip(asking, outcomes, strict=True):
            _answer(asked, outcome)


def _answer(asked: _Asked, outcome: TransitionOutcome) -> None:
    """Give a caller its transition's outcome, unless it stopped waiting."""
    if asked.outcome.done():
        return
    if isinstance(outcome, Exception):
        asked.outcome.set_exception(outcome)
    else:
        asked.outcome.set_result(outcome)


class SqlStore(Store, abc.ABC):
    """The Store on a SQL database: every operation as a plan its driver runs.

    A driver implements :meth:`_read` (a plan that changes nothing, on any connection) and
    :meth:`_write` (a plan in one transaction), plus opening, closing and accepting (where each
    batches requests its own way, both through :func:`accept_plan`)."""

    #: what seals and opens linked channels' credentials (None: no key is set)
    sealer: Sealer | None = None

    def __init__(self) -> None:
        #: the transitions asked for and not yet stored, stored in batches
        self.transitions = TransitionBatches(self)

    def intake_waiting(self) -> bool:
        """Whether another process's API has lately waited for the database's write lock,
        so that this process's transitions should be stored in small batches (SQLite, whose
        writers take one lock in turn; PostgreSQL's lock rows, not the database)."""
        return False

    @overload
    async def _read(self, plan: Run, *, snapshot: bool = False) -> Any: ...

    @overload
    async def _read(self, plan: Plan[T], *, snapshot: bool = False) -> T: ...

    @abc.abstractmethod
    async def _read(self, plan: Plan[T] | Run, *, snapshot: bool = False) -> Any:
        """Run a plan (or one statement) that changes nothing; with ``snapshot``, all of its
        statements see the database as of one moment."""

    @overload
    async def _write(self, plan: Run) -> Any: ...

    @overload
    async def _write(self, plan: Callable[[], Plan[T]]) -> T: ...

    @abc.abstractmethod
    async def _write(self, plan: Callable[[], Plan[T]] | Run) -> Any:
        """Run a plan (or one statement) in one transaction, committed when this returns. A
        plan is given as the function that makes it: a driver may run a write again (SQLite
        does, one write at a time, after another write of its batch failed)."""

    #: the query and migration files this store's database reads ("sqlite" or "postgres")
    dialect: str

    async def ping(self) -> None:
        await self._read(value("ping"))

    async def overview(self) -> StoreOverview:
        expected = tuple(migration.version for migration in migrations(self.dialect))
        return await self._read(_overview_plan(expected, time.time()))

    # --- tenancy ---------------------------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        await self._write(change("insert_account", **rows.columns(account)))

    async def get_account(self, account_id: str) -> Account | None:
        found = await self._read(first("account", id=account_id))
        return None if found is None else rows.account(found)

    async def get_account_by_api_key(self, api_key: str) -> Account | None:
        found = await self._read(first("account_by_api_key", api_key=api_key))
        return None if found is None else rows.account(found)

    async def list_accounts(self) -> list[Account]:
        return rows.account.all(await self._read(select("accounts")))

    async def update_account(
        self,
        account_id: str,
        *,
        status_url: str | _Unset | None = UNSET,
        inbound_url: str | _Unset | None = UNSET,
        signature_secret: str | _Unset = UNSET,
        api_secret_sha256: str | _Unset = UNSET,
        sandbox: bool | _Unset = UNSET,
    ) -> Account:
        params = _settable(
            status_url=status_url,
            inbound_url=inbound_url,
            signature_secret=signature_secret,
            api_secret_sha256=api_secret_sha256,
            sandbox=sandbox,
        )
        found = await self._write(first("update_account", id=account_id, **params))
        if found is None:
            raise NotFound(f"no account {account_id}")
        return rows.account(found)

    async def create_application(self, application: Application) -> None:
        await self._write(change("insert_application", **rows.columns(application)))

    async def update_application(
        self,
        application_id: str,
        *,
        status_url: str | _Unset | None = UNSET,
        inbound_url: str | _Unset | None = UNSET,
        public_key_pem: str | _Unset = UNSET,
        webhook_version: str | _Unset = UNSET,
    ) -> Application:
        params = _settable(
            status_url=status_url,
            inbound_url=inbound_url,
            public_key_pem=public_key_pem,
            webhook_version=webhook_version,
        )
        found = await self._write(first("update_application", id=application_id, **params))
        if found is None:
            raise NotFound(f"no application {application_id}")
        return rows.application(found)

    async def delete_application(self, application_id: str) -> bool:
        deleted: int = await self._write(change("delete_application", id=application_id))
        return deleted > 0

    async def get_application(self, application_id: str) -> Application | None:
        found = await self._read(first("application", id=application_id))
        return None if found is None else rows.application(found)

    async def list_applications(self, account_id: str) -> list[Application]:
        found = await self._read(select("applications", account_id=account_id))
        return rows.application.all(found)

    # --- linked channels -------------------------------------------------------------------

    def can_seal(self) -> bool:
        return self.sealer is not None

    async def add_channel_link(self, link: ChannelLink) -> None:
        channel = LinkedChannel(link.channel)
        context = _link_context(link.id, link.account_id, channel, link.address)
        sealed = self._sealer().seal(link.credentials, context=context)
        try:
            await self._write(
                change(
                    "insert_channel_link",
                    id=link.id,
                    account_id=link.account_id,
                    channel=channel.value,
                    address=link.address,
                    credentials=sealed,
                    created_at=link.created_at,
                )
            )
        except StoreConflict as exc:
            held = await self._read(
                select("channel_link", channel=channel.value, address=link.address)
            )
            if held:
                raise StoreConflict(f"{channel.value} {link.address} is linked already") from exc
            raise

    async def channel_links(self, account_id: str | None = None) -> list[ChannelLink]:
        if account_id is None:
            found = await self._read(select("channel_links"))
        else:
            found = await self._read(select("channel_links_of_account", account_id=account_id))
        return self._open_links(found)

    async def find_channel_link(self, channel: LinkedChannel, address: str) -> ChannelLink | None:
        found = await self._read(
            select("channel_link", channel=LinkedChannel(channel).value, address=address)
        )
        opened = self._open_links(found)
        return opened[0] if opened else None

    async def remove_channel_link(self, account_id: str, link_id: str) -> bool:
        removed: int = await self._write(
            change("delete_channel_link", id=link_id, account_id=account_id)
        )
        return removed > 0

    def _sealer(self) -> Sealer:
        """The sealer, or a ConfigError saying how to set a key."""
        if self.sealer is None:
            raise ConfigError(
                f"linking channels needs {KEY_SETTING}, the key that seals their credentials: "
                "`cascade channel key` makes one"
            )
        return self.sealer

    def _open_links(self, found: rows.Rows) -> list[ChannelLink]:
        """Channel links of their rows, credentials opened (an error names a link that does
        not open, or the missing key when there are links)."""
        if not found:
            return []
        if self.sealer is None:
            raise ConfigError(
                f"channel links are stored but {KEY_SETTING} is not set: set it to the key "
                "they were sealed with"
            )
        links = []
        for id_, account_id, channel, address, sealed, created_at in found.pick(
            "id", "account_id", "channel", "address", "credentials", "created_at"
        ):
            linked = LinkedChannel(channel)
            try:
                credentials = self.sealer.open(
                    bytes(sealed), context=_link_context(id_, account_id, linked, address)
                )
            except SealError as exc:
                raise SealError(f"channel link {id_} ({channel} {address}): {exc}") from exc
            links.append(ChannelLink(id_, account_id, linked, address, credentials, created_at))
        return links

    # --- reading back ----------------------------------------------------------------------

    async def get_workflow(self, account_id: str, workflow_id: str) -> WorkflowRecord | None:
        return await self._read(_workflow_plan(account_id, workflow_id), snapshot=True)

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        found = await self._read(first("message", id=message_id, account_id=account_id))
        return None if found is None else rows.message(found)

    async def list_workflows(self, account_id: str, query: ListQuery) -> list[WorkflowRecord]:
        return await self._read(_workflows_plan(account_id, query), snapshot=True)

    async def list_messages(self, account_id: str, query: ListQuery) -> list[MessageRecord]:
        if query.recipient is None and query.client_ref is None:
            found = await self._read(select("messages", **_page(account_id, query)))
        else:
            found = await self._read(
                select(
                    "messages_searched",
                    **_page(account_id, query),
                    recipient=query.recipient,
                    client_ref=query.client_ref,
                )
            )
        return rows.message.all(found)

    async def pending_jobs(self, ref: str) -> list[Job]:
        return rows.job.all(await self._read(select("jobs_of", ref=ref)))

    # --- the engine ------------------------------------------------------------------------

    async def find_message(self, message_id: str) -> MessageRecord | None:
        found = await self._read(first("find_message", id=message_id))
        return None if found is None else rows.message(found)

    async def find_messages(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        if not message_ids:
            return {}
        found = await self._read(select("find_messages", ids=list(message_ids)))
        return {message.id: message for message in rows.message.all(found)}

    async def claim_jobs(
        self,
        worker_id: str,
        now: float,
        limit: int,
        lease: float,
        kinds: Collection[str] | None = None,
    ) -> list[Job]:
        claimed = await self._write(_claim_jobs_run(worker_id, now, limit, lease, kinds))
        return sorted(rows.job.all(claimed), key=lambda job: (job.run_at, job.id))

    async def extend_lease(self, worker_id: str, job_ids: Sequence[int], until: float) -> None:
        if job_ids:
            await self._write(
                change("extend_lease", ids=list(job_ids), until=until, worker_id=worker_id)
            )

    async def next_job_at(self, kinds: Collection[str] | None = None) -> float | None:
        due = await self._read(_next_job_run(kinds))
        return None if due is None else float(due)

    async def finish_job(self, job_id: int) -> None:
        await self._write(change("delete_job", id=job_id))

    async def retry_job(
        self,
        job_id: int,
        run_at: float,
        *,
        message_id: str,
        error: tuple[int, str],
        at: float,
        source: str | None = None,
    ) -> None:
        await self._write(partial(_retry_plan, job_id, run_at, message_id, error, at, source))

    async def defer_job(self, job_id: int, run_at: float) -> None:
        await self._write(change("release_job", id=job_id, run_at=run_at, attempted=0))

    async def begin_send(self, message_id: str, now: float) -> SendAttempt:
        found = await self._write(first("begin_send", id=message_id, now=now))
        if found is None:
            return SendAttempt(0, None, None)
        code = found["last_error_code"]
        error = (code, found["last_error_reason"]) if code is not None else None
        return SendAttempt(found["send_attempts"], found["send_started_at"], error)

    async def transition(
        self, key: WorkflowKey, decide: Decide, *, done_job: int | None = None
    ) -> Decision | None:
        return await self.transitions.transition(key, decide, done_job)

    async def add_webhooks(self, webhooks: Sequence[NewWebhook], now: float) -> None:
        await self._write(partial(_add_webhooks_plan, webhooks, now))

    async def add_orphan_receipt(self, receipt: Receipt, now: float) -> None:
        await self._write(
            change(
                "insert_orphan_receipt",
                provider=receipt.provider,
                provider_message_id=receipt.provider_message_id,
                status=receipt.status.value,
                at=receipt.at,
                code=receipt.code,
                reason=receipt.reason,
                received_at=now,
                message_id=receipt.message_id,
            )
        )

    async def matched_orphan_receipts(
        self, provider: str | None = None, provider_message_id: str | None = None
    ) -> list[Receipt]:
        if provider is not None and not await self._read(
            value("orphan_receipt_kept", provider=provider, provider_message_id=provider_message_id)
        ):
            # none kept for it (the usual case, after every send): one read. One stored after
            # this read is matched by the engine's periodic sweep
            return []
        return await self._read(_matched_orphans_plan(provider, provider_message_id))

    async def drop_orphan_receipt(self, kept_id: int) -> None:
        await self._write(change("drop_orphan_receipt", id=kept_id))

    async def add_message_parts(
        self, provider: str, message_id: str, part_ids: Sequence[str]
    ) -> None:
        if part_ids:
            # a part id already known keeps its first message
            parts = [
                {"provider": provider, "part_id": part, "message_id": message_id, "seq": seq}
                for seq, part in enumerate(part_ids)
            ]
            await self._write(each("insert_message_part", parts))

    async def record_part_receipt(self, receipt: Receipt) -> tuple[str, list[Status | None]] | None:
        return await self._write(partial(_part_receipt_plan, receipt))

    async def claim_provider_ids(
        self, provider: str, message_id: str, provider_ids: Sequence[str], sent_since: float
    ) -> ClaimedIds:
        ids = list(dict.fromkeys(provider_ids))
        if not ids:
            return ClaimedIds()
        params: dict[str, Any] = {"provider": provider, "ids": ids, "message_id": message_id}
        params["sent_since"] = sent_since
        # a read first: an id held elsewhere is rare (an SMSC restart), and a send that finds
        # none costs no write transaction
        if not await self._read(value("provider_ids_held", **params)):
            return ClaimedIds()
        return await self._write(partial(_claim_ids_plan, params))

    # --- customer webhooks -----------------------------------------------------------------

    async def get_webhook(self, webhook_id: int) -> WebhookRecord | None:
        found = await self._read(first("webhook", id=webhook_id))
        return None if found is None else rows.webhook(found)

    async def get_webhooks(self, webhook_ids: Sequence[int]) -> dict[int, WebhookRecord]:
        if not webhook_ids:
            return {}
        found = await self._read(select("webhooks_by_id", ids=list(webhook_ids)))
        return {webhook.id: webhook for webhook in rows.webhook.all(found)}

    async def record_webhook_attempt(
        self,
        attempt: WebhookAttempt,
        *,
        job_id: int | None,
        state: WebhookState,
        next_attempt_at: float | None,
    ) -> None:
        params = rows.columns(attempt)
        params.update(state=state, next_attempt_at=next_attempt_at, job_id=job_id)
        if next_attempt_at is None:
            await self._write(Run("record_last_webhook_attempt", params, Fetch.COUNT))
        else:
            await self._write(Run("record_webhook_attempt", params, Fetch.COUNT))

    async def list_webhooks(
        self,
        *,
        account_id: str | None = None,
        workflow_id: str | None = None,
        state: WebhookState | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        found = await self._read(
            select(
                "webhooks", account_id=account_id, workflow_id=workflow_id, state=state, limit=limit
            )
        )
        return rows.webhook.all(found)

    async def latest_webhooks(
        self,
        *,
        account_id: str | None = None,
        state: WebhookState | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        found = await self._read(
            select(
                "webhooks_newest",
                account_id=account_id,
                state=state,
                # ids are positive 64-bit integers: below the largest, every id
                before_id=(2**63 - 1) if before_id is None else before_id,
                limit=limit,
            )
        )
        return rows.webhook.all(found)

    async def webhook_attempts(self, webhook_ids: Sequence[int]) -> list[WebhookAttempt]:
        if not webhook_ids:
            return []
        found = await self._read(select("webhook_attempts", ids=list(webhook_ids)))
        return rows.webhook_attempt.all(found)

    async def replay_webhooks(
        self, webhook_ids: Sequence[int] | None, now: float, *, account_id: str | None = None
    ) -> int:
        if webhook_ids is not None and not webhook_ids:
            return 0
        return await self._write(partial(_replay_plan, webhook_ids, now, account_id))

    # --- the dashboard's sessions ----------------------------------------------------------

    async def create_dashboard_session(self, session: DashboardSession, now: float) -> None:
        await self._write(change("insert_dashboard_session", now=now, **rows.columns(session)))

    async def get_dashboard_session(self, token_sha256: str, now: float) -> DashboardSession | None:
        found = await self._read(first("dashboard_session", token_sha256=token_sha256, now=now))
        return None if found is None else rows.dashboard_session(found)

    async def delete_dashboard_session(self, token_sha256: str) -> None:
        await self._write(change("delete_dashboard_session", token_sha256=token_sha256))

    async def note_sign_in_failure(
        self, account_id: str, now: float, since: float
    ) -> SignInFailures:
        found = await self._write(
            first("note_sign_in_failure", account_id=account_id, now=now, since=since)
        )
        return rows.sign_in_failures(found)

    async def sign_in_failures(self, account_id: str) -> SignInFailures | None:
        found = await self._read(first("sign_in_failures", account_id=account_id))
        return None if found is None else rows.sign_in_failures(found)

    async def clear_sign_in_failures(self, account_id: str) -> None:
        await self._write(change("clear_sign_in_failures", account_id=account_id))

    # --- SMPP bind states ------------------------------------------------------------------

    async def put_smpp_bind(self, bind: SmppBind) -> None:
        await self._write(change("put_smpp_bind", **rows.columns(bind)))

    async def smpp_binds(self) -> list[SmppBind]:
        return rows.smpp_bind.all(await self._read(select("smpp_binds")))

    async def renew_smpp_node(
        self, connection: str, node: str, expires_at: float, now: float
    ) -> int:
        return await self._write(partial(_renew_smpp_node_plan, connection, node, expires_at, now))

    async def drop_smpp_node(self, connection: str, node: str) -> None:
        await self._write(change("drop_smpp_node", connection=connection, node=node))

    # --- intake of the platforms' callbacks ------------------------------------------------

    async def messenger_thread(
        self,
        account_id: str,
        page_id: str,
        psid: str,
        sent_until: float,
        statuses: Collection[Status],
        limit: int = 1000,
    ) -> list[str]:
        if not statuses:
            return []
        found = await self._read(
            select(
                "messenger_thread",
                **_conversation(account_id, page_id, psid, sent_until, statuses, limit),
            )
        )
        return [str(provider_id) for provider_id in found.column("provider_message_id")]

    async def messenger_unsent(
        self,
        account_id: str,
        page_id: str,
        psid: str,
        sent_until: float,
        statuses: Collection[Status],
        limit: int = 1000,
    ) -> list[str]:
        found = await self._read(
            select(
                "messenger_unsent",
                **_conversation(account_id, page_id, psid, sent_until, statuses, limit),
            )
        )
        return [str(message_id) for message_id in found.column("id")]

    async def add_inbound_webhook(
        self,
        webhook: NewWebhook,
        ref: str | None,
        now: float,
        keys: InboundKeys | None = None,
    ) -> bool:
        return await self._write(partial(_inbound_webhook_plan, webhook, ref, now, keys))

    async def find_inbound_message(
        self, account_id: str, message_uuid: str
    ) -> InboundRecord | None:
        found = await self._read(
            first("find_inbound_message", account_id=account_id, message_uuid=message_uuid)
        )
        return None if found is None else rows.inbound(found)

    # --- the sandbox provider's journal ----------------------------------------------------

    async def sandbox_receive(self, message: SandboxMessage) -> SandboxMessage:
        params = rows.columns(message)
        params["receipts_due"] = rows.encode_receipts(message.receipts_due)
        return rows.sandbox(await self._write(first("sandbox_receive", **params)))

    async def sandbox_set_receipts(
        self,
        provider_message_id: str,
        receipts_due: Sequence[tuple[float, str]],
        received: float | None,
    ) -> None:
        await self._write(
            change(
                "sandbox_set_receipts",
                receipts_due=rows.encode_receipts(receipts_due),
                received_at=received,
                provider_message_id=provider_message_id,
            )
        )

    async def sandbox_messages(self) -> list[SandboxMessage]:
        return rows.sandbox.all(await self._read(select("sandbox_messages")))

    async def sandbox_owed(self) -> list[SandboxMessage]:
        return rows.sandbox.all(await self._read(select("sandbox_owed")))

    # --- retention -------------------------------------------------------------------------

    async def purge_idempotency_keys(self, before: float, limit: int) -> int:
        purged: int = await self._write(
            change("purge_idempotency_keys", before=before, limit=limit)
        )
        return purged

    async def purge_orphan_receipts(self, before: float, limit: int) -> int:
        purged: int = await self._write(change("purge_orphan_receipts", before=before, limit=limit))
        return purged

    async def purge_webhooks(self, before: float, limit: int) -> int:
        return await self._write(partial(_purge_webhooks_plan, before, limit))

    async def purge_workflows(self, before: float, limit: int) -> int:
        return await self._write(partial(_purge_workflows_plan, before, limit))


def _inbound_webhook_plan(
    webhook: NewWebhook, ref: str | None, now: float, keys: InboundKeys | None
) -> Plan[bool]:
    """Queue an inbound webhook recorded under ``ref`` (with ``keys``), with the job that
    delivers it, unless ``ref`` is recorded already."""
    queued = yield first(
        "queue_inbound_webhook",
        account_id=webhook.account_id,
        application_id=webhook.application_id,
        workflow_id=webhook.workflow_id,
        message_id=webhook.message_id,
        kind=webhook.kind,
        url=webhook.url,
        body=webhook.body.decode(),
        created_at=now,
        inbound_ref=ref,
    )
    if queued is None:
        return False  # recorded before: a platform's repeat
    if keys is not None:
        yield change(
            "record_inbound_message",
            id=queued["id"],
            inbound_uuid=keys.message_uuid,
            inbound_channel=keys.channel,
            inbound_to=keys.to,
        )
    if queued["url"] is not None:
        yield change(
            "insert_job",
            kind=JobKindName.WEBHOOK,
            ref=str(queued["id"]),
            run_at=now,
            created_at=now,
        )
        yield Signal.JOBS_QUEUED
    return True


def _add_webhooks_plan(webhooks: Sequence[NewWebhook], now: float) -> Plan[None]:
    """Queue webhooks that belong to no transition."""
    if webhooks:
        yield each("queue_webhook", _webhook_rows(webhooks, now))
        yield Signal.JOBS_QUEUED


def _overview_plan(expected: tuple[int, ...], now: float) -> Plan[StoreOverview]:
    """The schema versions applied and, when none is missing, the counts of a status report
    (a schema that lacks a table has nothing to count it in)."""
    if not (yield value("has_schema_migrations")):
        return StoreOverview((), expected)
    applied = tuple(sorted((yield select("schema_versions")).column("version")))
    overview = StoreOverview(applied, expected)
    if overview.missing:
        return overview
    counts = yield first("store_counts", now=now)
    return replace(
        overview,
        accounts=counts["accounts"],
        jobs=counts["jobs"],
        jobs_due=counts["jobs_due"],
        pending_webhooks=counts["pending_webhooks"],
        dead_webhooks=counts["dead_webhooks"],
    )
