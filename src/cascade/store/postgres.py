"""The networked store: PostgreSQL through an asyncpg pool, with group commit on the accept path.

This module is the PostgreSQL driver of :class:`~cascade.store.sqlstore.SqlStore`: it runs the
store's plans on pooled connections, a plan that writes in a transaction of its own, and one
statement alone without one (it commits by itself, in one round trip).

Many API and worker processes on many hosts share one database. ``accept()`` calls do not each
open a transaction: they queue their request to one collector task per store, which takes every
request that is waiting (up to ``_MAX_BATCH``) and stores them all with one plan in one
transaction, then resolves each caller's future. A caller's await returns only after the commit
that holds its request. While one batch commits the next one fills, and a few batches may be in
flight at once, each on its own pooled connection. When a batch breaks a uniqueness rule or
loses a deadlock, its requests are written again one transaction each, in order, so only the
request at fault fails, as SQLite's per-write savepoints give.

Driver errors are wrapped: integrity violations become :class:`StoreConflict`, a value the
database cannot hold :class:`StoreRejected`, everything else the driver raises (connection
refused or lost, server shutting down) :class:`StoreUnavailable`.

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
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import structlog

from cascade.domain.records import Accepted, NewWorkflow
from cascade.errors import StoreConflict, StoreOutcomeUnknown, StoreRejected, StoreUnavailable
from cascade.sealing import Sealer
from cascade.store.migrations import migrations
from cascade.store.queries import load
from cascade.store.rows import Rows
from cascade.store.sqlstore import (
    AcceptOutcome,
    AcceptRows,
    Fetch,
    Plan,
    Run,
    SqlStore,
    accept_plan,
    select,
)

T = TypeVar("T")

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
#: the advisory lock that serialises migrations of one database ("cascade" in ASCII)
_MIGRATION_LOCK = int.from_bytes(b"cascade", "big")


log = structlog.get_logger(__name__)

#: everything the driver raises: server errors, client-side misuse or a broken connection's
#: protocol state (InternalClientError, e.g. after the server dropped the connection mid-query)
#: and socket errors, and a statement that outlived the command timeout
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
#: seconds a migration statement may take (or wait for another node's migration): altering a
#: large table takes longer than any statement of the service
_MIGRATION_TIMEOUT = 3600.0


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


#: errors that say the connection was lost (or ended by the server's operator), not that the
#: database refused a statement: met at COMMIT, they leave unknown whether it took
_LINE_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
#: how long an accept whose COMMIT lost its answer asks the database whether it took it (a
#: restart takes seconds), pausing from COMMIT_CHECK_PAUSE and doubling up to a second
COMMIT_CHECK_PATIENCE = 5.0
COMMIT_CHECK_PAUSE = 0.1


class _AnswerLost(Exception):
    """A batch's statements ran and its COMMIT was sent, but the line broke before the answer:
    the database may have committed it."""

    def __init__(self, outcomes: list[AcceptOutcome]) -> None:
        super().__init__("the commit's answer was lost")
        self.outcomes = outcomes


def _in_place_of_created(
    batch: list[_Request],
    outcomes: list[AcceptOutcome],
    created: list[str],
    error: Callable[[], Exception],
) -> list[AcceptOutcome]:
    """The batch's outcomes with a new ``error()`` for each request whose new workflow
    (``created``) the lost COMMIT decided; replays and conflicts, answered from what was
    committed before, stand."""
    return [
        error() if request.workflow.id in created else outcome
        for request, outcome in zip(batch, outcomes, strict=True)
    ]


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


class _Request:
    """One accept() call waiting in the collector's queue."""

    __slots__ = ("future", "rows", "workflow")

    def __init__(self, workflow: NewWorkflow, future: asyncio.Future[Accepted]) -> None:
        self.workflow = workflow
        self.future = future
        self.rows: AcceptRows | None = None


def _settle(request: _Request, outcome: AcceptOutcome | BaseException) -> None:
    """Resolve a caller's future with its outcome (unless the caller gave up waiting)."""
    if request.future.done():
        return
    if isinstance(outcome, BaseException):
        request.future.set_exception(outcome)
    else:
        request.future.set_result(outcome)


# --- running plans -------------------------------------------------------------------------

_QUERIES = load("postgres")


async def _run(conn: Any, plan: Plan[T]) -> T:
    """Run a plan's statements on ``conn``, in the caller's transaction if one is open."""
    try:
        step = next(plan)
        while True:
            if isinstance(step, Run):
                result = await _execute(conn, step)
            else:  # Signal.JOBS_QUEUED: heard by every listener when the transaction commits
                result = await conn.execute(_NOTIFY_JOBS)
            step = plan.send(result)
    except StopIteration as done:
        returned: T = done.value
        return returned


async def _execute(conn: Any, step: Run) -> Any:
    """One statement of a plan, its result taken as the plan asks."""
    query = _QUERIES[step.query]
    if step.fetch is Fetch.MANY:
        if query.before:  # a block runs statement by statement, for one set after another
            for one_set in step.params:
                for statement in query.statements:
                    await conn.execute(statement.sql, *statement.values(one_set))  # type: ignore[arg-type]
            return None
        statement = query.last
        await conn.executemany(statement.sql, statement.many(step.params))  # type: ignore[arg-type]
        return None
    if step.fetch is Fetch.ROWS_OF:
        rows_of: Any = step.params
        names, values = rows_of
        if query.before:  # a block runs statement by statement, for one row after another
            for row in values:
                for statement in query.statements:
                    await conn.execute(statement.sql, *statement.arranged(names)(row))
            return None
        statement = query.last
        await conn.executemany(statement.sql, list(map(statement.arranged(names), values)))
        return None
    if step.fetch is Fetch.EACH:
        statement = query.last
        records = await conn.fetchmany(statement.sql, statement.many(step.params))  # type: ignore[arg-type]
        return _rows(records, statement.sql)
    params: Any = step.params
    last = query.last
    for statement in query.before:
        await conn.execute(statement.sql, *statement.values(params))
    if step.fetch is Fetch.COUNT:
        status: str = await conn.execute(last.sql, *last.values(params))
        return int(status.rpartition(" ")[2])
    if step.fetch is Fetch.VALUE:
        return await conn.fetchval(last.sql, *last.values(params))
    found = await conn.fetch(last.sql, *last.values(params))
    if step.fetch is Fetch.ROWS:
        return _rows(found, last.sql)
    return found[0] if found else None


#: where each column of each statement's records is, found once
_COLUMNS: dict[str, dict[str, int]] = {}


def _rows(records: list[Any], sql: str) -> Rows:
    """A statement's records (read by position through the column map, as SQLite's tuples)."""
    if not records:
        return Rows((), {}, sql)
    columns = _COLUMNS.get(sql)
    if columns is None:
        columns = _COLUMNS[sql] = {name: index for index, name in enumerate(records[0].keys())}
    return Rows(records, columns, sql)


class PostgresStore(SqlStore):
    """The Store on a PostgreSQL database, shared by any number of processes."""

    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 16,
        command_timeout: float = 30.0,
        sealer: Sealer | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.sealer = sealer
        self.pool_size = pool_size
        #: seconds a statement may take: a connection that stopped answering without closing
        #: (a peer gone silent) would otherwise hold its caller, and the job it runs, for ever
        self.command_timeout = command_timeout
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

    async def open(self, *, migrate: bool = True) -> None:
        with _driver_errors(f"cannot connect to PostgreSQL at {_redact(self.url)}"):
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=min(2, self.pool_size),
                max_size=self.pool_size,
                command_timeout=self.command_timeout,
            )
        try:
            if migrate:
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
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK, timeout=_MIGRATION_TIMEOUT
                )
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at double precision NOT NULL)"
                )
                done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
                for migration in migrations("postgres"):
                    if migration.version in done:
                        continue
                    await conn.execute(migration.sql, timeout=_MIGRATION_TIMEOUT)
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        time.time(),
                    )
                    applied.append(f"{migration.version:04d}_{migration.name}")
        return applied

    async def close(self) -> None:
        await self.transitions.wait()
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
                    request.rows = AcceptRows.of(request.workflow)
                except Exception as exc:  # a bad request fails alone, handed to its caller
                    _settle(request, _wrap(exc, "accept failed"))
                else:
                    ready.append(request)
            if not ready:
                return
            try:
                outcomes = await self._commit(ready)
            except _AnswerLost as lost:
                outcomes = await self._committed_or_not(ready, lost)
            except _ONE_REQUEST_ERRORS as exc:
                if len(ready) == 1:
                    _settle(ready[0], _wrap(exc, "accept failed"))
                    return
                # find the request at fault: write them again one by one, in order
                for request in ready:
                    outcome: AcceptOutcome | BaseException
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

    async def _commit(self, batch: list[_Request]) -> list[AcceptOutcome]:
        """Write ``batch`` in one transaction and commit it; _AnswerLost when the line broke
        after the COMMIT was sent."""
        pool = self._require_pool()
        plan = accept_plan(
            [request.rows for request in batch if request.rows], self.idempotency_ttl
        )
        outcomes: list[AcceptOutcome] | None = None
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    outcomes = await _run(conn, plan)
            except _LINE_ERRORS as exc:
                if outcomes is not None:  # the statements ran: it broke at the COMMIT
                    raise _AnswerLost(outcomes) from exc
                raise
        self.commits += 1
        self.writes += len(batch)
        return outcomes

    async def _committed_or_not(
        self, batch: list[_Request], lost: _AnswerLost
    ) -> list[AcceptOutcome]:
        """The outcomes of a batch whose COMMIT lost its answer: as decided when the database
        has its new workflows (it committed), else StoreUnavailable (nothing was stored); asked
        until it answers, for COMMIT_CHECK_PATIENCE at most, then StoreOutcomeUnknown. A 503
        that says nothing was stored must be true: a client may retry without its key."""
        ids = [
            request.workflow.id
            for request, outcome in zip(batch, lost.outcomes, strict=True)
            if isinstance(outcome, Accepted) and outcome.created
        ]
        if not ids:  # it wrote nothing a retry could repeat (replays and conflicts only)
            return lost.outcomes
        give_up, pause = time.monotonic() + COMMIT_CHECK_PATIENCE, COMMIT_CHECK_PAUSE
        while True:
            try:
                stored = (await self._read(select("workflows_stored", ids=ids))).column("id")
            except StoreUnavailable:
                if time.monotonic() + pause > give_up:
                    break
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
                continue
            if len(stored) == len(ids):
                log.info("store.commit_answer_lost", stored=True, workflows=len(ids))
                self.commits += 1
                self.writes += len(batch)
                return lost.outcomes
            if not stored:
                log.info("store.commit_answer_lost", stored=False, workflows=len(ids))
                failed = partial(StoreUnavailable, f"accept failed: {lost.__cause__!r}")
                return _in_place_of_created(batch, lost.outcomes, ids, failed)
            break  # some of one transaction's rows: nothing this check can trust
        log.warning("store.commit_outcome_unknown", workflows=len(ids))
        unknown = (
            f"the database's answer to the commit was lost ({lost.__cause__!r}) and it "
            f"could not be asked within {COMMIT_CHECK_PATIENCE:g} s whether it took it"
        )
        return _in_place_of_created(batch, lost.outcomes, ids, lambda: StoreOutcomeUnknown(unknown))

    # --- running plans ---------------------------------------------------------------------

    async def _read(self, plan: Plan[T] | Run, *, snapshot: bool = False) -> Any:
        pool = self._require_pool()
        with _driver_errors(f"reading ({_name(plan)}) failed"):
            if isinstance(plan, Run):
                async with pool.acquire() as conn:
                    return await _execute(conn, plan)
            async with pool.acquire() as conn:
                if not snapshot:
                    return await _run(conn, plan)
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await _run(conn, plan)

    async def _write(self, plan: Callable[[], Plan[T]] | Run) -> Any:
        pool = self._require_pool()
        with _driver_errors(f"writing ({_name(plan)}) failed"):
            async with pool.acquire() as conn:
                if isinstance(plan, Run):  # one statement commits by itself
                    return await _execute(conn, plan)
                async with conn.transaction():
                    return await _run(conn, plan())

    # --- the accept path -------------------------------------------------------------------

    async def accept(self, workflow: NewWorkflow) -> Accepted:
        self._require_pool()
        if self._closing or self._collector is None:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(workflow, future))
        self._wakeup.set()
        return await future

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


def _name(plan: object) -> str:
    """What a plan is, for error messages: its query's or its function's name."""
    if isinstance(plan, Run):
        return plan.query
    function = getattr(plan, "func", plan)
    return str(getattr(function, "__name__", type(plan).__name__)).strip("_")


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
