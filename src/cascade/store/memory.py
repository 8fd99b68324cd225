"""The in-memory twin of the durable stores: the same interface and rules on plain dicts.

It exists for fast unit tests and keeps nothing across processes. Every method does its checks
before it changes anything and never awaits in between, so on one event loop each call is
atomic, as one transaction is on SQLite or PostgreSQL: a request that breaks a rule stores
nothing, and concurrent accepts with the same idempotency key behave as if they ran in turn.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from cascade.domain.failover import Changes
from cascade.domain.records import (
    WEBHOOK_JOB,
    Accepted,
    Account,
    Application,
    Event,
    MessageRecord,
    NewWebhook,
    NewWorkflow,
    Receipt,
    SandboxMessage,
    SendAttempt,
    StepState,
    StoredResponse,
    WebhookAttempt,
    WebhookRecord,
    WorkflowRecord,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.errors import IdempotencyConflict, NotFound, StoreConflict, StoreUnavailable
from cascade.store.base import (
    UNSET,
    ClaimedIds,
    Decide,
    Decision,
    Job,
    ListQuery,
    Store,
    WorkflowKey,
    _Unset,
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Claim:
    """A stored idempotency key: the digest of the first request and the response it got."""

    request_sha256: str
    response: StoredResponse
    created_at: float


@dataclasses.dataclass(slots=True)
class _JobRow:
    """A queued job with its lease."""

    id: int
    kind: str
    ref: str
    run_at: float
    attempts: int = 0
    locked_by: str | None = None
    locked_until: float | None = None

    def view(self) -> Job:
        """The job as the Store interface shows it."""
        return Job(self.id, self.kind, self.ref, self.run_at, self.attempts)


@dataclasses.dataclass(slots=True)
class _Part:
    """One part of a message sent as several, with its latest receipt."""

    message_id: str
    seq: int
    status: Status | None = None
    code: int | None = None
    reason: str | None = None


@dataclasses.dataclass(slots=True)
class _SendLog:
    """The send attempts of one message: how many began, and when the first did."""

    attempts: int = 0
    started_at: float | None = None


class MemoryStore(Store):
    """The Store in process memory."""

    def __init__(self) -> None:
        self._open = False
        self._accounts: dict[str, Account] = {}
        self._account_by_key: dict[str, str] = {}
        self._applications: dict[str, Application] = {}
        self._workflows: dict[str, WorkflowRecord] = {}
        self._messages: dict[str, MessageRecord] = {}
        self._workflow_messages: dict[str, list[str]] = {}
        self._events: dict[str, list[Event]] = {}
        self._jobs: dict[int, _JobRow] = {}
        self._job_ids = itertools.count(1)
        self._idempotency: dict[tuple[str, str], _Claim] = {}
        self._sends: dict[str, _SendLog] = {}
        self._webhooks: dict[int, WebhookRecord] = {}
        self._webhook_ids = itertools.count(1)
        self._webhook_attempts: list[WebhookAttempt] = []
        self._orphans: dict[int, tuple[Receipt, float]] = {}
        self._orphan_ids = itertools.count(1)
        #: parts of messages sent as several, by (provider, part id)
        self._parts: dict[tuple[str, str], _Part] = {}
        #: the sandbox journal, in the order messages arrived
        self._sandbox: dict[str, SandboxMessage] = {}

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        """Refuse work while the store is closed, as the durable stores do."""
        if not self._open:
            raise StoreUnavailable("the store is closed")

    # --- tenancy ---------------------------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        self._check_open()
        if account.id in self._accounts:
            raise StoreConflict(f"account {account.id} exists")
        if account.api_key in self._account_by_key:
            raise StoreConflict(f"api_key {account.api_key} is taken")
        self._accounts[account.id] = account
        self._account_by_key[account.api_key] = account.id

    async def get_account(self, account_id: str) -> Account | None:
        self._check_open()
        return self._accounts.get(account_id)

    async def get_account_by_api_key(self, api_key: str) -> Account | None:
        self._check_open()
        account_id = self._account_by_key.get(api_key)
        return None if account_id is None else self._accounts[account_id]

    async def list_accounts(self) -> list[Account]:
        self._check_open()
        return sorted(self._accounts.values(), key=lambda a: (a.created_at, a.id))

    async def update_account(
        self,
        account_id: str,
        *,
        status_url: str | _Unset | None = UNSET,
        inbound_url: str | _Unset | None = UNSET,
        signature_secret: str | _Unset = UNSET,
    ) -> Account:
        self._check_open()
        account = self._accounts.get(account_id)
        if account is None:
            raise NotFound(f"no account {account_id}")
        if not isinstance(status_url, _Unset):
            account = dataclasses.replace(account, status_url=status_url)
        if not isinstance(inbound_url, _Unset):
            account = dataclasses.replace(account, inbound_url=inbound_url)
        if not isinstance(signature_secret, _Unset):
            account = dataclasses.replace(account, signature_secret=signature_secret)
        self._accounts[account_id] = account
        return account

    async def create_application(self, application: Application) -> None:
        self._check_open()
        if application.id in self._applications:
            raise StoreConflict(f"application {application.id} exists")
        if application.account_id not in self._accounts:
            raise StoreConflict(f"no account {application.account_id} to own the application")
        self._applications[application.id] = application

    async def get_application(self, application_id: str) -> Application | None:
        self._check_open()
        return self._applications.get(application_id)

    async def list_applications(self, account_id: str) -> list[Application]:
        self._check_open()
        owned = (a for a in self._applications.values() if a.account_id == account_id)
        return sorted(owned, key=lambda a: (a.created_at, a.id))

    # --- the accept path -------------------------------------------------------------------

    async def accept(self, workflow: NewWorkflow) -> Accepted:
        self._check_open()
        claim = workflow.idempotency
        if claim is not None:
            stored = self._idempotency.get((workflow.account_id, claim.key))
            expired_before = workflow.accepted_at - self.idempotency_ttl
            if stored is not None and stored.created_at > expired_before:
                if stored.request_sha256 != claim.request_sha256:
                    raise IdempotencyConflict()
                return Accepted(created=False, response=stored.response)
        message_ids = [step.message_id for step in workflow.steps]
        if workflow.id in self._workflows:
            raise StoreConflict(f"workflow {workflow.id} exists")
        if len(set(message_ids)) != len(message_ids) or any(
            message_id in self._messages for message_id in message_ids
        ):
            raise StoreConflict(f"a message id of workflow {workflow.id} exists")

        now = workflow.accepted_at
        if claim is not None:
            self._idempotency[(workflow.account_id, claim.key)] = _Claim(
                claim.request_sha256, claim.response, now
            )
        self._workflows[workflow.id] = WorkflowRecord(
            id=workflow.id,
            account_id=workflow.account_id,
            application_id=workflow.application_id,
            surface=workflow.surface,
            state=WorkflowState.RUNNING,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        for index, step in enumerate(workflow.steps):
            self._messages[step.message_id] = MessageRecord(
                id=step.message_id,
                workflow_id=workflow.id,
                step=index,
                account_id=workflow.account_id,
                channel=step.channel,
                to=step.to,
                from_=step.from_,
                body=step.body,
                client_ref=step.client_ref,
                expiry_time=step.expiry_time,
                condition_status=step.condition_status,
                state=StepState.ACTIVE if index == 0 else StepState.WAITING,
                status=None,
                error_code=None,
                error_reason=None,
                provider=None,
                provider_message_id=None,
                price=None,
                currency=None,
                started_at=now if index == 0 else None,
                created_at=now,
                updated_at=now,
            )
            self._sends[step.message_id] = _SendLog()
        self._workflow_messages[workflow.id] = message_ids
        self._events[workflow.id] = []
        for job in workflow.jobs:
            self._add_job(job.kind, job.ref, job.run_at)
        return Accepted(created=True)

    def _add_job(self, kind: str, ref: str, run_at: float) -> None:
        """Queue a job with the next id."""
        job_id = next(self._job_ids)
        self._jobs[job_id] = _JobRow(job_id, kind, ref, run_at)

    # --- reading back ----------------------------------------------------------------------

    async def get_workflow(self, account_id: str, workflow_id: str) -> WorkflowRecord | None:
        self._check_open()
        workflow = self._workflows.get(workflow_id)
        if workflow is None or workflow.account_id != account_id:
            return None
        return dataclasses.replace(
            workflow,
            messages=self._messages_of(workflow_id),
            events=tuple(self._events[workflow_id]),
        )

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        self._check_open()
        message = self._messages.get(message_id)
        if message is None or message.account_id != account_id:
            return None
        return message

    async def list_workflows(self, account_id: str, query: ListQuery) -> list[WorkflowRecord]:
        self._check_open()
        found = [
            dataclasses.replace(workflow, messages=self._messages_of(workflow.id))
            for workflow in self._workflows.values()
            if _listed(workflow, account_id, query, workflow.state.value)
        ]
        found.sort(key=lambda w: (w.created_at, w.id), reverse=True)
        return found[: query.limit]

    async def list_messages(self, account_id: str, query: ListQuery) -> list[MessageRecord]:
        self._check_open()
        found = [
            message
            for message in self._messages.values()
            if _listed(message, account_id, query, message.status)
            and (query.channel is None or message.channel == query.channel)
        ]
        found.sort(key=lambda m: (m.created_at, m.id), reverse=True)
        return found[: query.limit]

    async def pending_jobs(self, ref: str) -> list[Job]:
        self._check_open()
        queued = sorted(
            (job for job in self._jobs.values() if job.ref == ref),
            key=lambda job: (job.run_at, job.id),
        )
        return [job.view() for job in queued]

    # --- the engine ------------------------------------------------------------------------

    async def find_message(self, message_id: str) -> MessageRecord | None:
        self._check_open()
        return self._messages.get(message_id)

    async def claim_jobs(
        self,
        worker_id: str,
        now: float,
        limit: int,
        lease: float,
        kinds: Collection[str] | None = None,
    ) -> list[Job]:
        self._check_open()
        due = sorted(
            (
                job
                for job in self._jobs.values()
                if job.run_at <= now
                and (job.locked_until is None or job.locked_until < now)
                and (kinds is None or job.kind in kinds)
            ),
            key=lambda job: (job.run_at, job.id),
        )[:limit]
        for job in due:
            job.locked_by = worker_id
            job.locked_until = now + lease
        return [job.view() for job in due]

    async def extend_lease(self, worker_id: str, job_ids: Sequence[int], until: float) -> None:
        self._check_open()
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job.locked_by == worker_id:
                job.locked_until = until

    async def next_job_at(self, kinds: Collection[str] | None = None) -> float | None:
        self._check_open()
        return min(
            (
                job.run_at
                for job in self._jobs.values()
                if job.locked_until is None and (kinds is None or job.kind in kinds)
            ),
            default=None,
        )

    async def finish_job(self, job_id: int) -> None:
        self._check_open()
        self._jobs.pop(job_id, None)

    async def retry_job(
        self, job_id: int, run_at: float, *, message_id: str, error: tuple[int, str]
    ) -> None:
        self._check_open()
        job = self._jobs.get(job_id)
        if job is not None:
            job.run_at = run_at
            job.attempts += 1
            job.locked_by = job.locked_until = None
        message = self._messages.get(message_id)
        if message is not None:
            self._messages[message_id] = dataclasses.replace(
                message, last_error_code=error[0], last_error_reason=error[1]
            )

    async def begin_send(self, message_id: str, now: float) -> SendAttempt:
        self._check_open()
        message = self._messages.get(message_id)
        if message is None:
            return SendAttempt(0, None, None)
        log = self._sends[message_id]
        error = None
        if message.last_error_code is not None:
            error = (message.last_error_code, message.last_error_reason or "")
        before = SendAttempt(log.attempts, log.started_at, error)
        log.attempts += 1
        if log.started_at is None:
            log.started_at = now
        return before

    async def transition(
        self, key: WorkflowKey, decide: Decide, *, done_job: int | None = None
    ) -> Decision | None:
        self._check_open()
        workflow = self._keyed_workflow(key)
        decision = None
        if workflow is not None:
            decision = decide(workflow)
            self._persist(workflow.id, *decision)
        if done_job is not None:
            self._jobs.pop(done_job, None)
        return decision

    def _keyed_workflow(self, key: WorkflowKey) -> WorkflowRecord | None:
        """The workflow ``key`` names, with its messages and without its timeline."""
        workflow_id = key.workflow_id
        if workflow_id is None and key.message_id is not None:
            message = self._messages.get(key.message_id)
            workflow_id = message.workflow_id if message is not None else None
        elif workflow_id is None:
            message = self._by_provider_id(key.provider, key.provider_message_id)
            workflow_id = message.workflow_id if message is not None else None
        workflow = self._workflows.get(workflow_id) if workflow_id is not None else None
        if workflow is None:
            return None
        return dataclasses.replace(workflow, messages=self._messages_of(workflow.id))

    def _by_provider_id(
        self, provider: str | None, provider_message_id: str | None
    ) -> MessageRecord | None:
        """The message a provider knows by this id, if any."""
        if provider is None or provider_message_id is None:
            return None
        for message in self._messages.values():
            if (message.provider, message.provider_message_id) == (provider, provider_message_id):
                return message
        return None

    def _messages_of(self, workflow_id: str) -> tuple[MessageRecord, ...]:
        """A workflow's messages in step order."""
        messages = (self._messages[m] for m in self._workflow_messages[workflow_id])
        return tuple(sorted(messages, key=lambda m: m.step))

    def _persist(self, workflow_id: str, changes: Changes, webhooks: Sequence[NewWebhook]) -> None:
        """Store what a transition decided, as the durable stores' ``_persist`` does."""
        now = max((event.at for event in changes.events), default=None)
        updated: dict[str, MessageRecord] = {}
        for change in changes.messages.values():
            message = self._messages.get(change.message_id)
            if message is None:
                continue
            values: dict[str, Any] = change.values()
            if now is not None:
                values["updated_at"] = now
            updated[change.message_id] = dataclasses.replace(message, **values)
        if any(m.provider_message_id is not None for m in updated.values()):
            _check_provider_refs({**self._messages, **updated}.values())
        workflow = self._workflows[workflow_id]
        if changes.workflow_state is not None:
            if changes.finished_at is None:
                raise StoreConflict("a workflow's updated_at cannot be empty")
            workflow = dataclasses.replace(
                workflow,
                state=changes.workflow_state,
                finished_at=changes.finished_at,
                updated_at=changes.finished_at,
            )
        # every check passed: apply
        self._messages.update(updated)
        self._workflows[workflow_id] = workflow
        self._events[workflow_id].extend(changes.events)
        self._cancel_jobs(set(changes.cancel_jobs))
        created = now if now is not None else time.time()
        for job in changes.jobs:
            self._add_job(job.kind, job.ref, job.run_at)
        self._insert_webhooks(webhooks, created)

    def _cancel_jobs(self, cancelled: set[tuple[str, str]]) -> None:
        """Delete the jobs of these (kind, ref) pairs."""
        for job_id in [j.id for j in self._jobs.values() if (j.kind, j.ref) in cancelled]:
            del self._jobs[job_id]

    def _insert_webhooks(self, webhooks: Sequence[NewWebhook], created: float) -> None:
        """Queue webhooks, each with the URL of its kind unless it names one, and its job."""
        for webhook in webhooks:
            url = webhook.url
            if url is None:
                url = self._destination(webhook.account_id, webhook.application_id, webhook.kind)
            webhook_id = next(self._webhook_ids)
            self._webhooks[webhook_id] = WebhookRecord(
                id=webhook_id,
                account_id=webhook.account_id,
                application_id=webhook.application_id,
                workflow_id=webhook.workflow_id,
                message_id=webhook.message_id,
                kind=webhook.kind,
                url=url,
                body=webhook.body,
                state="pending" if url else "no_url",
                attempts=0,
                created_at=created,
                first_attempt_at=None,
                last_attempt_at=None,
                next_attempt_at=created if url else None,
                last_status=None,
                last_error=None,
                delivered_at=None,
            )
            if url:
                self._add_job(WEBHOOK_JOB, str(webhook_id), created)

    def _destination(self, account_id: str, application_id: str | None, kind: str) -> str | None:
        """The URL a webhook of ``kind`` goes to: the application's, else the account's."""
        column = "inbound_url" if kind == "inbound" else "status_url"
        app = self._applications.get(application_id) if application_id is not None else None
        url: str | None = getattr(app, column) if app is not None else None
        if url is None:
            account = self._accounts.get(account_id)
            url = getattr(account, column) if account is not None else None
        return url or None

    async def add_webhooks(self, webhooks: Sequence[NewWebhook], now: float) -> None:
        self._check_open()
        self._insert_webhooks(webhooks, now)

    async def add_orphan_receipt(self, receipt: Receipt, now: float) -> None:
        self._check_open()
        self._orphans[next(self._orphan_ids)] = (receipt, now)

    async def take_orphan_receipts(
        self, provider: str | None = None, provider_message_id: str | None = None
    ) -> list[Receipt]:
        self._check_open()
        taken = []
        for orphan_id, (receipt, _) in list(self._orphans.items()):
            if provider is not None and (
                receipt.provider != provider or receipt.provider_message_id != provider_message_id
            ):
                continue
            ref = (receipt.provider, receipt.provider_message_id)
            if ref not in self._parts and self._by_provider_id(*ref) is None:
                continue
            del self._orphans[orphan_id]
            taken.append(receipt)
        return taken

    async def add_message_parts(
        self, provider: str, message_id: str, part_ids: Sequence[str]
    ) -> None:
        self._check_open()
        if not part_ids:
            return
        if message_id not in self._messages:
            raise StoreConflict(f"no message {message_id} to add parts to")
        for seq, part_id in enumerate(part_ids):
            # a part id already known keeps its first message, as ON CONFLICT DO NOTHING
            self._parts.setdefault((provider, part_id), _Part(message_id, seq))

    async def record_part_receipt(self, receipt: Receipt) -> tuple[str, list[Status | None]] | None:
        self._check_open()
        part = self._parts.get((receipt.provider, receipt.provider_message_id))
        if part is None:
            return None
        part.status, part.code, part.reason = receipt.status, receipt.code, receipt.reason
        siblings = sorted(
            (p for p in self._parts.values() if p.message_id == part.message_id),
            key=lambda p: p.seq,
        )
        return part.message_id, [p.status for p in siblings]

    async def claim_provider_ids(
        self, provider: str, message_id: str, provider_ids: Sequence[str], sent_since: float
    ) -> ClaimedIds:
        self._check_open()
        ids = set(provider_ids)
        taken: list[str] = []
        for message in list(self._messages.values()):
            if (
                message.id != message_id
                and message.provider == provider
                and message.provider_message_id in ids
            ):
                self._messages[message.id] = dataclasses.replace(message, provider_message_id=None)
                taken.append(message.id)
        for key, part in list(self._parts.items()):
            if key[0] == provider and key[1] in ids and part.message_id != message_id:
                del self._parts[key]
                taken.append(part.message_id)
        stale = [
            orphan_id
            for orphan_id, (receipt, received_at) in self._orphans.items()
            if receipt.provider == provider
            and receipt.provider_message_id in ids
            and received_at < sent_since
        ]
        for orphan_id in stale:
            del self._orphans[orphan_id]
        return ClaimedIds(tuple(dict.fromkeys(taken)), len(stale))

    async def defer_job(self, job_id: int, run_at: float) -> None:
        self._check_open()
        job = self._jobs.get(job_id)
        if job is not None:
            job.run_at = run_at
            job.locked_by = job.locked_until = None

    # --- customer webhooks -----------------------------------------------------------------

    async def get_webhook(self, webhook_id: int) -> WebhookRecord | None:
        self._check_open()
        return self._webhooks.get(webhook_id)

    async def record_webhook_attempt(
        self,
        attempt: WebhookAttempt,
        *,
        job_id: int | None,
        state: str,
        next_attempt_at: float | None,
    ) -> None:
        self._check_open()
        webhook = self._webhooks.get(attempt.webhook_id)
        if webhook is None:
            raise StoreConflict(f"no webhook {attempt.webhook_id} to record an attempt of")
        self._webhook_attempts.append(attempt)
        self._webhooks[webhook.id] = dataclasses.replace(
            webhook,
            state=state,
            attempts=webhook.attempts + 1,
            first_attempt_at=(
                webhook.first_attempt_at if webhook.first_attempt_at is not None else attempt.at
            ),
            last_attempt_at=attempt.at,
            next_attempt_at=next_attempt_at,
            last_status=attempt.status_code,
            last_error=attempt.error,
            delivered_at=attempt.at if state == "delivered" else webhook.delivered_at,
        )
        if job_id is None:
            return
        if next_attempt_at is None:
            self._jobs.pop(job_id, None)
            return
        job = self._jobs.get(job_id)
        if job is not None:
            job.run_at = next_attempt_at
            job.attempts += 1
            job.locked_by = job.locked_until = None

    async def list_webhooks(
        self,
        *,
        account_id: str | None = None,
        workflow_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        self._check_open()
        found = [
            webhook
            for webhook in self._webhooks.values()
            if (account_id is None or webhook.account_id == account_id)
            and (workflow_id is None or webhook.workflow_id == workflow_id)
            and (state is None or webhook.state == state)
        ]
        return found[:limit]

    async def webhook_attempts(self, webhook_ids: Sequence[int]) -> list[WebhookAttempt]:
        self._check_open()
        wanted = set(webhook_ids)
        return [attempt for attempt in self._webhook_attempts if attempt.webhook_id in wanted]

    async def replay_webhooks(
        self, webhook_ids: Sequence[int] | None, now: float, *, account_id: str | None = None
    ) -> int:
        self._check_open()
        if webhook_ids is None:
            chosen = [w for w in self._webhooks.values() if w.state == "dead"]
        else:
            wanted = set(webhook_ids)
            chosen = [w for w in self._webhooks.values() if w.id in wanted and w.url is not None]
        if account_id is not None:
            chosen = [w for w in chosen if w.account_id == account_id]
        for webhook in chosen:
            self._webhooks[webhook.id] = dataclasses.replace(
                webhook, state="pending", attempts=0, first_attempt_at=None, next_attempt_at=now
            )
            self._cancel_jobs({(WEBHOOK_JOB, str(webhook.id))})
            self._add_job(WEBHOOK_JOB, str(webhook.id), now)
        return len(chosen)

    # --- the sandbox provider's journal ----------------------------------------------------

    async def sandbox_receive(self, message: SandboxMessage) -> SandboxMessage:
        self._check_open()
        known = self._sandbox.get(message.message_id)
        if known is not None:
            if known.received_at is None:  # a resend of an accepted message is not counted
                known = dataclasses.replace(known, attempts=known.attempts + 1)
                self._sandbox[message.message_id] = known
            return known
        if any(
            m.provider_message_id == message.provider_message_id for m in self._sandbox.values()
        ):
            raise StoreConflict(f"provider message id {message.provider_message_id} is taken")
        self._sandbox[message.message_id] = message
        return message

    async def sandbox_set_receipts(
        self,
        provider_message_id: str,
        receipts_due: Sequence[tuple[float, str]],
        received: float | None,
    ) -> None:
        self._check_open()
        for message_id, message in self._sandbox.items():
            if message.provider_message_id == provider_message_id:
                self._sandbox[message_id] = dataclasses.replace(
                    message,
                    receipts_due=tuple(receipts_due),
                    received_at=received if received is not None else message.received_at,
                )

    async def sandbox_messages(self) -> list[SandboxMessage]:
        self._check_open()
        return list(self._sandbox.values())

    # --- retention -------------------------------------------------------------------------

    async def purge_idempotency_keys(self, before: float, limit: int) -> int:
        self._check_open()
        expired = [k for k, claim in self._idempotency.items() if claim.created_at < before]
        for name in expired[:limit]:
            del self._idempotency[name]
        return min(len(expired), limit)

    async def purge_workflows(self, before: float, limit: int) -> int:
        self._check_open()
        pending = {w.workflow_id for w in self._webhooks.values() if w.state == "pending"}
        finished = sorted(
            (w.finished_at, w.id)
            for w in self._workflows.values()
            if w.finished_at is not None and w.finished_at < before and w.id not in pending
        )
        for _, workflow_id in finished[:limit]:
            message_ids = self._workflow_messages.pop(workflow_id)
            refs = {workflow_id, *message_ids}
            for job_id in [j.id for j in self._jobs.values() if j.ref in refs]:
                del self._jobs[job_id]
            for message_id in message_ids:
                del self._messages[message_id]
                self._sends.pop(message_id, None)
                self._sandbox.pop(message_id, None)
            for part in [k for k, p in self._parts.items() if p.message_id in refs]:
                del self._parts[part]
            self._drop_webhooks(
                [h.id for h in self._webhooks.values() if h.workflow_id == workflow_id]
            )
            del self._events[workflow_id]
            del self._workflows[workflow_id]
        return min(len(finished), limit)

    async def purge_webhooks(self, before: float, limit: int) -> int:
        self._check_open()
        settled = [
            h.id
            for h in self._webhooks.values()
            if h.workflow_id is None and h.state != "pending" and h.created_at < before
        ][:limit]
        self._drop_webhooks(settled)
        return len(settled)

    async def purge_orphan_receipts(self, before: float, limit: int) -> int:
        self._check_open()
        old = [i for i, (_, received_at) in self._orphans.items() if received_at < before]
        for orphan_id in old[:limit]:
            del self._orphans[orphan_id]
        return min(len(old), limit)

    def _drop_webhooks(self, webhook_ids: Sequence[int]) -> None:
        """Forget these webhooks, their attempts and their jobs."""
        if not webhook_ids:
            return
        dropped = set(webhook_ids)
        refs = {str(i) for i in dropped}
        jobs = [j.id for j in self._jobs.values() if j.kind == WEBHOOK_JOB and j.ref in refs]
        for job_id in jobs:
            del self._jobs[job_id]
        for webhook_id in dropped:
            del self._webhooks[webhook_id]
        self._webhook_attempts = [a for a in self._webhook_attempts if a.webhook_id not in dropped]


def _listed(
    row: WorkflowRecord | MessageRecord, account_id: str, query: ListQuery, state: str | None
) -> bool:
    """Whether a workflow or message (with its state or status) passes a list query's filters."""
    if row.account_id != account_id:
        return False
    if query.state is not None and state != query.state:
        return False
    if query.created_after is not None and row.created_at < query.created_after:
        return False
    if query.created_before is not None and row.created_at >= query.created_before:
        return False
    return query.before is None or (row.created_at, row.id) < query.before


def _check_provider_refs(messages: Iterable[MessageRecord]) -> None:
    """Refuse two messages known to one provider by the same id (the durable unique index)."""
    seen: set[tuple[str, str]] = set()
    for message in messages:
        if message.provider is None or message.provider_message_id is None:
            continue
        ref = (message.provider, message.provider_message_id)
        if ref in seen:
            raise StoreConflict(f"provider message id {ref} belongs to another message")
        seen.add(ref)
