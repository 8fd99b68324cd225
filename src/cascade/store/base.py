"""The storage seam: small roles, and the Store that plays them all on SQLite or PostgreSQL.

Everything durable goes through a :class:`Store`: tenants, accepted requests and, for the engine,
jobs, transitions and webhooks. Each caller takes the role it uses (``Accepting``, ``Reading``,
``JobQueue``, ...), so what a piece of code may touch is in its signature. Implementations wrap
their driver's errors into ``cascade.errors`` so nothing above this layer imports a database
module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from cascade.domain.failover import Changes
from cascade.domain.records import (
    Accepted,
    Account,
    Application,
    ChannelLink,
    InboundKeys,
    InboundRecord,
    LinkedChannel,
    MessageRecord,
    NewWebhook,
    NewWorkflow,
    Receipt,
    SandboxMessage,
    SendAttempt,
    WebhookAttempt,
    WebhookRecord,
    WebhookState,
    WorkflowRecord,
)
from cascade.domain.status import Status


class _Unset:
    """Marks an argument that was not given, as distinct from one given as None."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of durable work: what to do, to which row, and when."""

    id: int
    kind: str
    ref: str
    run_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class ClaimedIds:
    """What :meth:`Store.claim_provider_ids` took away: the older messages that held the ids,
    and how many kept receipts from before the send it dropped."""

    taken_from: tuple[str, ...] = ()
    stale_receipts: int = 0


@dataclass(frozen=True, slots=True)
class WorkflowKey:
    """Which workflow a transition is about: named by one of its messages, by its own id, or
    by the provider's id of one of its messages."""

    message_id: str | None = None
    workflow_id: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Filters and a keyset page of a list: rows created before ``before`` (created_at, id)."""

    limit: int = 50
    before: tuple[float, str] | None = None
    state: str | None = None  # workflows: running/completed/error; messages: the status
    channel: str | None = None  # messages only
    created_after: float | None = None
    created_before: float | None = None
    #: workflows only: leave out plain messages (what GET /v0.1/dispatch lists)
    dispatches_only: bool = False
    #: messages only: sent to this number or id (the dashboard's search)
    recipient: str | None = None
    #: messages only: with this client_ref (the dashboard's search)
    client_ref: str | None = None


@dataclass(frozen=True, slots=True)
class StoreOverview:
    """What a database holds, as ``cascade status`` reports it: the schema versions applied
    and those this release's migrations make, and (when the schema is complete) how many
    accounts, queued jobs and undelivered webhooks there are."""

    applied: tuple[int, ...]
    expected: tuple[int, ...]
    accounts: int | None = None
    jobs: int | None = None
    jobs_due: int | None = None
    pending_webhooks: int | None = None
    dead_webhooks: int | None = None

    @property
    def missing(self) -> tuple[int, ...]:
        """The migrations this database lacks (``cascade db upgrade`` applies them)."""
        return tuple(version for version in self.expected if version not in self.applied)

    @property
    def unknown(self) -> tuple[int, ...]:
        """Migrations applied that this release does not know (a newer release made them)."""
        return tuple(version for version in self.applied if version not in self.expected)


#: what a transition decides: the rule changes and the webhooks that report them
Decision = tuple[Changes, Sequence[NewWebhook]]
Decide = Callable[[WorkflowRecord], Decision]


#: seconds an Idempotency-Key deduplicates for, unless the store is told otherwise
IDEMPOTENCY_TTL = 24 * 3600.0


class Lifecycle(Protocol):
    """Opening, closing and answering: what a process does with its store as a whole."""

    @abc.abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect and bring the schema up to date (without ``migrate``, only connect: a
        command that inspects a database changes nothing in it)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Answer one round trip to the database (StoreUnavailable if it does not), for
        readiness."""

    @abc.abstractmethod
    async def overview(self) -> StoreOverview:
        """The schema's versions and the counts ``cascade status`` shows; it reads a database
        whatever its schema (even none), and changes nothing."""


class Tenants(Protocol):
    """Accounts and applications: who may call, and where their webhooks go."""

    @abc.abstractmethod
    async def create_account(self, account: Account) -> None:
        """Store a new account (StoreConflict if its id or api_key exists)."""

    @abc.abstractmethod
    async def get_account(self, account_id: str) -> Account | None:
        """The account with this id."""

    @abc.abstractmethod
    async def get_account_by_api_key(self, api_key: str) -> Account | None:
        """The account with this api_key (for Basic auth)."""

    @abc.abstractmethod
    async def list_accounts(self) -> list[Account]:
        """All accounts, oldest first."""

    @abc.abstractmethod
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
        """Change the given fields of an account and return it (NotFound if absent)."""

    @abc.abstractmethod
    async def create_application(self, application: Application) -> None:
        """Store a new application."""

    @abc.abstractmethod
    async def update_application(
        self,
        application_id: str,
        *,
        status_url: str | _Unset | None = UNSET,
        inbound_url: str | _Unset | None = UNSET,
        public_key_pem: str | _Unset = UNSET,
        webhook_version: str | _Unset = UNSET,
    ) -> Application:
        """Change the given fields of an application and return it (NotFound if absent)."""

    @abc.abstractmethod
    async def delete_application(self, application_id: str) -> bool:
        """Delete an application (its workflows keep its id); whether there was one."""

    @abc.abstractmethod
    async def get_application(self, application_id: str) -> Application | None:
        """The application with this id, whichever account owns it."""

    @abc.abstractmethod
    async def list_applications(self, account_id: str) -> list[Application]:
        """An account's applications, oldest first."""


class ChannelLinks(Protocol):
    """Linked channels: the pages, numbers and bots each account sends from, their provider
    credentials sealed at rest with the key of the settings (``cascade.sealing``).

    A store without a key (``CASCADE_CHANNEL_KEY`` unset) refuses to link a channel
    (ConfigError), reads no link as if there were none (an installation that links nothing
    needs no key), and refuses to read links that exist (ConfigError naming the setting);
    removing a link needs no key. A link that the key cannot open is a SealError."""

    @abc.abstractmethod
    def can_seal(self) -> bool:
        """Whether a key is set to seal credentials with (without one, add_channel_link
        refuses)."""

    @abc.abstractmethod
    async def add_channel_link(self, link: ChannelLink) -> None:
        """Link a channel to ``link.account_id``, its credentials sealed (StoreConflict if
        this channel's address is linked already, by any account)."""

    @abc.abstractmethod
    async def channel_links(self, account_id: str | None = None) -> list[ChannelLink]:
        """An account's links (every account's when None), oldest first, credentials opened."""

    @abc.abstractmethod
    async def find_channel_link(self, channel: LinkedChannel, address: str) -> ChannelLink | None:
        """The link of this channel's address, whichever account owns it (a send picks its
        credentials with it, and a platform's callback its account)."""

    @abc.abstractmethod
    async def remove_channel_link(self, account_id: str, link_id: str) -> bool:
        """Unlink the account's own link of this id; whether it had one (another account's
        link of that id stays)."""


class Accepting(Protocol):
    """The accept path: a request stored durably before its 202."""

    #: seconds after it was first used that an Idempotency-Key stops deduplicating: a request
    #: naming an older key is a new request (``open_store`` sets it from the settings)
    idempotency_ttl: float

    @abc.abstractmethod
    async def accept(self, workflow: NewWorkflow) -> Accepted:
        """Durably store a request: workflow, steps, first send job (and its timer), in one
        transaction. With an idempotency claim whose key exists, store nothing and return the
        first response (IdempotencyConflict when the request differs)."""


class Reading(Protocol):
    """Reading back what an account sent: workflows, messages and their timelines."""

    @abc.abstractmethod
    async def get_workflow(self, account_id: str, workflow_id: str) -> WorkflowRecord | None:
        """A workflow of this account with its messages and timeline."""

    @abc.abstractmethod
    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        """A message of this account."""

    @abc.abstractmethod
    async def list_workflows(self, account_id: str, query: ListQuery) -> list[WorkflowRecord]:
        """An account's workflows, newest first, with their messages (not their timelines)."""

    @abc.abstractmethod
    async def list_messages(self, account_id: str, query: ListQuery) -> list[MessageRecord]:
        """An account's messages, newest first."""

    @abc.abstractmethod
    async def pending_jobs(self, ref: str) -> list[Job]:
        """The jobs queued for one workflow or message (for tests and operators)."""


class JobQueue(Protocol):
    """Durable work: due jobs claimed under a lease, finished, retried or deferred."""

    @abc.abstractmethod
    async def claim_jobs(
        self,
        worker_id: str,
        now: float,
        limit: int,
        lease: float,
        kinds: Collection[str] | None = None,
    ) -> list[Job]:
        """Lock up to ``limit`` due jobs for ``lease`` seconds (oldest due first), skipping
        jobs another worker holds; jobs of a worker that died are taken over when its
        lease runs out. With ``kinds``, only jobs of those kinds."""

    @abc.abstractmethod
    async def extend_lease(self, worker_id: str, job_ids: Sequence[int], until: float) -> None:
        """Keep holding these jobs until ``until`` (the worker's heartbeat)."""

    @abc.abstractmethod
    async def next_job_at(self, kinds: Collection[str] | None = None) -> float | None:
        """When the earliest job nobody holds is due (of ``kinds`` when given; None when
        there is none)."""

    @abc.abstractmethod
    async def finish_job(self, job_id: int) -> None:
        """Delete a job that is done (or no longer matters)."""

    @abc.abstractmethod
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
        """Release a send job to run again at ``run_at`` and remember the transient error, in
        one transaction with a ``retry`` entry in the workflow's timeline (the error, ``at``
        when it happened, the provider that gave it as ``source``, ``run_at`` as its next
        attempt)."""

    @abc.abstractmethod
    async def defer_job(self, job_id: int, run_at: float) -> None:
        """Release a job to run again at ``run_at`` without counting an attempt."""

    async def listen_for_jobs(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another process queues a job (PostgreSQL LISTEN/NOTIFY);
        stores without a cross-process signal leave the engine to its poll."""
        return None


class Transitions(Protocol):
    """What the engine reads and moves: messages, their sends and receipts, and workflow
    transitions, each stored in one transaction."""

    @abc.abstractmethod
    async def find_message(self, message_id: str) -> MessageRecord | None:
        """A message by id, whichever account owns it (for the engine, never for the API)."""

    @abc.abstractmethod
    async def find_messages(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        """The messages of these ids that exist, by id (the engine reads a claimed batch's
        messages at once); stores with a query language do it in one query."""

    @abc.abstractmethod
    async def begin_send(self, message_id: str, now: float) -> SendAttempt:
        """Durably note that a send is starting; returns what was known before this one."""

    @abc.abstractmethod
    async def transition(
        self, key: WorkflowKey, decide: Decide, *, done_job: int | None = None
    ) -> Decision | None:
        """In one transaction: load the workflow, call ``decide`` with it, store the changes
        and webhooks it returns, and delete ``done_job``. None when no workflow matches."""

    @abc.abstractmethod
    async def add_orphan_receipt(self, receipt: Receipt, now: float) -> None:
        """Keep a receipt whose provider id matches no message yet."""

    @abc.abstractmethod
    async def matched_orphan_receipts(
        self, provider: str | None = None, provider_message_id: str | None = None
    ) -> list[Receipt]:
        """The kept receipts that now match a message (those of one provider id, or all that
        match when none is given), oldest first, each with its ``kept_id``. They stay kept
        until :meth:`drop_orphan_receipt`, so that a worker killed before it applied them
        loses none (another applies them again, which changes nothing twice)."""

    @abc.abstractmethod
    async def drop_orphan_receipt(self, kept_id: int) -> None:
        """Forget a kept receipt that has been applied (nothing when it is gone already)."""

    @abc.abstractmethod
    async def add_message_parts(
        self, provider: str, message_id: str, part_ids: Sequence[str]
    ) -> None:
        """Remember the provider ids of a message sent in several parts, in order."""

    @abc.abstractmethod
    async def record_part_receipt(self, receipt: Receipt) -> tuple[str, list[Status | None]] | None:
        """Record a receipt for one part of a multi-part message; return the message id and
        every part's latest status in order (None when the id is no known part)."""

    @abc.abstractmethod
    async def claim_provider_ids(
        self, provider: str, message_id: str, provider_ids: Sequence[str], sent_since: float
    ) -> ClaimedIds:
        """Make ``provider_ids`` name ``message_id`` alone before its send is recorded.

        A provider can hand out an id again (an SMSC that restarted counts from its first id
        again): an older message holding one of these ids, as its own id or as a part's, lets
        go of it, and receipts kept for them since before ``sent_since`` (when this send began,
        so they cannot be its own) are dropped. Changes nothing when no id is held elsewhere.
        """


class Intake(Protocol):
    """What taking the platforms' signed callbacks needs besides the links: the messages a
    Messenger watermark covers, and inbound messages recorded once however often a platform
    repeats them (``cascade.api.intake``)."""

    @abc.abstractmethod
    async def messenger_thread(
        self,
        account_id: str,
        page_id: str,
        psid: str,
        sent_until: float,
        statuses: Collection[Status],
        limit: int = 1000,
    ) -> list[str]:
        """The Messenger message ids (provider ``messenger``) of the account's messages from
        ``page_id`` to ``psid`` (their ``from.id`` and ``to.id``) whose send began at or before
        ``sent_until`` and whose status is one of ``statuses``, oldest first, at most
        ``limit``: what a delivery or read watermark of that conversation covers. A send's
        start is when Cascade began handing it to the Graph API (when that is not recorded,
        when its step started), which is never after Meta stamped it, so every message Meta
        sent at or before the watermark is found."""

    @abc.abstractmethod
    async def messenger_unsent(
        self,
        account_id: str,
        page_id: str,
        psid: str,
        sent_until: float,
        statuses: Collection[Status],
        limit: int = 1000,
    ) -> list[str]:
        """Cascade's ids of the account's Messenger messages from ``page_id`` to ``psid`` whose
        send began at or before ``sent_until`` and has no Graph id yet, with no status or one
        of ``statuses``, oldest first, at most ``limit``: what a watermark covers that
        :meth:`messenger_thread` cannot find, because the watermark beat the send's answer."""

    @abc.abstractmethod
    async def add_inbound_webhook(
        self,
        webhook: NewWebhook,
        ref: str | None,
        now: float,
        keys: InboundKeys | None = None,
    ) -> bool:
        """Queue an inbound message's webhook unless one was queued for ``ref`` (the platform's
        id of the message; None: the message has none, and is queued) before; whether it was
        queued. ``keys`` are kept with it, so :meth:`find_inbound_message` finds it by its
        uuid. The record of ``ref`` and the keys live as long as the webhook (retention
        deletes them together)."""

    @abc.abstractmethod
    async def find_inbound_message(
        self, account_id: str, message_uuid: str
    ) -> InboundRecord | None:
        """The account's inbound message whose webhook carried ``message_uuid`` (None for
        another account's, or one retention deleted)."""


class Webhooks(Protocol):
    """Customer webhooks: queued with the transitions that report them, delivered, replayed."""

    @abc.abstractmethod
    async def add_webhooks(self, webhooks: Sequence[NewWebhook], now: float) -> None:
        """Queue webhooks that belong to no transition (inbound messages, replays)."""

    @abc.abstractmethod
    async def get_webhook(self, webhook_id: int) -> WebhookRecord | None:
        """One webhook, whichever account owns it."""

    @abc.abstractmethod
    async def get_webhooks(self, webhook_ids: Sequence[int]) -> dict[int, WebhookRecord]:
        """The webhooks of these ids that exist, by id (a claimed batch's, read at once)."""

    @abc.abstractmethod
    async def record_webhook_attempt(
        self,
        attempt: WebhookAttempt,
        *,
        job_id: int | None,
        state: WebhookState,
        next_attempt_at: float | None,
    ) -> None:
        """Store an attempt and the webhook's new state; reschedule its job to
        ``next_attempt_at``, or delete it when there is no next attempt."""

    @abc.abstractmethod
    async def list_webhooks(
        self,
        *,
        account_id: str | None = None,
        workflow_id: str | None = None,
        state: WebhookState | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        """Webhooks, oldest first, filtered."""

    @abc.abstractmethod
    async def latest_webhooks(
        self,
        *,
        account_id: str | None = None,
        state: WebhookState | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        """Webhooks newest first, filtered: a page of those older than ``before_id`` (the
        last id of the page before), or the newest when None."""

    @abc.abstractmethod
    async def webhook_attempts(self, webhook_ids: Sequence[int]) -> list[WebhookAttempt]:
        """The attempts of these webhooks, in order."""

    @abc.abstractmethod
    async def replay_webhooks(
        self, webhook_ids: Sequence[int] | None, now: float, *, account_id: str | None = None
    ) -> int:
        """Queue webhooks for delivery again (these ids, or every dead letter when None);
        their retry schedule and 24-hour window start over (the attempt count restarts; the
        attempt rows stay). Returns how many."""


class Journal(Protocol):
    """The sandbox provider's journal (``channels.sandbox.SandboxJournal`` is what the sandbox
    asks of it)."""

    @abc.abstractmethod
    async def sandbox_receive(self, message: SandboxMessage) -> SandboxMessage:
        """Record one send the sandbox received: a new message is stored as given; for a
        known message_id the stored record is returned, its attempt count raised only while
        the message is not yet accepted (a resend after a crash is not a second message)."""

    @abc.abstractmethod
    async def sandbox_set_receipts(
        self,
        provider_message_id: str,
        receipts_due: Sequence[tuple[float, str]],
        received: float | None,
    ) -> None:
        """Replace the receipts the sandbox still owes for a message (and when it accepted it)."""

    @abc.abstractmethod
    async def sandbox_messages(self) -> list[SandboxMessage]:
        """Every message the sandbox received, oldest first."""

    @abc.abstractmethod
    async def sandbox_owed(self) -> list[SandboxMessage]:
        """The messages the sandbox still owes receipts for, oldest first (what it re-arms on
        start-up; a store can find them without reading the whole journal)."""


class Purging(Protocol):
    """Retention: deleting what is older than the settings keep, in small batches."""

    @abc.abstractmethod
    async def purge_idempotency_keys(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` Idempotency-Keys first used before ``before``; how many."""

    @abc.abstractmethod
    async def purge_workflows(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` workflows that finished before ``before`` and owe no webhook
        (none pending), with what hangs off them: messages, timeline, leftover jobs, message
        parts, the sandbox journal's rows, webhooks and their attempts. Returns how many
        workflows went. Safe to run from several processes at once."""

    @abc.abstractmethod
    async def purge_webhooks(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` webhooks of no workflow (inbound messages) created before
        ``before`` and no longer pending, with their attempts; how many went."""

    @abc.abstractmethod
    async def purge_orphan_receipts(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` kept receipts received before ``before`` that never matched
        a message; how many went."""


@dataclass(frozen=True, slots=True)
class DashboardSession:
    """A browser signed in to the dashboard: found by the SHA-256 of its cookie (the cookie
    is stored nowhere), with the token every form it posts must carry."""

    token_sha256: str
    account_id: str
    csrf_token: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class SignInFailures:
    """An account's failed dashboard sign-ins in a row: how many, and when the last was."""

    failures: int
    last_at: float


class DashboardSessions(Protocol):
    """The dashboard's sessions and failed sign-ins, kept in the database so that every node
    behind a load balancer sees the same (``cascade.dashboard``)."""

    @abc.abstractmethod
    async def create_dashboard_session(self, session: DashboardSession, now: float) -> None:
        """Store a new session (and delete the sessions that expired by ``now``)."""

    @abc.abstractmethod
    async def get_dashboard_session(self, token_sha256: str, now: float) -> DashboardSession | None:
        """The session of this cookie digest, unless it expired by ``now``."""

    @abc.abstractmethod
    async def delete_dashboard_session(self, token_sha256: str) -> None:
        """End a session (signing out)."""

    @abc.abstractmethod
    async def note_sign_in_failure(
        self, account_id: str, now: float, since: float
    ) -> SignInFailures:
        """Count one more failed sign-in of the account at ``now`` (the count starts again
        when the last failure was before ``since``) and return the count; atomic, so that
        nodes failing at once each count."""

    @abc.abstractmethod
    async def sign_in_failures(self, account_id: str) -> SignInFailures | None:
        """The account's failed sign-ins in a row (None when there are none)."""

    @abc.abstractmethod
    async def clear_sign_in_failures(self, account_id: str) -> None:
        """Forget the account's failed sign-ins (it signed in)."""


@dataclass(frozen=True, slots=True)
class SmppBind:
    """An SMPP connection's state as the engine holding it last saw it change: bound or not,
    the error that unbound it (or failed its bind), and when."""

    name: str
    bound: bool
    last_error: str | None
    changed_at: float


class SmppBinds(Protocol):
    """The engine's SMPP bind states, published for processes that hold no SMPP connection
    (the API processes of ``serve``, whose dashboard shows them)."""

    @abc.abstractmethod
    async def put_smpp_bind(self, bind: SmppBind) -> None:
        """Record a connection's new state (replacing the one before); called when the
        state changes, never per message."""

    @abc.abstractmethod
    async def smpp_binds(self) -> list[SmppBind]:
        """Every connection's last published state, by name."""


class SmppNodes(Protocol):
    """Which engine nodes hold each SMPP connection now, so that they share its throughput
    (the SMSC counts the account, not the bind): a row per node and connection, renewed by
    the node, that runs out when the node stops renewing it."""

    @abc.abstractmethod
    async def renew_smpp_node(
        self, connection: str, node: str, expires_at: float, now: float
    ) -> int:
        """Record that ``node`` holds ``connection`` until ``expires_at``, forget the rows of
        the connection that ran out by ``now``, and return how many nodes hold it now (this
        one included)."""

    @abc.abstractmethod
    async def drop_smpp_node(self, connection: str, node: str) -> None:
        """Forget that ``node`` holds ``connection`` (it unbound or is stopping), so the
        others take its share at their next renewal rather than after its row runs out."""


class Store(
    Lifecycle,
    Tenants,
    ChannelLinks,
    Accepting,
    Reading,
    JobQueue,
    Transitions,
    Webhooks,
    Intake,
    Journal,
    Purging,
    DashboardSessions,
    SmppBinds,
    SmppNodes,
):
    """Durable state of a Cascade installation: every role at once. Callers that need only
    part of it take that role (an API handler ``Accepting``, the retention sweep ``Purging``)."""

    idempotency_ttl: float = IDEMPOTENCY_TTL
