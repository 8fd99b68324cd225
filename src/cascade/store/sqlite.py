"""The embedded store: one SQLite file, one writer connection, group commit.

Writes are functions of a connection. A write queued while no transaction is open schedules a
flush for the event loop's next turn, which takes every write waiting and runs them in one
transaction on the loop thread; the COMMIT (the fsync) runs on a helper thread, and only when
it has returned are the writes' futures resolved. Writes queued meanwhile go together in the
next transaction. Under load, hundreds of requests share one commit; the 202 of a request is
sent only after the commit that holds it. A batch runs without a savepoint per write; if one
fails, the batch is undone and run again with each write in its own savepoint, so the failing
one alone gets the error. Accepts that follow each other in a batch (the common case under load)
are inserted together, one ``executemany`` per table. When another process holds the write
lock, the batch waits on the event loop, tried again every 0.25 ms doubling up to 4 ms (with the
writes queued meanwhile), and fails after 30 s; the helper thread waits for the lock only in the
rare one-by-one rewrite after a failed write. Reads run directly on the event loop thread on
their own connection: WAL lets them proceed while a commit is under way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

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
    IDEMPOTENCY_TTL,
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

log = structlog.get_logger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]


def _connect(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open SQLite database {path!r}: {exc}") from exc
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


#: the files of one SQLite database: SQLite gives its -wal, -shm and -journal files the mode
#: of the database file when it creates them
_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _make_private(path: str) -> None:
    """Create the database file readable by its owner only (it holds signature secrets in
    clear) before SQLite opens it, and take group and other bits off existing files."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # umask can only narrow 0600
    except OSError as exc:
        raise StoreUnavailable(f"cannot open SQLite database {path!r}: {exc}") from exc
    os.close(fd)
    for suffix in _SIDE_FILES:
        name = path + suffix
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
                log.warning("sqlite.permissions_tightened", file=name, was=oct(mode))
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. a file of another user: it still opens, so say so
            log.warning("sqlite.permissions_not_tightened", file=name, error=str(exc))


class _GroupCommitWriter:
    """The writer of one SQLite file: writes run on the event loop thread, commits on a
    helper thread.

    A write queued while no transaction is open schedules a flush for the loop's next turn; the
    flush takes every write waiting, runs them in one transaction and hands the COMMIT (the
    fsync, with the GIL released) to the helper thread. Writes queued meanwhile wait for it and
    go together in the next transaction. Only when the COMMIT has returned are the writes'
    futures resolved.

    Running the writes on the loop thread rather than on a thread of their own matters: every
    SQLite call releases the GIL, and a writer thread has to win it back after each one from an
    event loop that is busy, which made a transition cost up to a switch interval (5 ms) per
    statement under load. Now the GIL changes hands twice per transaction.

    The connection waits for no lock on the loop thread (``busy_timeout`` 0): when another
    process holds the write lock, the flush is tried again a moment later (0.25 ms, doubling
    up to 4 ms), while new writes join the waiting batch. Not waiting on the helper thread
    instead: its writes would fight the busy loop for the GIL at every statement, and SQLite's
    own busy handler sleeps 1, 2, 5, 10... ms, long after a lock held for a millisecond is free.
    """

    #: how long a batch waits for another process's write lock before it fails
    BUSY_TIMEOUT_MS = 30_000
    #: the first and the longest pause between tries for a lock another process holds
    LOCK_RETRY_FIRST = 0.00025
    LOCK_RETRY_MAX = 0.004

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._pending: list[tuple[WriteFn, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._busy = False  # a transaction is open or committing
        self._closing = False
        self._drained: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "cascade-sqlite-commit")
        self._loop: asyncio.AbstractEventLoop | None = None
        #: since when (time.monotonic()) the pending batch has found the lock taken, and the
        #: pause before the next try
        self._locked_since: float | None = None
        self._lock_retry = self.LOCK_RETRY_FIRST
        self._conn: sqlite3.Connection | None = None
        #: how many transactions and writes were committed (for tests and metrics)
        self.commits = 0
        self.writes = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._conn = _connect(self._path)
        self._conn.execute(f"PRAGMA synchronous={self._synchronous}")
        self._conn.execute("PRAGMA busy_timeout=0")

    def submit(self, fn: WriteFn) -> asyncio.Future[Any]:
        """Queue a write; the future resolves after the commit that holds it."""
        assert self._loop is not None, "writer not started"
        if self._closing:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((fn, future))
        self._schedule()
        return future

    async def close(self) -> None:
        """Commit what is queued, then close."""
        self._closing = True
        while self._pending or self._busy:
            self._drained = asyncio.Event()
            self._schedule()
            await self._drained.wait()
        self._executor.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _schedule(self) -> None:
        if self._pending and not self._scheduled and not self._busy:
            assert self._loop is not None
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._pending:
            return
        assert self._conn is not None
        assert self._loop is not None
        conn, loop = self._conn, self._loop
        batch, self._pending = self._pending, []
        self._busy = True
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                self._wait_for_lock(batch, exc)
            else:
                self._finish(batch, None, exc)
            return
        self._locked_since = None
        self._lock_retry = self.LOCK_RETRY_FIRST
        outcomes = _write_all(conn, batch)
        if outcomes is None:
            # a write failed: undo the batch and write it again on the helper thread, each
            # write in its own savepoint so that only the failing one is undone (writes are
            # functions of the database alone, so running one again is running it once)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                self._finish(batch, None, exc)
                return
            self._write_one_by_one(batch)
            return
        committed = loop.run_in_executor(self._executor, _commit, conn)
        committed.add_done_callback(lambda done: self._finish(batch, outcomes, done.exception()))

    def _wait_for_lock(
        self, batch: list[tuple[WriteFn, asyncio.Future[Any]]], busy: sqlite3.Error
    ) -> None:
        """Another process holds the write lock: try again shortly, with the writes queued
        meanwhile; fail the batch once it has waited ``BUSY_TIMEOUT_MS``."""
        assert self._loop is not None
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        self._pending = batch + self._pending
        self._busy = False
        if now - self._locked_since > self.BUSY_TIMEOUT_MS / 1000:
            self._locked_since = None
            self._lock_retry = self.LOCK_RETRY_FIRST
            waited, self._pending = self._pending, []
            self._finish(waited, None, busy)
            return
        self._scheduled = True  # the timer is the flush: writes queued meanwhile wait for it
        self._loop.call_later(self._lock_retry, self._flush)
        self._lock_retry = min(self.LOCK_RETRY_MAX, self._lock_retry * 2)

    def _write_one_by_one(self, batch: list[tuple[WriteFn, asyncio.Future[Any]]]) -> None:
        """Write the batch again on the helper thread, each write in a savepoint of its own
        (rare: only after a write failed)."""
        assert self._loop is not None
        assert self._conn is not None
        written = self._loop.run_in_executor(self._executor, self._write_waiting, self._conn, batch)
        written.add_done_callback(
            lambda done: self._finish(
                batch, None if done.exception() else done.result(), done.exception()
            )
        )

    def _write_waiting(
        self, conn: sqlite3.Connection, batch: list[tuple[WriteFn, asyncio.Future[Any]]]
    ) -> Outcomes:
        """On the helper thread: the transaction, each write in its own savepoint, waiting
        for the write lock if another process holds it."""
        conn.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = _write_each(conn, batch)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("PRAGMA busy_timeout=0")
        return outcomes

    def _finish(
        self,
        batch: list[tuple[WriteFn, asyncio.Future[Any]]],
        outcomes: Outcomes | None,
        error: BaseException | None,
    ) -> None:
        """Back on the loop: resolve the batch's futures and start the next transaction."""
        if error is not None or outcomes is None:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            outcomes = _failed(batch, error)
        else:
            self.commits += 1
            self.writes += len(batch)
        self._busy = False
        _settle(outcomes)
        self._schedule()
        if not self._pending and not self._busy and self._drained is not None:
            self._drained.set()


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _failed(
    batch: list[tuple[WriteFn, asyncio.Future[Any]]], error: BaseException | None
) -> Outcomes:
    failure = StoreUnavailable(f"SQLite commit failed: {error}")
    failure.__cause__ = error
    return [(future, None, failure) for _, future in batch]


Outcomes = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


def _write_all(
    conn: sqlite3.Connection, batch: list[tuple[WriteFn, asyncio.Future[Any]]]
) -> Outcomes | None:
    """Run a batch without savepoints (two statements fewer per write); None as soon as one
    write fails, leaving the transaction for the caller to roll back."""
    outcomes: Outcomes = []
    start = 0
    try:
        while start < len(batch):
            end = start
            while end < len(batch) and _bulk_accept(batch[end][0]):
                end += 1
            if end - start > 1:
                run = batch[start:end]
                _insert_workflows(conn, [fn.workflow for fn, _ in run if isinstance(fn, _Accept)])
                created = Accepted(created=True)
                outcomes.extend((future, created, None) for _, future in run)
                start = end
                continue
            fn, future = batch[start]
            outcomes.append((future, fn(conn), None))
            start += 1
    except Exception:  # the slow path finds which write failed, and hands it its error
        return None
    return outcomes


def _write_each(
    conn: sqlite3.Connection, batch: list[tuple[WriteFn, asyncio.Future[Any]]]
) -> Outcomes:
    """Run a batch with each write (or run of accepts) in its own savepoint."""
    outcomes: Outcomes = []
    start = 0
    while start < len(batch):
        end = start
        while end < len(batch) and _bulk_accept(batch[end][0]):
            end += 1
        if end - start > 1 and _accept_many(conn, batch[start:end], outcomes):
            start = end
            continue
        for fn, future in batch[start : max(end, start + 1)]:
            _write_one(conn, fn, future, outcomes)
        start = max(end, start + 1)
    return outcomes


def _write_one(
    conn: sqlite3.Connection, fn: WriteFn, future: asyncio.Future[Any], outcomes: Outcomes
) -> None:
    """Run one write in its own savepoint: if it fails, only it is undone."""
    conn.execute("SAVEPOINT write")
    try:
        result = fn(conn)
    except Exception as exc:  # handed to the caller's future, not swallowed
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        outcomes.append((future, None, _wrap(exc)))
    else:
        conn.execute("RELEASE write")
        outcomes.append((future, result, None))


class _Accept:
    """The write of one accepted request. It runs like any write, and a run of them that
    follow each other in a batch is inserted with one statement per table instead (the same
    rows, a fraction of the statements and of the GIL hand-overs)."""

    __slots__ = ("idempotency_ttl", "workflow")

    def __init__(self, workflow: NewWorkflow, idempotency_ttl: float = IDEMPOTENCY_TTL) -> None:
        self.workflow = workflow
        self.idempotency_ttl = idempotency_ttl

    def __call__(self, conn: sqlite3.Connection) -> Accepted:
        return _insert_workflow(conn, self.workflow, self.idempotency_ttl)


def _bulk_accept(fn: WriteFn) -> bool:
    """Whether a write can join a bulk insert (an accept without an Idempotency-Key, whose
    lookup must see the writes before it)."""
    return isinstance(fn, _Accept) and fn.workflow.idempotency is None


def _accept_many(
    conn: sqlite3.Connection,
    run: list[tuple[WriteFn, asyncio.Future[Any]]],
    outcomes: Outcomes,
) -> bool:
    """Insert a run of accepts at once; False (and nothing written) if any of them fails, so
    that the caller writes them one by one and only the failing one gets the error."""
    workflows = [fn.workflow for fn, _ in run if isinstance(fn, _Accept)]
    conn.execute("SAVEPOINT bulk")
    try:
        _insert_workflows(conn, workflows)
    except Exception:  # e.g. an id that exists: the one-by-one path finds which
        conn.execute("ROLLBACK TO bulk")
        conn.execute("RELEASE bulk")
        return False
    conn.execute("RELEASE bulk")
    created = Accepted(created=True)
    outcomes.extend((future, created, None) for _, future in run)
    return True


def _wrap(exc: Exception) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError):
        wrapped: BaseException = StoreConflict(str(exc))
    elif isinstance(exc, sqlite3.DataError | UnicodeError | OverflowError):
        # a value SQLite cannot hold (too long, a lone surrogate, an integer over 64 bits)
        wrapped = StoreRejected(f"{type(exc).__name__}: {exc}")
    elif isinstance(exc, sqlite3.Error):
        wrapped = StoreUnavailable(str(exc))
    else:
        return exc
    wrapped.__cause__ = exc
    return wrapped


def _settle(outcomes: Iterable[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL, or the string itself when it has no such
    prefix; it refuses nothing (``service.open_store`` refuses an empty path and ``:memory:``)."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return path


class SqliteStore(Store):
    """The Store on one SQLite file."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self._writer = _GroupCommitWriter(self.path, synchronous)
        self._reader: sqlite3.Connection | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.migrate()
        self._reader = _connect(self.path)
        self._writer.start(asyncio.get_running_loop())

    def migrate(self) -> list[str]:
        """Apply the migrations this file lacks; returns their names."""
        _make_private(self.path)
        conn = _connect(self.path)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for migration in migrations("sqlite"):
                if migration.version in done:
                    continue
                conn.executescript(
                    "BEGIN IMMEDIATE;\n"
                    f"{migration.sql}\n"
                    "INSERT INTO schema_migrations VALUES "
                    f"({migration.version}, '{migration.name}', {time.time()});\n"
                    "COMMIT;"
                )
                applied.append(f"{migration.version:04d}_{migration.name}")
            return applied
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"migrating {self.path} failed: {exc}") from exc
        finally:
            conn.close()

    async def close(self) -> None:
        await self._writer.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer (group commit makes this < writes)."""
        return self._writer.commits

    @property
    def writes(self) -> int:
        """Writes committed so far."""
        return self._writer.writes

    async def ping(self) -> None:
        self._read("SELECT 1")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._writer.submit(fn)
        return result

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._reading(
            lambda conn: conn.execute(sql, params).fetchall()
        )
        return rows

    def _reading(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` run on the reader connection, its SQLite errors as StoreUnavailable."""
        assert self._reader is not None, "store not open"
        try:
            return fn(self._reader)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    def _read_ids(self, select: str, ids: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows ``select`` finds among those of these ids (a claimed batch's, read at once)."""
        if not ids:
            return []
        return self._read(f"{select} WHERE id IN ({', '.join('?' * len(ids))})", tuple(ids))

    # --- tenancy ---------------------------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    account.id,
                    account.api_key,
                    account.api_secret_sha256,
                    account.signature_secret,
                    account.status_url,
                    account.inbound_url,
                    account.created_at,
                ),
            )

        await self._write(write)

    async def get_account(self, account_id: str) -> Account | None:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
        return Account(*rows[0]) if rows else None

    async def get_account_by_api_key(self, api_key: str) -> Account | None:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE api_key = ?", (api_key,))
        return Account(*rows[0]) if rows else None

    async def list_accounts(self) -> list[Account]:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id")
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

        def write(conn: sqlite3.Connection) -> Account | None:
            if changes:
                assignments = ", ".join(f"{name} = ?" for name in changes)
                conn.execute(
                    f"UPDATE accounts SET {assignments} WHERE id = ?",
                    (*changes.values(), account_id),
                )
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            return Account(*row) if row else None

        account = await self._write(write)
        if account is None:
            raise NotFound(f"no account {account_id}")
        return account

    async def create_application(self, application: Application) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO applications ({_APPLICATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    application.id,
                    application.account_id,
                    application.name,
                    application.public_key_pem,
                    application.status_url,
                    application.inbound_url,
                    application.created_at,
                ),
            )

        await self._write(write)

    async def get_application(self, application_id: str) -> Application | None:
        rows = self._read(
            f"SELECT {_APPLICATION_COLUMNS} FROM applications WHERE id = ?", (application_id,)
        )
        return Application(*rows[0]) if rows else None

    async def list_applications(self, account_id: str) -> list[Application]:
        rows = self._read(
            f"SELECT {_APPLICATION_COLUMNS} FROM applications WHERE account_id = ? "
            "ORDER BY created_at, id",
            (account_id,),
        )
        return [Application(*row) for row in rows]

    # --- the accept path -------------------------------------------------------------------

    async def accept(self, workflow: NewWorkflow) -> Accepted:
        result: Accepted = await self._writer.submit(_Accept(workflow, self.idempotency_ttl))
        return result

    # --- reading back ----------------------------------------------------------------------

    async def get_workflow(self, account_id: str, workflow_id: str) -> WorkflowRecord | None:
        assert self._reader is not None, "store not open"
        try:
            return _load_workflow(self._reader, workflow_id, account_id, with_events=True)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    async def get_message(self, account_id: str, message_id: str) -> MessageRecord | None:
        rows = self._read(
            f"SELECT {_MESSAGE_READ} FROM messages WHERE id = ? AND account_id = ?",
            (message_id, account_id),
        )
        return _message(rows[0]) if rows else None

    async def list_workflows(self, account_id: str, query: ListQuery) -> list[WorkflowRecord]:
        where, params = _list_filter(account_id, query, "state")
        rows = self._read(
            "SELECT id, account_id, application_id, surface, state, created_at, updated_at, "
            f"finished_at FROM workflows WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, query.limit),
        )
        if not rows:
            return []
        marks = ", ".join("?" for _ in rows)
        message_rows = self._read(
            f"SELECT {_MESSAGE_READ} FROM messages WHERE workflow_id IN ({marks}) ORDER BY step",
            tuple(r[0] for r in rows),
        )
        return rows_.workflows(rows, message_rows)

    async def list_messages(self, account_id: str, query: ListQuery) -> list[MessageRecord]:
        where, params = _list_filter(account_id, query, "status")
        if query.channel is not None:
            where += " AND channel = ?"
            params += (query.channel,)
        rows = self._read(
            f"SELECT {_MESSAGE_READ} FROM messages WHERE {where} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, query.limit),
        )
        return [_message(row) for row in rows]

    async def pending_jobs(self, ref: str) -> list[Job]:
        rows = self._read(
            "SELECT id, kind, ref, run_at, attempts FROM jobs WHERE ref = ? ORDER BY run_at, id",
            (ref,),
        )
        return [Job(*row) for row in rows]

    # --- the engine ------------------------------------------------------------------------

    async def find_message(self, message_id: str) -> MessageRecord | None:
        rows = self._read(f"SELECT {_MESSAGE_READ} FROM messages WHERE id = ?", (message_id,))
        return _message(rows[0]) if rows else None

    async def find_messages(self, message_ids: Sequence[str]) -> dict[str, MessageRecord]:
        rows = self._read_ids(f"SELECT {_MESSAGE_READ} FROM messages", message_ids)
        return {message.id: message for message in map(_message, rows)}

    async def claim_jobs(
        self,
        worker_id: str,
        now: float,
        limit: int,
        lease: float,
        kinds: Collection[str] | None = None,
    ) -> list[Job]:
        of_kinds, kind_params = _of_kinds(kinds)

        def write(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "UPDATE jobs SET locked_by = ?, locked_until = ? WHERE id IN ("
                f"SELECT id FROM jobs WHERE run_at <= ?{of_kinds} "
                "AND (locked_until IS NULL OR locked_until < ?) ORDER BY run_at LIMIT ?) "
                "RETURNING id, kind, ref, run_at, attempts",
                (worker_id, now + lease, now, *kind_params, now, limit),
            ).fetchall()
            return sorted((Job(*row) for row in rows), key=lambda job: (job.run_at, job.id))

        return await self._write(write)

    async def extend_lease(self, worker_id: str, job_ids: Sequence[int], until: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE jobs SET locked_until = ? WHERE id = ? AND locked_by = ?",
                [(until, job_id, worker_id) for job_id in job_ids],
            )

        await self._write(write)

    async def next_job_at(self, kinds: Collection[str] | None = None) -> float | None:
        of_kinds, kind_params = _of_kinds(kinds)
        rows = self._read(
            f"SELECT run_at FROM jobs WHERE locked_until IS NULL{of_kinds} ORDER BY run_at LIMIT 1",
            kind_params,
        )
        return float(rows[0][0]) if rows else None

    async def finish_job(self, job_id: int) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    async def retry_job(
        self, job_id: int, run_at: float, *, message_id: str, error: tuple[int, str]
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET run_at = ?, attempts = attempts + 1, locked_by = NULL, "
                "locked_until = NULL WHERE id = ?",
                (run_at, job_id),
            )
            conn.execute(
                "UPDATE messages SET last_error_code = ?, last_error_reason = ? WHERE id = ?",
                (*error, message_id),
            )
            # a transition's decision reads the last error (the window closing reports it)
            conn.execute(
                "UPDATE workflows SET version = version + 1 "
                "WHERE id = (SELECT workflow_id FROM messages WHERE id = ?)",
                (message_id,),
            )

        await self._write(write)

    async def begin_send(self, message_id: str, now: float) -> SendAttempt:
        def write(conn: sqlite3.Connection) -> SendAttempt:
            row = conn.execute(
                "SELECT send_attempts, send_started_at, last_error_code, last_error_reason "
                "FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            conn.execute(
                "UPDATE messages SET send_attempts = send_attempts + 1, "
                "send_started_at = coalesce(send_started_at, ?) WHERE id = ?",
                (now, message_id),
            )
            if row is None:
                return SendAttempt(0, None, None)
            error = (row[2], row[3]) if row[2] is not None else None
            return SendAttempt(row[0], row[1], error)

        return await self._write(write)

    async def transition(
        self, key: WorkflowKey, decide: Decide, *, done_job: int | None = None
    ) -> Decision | None:
        # The load and the decision are made before the write lock is taken, on the reader
        # connection; the transaction only checks that the workflow's version is still the one
        # read (else loads and decides again inside) and writes. Processes sharing the file
        # queue for that lock, and it was held mostly for decisions (BENCHMARKS.md).
        seen = self._reading(lambda conn: _load_for_transition(conn, key))
        early = None if seen is None else (seen[0].id, seen[1], decide(seen[0]))

        def write(conn: sqlite3.Connection) -> Decision | None:
            decided: tuple[str, Decision] | None = None
            if early is not None:
                workflow_id, version, decision = early
                row = conn.execute(
                    "SELECT version FROM workflows WHERE id = ?", (workflow_id,)
                ).fetchone()
                if row is not None and row[0] == version:
                    decided = (workflow_id, decision)
            if decided is None:
                loaded = _load_for_transition(conn, key)
                if loaded is not None:
                    decided = (loaded[0].id, decide(loaded[0]))
            if done_job is not None:
                conn.execute("DELETE FROM jobs WHERE id = ?", (done_job,))
            if decided is None:
                return None
            workflow_id, (changes, webhooks) = decided
            _persist(conn, workflow_id, changes, webhooks)
            return changes, webhooks

        return await self._write(write)

    async def add_webhooks(self, webhooks: Sequence[NewWebhook], now: float) -> None:
        await self._write(lambda conn: _insert_webhooks(conn, webhooks, now))

    async def add_orphan_receipt(self, receipt: Receipt, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO orphan_receipts (provider, provider_message_id, status, at, code, "
                "reason, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    receipt.provider,
                    receipt.provider_message_id,
                    receipt.status.value,
                    receipt.at,
                    receipt.code,
                    receipt.reason,
                    now,
                ),
            )

        await self._write(write)

    async def take_orphan_receipts(
        self, provider: str | None = None, provider_message_id: str | None = None
    ) -> list[Receipt]:
        if provider is not None and not self._read(
            "SELECT 1 FROM orphan_receipts WHERE provider = ? AND provider_message_id = ? LIMIT 1",
            (provider, provider_message_id),
        ):
            # none kept for it (the usual case, after every send): no write, and so no
            # transaction of its own when the engine is not busy. One stored after this read
            # is matched by the engine's periodic sweep, as one stored after the write would be
            return []

        def write(conn: sqlite3.Connection) -> list[Receipt]:
            sql = (
                "SELECT o.id, o.provider, o.provider_message_id, o.status, o.at, o.code, o.reason "
                "FROM orphan_receipts o WHERE (EXISTS (SELECT 1 FROM messages m "
                "WHERE m.provider = o.provider AND m.provider_message_id = o.provider_message_id) "
                "OR EXISTS (SELECT 1 FROM message_parts p WHERE p.provider = o.provider "
                "AND p.part_id = o.provider_message_id))"
            )
            params: tuple[Any, ...] = ()
            if provider is not None:
                sql += " AND o.provider = ? AND o.provider_message_id = ?"
                params = (provider, provider_message_id)
            rows = conn.execute(sql + " ORDER BY o.id", params).fetchall()
            conn.executemany("DELETE FROM orphan_receipts WHERE id = ?", [(r[0],) for r in rows])
            return [Receipt(r[1], r[2], Status(r[3]), r[4], r[5], r[6]) for r in rows]

        return await self._write(write)

    async def add_message_parts(
        self, provider: str, message_id: str, part_ids: Sequence[str]
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO message_parts (provider, part_id, message_id, seq) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(provider, part, message_id, seq) for seq, part in enumerate(part_ids)],
            )

        await self._write(write)

    async def record_part_receipt(self, receipt: Receipt) -> tuple[str, list[Status | None]] | None:
        def write(conn: sqlite3.Connection) -> tuple[str, list[Status | None]] | None:
            row = conn.execute(
                "UPDATE message_parts SET status = ?, code = ?, reason = ? "
                "WHERE provider = ? AND part_id = ? RETURNING message_id",
                (
                    receipt.status.value,
                    receipt.code,
                    receipt.reason,
                    receipt.provider,
                    receipt.provider_message_id,
                ),
            ).fetchone()
            if row is None:
                return None
            statuses = [
                Status(r[0]) if r[0] is not None else None
                for r in conn.execute(
                    "SELECT status FROM message_parts WHERE message_id = ? ORDER BY seq", (row[0],)
                )
            ]
            return str(row[0]), statuses

        return await self._write(write)

    async def claim_provider_ids(
        self, provider: str, message_id: str, provider_ids: Sequence[str], sent_since: float
    ) -> ClaimedIds:
        ids = list(dict.fromkeys(provider_ids))
        if not ids:
            return ClaimedIds()
        marks = ", ".join("?" * len(ids))
        ours = (provider, *ids, message_id)
        orphans = (provider, *ids, sent_since)
        # a read first: an id held elsewhere is rare (an SMSC restart), and a send that finds
        # none costs no write transaction of its own
        if not self._read(
            f"SELECT 1 FROM messages WHERE provider = ? AND provider_message_id IN ({marks}) "
            f"AND id <> ? UNION ALL SELECT 1 FROM message_parts WHERE provider = ? "
            f"AND part_id IN ({marks}) AND message_id <> ? UNION ALL SELECT 1 FROM "
            f"orphan_receipts WHERE provider = ? AND provider_message_id IN ({marks}) "
            "AND received_at < ? LIMIT 1",
            (*ours, *ours, *orphans),
        ):
            return ClaimedIds()

        def write(conn: sqlite3.Connection) -> ClaimedIds:
            taken = [
                str(r[0])
                for r in conn.execute(
                    f"UPDATE messages SET provider_message_id = NULL WHERE provider = ? "
                    f"AND provider_message_id IN ({marks}) AND id <> ? RETURNING id",
                    ours,
                ).fetchall()
            ]
            taken += [
                str(r[0])
                for r in conn.execute(
                    f"DELETE FROM message_parts WHERE provider = ? AND part_id IN ({marks}) "
                    "AND message_id <> ? RETURNING message_id",
                    ours,
                ).fetchall()
            ]
            stale = conn.execute(
                f"DELETE FROM orphan_receipts WHERE provider = ? "
                f"AND provider_message_id IN ({marks}) AND received_at < ?",
                orphans,
            ).rowcount
            taken = list(dict.fromkeys(taken))
            # a transition decided on the older workflow before this decides again
            conn.executemany(
                "UPDATE workflows SET version = version + 1 "
                "WHERE id = (SELECT workflow_id FROM messages WHERE id = ?)",
                [(taken_id,) for taken_id in taken],
            )
            return ClaimedIds(tuple(taken), stale)

        return await self._write(write)

    async def defer_job(self, job_id: int, run_at: float) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE jobs SET run_at = ?, locked_by = NULL, locked_until = NULL WHERE id = ?",
                (run_at, job_id),
            )
        )

    # --- customer webhooks -----------------------------------------------------------------

    async def get_webhook(self, webhook_id: int) -> WebhookRecord | None:
        rows = self._read(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,))
        return _webhook(rows[0]) if rows else None

    async def get_webhooks(self, webhook_ids: Sequence[int]) -> dict[int, WebhookRecord]:
        rows = self._read_ids(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks", webhook_ids)
        return {webhook.id: webhook for webhook in map(_webhook, rows)}

    async def record_webhook_attempt(
        self,
        attempt: WebhookAttempt,
        *,
        job_id: int | None,
        state: str,
        next_attempt_at: float | None,
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO webhook_attempts (webhook_id, at, status_code, error, duration) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    attempt.webhook_id,
                    attempt.at,
                    attempt.status_code,
                    attempt.error,
                    attempt.duration,
                ),
            )
            conn.execute(
                "UPDATE webhooks SET state = ?, attempts = attempts + 1, "
                "first_attempt_at = coalesce(first_attempt_at, ?), last_attempt_at = ?, "
                "next_attempt_at = ?, last_status = ?, last_error = ?, "
                "delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END "
                "WHERE id = ?",
                (
                    state,
                    attempt.at,
                    attempt.at,
                    next_attempt_at,
                    attempt.status_code,
                    attempt.error,
                    state,
                    attempt.at,
                    attempt.webhook_id,
                ),
            )
            if job_id is None:
                return
            if next_attempt_at is None:
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            else:
                conn.execute(
                    "UPDATE jobs SET run_at = ?, attempts = attempts + 1, locked_by = NULL, "
                    "locked_until = NULL WHERE id = ?",
                    (next_attempt_at, job_id),
                )

        await self._write(write)

    async def list_webhooks(
        self,
        *,
        account_id: str | None = None,
        workflow_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[WebhookRecord]:
        clauses, params = [], []
        for column, value in (
            ("account_id", account_id),
            ("workflow_id", workflow_id),
            ("state", state),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = " AND ".join(clauses) if clauses else "1 = 1"
        rows = self._read(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE {where} ORDER BY id LIMIT ?",
            (*params, limit),
        )
        return [_webhook(row) for row in rows]

    async def webhook_attempts(self, webhook_ids: Sequence[int]) -> list[WebhookAttempt]:
        if not webhook_ids:
            return []
        marks = ", ".join("?" for _ in webhook_ids)
        rows = self._read(
            "SELECT webhook_id, at, status_code, error, duration FROM webhook_attempts "
            f"WHERE webhook_id IN ({marks}) ORDER BY id",
            tuple(webhook_ids),
        )
        return [WebhookAttempt(*row) for row in rows]

    async def replay_webhooks(
        self, webhook_ids: Sequence[int] | None, now: float, *, account_id: str | None = None
    ) -> int:
        def write(conn: sqlite3.Connection) -> int:
            if webhook_ids is None:
                sql = "SELECT id FROM webhooks WHERE state = 'dead'"
                params: tuple[Any, ...] = ()
            else:
                marks = ", ".join("?" for _ in webhook_ids) or "NULL"
                sql = f"SELECT id FROM webhooks WHERE id IN ({marks}) AND url IS NOT NULL"
                params = tuple(webhook_ids)
            if account_id is not None:
                sql += " AND account_id = ?"
                params += (account_id,)
            ids = [row[0] for row in conn.execute(sql, params)]
            for webhook_id in ids:
                conn.execute(
                    "UPDATE webhooks SET state = 'pending', attempts = 0, "
                    "first_attempt_at = NULL, next_attempt_at = ? WHERE id = ?",
                    (now, webhook_id),
                )
                conn.execute(
                    "DELETE FROM jobs WHERE kind = ? AND ref = ?", (WEBHOOK_JOB, str(webhook_id))
                )
                conn.execute(
                    "INSERT INTO jobs (kind, ref, run_at, created_at) VALUES (?, ?, ?, ?)",
                    (WEBHOOK_JOB, str(webhook_id), now, now),
                )
            return len(ids)

        return await self._write(write)

    # --- the sandbox provider's journal ----------------------------------------------------

    async def sandbox_receive(self, message: SandboxMessage) -> SandboxMessage:
        def write(conn: sqlite3.Connection) -> SandboxMessage:
            conn.execute(
                "INSERT INTO sandbox_messages (message_id, provider_message_id, channel, "
                "recipient, text, attempts, received_at, receipts_due) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET "
                # a resend of a message already accepted is recognised, not counted
                "attempts = attempts + 1 WHERE sandbox_messages.received_at IS NULL",
                (
                    message.message_id,
                    message.provider_message_id,
                    message.channel,
                    message.recipient,
                    message.text,
                    message.attempts,
                    message.received_at,
                    _encode_receipts(message.receipts_due),
                ),
            )
            row = conn.execute(
                f"SELECT {_SANDBOX_COLUMNS} FROM sandbox_messages WHERE message_id = ?",
                (message.message_id,),
            ).fetchone()
            return _sandbox(row)

        return await self._write(write)

    async def sandbox_set_receipts(
        self,
        provider_message_id: str,
        receipts_due: Sequence[tuple[float, str]],
        received: float | None,
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sandbox_messages SET receipts_due = ?, "
                "received_at = coalesce(?, received_at) WHERE provider_message_id = ?",
                (_encode_receipts(receipts_due), received, provider_message_id),
            )

        await self._write(write)

    async def sandbox_owed(self) -> list[SandboxMessage]:
        # '[]' is how _encode_receipts writes "nothing owed": the journal of every message ever
        # sent is scanned by SQLite, and only the few still owing become objects
        rows = self._read(
            f"SELECT {_SANDBOX_COLUMNS} FROM sandbox_messages WHERE receipts_due != '[]' "
            "ORDER BY rowid"
        )
        return [_sandbox(row) for row in rows]

    async def sandbox_messages(self) -> list[SandboxMessage]:
        rows = self._read(f"SELECT {_SANDBOX_COLUMNS} FROM sandbox_messages ORDER BY rowid")
        return [_sandbox(row) for row in rows]

    # --- retention -------------------------------------------------------------------------

    async def purge_idempotency_keys(self, before: float, limit: int) -> int:
        return await self._purge(
            "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys "
            "WHERE created_at < ? LIMIT ?)",
            before,
            limit,
        )

    async def purge_orphan_receipts(self, before: float, limit: int) -> int:
        return await self._purge(
            "DELETE FROM orphan_receipts WHERE id IN (SELECT id FROM orphan_receipts "
            "WHERE received_at < ? LIMIT ?)",
            before,
            limit,
        )

    async def _purge(self, delete: str, before: float, limit: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(delete, (before, limit)).rowcount

        return await self._write(write)

    async def purge_webhooks(self, before: float, limit: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM webhooks WHERE workflow_id IS NULL AND created_at < ? "
                    "AND state != 'pending' LIMIT ?",
                    (before, limit),
                )
            ]
            _delete_webhooks(conn, ids)
            return len(ids)

        return await self._write(write)

    async def purge_workflows(self, before: float, limit: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM workflows w WHERE finished_at < ? AND NOT EXISTS "
                    "(SELECT 1 FROM webhooks h WHERE h.workflow_id = w.id "
                    "AND h.state = 'pending') ORDER BY finished_at LIMIT ?",
                    (before, limit),
                )
            ]
            if not ids:
                return 0
            marks = ", ".join("?" * len(ids))
            message_ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM messages WHERE workflow_id IN ({marks})", ids
                )
            ]
            webhook_ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM webhooks WHERE workflow_id IN ({marks})", ids
                )
            ]
            _delete_webhooks(conn, webhook_ids)
            refs = [(ref,) for ref in [*ids, *message_ids]]
            conn.executemany("DELETE FROM jobs WHERE ref = ?", refs)
            by_message = [(message_id,) for message_id in message_ids]
            conn.executemany("DELETE FROM message_parts WHERE message_id = ?", by_message)
            conn.executemany("DELETE FROM sandbox_messages WHERE message_id = ?", by_message)
            conn.executemany("DELETE FROM events WHERE workflow_id = ?", [(i,) for i in ids])
            conn.execute(f"DELETE FROM messages WHERE workflow_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM workflows WHERE id IN ({marks})", ids)
            return len(ids)

        return await self._write(write)


def _delete_webhooks(conn: sqlite3.Connection, webhook_ids: Sequence[int]) -> None:
    """Delete these webhooks with their attempts and jobs."""
    by_id = [(webhook_id,) for webhook_id in webhook_ids]
    conn.executemany(
        "DELETE FROM jobs WHERE ref = ? AND kind = ?", [(str(i), WEBHOOK_JOB) for i in webhook_ids]
    )
    conn.executemany("DELETE FROM webhook_attempts WHERE webhook_id = ?", by_id)
    conn.executemany("DELETE FROM webhooks WHERE id = ?", by_id)


def _list_filter(
    account_id: str, query: ListQuery, state_column: str
) -> tuple[str, tuple[Any, ...]]:
    clauses = ["account_id = ?"]
    params: list[Any] = [account_id]
    if query.state is not None:
        clauses.append(f"{state_column} = ?")
        params.append(query.state)
    if query.created_after is not None:
        clauses.append("created_at >= ?")
        params.append(query.created_after)
    if query.created_before is not None:
        clauses.append("created_at < ?")
        params.append(query.created_before)
    if query.before is not None:
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params += [query.before[0], query.before[0], query.before[1]]
    return " AND ".join(clauses), tuple(params)


_WORKFLOW_OF = {
    "workflow": "?",
    "message": "(SELECT workflow_id FROM messages WHERE id = ?)",
    "provider": (
        "(SELECT workflow_id FROM messages WHERE provider = ? AND provider_message_id = ?)"
    ),
}
_TRANSITION_LOAD = {
    name: (
        "SELECT w.id, w.account_id, w.application_id, w.surface, w.state, w.created_at, "
        "w.updated_at, w.finished_at, w.version, "
        + ", ".join(f"m.{column.strip()}" for column in _MESSAGE_READ.split(","))
        + f" FROM messages m JOIN workflows w ON w.id = m.workflow_id WHERE m.workflow_id = {of} "
        "ORDER BY m.step"
    )
    for name, of in _WORKFLOW_OF.items()
}


def _of_kinds(kinds: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    """The jobs query's condition on their kinds, and its parameters (none: every kind).

    One kind is searched through jobs_kind_due, in time order (a webhook-only worker must not
    read past every pending timer). Several kinds are usually most of the jobs: ``+kind``
    keeps SQLite on jobs_due, in time order, stopping at the first rows that match; through
    jobs_kind_due it would read every due row of each kind and sort them, which under a
    backlog of thousands of due sends cost a fifth of the SMS throughput."""
    if kinds is None:
        return "", ()
    if len(kinds) == 1:
        return " AND kind = ?", tuple(kinds)
    return f" AND +kind IN ({', '.join('?' * len(kinds))})", tuple(kinds)


def _load_for_transition(
    conn: sqlite3.Connection, key: WorkflowKey
) -> tuple[WorkflowRecord, int] | None:
    """The workflow ``key`` names, with its messages and without its timeline, and its version,
    in one query (a transition's read: it runs thousands of times a second)."""
    if key.workflow_id is not None:
        rows = conn.execute(_TRANSITION_LOAD["workflow"], (key.workflow_id,)).fetchall()
    elif key.message_id is not None:
        rows = conn.execute(_TRANSITION_LOAD["message"], (key.message_id,)).fetchall()
    else:
        rows = conn.execute(
            _TRANSITION_LOAD["provider"], (key.provider, key.provider_message_id)
        ).fetchall()
    if not rows:
        return None
    return rows_.workflow(rows[0], (_message(row[9:]) for row in rows)), int(rows[0][8])


def _load_workflow(
    conn: sqlite3.Connection, workflow_id: str, account_id: str | None, *, with_events: bool
) -> WorkflowRecord | None:
    sql = (
        "SELECT id, account_id, application_id, surface, state, created_at, updated_at, "
        "finished_at FROM workflows WHERE id = ?"
    )
    params: tuple[Any, ...] = (workflow_id,)
    if account_id is not None:
        sql += " AND account_id = ?"
        params = (workflow_id, account_id)
    row = conn.execute(sql, params).fetchone()
    if row is None:
        return None
    messages = tuple(
        _message(r)
        for r in conn.execute(
            f"SELECT {_MESSAGE_READ} FROM messages WHERE workflow_id = ? ORDER BY step",
            (workflow_id,),
        )
    )
    events: tuple[Event, ...] = ()
    if with_events:
        events = tuple(
            Event(*r)
            for r in conn.execute(
                "SELECT at, kind, message_id, status, code, reason, source FROM events "
                "WHERE workflow_id = ? ORDER BY id",
                (workflow_id,),
            )
        )
    return replace(rows_.workflow(row, messages), events=events)


def _persist(
    conn: sqlite3.Connection, workflow_id: str, changes: Changes, webhooks: Sequence[NewWebhook]
) -> None:
    """Store what a transition decided (inside the caller's transaction)."""
    now = max((event.at for event in changes.events), default=None)
    for change in changes.messages.values():
        values = change.values()
        if now is not None:
            values["updated_at"] = now
        if values:
            assignments = ", ".join(f"{name} = ?" for name in values)
            conn.execute(
                f"UPDATE messages SET {assignments} WHERE id = ?",
                (*values.values(), change.message_id),
            )
    if changes.workflow_state is not None:
        conn.execute(
            "UPDATE workflows SET state = ?, finished_at = ?, updated_at = ?, "
            "version = version + 1 WHERE id = ?",
            (changes.workflow_state, changes.finished_at, changes.finished_at, workflow_id),
        )
    else:
        conn.execute("UPDATE workflows SET version = version + 1 WHERE id = ?", (workflow_id,))
    # (a statement is only run when it has rows: a transition often has no jobs to cancel)
    if changes.events:
        conn.executemany(
            "INSERT INTO events (workflow_id, message_id, at, kind, status, code, reason, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (workflow_id, e.message_id, e.at, e.kind, e.status, e.code, e.reason, e.source)
                for e in changes.events
            ],
        )
    if changes.cancel_jobs:
        conn.executemany("DELETE FROM jobs WHERE kind = ? AND ref = ?", list(changes.cancel_jobs))
    created = now if now is not None else time.time()
    if changes.jobs:
        conn.executemany(
            "INSERT INTO jobs (kind, ref, run_at, created_at) VALUES (?, ?, ?, ?)",
            [(job.kind, job.ref, job.run_at, created) for job in changes.jobs],
        )
    if webhooks:
        _insert_webhooks(conn, webhooks, created)


def _insert_webhooks(
    conn: sqlite3.Connection, webhooks: Sequence[NewWebhook], created: float
) -> None:
    """Queue webhooks, each with the URL of its kind unless it names one, and its job."""
    urls: dict[tuple[str, str | None, str], str | None] = {}
    for webhook in webhooks:
        url = webhook.url
        if url is None:
            target = (webhook.account_id, webhook.application_id, webhook.kind)
            if target not in urls:
                urls[target] = _destination(conn, *target)
            url = urls[target]
        cursor = conn.execute(
            "INSERT INTO webhooks (account_id, application_id, workflow_id, message_id, kind, "
            "url, body, state, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
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
            ),
        )
        if url:
            conn.execute(
                "INSERT INTO jobs (kind, ref, run_at, created_at) VALUES (?, ?, ?, ?)",
                (WEBHOOK_JOB, str(cursor.lastrowid), created, created),
            )


def _destination(
    conn: sqlite3.Connection, account_id: str, application_id: str | None, kind: str
) -> str | None:
    """The URL a webhook of ``kind`` goes to: the application's, else the account's."""
    column = "inbound_url" if kind == "inbound" else "status_url"
    row = conn.execute(
        f"SELECT coalesce((SELECT {column} FROM applications WHERE id = ?), "
        f"(SELECT {column} FROM accounts WHERE id = ?))",
        (application_id, account_id),
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def _insert_workflow(
    conn: sqlite3.Connection, workflow: NewWorkflow, idempotency_ttl: float
) -> Accepted:
    claim = workflow.idempotency
    if claim is not None:
        # a key older than its time to live is taken again by this request (replaced below)
        row = conn.execute(
            "SELECT request_sha256, status_code, response FROM idempotency_keys "
            "WHERE account_id = ? AND key = ? AND created_at > ?",
            (workflow.account_id, claim.key, workflow.accepted_at - idempotency_ttl),
        ).fetchone()
        if row is not None:
            if row[0] != claim.request_sha256:
                raise IdempotencyConflict()
            return Accepted(created=False, response=StoredResponse(row[1], row[2].encode()))
        conn.execute(
            "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?, ?, ?)",
            (
                workflow.account_id,
                claim.key,
                claim.request_sha256,
                claim.response.status_code,
                claim.response.body.decode(),
                workflow.accepted_at,
            ),
        )
    _insert_workflows(conn, [workflow])
    return Accepted(created=True)


_INSERT_WORKFLOW = (
    "INSERT INTO workflows (id, account_id, application_id, surface, state, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, 'running', ?, ?)"
)
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ?, ?, ?)"
)
_INSERT_JOB = "INSERT INTO jobs (kind, ref, run_at, created_at) VALUES (?, ?, ?, ?)"


def _insert_workflows(conn: sqlite3.Connection, workflows: Sequence[NewWorkflow]) -> None:
    """The rows of accepted requests (without their idempotency keys): one statement a table."""
    conn.executemany(
        _INSERT_WORKFLOW,
        [
            (w.id, w.account_id, w.application_id, w.surface, w.accepted_at, w.accepted_at)
            for w in workflows
        ],
    )
    conn.executemany(
        _INSERT_MESSAGE,
        [
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
                StepState.ACTIVE if index == 0 else StepState.WAITING,
                workflow.accepted_at if index == 0 else None,
                workflow.accepted_at,
                workflow.accepted_at,
            )
            for workflow in workflows
            for index, step in enumerate(workflow.steps)
        ],
    )
    conn.executemany(
        _INSERT_JOB,
        [(job.kind, job.ref, job.run_at, w.accepted_at) for w in workflows for job in w.jobs],
    )
