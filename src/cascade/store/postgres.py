"""The networked store: PostgreSQL through an asyncpg pool, with group commit on the accept path.

Many API and worker processes on many hosts share one database. ``accept()`` calls do not each
open a transaction: they queue their request to one collector task per store, which takes every
request that is waiting (up to ``_MAX_BATCH``) and writes them all in one transaction, with one
``executemany`` per table, then resolves each caller's future. A caller's await returns only
after the commit that holds its request. While one batch commits the next one fills, and a few
batches may be in flight at once, each on its own pooled connection.

Requests in one batch behave as if they ran in turn: the first request naming an idempotency key
claims it, later ones with the same key replay its response (or conflict). When a batch breaks a
uniqueness rule or loses a deadlock, its requests are written again one transaction each, in
order, so only the request at fault fails, as SQLite's per-write savepoints give.

Driver errors are wrapped: integrity violations become :class:`StoreConflict`, everything else
the driver raises (connection refused or lost, server shutting down) :class:`StoreUnavailable`.

Wake-ups across processes: every transaction that queues or releases a job also sends a NOTIFY
on ``cascade_jobs`` (delivered at its commit, never for a rollback), and
:meth:`PostgresStore.listen_for_jobs` keeps a connection of its own (not a pooled one, which
would be handed to other work) LISTENing on that channel, so a worker learns of work another
process queued at once instead of at its next poll. That connection is opened again whenever it
drops; while it is down the engine's poll still finds every job, only later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

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
)
from cascade.domain.status import Status
from cascade.errors import (
    IdempotencyConflict,
    NotFound,
    StoreConflict,
    StoreRejected,
    StoreUnavailable,
)
from cascade.store import rows as rows_
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
from cascade.store.migrations import migrations
from cascade.store.rows import ACCOUNT_COLUMNS as _ACCOUNT_COLUMNS
from cascade.store.rows import APPLICATION_COLUMNS as _APPLICATION_COLUMNS
from cascade.store.rows import MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from cascade.store.rows import MESSAGE_READ as _MESSAGE_READ
from cascade.store.rows import SANDBOX_COLUMNS as _SANDBOX_COLUMNS
from cascade.store.rows import WEBHOOK_COLUMNS as _WEBHOOK_COLUMNS
from cascade.store.rows import encode_receipts as _encode_receipts
from cascade.store.rows import message as _message
from cascade.store.rows import sandbox as _sandbox
from cascade.store.rows import webhook as _webhook

_INSERT_IDEMPOTENCY = (
    "INSERT INTO idempotency_keys "
    "(account_id, key, request_sha256, status_code, response, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, key) DO UPDATE SET "
    "request_sha256 = EXCLUDED.request_sha256, status_code = EXCLUDED.status_code, "
    "response = EXCLUDED.response, created_at = EXCLUDED.created_at "
    # a key older than its time to live ($7 seconds) is taken again by this request
    "WHERE idempotency_keys.created_at <= EXCLUDED.created_at - $7 "
    "RETURNING account_id, key"
)
_SELECT_IDEMPOTENCY = (
    "SELECT account_id, key, request_sha256, status_code, response FROM idempotency_keys "
    "WHERE (account_id, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
_INSERT_WORKFLOW = (
    "INSERT INTO workflows (id, account_id, application_id, surface, state, created_at, "
    "updated_at) VALUES ($1, $2, $3, $4, 'running', $5, $6)"
)
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
    "$10, $11, $12, NULL, NULL, NULL, NULL, NULL, NULL, NULL, $13, $14, $15)"
)
_INSERT_JOB = "INSERT INTO jobs (kind, ref, run_at, created_at) VALUES ($1, $2, $3, $4)"

#: the channel a transaction that queues or releases jobs notifies (at its commit)
JOBS_CHANNEL = "cascade_jobs"
#: one notification per transaction however often it is sent: PostgreSQL folds identical ones
_NOTIFY_JOBS = f"SELECT pg_notify('{JOBS_CHANNEL}', '')"
#: seconds between liveness checks of the listening connection (a silently dead peer)
_LISTEN_CHECK = 30.0
#: seconds to wait before opening a dropped listening connection again, doubling up to the cap
_LISTEN_RETRY = 0.5
_LISTEN_RETRY_CAP = 30.0
#: seconds to wait for the server when opening, checking or closing the listening connection
_LISTEN_TIMEOUT = 10.0

#: requests written by one transaction at most
_MAX_BATCH = 256
#: a webhook attempt, its webhook's new state and its job's (deleted when no attempt follows,
#: else due at the next one), in one statement
_RECORD_WEBHOOK_ATTEMPT = (
    "WITH attempt AS (INSERT INTO webhook_attempts (webhook_id, at, status_code, error, duration) "
    "VALUES ($1, $2, $3, $4, $5)), "
    "hook AS (UPDATE webhooks SET state = $6, attempts = attempts + 1, "
    "first_attempt_at = coalesce(first_attempt_at, $2), last_attempt_at = $2, "
    "next_attempt_at = $7, last_status = $3, last_error = $4, "
    "delivered_at = CASE WHEN $6 = 'delivered' THEN $2 ELSE delivered_at END WHERE id = $1), "
    "done AS (DELETE FROM jobs WHERE id = $8 AND $7::double precision IS NULL) "
    "UPDATE jobs SET run_at = $7, attempts = attempts + 1, locked_by = NULL, "
    "locked_until = NULL WHERE id = $8 AND $7 IS NOT NULL"
)
#: the advisory lock that serialises migrations of one database ("cascade" in ASCII)
_MIGRATION_LOCK = int.from_bytes(b"cascade", "big")

_Outcome = Accepted | BaseException

log = structlog.get_logger(__name__)

#: everything the driver raises: server errors, client-side misuse or a broken connection's
#: protocol state (InternalClientError, e.g. after the server dropped the connection mid-query)
#: and socket errors
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


#: what the driver raises for a value the database cannot hold (a NUL in text, a number out of
#: range, a string it cannot encode): the request's fault, never the database's
_VALUE_ERRORS = (asyncpg.DataError, asyncpg.ProgramLimitExceededError, UnicodeError)

#: errors that belong to one request of a batch: the batch is written again one by one, so
#: that only the request at fault fails
_ONE_REQUEST_ERRORS = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.TransactionRollbackError,
    *_VALUE_ERRORS,
)


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _wrap(exc: BaseException, action: str) -> BaseException:
    """The Cascade error for a driver error (a new one per call); other errors as they are."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        wrapped: BaseException = StoreConflict(f"{action}: {exc}")
    elif isinstance(exc, _VALUE_ERRORS):
        wrapped = StoreRejected(f"{action}: {type(exc).__name__}: {exc}")
    elif isinstance(exc, _DRIVER_ERRORS):
        wrapped = StoreUnavailable(f"{action}: {type(exc).__name__}: {exc}")
    else:
        return exc
    wrapped.__cause__ = exc
    return wrapped


@contextlib.contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    """Raise the Cascade error for any driver error raised inside the block."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise _wrap(exc, action) from exc


class _Rows:
    """The rows one accepted request adds, per table, encoded before the transaction starts."""

    __slots__ = ("jobs", "messages", "workflow")

    def __init__(self, workflow: NewWorkflow) -> None:
        now = workflow.accepted_at
        self.workflow = (
            workflow.id,
            workflow.account_id,
            workflow.application_id,
            workflow.surface.value,
            now,
            now,
        )
        self.messages = [
            (
                step.message_id,
                workflow.id,
                index,
                workflow.account_id,
                step.channel,
                step.to.decode(),
                step.from_.decode(),
                step.body.decode(),
                step.client_ref,
                step.expiry_time,
                step.condition_status,
                (StepState.ACTIVE if index == 0 else StepState.WAITING).value,
                now if index == 0 else None,
                now,
                now,
            )
            for index, step in enumerate(workflow.steps)
        ]
        self.jobs = [(job.kind, job.ref, job.run_at, now) for job in workflow.jobs]


class _Request:
    """One accept() call waiting in the collector's queue."""

    __slots__ = ("future", "rows", "workflow")

    def __init__(self, workflow: NewWorkflow, future: asyncio.Future[Accepted]) -> None:
        self.workflow = workflow
        self.future = future
        self.rows: _Rows | None = None


async def _write_batch(
    conn: Any, batch: Sequence[_Request], idempotency_ttl: float
) -> list[_Outcome]:
    """Write a batch of requests on ``conn`` inside its open transaction; one outcome each."""
    outcomes: list[_Outcome | None] = [None] * len(batch)
    # the first request of the batch naming a key claims it; later ones follow its outcome
    leaders: dict[tuple[str, str], _Request] = {}
    for request in batch:
        claim = request.workflow.idempotency
        if claim is not None:
            leaders.setdefault((request.workflow.account_id, claim.key), request)
    known: dict[tuple[str, str], tuple[str, StoredResponse]] = {}
    if leaders:
        # one lock order for every batch, so two batches in flight cannot deadlock on keys
        keys = sorted(leaders)
        claimed = await conn.fetchmany(
            _INSERT_IDEMPOTENCY,
            [
                (
                    account_id,
                    key,
                    claim.request_sha256,
                    claim.response.status_code,
                    claim.response.body.decode(),
                    leaders[account_id, key].workflow.accepted_at,
                    idempotency_ttl,
                )
                for account_id, key in keys
                if (claim := leaders[account_id, key].workflow.idempotency) is not None
            ],
        )
        for account_id, key in claimed:
            leader = leaders[account_id, key].workflow.idempotency
            assert leader is not None
            known[account_id, key] = (leader.request_sha256, leader.response)
        taken = [k for k in keys if k not in known]
        if taken:
            rows = await conn.fetch(
                _SELECT_IDEMPOTENCY, [k[0] for k in taken], [k[1] for k in taken]
            )
            for account_id, key, digest, status_code, response in rows:
                known[account_id, key] = (digest, StoredResponse(status_code, response.encode()))
        for index, request in enumerate(batch):
            claim = request.workflow.idempotency
            if claim is None:
                continue
            name = (request.workflow.account_id, claim.key)
            if leaders[name] is request and name not in taken:
                continue  # this request claimed the key: it is written below
            if name not in known:
                outcomes[index] = StoreUnavailable(f"idempotency key {claim.key!r} vanished")
            elif known[name][0] != claim.request_sha256:
                outcomes[index] = IdempotencyConflict()
            else:
                outcomes[index] = Accepted(created=False, response=known[name][1])

    fresh = [
        request.rows
        for request, outcome in zip(batch, outcomes, strict=True)
        if outcome is None and request.rows is not None
    ]
    if fresh:
        await conn.executemany(_INSERT_WORKFLOW, [rows.workflow for rows in fresh])
        await conn.executemany(_INSERT_MESSAGE, [m for rows in fresh for m in rows.messages])
        jobs = [j for rows in fresh for j in rows.jobs]
        await conn.executemany(_INSERT_JOB, jobs)
        if jobs:
            await conn.execute(_NOTIFY_JOBS)
    return [Accepted(created=True) if outcome is None else outcome for outcome in outcomes]


def _settle(request: _Request, outcome: _Outcome) -> None:
    """Resolve a caller's future with its outcome (unless the caller gave up waiting)."""
    if request.future.done():
        return
    if isinstance(outcome, BaseException):
        request.future.set_exception(outcome)
    else:
        request.future.set_result(outcome)


class PostgresStore(Store):
    """The Store on a PostgreSQL database, shared by any number of processes."""

    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None
        self._pending: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._collector: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        # a few batches in flight at once, leaving most of the pool to reads and other writes
        self._slots = asyncio.Semaphore(max(1, min(4, pool_size // 4)))
        #: how many accept transactions and requests were committed (for tests and metrics)
        self.commits = 0
        self.writes = 0
        #: what listen_for_jobs calls on a notification, and the task keeping its connection
        self._wakers: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        with _driver_errors(f"cannot connect to PostgreSQL at {_redact(self.url)}"):
            self._pool = await asyncpg.create_pool(
                self.url, min_size=min(2, self.pool_size), max_size=self.pool_size
            )
        try:
            await self.migrate()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._closing = False
        self._collector = asyncio.create_task(self._collect(), name="cascade-pg-collector")

    async def migrate(self) -> list[str]:
        """Apply the migrations this database lacks, under an advisory lock; returns their names."""
        pool = self._require_pool()
        applied = []
        with _driver_errors("migrating PostgreSQL failed"):
            async with pool.acquire() as conn, conn.transaction():
                # two nodes starting at once: the second waits, then finds nothing left to do
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at double precision NOT NULL)"
                )
                done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
                for migration in migrations("postgres"):
                    if migration.version in done:
                        continue
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        time.time(),
                    )
                    applied.append(f"{migration.version:04d}_{migration.name}")
        return applied

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener  # closes the listening connection
        self._wakers.clear()
        if self._collector is not None:
            collector, self._collector = self._collector, None
            await collector  # returns once every queued request is committed
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        await self._fetch("pinging PostgreSQL failed", "SELECT 1")

    def _require_pool(self) -> Any:
        """The connection pool of an open store."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    # --- group commit ----------------------------------------------------------------------

    async def _collect(self) -> None:
        """Hand waiting requests to flushes, one batch per free slot, until closed and drained."""
        while True:
            while not self._pending:
                if self._closing:
                    await asyncio.gather(*self._flushes)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._slots.acquire()
            batch = [self._pending.popleft() for _ in range(min(_MAX_BATCH, len(self._pending)))]
            flush = asyncio.create_task(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flush_done)

    def _flush_done(self, flush: asyncio.Task[None]) -> None:
        """Free the slot of a finished flush."""
        self._flushes.discard(flush)
        self._slots.release()

    async def _flush(self, batch: list[_Request]) -> None:
        """Commit one batch and resolve its callers; an error reaches every caller it affects."""
        try:
            ready: list[_Request] = []
            for request in batch:
                try:
                    request.rows = _Rows(request.workflow)
                except Exception as exc:  # a bad request fails alone, handed to its caller
                    _settle(request, exc)
                else:
                    ready.append(request)
            if not ready:
                return
            try:
                outcomes = await self._commit(ready)
            except _ONE_REQUEST_ERRORS as exc:
                if len(ready) == 1:
                    _settle(ready[0], _wrap(exc, "accept failed"))
                    return
                # find the request at fault: write them again one by one, in order
                for request in ready:
                    try:
                        (outcome,) = await self._commit([request])
                    except Exception as exc_one:  # handed to this request's caller
                        outcome = _wrap(exc_one, "accept failed")
                    _settle(request, outcome)
                return
            except Exception as exc:  # handed to every caller of the batch
                for request in ready:
                    _settle(request, _wrap(exc, "accept failed"))
                return
            for request, outcome in zip(ready, outcomes, strict=True):
                _settle(request, outcome)
        finally:
            for request in batch:
                _settle(request, StoreUnavailable("the accept was interrupted"))

    async def _commit(self, batch: list[_Request]) -> list[_Outcome]:
        """Write ``batch`` in one transaction and commit it."""
        pool = self._require_pool()
        async with pool.acquire() as conn, conn.transaction():
            outcomes = await _write_batch(conn, batch, self.idempotency_ttl)
        self.commits += 1
        self.writes += len(batch)
        return outcomes

    # --- tenancy ---------------------------------------------------------------------------

    async def _fetch(self, action: str, sql: str, *args: Any) -> list[Sequence[Any]]:
        """Rows of one query on any pooled connection."""
        pool = self._require_pool()
        with _driver_errors(action):
            rows: list[Sequence[Any]] = await pool.fetch(sql, *args)
        return rows

    async def create_account(self, account: Account) -> None:
        await self._fetch(
            "creating an account failed",
            f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            account.id,
            account.api_key,
            account.api_secret_sha256,
            account.signature_secret,
            account.status_url,
            account.inbound_url,
            account.created_at,
        )

    async def get_account(self, account_id: str) -> Account | None:
        rows = await self._fetch(
            "reading an account failed",
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1",
            account_id,
        )
        return Account(*rows[0]) if rows else None

    async def get_account_by_api_key(self, api_key: str) -> Account | None:
        rows = await self._fetch(
            "reading an account failed",
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE api_key = $1",
            api_key,
        )
        return Account(*rows[0]) if rows else None

    async def list_accounts(self) -> list[Account]:
        rows = await self._fetch(
            "listing accounts failed",
            f'SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id COLLATE "C"',
        )
        return [Account(*row) for row in rows]

    async def update_account(
        self,
        account_id: str,
        *,
        status_url: str | _Unset | None = UNSET,
        inbound_url: str | _Unset | None = UNSET,
        signature_secret: str | _Unset = UNSET,
    ) -> Account:
        changes = {
            name: value
            for name, value in (
                ("status_url", status_url),
                ("inbound_url", inbound_url),
                ("signature_secret", signature_secret),
            )
            if value is not UNSET
        }
        if changes:
            assignments = ", ".join(
                f"{name} = ${number}" for number, name in enumerate(changes, start=2)
            )
            rows = await self._fetch(
                "updating an account failed",
                f"UPDATE accounts SET {assignments} WHERE id = $1 RETURNING {_ACCOUNT_COLUMNS}",
                account_id,
                *changes.values(),
            )
        else:
            rows = await self._fetch(
                "reading an account failed",
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1",
                account_id,
            )
        if not rows:
            raise NotFound(f"no account {account_id}")
        return Account(*rows[0])

    async def create_application(self, application: Application) -> None:
        await self._fetch(
            "creating an application failed",
            f"INSERT INTO applications ({_APPLICATION_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            application.id,
            application.account_id,
            application.name,
            application.public_key_pem,
            application.status_url,
            application.inbound_url,
            application.created_at,
        )

    async def get_application(self, application_id: str) -> Application | None:
        rows = await self._fetch(
            "reading an application failed",
            f"SELECT {_APPLICATION_COLUMNS} FROM applications WHERE id = $1",
            application_id,
        )
        return Application(*rows[0]) if rows else None

    async def list_applications(self, account_id: str) -> list[Application]:
        rows = await self._fetch(
            "listing applications failed",
            f"SELECT {_APPLICATION_COLUMNS} FROM applications WHERE account_id = $1 "
            'ORDER BY created_at, id COLLATE "C"',
            account_id,
        )
        return [Application(*row) for row in rows]

    # --- the accept path -------------------------------------------------------------------

    async def accept(self, workflow: NewWorkflow) -> Accepted:
        self._require_pool()
        if self._closing or self._collector is None:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(workflow, future))
        self._wakeup.set()
        return await future

    # --- reading back ----------------------------------------------------------------------

    async def get_workflow(self, account_id: str, workflow_id: str) -> WorkflowRecord | None:
        pool = self._require_pool()
        with _driver_errors("reading a workflow failed"):
            # one snapshot for the workflow, its messages and its timeline
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await _load_workflow(conn, workflow_id, account_id, with_events=True)

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        rows = await self._fetch(
            "reading a message failed",
            f"SELECT {_MESSAGE_READ} FROM messages WHERE id = $1 AND account_id = $2",
            message_id,
            account_id,
        )
        return _message(rows[0]) if rows else None

    async def list_workflows(self, account_id: str, query: ListQuery) -> list[WorkflowRecord]:
        where, args = _list_filter(account_id, query, "state")
        pool = self._require_pool()
        with _driver_errors("listing workflows failed"):
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                rows = await conn.fetch(
                    "SELECT id, account_id, application_id, surface, state, created_at, "
                    f"updated_at, finished_at FROM workflows WHERE {where} "
                    f'ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT ${len(args) + 1}',
                    *args,
                    query.limit,
                )
                message_rows = []
                if rows:
                    message_rows = await conn.fetch(
                        f"SELECT {_MESSAGE_READ} FROM messages "
                        "WHERE workflow_id = ANY($1::text[]) ORDER BY step",
                        [row[0] for row in rows],
                    )
        return rows_.workflows(rows, message_rows)

    async def list_messages(self, account_id: str, query: ListQuery) -> list[MessageRecord]:
        where, args = _list_filter(account_id, query, "status")
        if query.channel is not None:
            args += (query.channel,)
            where += f" AND channel = ${len(args)}"
        rows = await self._fetch(
            "listing messages failed",
            f"SELECT {_MESSAGE_READ} FROM messages WHERE {where} "
            f'ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT ${len(args) + 1}',
            *args,
            query.limit,
        )
        return [_message(row) for row in rows]

    async def pending_jobs(self, ref: str) -> list[Job]:
        rows = await self._fetch(
            "reading jobs failed",
            "SELECT id, kind, ref, run_at, attempts FROM jobs WHERE ref = $1 ORDER BY run_at, id",
            ref,
        )
        return [Job(*row) for row in rows]

    # --- the engine ------------------------------------------------------------------------

    async def find_message(self, message_id: str) -> MessageRecord | None:
        rows = await self._fetch(
            "reading a message failed",
            f"SELECT {_MESSAGE_READ} FROM messages WHERE id = $1",
            message_id,
        )
        return _message(rows[0]) if rows else None

    async def find_messages(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        if not message_ids:
            return {}
        rows = await self._fetch(
            "reading messages failed",
            f"SELECT {_MESSAGE_READ} FROM messages WHERE id = ANY($1::text[])",
            list(message_ids),
        )
        return {message.id: message for message in map(_message, rows)}

    async def claim_jobs(
        self,
        worker_id: str,
        now: float,
        limit: int,
        lease: float,
        kinds: Collection[str] | None = None,
    ) -> list[Job]:
        # SKIP LOCKED: workers on other hosts claiming at the same moment take other jobs.
        # (Two statements rather than "$5 IS NULL OR ...": a prepared statement's generic plan
        # could then use neither index.)
        of_kinds = "" if kinds is None else "AND kind = ANY($5::text[]) "
        rows = await self._fetch(
            "claiming jobs failed",
            "UPDATE jobs SET locked_by = $1, locked_until = $2 WHERE id IN ("
            "SELECT id FROM jobs WHERE run_at <= $3 "
            f"AND (locked_until IS NULL OR locked_until < $3) {of_kinds}"
            "ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
            "RETURNING id, kind, ref, run_at, attempts",
            worker_id,
            now + lease,
            now,
            limit,
            *(() if kinds is None else (list(kinds),)),
        )
        return sorted((Job(*row) for row in rows), key=lambda job: (job.run_at, job.id))

    async def extend_lease(self, worker_id: str, job_ids: Sequence[int], until: float) -> None:
        await self._fetch(
            "extending a lease failed",
            "UPDATE jobs SET locked_until = $1 WHERE id = ANY($2::bigint[]) AND locked_by = $3",
            until,
            list(job_ids),
            worker_id,
        )

    async def next_job_at(self, kinds: Collection[str] | None = None) -> float | None:
        of_kinds = "" if kinds is None else "AND kind = ANY($1::text[]) "
        rows = await self._fetch(
            "reading the next job failed",
            f"SELECT run_at FROM jobs WHERE locked_until IS NULL {of_kinds}ORDER BY run_at LIMIT 1",
            *(() if kinds is None else (list(kinds),)),
        )
        return float(rows[0][0]) if rows else None

    async def finish_job(self, job_id: int) -> None:
        await self._fetch("finishing a job failed", "DELETE FROM jobs WHERE id = $1", job_id)

    async def retry_job(
        self, job_id: int, run_at: float, *, message_id: str, error: tuple[int, str]
    ) -> None:
        pool = self._require_pool()
        with _driver_errors("rescheduling a job failed"):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE jobs SET run_at = $1, attempts = attempts + 1, locked_by = NULL, "
                    "locked_until = NULL WHERE id = $2",
                    run_at,
                    job_id,
                )
                await conn.execute(
                    "UPDATE messages SET last_error_code = $1, last_error_reason = $2 "
                    "WHERE id = $3",
                    *error,
                    message_id,
                )
                # released: a worker elsewhere may take it when due, sooner than its next poll
                await conn.execute(_NOTIFY_JOBS)

    async def begin_send(self, message_id: str, now: float) -> SendAttempt:
        pool = self._require_pool()
        with _driver_errors("recording a send attempt failed"):
            async with pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT send_attempts, send_started_at, last_error_code, last_error_reason "
                    "FROM messages WHERE id = $1 FOR UPDATE",
                    message_id,
                )
                if row is None:
                    return SendAttempt(0, None, None)
                await conn.execute(
                    "UPDATE messages SET send_attempts = send_attempts + 1, "
                    "send_started_at = coalesce(send_started_at, $2) WHERE id = $1",
                    message_id,
                    now,
                )
        error = (row[2], row[3]) if row[2] is not None else None
        return SendAttempt(row[0], row[1], error)

    async def transition(
        self, key: WorkflowKey, decide: Decide, *, done_job: int | None = None
    ) -> Decision | None:
        pool = self._require_pool()
        with _driver_errors("storing a transition failed"):
            async with pool.acquire() as conn, conn.transaction():
                workflow_id = await _workflow_id(conn, key)
                workflow = None
                if workflow_id is not None:
                    # the row lock makes transitions of one workflow run in turn across hosts
                    workflow = await _load_workflow(
                        conn, workflow_id, None, with_events=False, lock=True
                    )
                decision = None
                if workflow is not None:
                    decision = decide(workflow)
                    await _persist(conn, workflow.id, *decision)
                if done_job is not None:
                    await conn.execute("DELETE FROM jobs WHERE id = $1", done_job)
        return decision

    async def add_webhooks(self, webhooks: Sequence[NewWebhook], now: float) -> None:
        pool = self._require_pool()
        with _driver_errors("queueing webhooks failed"):
            async with pool.acquire() as conn, conn.transaction():
                if await _insert_webhooks(conn, webhooks, now):
                    await conn.execute(_NOTIFY_JOBS)

    async def add_orphan_receipt(self, receipt: Receipt, now: float) -> None:
        await self._fetch(
            "keeping a receipt failed",
            "INSERT INTO orphan_receipts (provider, provider_message_id, status, at, code, "
            "reason, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            receipt.provider,
            receipt.provider_message_id,
            receipt.status.value,
            receipt.at,
            receipt.code,
            receipt.reason,
            now,
        )

    async def take_orphan_receipts(
        self, provider: str | None = None, provider_message_id: str | None = None
    ) -> list[Receipt]:
        sql = (
            "DELETE FROM orphan_receipts o WHERE (EXISTS (SELECT 1 FROM messages m "
            "WHERE m.provider = o.provider AND m.provider_message_id = o.provider_message_id) "
            "OR EXISTS (SELECT 1 FROM message_parts p WHERE p.provider = o.provider "
            "AND p.part_id = o.provider_message_id))"
        )
        args: tuple[Any, ...] = ()
        if provider is not None:
            sql += " AND o.provider = $1 AND o.provider_message_id = $2"
            args = (provider, provider_message_id)
        rows = await self._fetch(
            "taking kept receipts failed",
            sql + " RETURNING o.id, o.provider, o.provider_message_id, o.status, o.at, o.code, "
            "o.reason",
            *args,
        )
        return [
            Receipt(r[1], r[2], Status(r[3]), r[4], r[5], r[6])
            for r in sorted(rows, key=lambda r: int(r[0]))
        ]

    async def add_message_parts(
        self, provider: str, message_id: str, part_ids: Sequence[str]
    ) -> None:
        if not part_ids:
            return
        # one statement: every part or none; a part id already known keeps its first message
        await self._fetch(
            "recording message parts failed",
            "INSERT INTO message_parts (provider, part_id, message_id, seq) "
            "SELECT $1, part, $2, (ord - 1)::integer "
            "FROM unnest($3::text[]) WITH ORDINALITY AS parts (part, ord) "
            "ON CONFLICT DO NOTHING",
            provider,
            message_id,
            list(part_ids),
        )

    async def record_part_receipt(self, receipt: Receipt) -> tuple[str, list[Status | None]] | None:
        pool = self._require_pool()
        with _driver_errors("recording a part's receipt failed"):
            async with pool.acquire() as conn, conn.transaction():
                # lock every part of the message, in order: receipts for two parts arriving at
                # once then run in turn and the second sees the first (as SQLite's one writer)
                rows = await conn.fetch(
                    "SELECT message_id, provider, part_id, status FROM message_parts "
                    "WHERE message_id = (SELECT message_id FROM message_parts "
                    "WHERE provider = $1 AND part_id = $2) ORDER BY seq FOR UPDATE",
                    receipt.provider,
                    receipt.provider_message_id,
                )
                part = (receipt.provider, receipt.provider_message_id)
                if not any((row[1], row[2]) == part for row in rows):
                    return None  # no such part
                await conn.execute(
                    "UPDATE message_parts SET status = $1, code = $2, reason = $3 "
                    "WHERE provider = $4 AND part_id = $5",
                    receipt.status.value,
                    receipt.code,
                    receipt.reason,
                    *part,
                )
        statuses = [receipt.status if (row[1], row[2]) == part else _status(row[3]) for row in rows]
        return str(rows[0][0]), statuses

    async def claim_provider_ids(
        self, provider: str, message_id: str, provider_ids: Sequence[str], sent_since: float
    ) -> ClaimedIds:
        ids = list(dict.fromkeys(provider_ids))
        if not ids:
            return ClaimedIds()
        # a read first: an id held elsewhere is rare (an SMSC restart), and a send that finds
        # none costs no transaction of its own
        held = await self._fetch(
            "checking provider ids failed",
            "SELECT 1 FROM messages WHERE provider = $1 AND provider_message_id = ANY($2::text[]) "
            "AND id <> $3 UNION ALL SELECT 1 FROM message_parts WHERE provider = $1 "
            "AND part_id = ANY($2::text[]) AND message_id <> $3 UNION ALL SELECT 1 FROM "
            "orphan_receipts WHERE provider = $1 AND provider_message_id = ANY($2::text[]) "
            "AND received_at < $4 LIMIT 1",
            provider,
            ids,
            message_id,
            sent_since,
        )
        if not held:
            return ClaimedIds()
        pool = self._require_pool()
        with _driver_errors("re-pointing provider ids failed"):
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "UPDATE messages SET provider_message_id = NULL WHERE provider = $1 "
                    "AND provider_message_id = ANY($2::text[]) AND id <> $3 RETURNING id",
                    provider,
                    ids,
                    message_id,
                )
                rows += await conn.fetch(
                    "DELETE FROM message_parts WHERE provider = $1 AND part_id = ANY($2::text[]) "
                    "AND message_id <> $3 RETURNING message_id",
                    provider,
                    ids,
                    message_id,
                )
                stale = await conn.fetch(
                    "DELETE FROM orphan_receipts WHERE provider = $1 "
                    "AND provider_message_id = ANY($2::text[]) AND received_at < $3 RETURNING id",
                    provider,
                    ids,
                    sent_since,
                )
        return ClaimedIds(tuple(dict.fromkeys(str(row[0]) for row in rows)), len(stale))

    async def listen_for_jobs(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` on every notification of queued jobs, from this process or another.

        Returns once the first attempt to listen is made (so a job queued after it returns is
        heard when the database is up); a failure is logged and retried in the background, and
        never reaches the caller."""
        self._require_pool()
        self._wakers.append(wake)
        if self._listener is not None:
            return
        first = asyncio.Event()
        listener = asyncio.create_task(self._listen(first), name="cascade-pg-listener")
        self._listener = listener
        waiting = asyncio.ensure_future(first.wait())
        try:
            await asyncio.wait({waiting, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        """A notification on the jobs channel: call every waker."""
        self._wake_all()

    def _wake_all(self) -> None:
        """Call every waker; one that fails is logged and the others still run."""
        for wake in list(self._wakers):
            try:
                wake()
            except Exception:
                log.exception("store.listen_wake_failed")

    async def _listen(self, first: asyncio.Event) -> None:
        """Keep a connection LISTENing on the jobs channel until the store closes, opening it
        again whenever it drops or fails to open, after a pause that doubles while it keeps
        failing. Nothing it meets ends it but the store closing (which cancels it)."""
        delay = _LISTEN_RETRY
        resumed = False
        while not self._closing:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self.url, timeout=_LISTEN_TIMEOUT)
                await conn.add_listener(JOBS_CHANNEL, self._notified)
                first.set()
                opened = time.monotonic()
                self._listening = conn
                if resumed:
                    log.info("store.listen_resumed", url=_redact(self.url))
                    self._wake_all()  # jobs may have been queued while nobody listened
                problem = await _until_lost(conn)
                if time.monotonic() - opened >= _LISTEN_CHECK:
                    delay = _LISTEN_RETRY  # it had been working: try again soon
                log.warning(
                    "store.listen_lost", url=_redact(self.url), error=problem, retry_in=delay
                )
            except Exception as exc:  # whatever went wrong, the engine's poll goes on
                log.warning(
                    "store.listen_failed",
                    url=_redact(self.url),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
            finally:
                self._listening = None
                if conn is not None:
                    await _close_quietly(conn)
            first.set()
            resumed = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LISTEN_RETRY_CAP)

    @property
    def listener_pid(self) -> int | None:
        """The server process of the connection listening for jobs (as pg_stat_activity shows
        it), None while there is none."""
        conn = self._listening
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    async def defer_job(self, job_id: int, run_at: float) -> None:
        await self._fetch(
            "deferring a job failed",
            "UPDATE jobs SET run_at = $1, locked_by = NULL, locked_until = NULL WHERE id = $2",
            run_at,
            job_id,
        )

    # --- customer webhooks -----------------------------------------------------------------

    async def get_webhook(self, webhook_id: int) -> WebhookRecord | None:
        rows = await self._fetch(
            "reading a webhook failed",
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1",
            webhook_id,
        )
        return _webhook(rows[0]) if rows else None

    async def get_webhooks(self, webhook_ids: Sequence[int]) -> dict[int, WebhookRecord]:
        if not webhook_ids:
            return {}
        rows = await self._fetch(
            "reading webhooks failed",
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = ANY($1::bigint[])",
            list(webhook_ids),
        )
        return {webhook.id: webhook for webhook in map(_webhook, rows)}

    async def record_webhook_attempt(
        self,
        attempt: WebhookAttempt,
        *,
        job_id: int | None,
        state: str,
        next_attempt_at: float | None,
    ) -> None:
        # one statement, so one round trip that commits on its own: the attempt's outcome is
        # durable as soon after the receiver's answer as it can be
        with _driver_errors("recording a webhook attempt failed"):
            await self._require_pool().execute(
                _RECORD_WEBHOOK_ATTEMPT,
                attempt.webhook_id,
                attempt.at,
                attempt.status_code,
                attempt.error,
                attempt.duration,
                state,
                next_attempt_at,
                job_id,
            )

    async def list_webhooks(
        self,
        *,
        account_id: str | None = None,
        workflow_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        clauses, args = [], []
        for column, value in (
            ("account_id", account_id),
            ("workflow_id", workflow_id),
            ("state", state),
        ):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        where = " AND ".join(clauses) if clauses else "true"
        rows = await self._fetch(
            "listing webhooks failed",
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE {where} "
            f"ORDER BY id LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        return [_webhook(row) for row in rows]

    async def webhook_attempts(self, webhook_ids: Sequence[int]) -> list[WebhookAttempt]:
        if not webhook_ids:
            return []
        rows = await self._fetch(
            "reading webhook attempts failed",
            "SELECT webhook_id, at, status_code, error, duration FROM webhook_attempts "
            "WHERE webhook_id = ANY($1::bigint[]) ORDER BY id",
            list(webhook_ids),
        )
        return [WebhookAttempt(*row) for row in rows]

    async def replay_webhooks(
        self, webhook_ids: Sequence[int] | None, now: float, *, account_id: str | None = None
    ) -> int:
        if webhook_ids is None:
            sql = "SELECT id FROM webhooks WHERE state = 'dead'"
            args: tuple[Any, ...] = ()
        else:
            sql = "SELECT id FROM webhooks WHERE id = ANY($1::bigint[]) AND url IS NOT NULL"
            args = (list(webhook_ids),)
        if account_id is not None:
            args += (account_id,)
            sql += f" AND account_id = ${len(args)}"
        pool = self._require_pool()
        with _driver_errors("replaying webhooks failed"):
            async with pool.acquire() as conn, conn.transaction():
                ids = [row[0] for row in await conn.fetch(sql + " ORDER BY id FOR UPDATE", *args)]
                if ids:
                    await conn.execute(
                        "UPDATE webhooks SET state = 'pending', attempts = 0, first_attempt_at = "
                        "NULL, next_attempt_at = $1 WHERE id = ANY($2::bigint[])",
                        now,
                        ids,
                    )
                    refs = [str(webhook_id) for webhook_id in ids]
                    await conn.execute(
                        "DELETE FROM jobs WHERE kind = $1 AND ref = ANY($2::text[])",
                        WEBHOOK_JOB,
                        refs,
                    )
                    await conn.executemany(
                        _INSERT_JOB, [(WEBHOOK_JOB, ref, now, now) for ref in refs]
                    )
                    await conn.execute(_NOTIFY_JOBS)
        return len(ids)

    # --- the sandbox provider's journal ----------------------------------------------------

    async def sandbox_receive(self, message: SandboxMessage) -> SandboxMessage:
        rows = await self._fetch(
            "recording a sandbox message failed",
            "INSERT INTO sandbox_messages (message_id, provider_message_id, channel, recipient, "
            "text, attempts, received_at, receipts_due) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            # a resend of a message already accepted is recognised, not counted
            "ON CONFLICT (message_id) DO UPDATE SET attempts = sandbox_messages.attempts + "
            "CASE WHEN sandbox_messages.received_at IS NULL THEN 1 ELSE 0 END "
            f"RETURNING {_SANDBOX_COLUMNS}",
            message.message_id,
            message.provider_message_id,
            message.channel,
            message.recipient,
            message.text,
            message.attempts,
            message.received_at,
            _encode_receipts(message.receipts_due),
        )
        return _sandbox(rows[0])

    async def sandbox_set_receipts(
        self,
        provider_message_id: str,
        receipts_due: Sequence[tuple[float, str]],
        received: float | None,
    ) -> None:
        await self._fetch(
            "updating a sandbox message failed",
            "UPDATE sandbox_messages SET receipts_due = $1, "
            "received_at = coalesce($2, received_at) WHERE provider_message_id = $3",
            _encode_receipts(receipts_due),
            received,
            provider_message_id,
        )

    async def sandbox_messages(self) -> list[SandboxMessage]:
        rows = await self._fetch(
            "reading the sandbox journal failed",
            f"SELECT {_SANDBOX_COLUMNS} FROM sandbox_messages ORDER BY seq",
        )
        return [_sandbox(row) for row in rows]

    # --- retention -------------------------------------------------------------------------

    async def purge_idempotency_keys(self, before: float, limit: int) -> int:
        return await self._purge(
            "purging idempotency keys failed",
            "DELETE FROM idempotency_keys WHERE (account_id, key) IN (SELECT account_id, key "
            "FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before,
            limit,
        )

    async def purge_orphan_receipts(self, before: float, limit: int) -> int:
        return await self._purge(
            "purging orphan receipts failed",
            "DELETE FROM orphan_receipts WHERE id IN (SELECT id FROM orphan_receipts "
            "WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before,
            limit,
        )

    async def _purge(self, action: str, delete: str, before: float, limit: int) -> int:
        """Run one DELETE of up to ``limit`` rows older than ``before``; how many went."""
        pool = self._require_pool()
        with _driver_errors(action):
            status: str = await pool.execute(delete, before, limit)
        return int(status.rpartition(" ")[2])

    async def purge_webhooks(self, before: float, limit: int) -> int:
        pool = self._require_pool()
        with _driver_errors("purging webhooks failed"):
            async with pool.acquire() as conn, conn.transaction():
                # SKIP LOCKED: engines purging at once each take other rows
                ids = [
                    row[0]
                    for row in await conn.fetch(
                        "SELECT id FROM webhooks WHERE workflow_id IS NULL AND created_at < $1 "
                        "AND state != 'pending' LIMIT $2 FOR UPDATE SKIP LOCKED",
                        before,
                        limit,
                    )
                ]
                await _delete_webhooks(conn, ids)
        return len(ids)

    async def purge_workflows(self, before: float, limit: int) -> int:
        pool = self._require_pool()
        with _driver_errors("purging workflows failed"):
            async with pool.acquire() as conn, conn.transaction():
                # the workflow rows stay locked until the commit, so a transition of one of
                # them waits and then finds it gone; SKIP LOCKED lets engines purge at once
                ids = [
                    row[0]
                    for row in await conn.fetch(
                        "SELECT id FROM workflows w WHERE finished_at < $1 AND NOT EXISTS "
                        "(SELECT 1 FROM webhooks h WHERE h.workflow_id = w.id "
                        "AND h.state = 'pending') ORDER BY finished_at LIMIT $2 "
                        "FOR UPDATE SKIP LOCKED",
                        before,
                        limit,
                    )
                ]
                if not ids:
                    return 0
                message_ids = [
                    row[0]
                    for row in await conn.fetch(
                        "SELECT id FROM messages WHERE workflow_id = ANY($1::text[])", ids
                    )
                ]
                webhook_ids = [
                    row[0]
                    for row in await conn.fetch(
                        "SELECT id FROM webhooks WHERE workflow_id = ANY($1::text[])", ids
                    )
                ]
                await _delete_webhooks(conn, webhook_ids)
                await conn.execute(
                    "DELETE FROM jobs WHERE ref = ANY($1::text[])", [*ids, *message_ids]
                )
                for table in ("message_parts", "sandbox_messages"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE message_id = ANY($1::text[])", message_ids
                    )
                await conn.execute("DELETE FROM events WHERE workflow_id = ANY($1::text[])", ids)
                await conn.execute("DELETE FROM messages WHERE workflow_id = ANY($1::text[])", ids)
                await conn.execute("DELETE FROM workflows WHERE id = ANY($1::text[])", ids)
        return len(ids)


async def _delete_webhooks(conn: Any, webhook_ids: Sequence[int]) -> None:
    """Delete these webhooks with their attempts and jobs."""
    if not webhook_ids:
        return
    await conn.execute(
        "DELETE FROM jobs WHERE kind = $1 AND ref = ANY($2::text[])",
        WEBHOOK_JOB,
        [str(webhook_id) for webhook_id in webhook_ids],
    )
    await conn.execute(
        "DELETE FROM webhook_attempts WHERE webhook_id = ANY($1::bigint[])", webhook_ids
    )
    await conn.execute("DELETE FROM webhooks WHERE id = ANY($1::bigint[])", webhook_ids)


def _list_filter(
    account_id: str, query: ListQuery, state_column: str
) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause and arguments of a list query ($1, $2, ... in order)."""
    args: list[Any] = [account_id]
    clauses = ["account_id = $1"]
    if query.state is not None:
        args.append(query.state)
        clauses.append(f"{state_column} = ${len(args)}")
    if query.created_after is not None:
        args.append(query.created_after)
        clauses.append(f"created_at >= ${len(args)}")
    if query.created_before is not None:
        args.append(query.created_before)
        clauses.append(f"created_at < ${len(args)}")
    if query.before is not None:
        args += query.before
        at, last = len(args) - 1, len(args)
        # ids compare byte by byte, as on SQLite, whatever the database's collation
        clauses.append(f'(created_at < ${at} OR (created_at = ${at} AND id COLLATE "C" < ${last}))')
    return " AND ".join(clauses), tuple(args)


def _status(value: str | None) -> Status | None:
    """A stored status, if any."""
    return Status(value) if value is not None else None


async def _until_lost(conn: Any) -> str:
    """Wait until a listening connection drops, checking now and then that the server still
    answers on it (a peer gone without a word closes nothing); returns what went wrong."""
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())
    while not conn.is_closed():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), _LISTEN_CHECK)
            break
        try:
            await conn.fetchval("SELECT 1", timeout=_LISTEN_TIMEOUT)
        except (*_DRIVER_ERRORS, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return "the connection was closed"


async def _close_quietly(conn: Any) -> None:
    """Close a connection that may already be broken, without raising."""
    try:
        with contextlib.suppress(*_DRIVER_ERRORS, TimeoutError):
            await conn.close(timeout=_LISTEN_TIMEOUT)
    finally:
        if not conn.is_closed():
            conn.terminate()


async def _workflow_id(conn: Any, key: WorkflowKey) -> str | None:
    """The id of the workflow ``key`` names, if any."""
    if key.workflow_id is not None:
        return key.workflow_id
    if key.message_id is not None:
        found = await conn.fetchval(
            "SELECT workflow_id FROM messages WHERE id = $1", key.message_id
        )
    else:
        found = await conn.fetchval(
            "SELECT workflow_id FROM messages WHERE provider = $1 AND provider_message_id = $2",
            key.provider,
            key.provider_message_id,
        )
    return None if found is None else str(found)


async def _load_workflow(
    conn: Any,
    workflow_id: str,
    account_id: str | None,
    *,
    with_events: bool,
    lock: bool = False,
) -> WorkflowRecord | None:
    """A workflow with its messages (and timeline), optionally locking its row."""
    sql = (
        "SELECT id, account_id, application_id, surface, state, created_at, updated_at, "
        "finished_at FROM workflows WHERE id = $1"
    )
    args: tuple[Any, ...] = (workflow_id,)
    if account_id is not None:
        sql += " AND account_id = $2"
        args = (workflow_id, account_id)
    row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), *args)
    if row is None:
        return None
    messages = await conn.fetch(
        f"SELECT {_MESSAGE_READ} FROM messages WHERE workflow_id = $1 ORDER BY step", workflow_id
    )
    events = []
    if with_events:
        events = await conn.fetch(
            "SELECT at, kind, message_id, status, code, reason, source FROM events "
            "WHERE workflow_id = $1 ORDER BY id",
            workflow_id,
        )
    return replace(
        rows_.workflow(row, map(_message, messages)), events=tuple(Event(*r) for r in events)
    )


async def _persist(
    conn: Any, workflow_id: str, changes: Changes, webhooks: Sequence[NewWebhook]
) -> None:
    """Store what a transition decided (inside the caller's transaction)."""
    now = max((event.at for event in changes.events), default=None)
    for change in changes.messages.values():
        values = change.values()
        if now is not None:
            values["updated_at"] = now
        if values:
            assignments = ", ".join(
                f"{name} = ${number}" for number, name in enumerate(values, start=2)
            )
            await conn.execute(
                f"UPDATE messages SET {assignments} WHERE id = $1",
                change.message_id,
                *values.values(),
            )
    if changes.workflow_state is not None:
        await conn.execute(
            "UPDATE workflows SET state = $1, finished_at = $2, updated_at = $2 WHERE id = $3",
            changes.workflow_state.value,
            changes.finished_at,
            workflow_id,
        )
    if changes.events:
        await conn.executemany(
            "INSERT INTO events (workflow_id, message_id, at, kind, status, code, reason, source) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (workflow_id, e.message_id, e.at, e.kind, e.status, e.code, e.reason, e.source)
                for e in changes.events
            ],
        )
    if changes.cancel_jobs:
        await conn.executemany(
            "DELETE FROM jobs WHERE kind = $1 AND ref = $2", list(changes.cancel_jobs)
        )
    created = now if now is not None else time.time()
    if changes.jobs:
        await conn.executemany(
            _INSERT_JOB, [(job.kind, job.ref, job.run_at, created) for job in changes.jobs]
        )
    if await _insert_webhooks(conn, webhooks, created) or changes.jobs:
        await conn.execute(_NOTIFY_JOBS)


async def _insert_webhooks(conn: Any, webhooks: Sequence[NewWebhook], created: float) -> int:
    """Queue webhooks, each with the URL of its kind unless it names one, and its job; returns
    how many jobs were queued."""
    queued = 0
    urls: dict[tuple[str, str | None, str], str | None] = {}
    for webhook in webhooks:
        url = webhook.url
        if url is None:
            target = (webhook.account_id, webhook.application_id, webhook.kind)
            if target not in urls:
                urls[target] = await _destination(conn, *target)
            url = urls[target]
        webhook_id = await conn.fetchval(
            "INSERT INTO webhooks (account_id, application_id, workflow_id, message_id, kind, "
            "url, body, state, created_at, next_attempt_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            webhook.account_id,
            webhook.application_id,
            webhook.workflow_id,
            webhook.message_id,
            webhook.kind,
            url,
            webhook.body.decode(),
            "pending" if url else "no_url",
            created,
            created if url else None,
        )
        if url:
            await conn.execute(_INSERT_JOB, WEBHOOK_JOB, str(webhook_id), created, created)
            queued += 1
    return queued


async def _destination(
    conn: Any, account_id: str, application_id: str | None, kind: str
) -> str | None:
    """The URL a webhook of ``kind`` goes to: the application's, else the account's."""
    column = "inbound_url" if kind == "inbound" else "status_url"
    found = await conn.fetchval(
        f"SELECT coalesce((SELECT {column} FROM applications WHERE id = $1), "
        f"(SELECT {column} FROM accounts WHERE id = $2))",
        application_id,
        account_id,
    )
    return str(found) if found else None
