"""The embedded store: one SQLite file, one writer connection, group commit.

This module is the SQLite driver of :class:`~cascade.store.sqlstore.SqlStore`: it runs the
store's plans, reads directly on the event loop thread on a connection of their own (WAL lets
them proceed while a commit is under way), writes inside its group-commit writer.

Writes are functions of a connection. A write queued while no transaction is open schedules a
flush for the event loop's next turn, which takes every write waiting and runs them in one
transaction on the loop thread; the COMMIT (the fsync) runs on a helper thread, and only when
it has returned are the writes' futures resolved. Writes queued meanwhile go together in the
next transaction. Under load, hundreds of requests share one commit; the 202 of a request is
sent only after the commit that holds it. A batch runs without a savepoint per write; if one
fails, the batch is undone and run again on the helper thread with each write in its own
savepoint, so the failing one alone gets the error. Accepts that follow each other in a batch
(the common case under load) are stored by one plan, one ``executemany`` per table. When
another process holds the write lock, the batch waits on the event loop, tried again every
0.25 ms doubling up to 4 ms (1 ms for the API's writer; with the writes queued meanwhile), and
fails after 30 s. An API whose engine runs in another process comes first: its waits make the
engine's batches small for a while (:class:`IntakeSignal`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog

from cascade.domain.records import (
    Accepted,
    JobKindName,
    NewWorkflow,
    StepState,
    Surface,
    WebhookKind,
    WebhookState,
    WorkflowState,
)
from cascade.domain.status import Status
from cascade.errors import StoreConflict, StoreRejected, StoreUnavailable
from cascade.sealing import Sealer
from cascade.store.base import IDEMPOTENCY_TTL
from cascade.store.migrations import migrations
from cascade.store.queries import Query, load
from cascade.store.rows import Rows
from cascade.store.sqlstore import AcceptRows, Fetch, Plan, Run, SqlStore, accept_plan

log = structlog.get_logger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]


#: the page cache of each connection, in MiB, unless the settings say otherwise
CACHE_MB = 64


def _connect(path: str, cache_mb: int = CACHE_MB) -> sqlite3.Connection:
    """A connection in WAL mode whose page cache may grow to ``cache_mb`` MiB: the cache fills
    as the database grows (it holds the indexes' hot pages) and never shrinks."""
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30, cached_statements=512
        )
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open SQLite database {path!r}: {exc}") from exc
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA cache_size={-cache_mb * 1024}")  # negative: in KiB, not pages
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


class IntakeSignal:
    """Whether the API's writer has lately had to wait for the write lock, told across
    processes by a lock file beside the database (``<db>-intake``).

    The engine's process writes its transitions in batches of up to
    :attr:`~cascade.store.sqlstore.TransitionBatches.MAX_BATCH`, a transaction of several
    milliseconds; an accept that meets one waits for all of it, and with the engine behind,
    the API met one at every few commits and spent about a quarter of its time waiting
    (BENCHMARKS.md, "The intake first"). So the API's writer, when it finds the lock taken,
    holds a shared ``flock`` on the file for :attr:`WINDOW` seconds after its last wait, and
    the engine's writer, seeing it held, stores smaller batches: the accepts wait for less,
    while the engine alone keeps its larger, cheaper batches."""

    #: how long after the API's last wait for the lock the engine keeps its batches small
    WINDOW = 0.1

    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path + "-intake", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {path}-intake: {exc}") from exc
        self._held_until = 0.0
        self._release: asyncio.TimerHandle | None = None

    def announce(self, loop: asyncio.AbstractEventLoop) -> None:
        """The API's writer waited for the lock: hold the signal for another window."""
        self._held_until = time.monotonic() + self.WINDOW
        if self._release is not None:
            return  # the pending release looks at the new time when it runs
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # an engine is looking this instant; the next wait announces it
        self._release = loop.call_later(self.WINDOW, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        left = self._held_until - time.monotonic()
        if left > 0:
            self._release = loop.call_later(left, self._expire, loop)
            return
        self._release = None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def held(self) -> bool:
        """Whether some API's writer has waited for the lock within its window (as the
        engine's writer sees it: this process's own announcement does not count)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        """Stop announcing and close the file (closing it lets go of its lock)."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        os.close(self._fd)


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
    #: ...and for the API's writer, whose accepts the engine's short transactions yield to:
    #: after one of 2-3 ms, a pause of 4 ms was mostly a free lock left unused
    LOCK_RETRY_MAX_ANNOUNCING = 0.001

    def __init__(self, path: str, synchronous: str, cache_mb: int = CACHE_MB) -> None:
        self._path = path
        self._synchronous = synchronous
        self._cache_mb = cache_mb
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
        #: the signal between the API's writer and the engine's (None until started)
        self.intake: IntakeSignal | None = None
        #: whether this writer is the API's: it announces its waits for the lock
        self.announces = False
        #: how many transactions and writes were committed (for tests and metrics)
        self.commits = 0
        self.writes = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._conn = _connect(self._path, self._cache_mb)
        self.intake = IntakeSignal(self._path)
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
        if self.intake is not None:
            self.intake.close()
            self.intake = None
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
                if self.announces and self.intake is not None:
                    self.intake.announce(loop)
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
        most = self.LOCK_RETRY_MAX_ANNOUNCING if self.announces else self.LOCK_RETRY_MAX
        self._lock_retry = min(most, self._lock_retry * 2)

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
            fn, future = batch[start]
            if type(fn) is _Accept:
                end = _accepts_from(batch, start)
                outcomes += _accept_run(conn, batch[start:end])
                start = end
                continue
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
        end = _accepts_from(batch, start)
        if end - start > 1:
            conn.execute("SAVEPOINT bulk")
            try:
                stored = _accept_run(conn, batch[start:end])
            except Exception:  # e.g. an id that exists: each accept alone finds which
                conn.execute("ROLLBACK TO bulk")
                conn.execute("RELEASE bulk")
            else:
                conn.execute("RELEASE bulk")
                outcomes += stored
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
    """The write of one accepted request. A run of them that follow each other in a batch is
    stored by one plan (the same rows, a fraction of the statements and GIL hand-overs)."""

    __slots__ = ("idempotency_ttl", "rows")

    def __init__(self, rows: AcceptRows, idempotency_ttl: float = IDEMPOTENCY_TTL) -> None:
        self.rows = rows
        self.idempotency_ttl = idempotency_ttl

    def __call__(self, conn: sqlite3.Connection) -> Accepted:
        (outcome,) = run(conn, accept_plan([self.rows], self.idempotency_ttl))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _accepts_from(batch: list[tuple[WriteFn, asyncio.Future[Any]]], start: int) -> int:
    """Where the run of accepts that begins at ``start`` ends (``start`` when there is none)."""
    end = start
    while end < len(batch) and isinstance(batch[end][0], _Accept):
        end += 1
    return end


def _accept_run(
    conn: sqlite3.Connection, run_: list[tuple[WriteFn, asyncio.Future[Any]]]
) -> Outcomes:
    """Store a run of accepts with one plan: each caller's outcome (a replayed or conflicting
    Idempotency-Key is that request's alone)."""
    accepts = [fn for fn, _ in run_ if isinstance(fn, _Accept)]
    stored = run(conn, accept_plan([a.rows for a in accepts], accepts[0].idempotency_ttl))
    return [
        (future, None, outcome) if isinstance(outcome, Exception) else (future, outcome, None)
        for (_, future), outcome in zip(run_, stored, strict=True)
    ]


def _wrap(exc: Exception) -> BaseException:
    """The Cascade error for a SQLite error (other errors as they are)."""
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


# --- running plans -------------------------------------------------------------------------

_QUERIES = load("sqlite")

# The domain's enums are stored as their text. sqlite3 binds a str subclass only after probing
# it for an adapter protocol; registered, each binds at once (0.15 µs less a value, and a
# transition binds several).
for _enum in (
    JobKindName,
    StepState,
    Status,
    Surface,
    WebhookKind,
    WebhookState,
    WorkflowState,
):
    sqlite3.register_adapter(_enum, str.__str__)

# sqlite3 binds only exact ints, floats and strs at once: any other value, None and bools
# included, is first looked up in the adapters and, when none is registered, probed for
# ``__adapt__`` and ``__conform__``, two failed attribute lookups that each format an
# AttributeError's message (0.2 µs a value, about 3,000 instructions; an SMS binds 34
# Nones, the unset columns of its rows and the coalesce() parameters of its changes, and 6
# bools). Registered, each is one dict lookup and one C call: None stays None (``{}.get``
# returns None for any key, without a Python frame) and a bool becomes the int it is.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))
sqlite3.register_adapter(bool, int)


def run(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    """Run a plan's statements on ``conn``, in the caller's transaction if one is open."""
    try:
        step = next(plan)
        while True:
            # (no cross-process signal to send for Signal.JOBS_QUEUED: the engine polls)
            step = plan.send(_execute(conn, step) if type(step) is Run else None)
    except StopIteration as done:
        returned: T = done.value
        return returned


#: the fetch modes, as module constants (an Enum member read through its class costs more, and
#: this runs for every statement)
_ROWS, _ROW, _VALUE, _COUNT = Fetch.ROWS, Fetch.ROW, Fetch.VALUE, Fetch.COUNT
_MANY, _EACH, _ROWS_OF = Fetch.MANY, Fetch.EACH, Fetch.ROWS_OF


def _execute(conn: sqlite3.Connection, step: Run) -> Any:
    """One statement of a plan, its result taken as the plan asks."""
    query: Query = _QUERIES[step[0]]
    params: Any = step[1]
    fetch = step[2]
    if fetch is _MANY or fetch is _EACH:
        return _execute_each(conn, query, params, fetch is _EACH)
    if fetch is _ROWS_OF:
        names, values = params
        if query.before:  # a block runs statement by statement, for one row after another
            for row in values:
                for statement in query.statements:
                    conn.execute(statement.sql, statement.arranged(names)(row))
            return None
        statement = query.last
        arrange = statement.arranged(names)
        if len(values) == 1:  # (executemany costs a few µs more for one row)
            conn.execute(statement.sql, arrange(values[0]))
        else:
            conn.executemany(statement.sql, map(arrange, values))
        return None
    if query.simple:  # most statements: no binding beyond one call
        last = query.last
        sql = last.sql
        cursor = conn.execute(sql, last.values(params))
    elif query.listless:  # a block: each statement bound in one call
        for statement in query.before:
            conn.execute(statement.sql, statement.values(params))
        last = query.last
        sql = last.sql
        cursor = conn.execute(sql, last.values(params))
    else:
        for statement in query.before:
            conn.execute(*statement.bind(params))
        sql, args = query.last.bind(params)
        cursor = conn.execute(sql, args)
    if fetch is _ROWS:
        return _rows(cursor, sql)
    if fetch is _COUNT:
        if cursor.description is not None:
            cursor.fetchall()  # a RETURNING statement counts its rows once they are all read
        return cursor.rowcount
    if fetch is _VALUE:
        row = cursor.fetchone()
        return None if row is None else row[0]
    row = cursor.fetchone()
    if row is None:
        return None
    cursor.fetchall()  # (a RETURNING statement is done once all its rows are read)
    return dict(zip(_columns(cursor, sql), row))  # noqa: B905 (one value per column)


def _execute_each(
    conn: sqlite3.Connection, query: Query, param_sets: Any, rows: bool
) -> Rows | None:
    """A query run once per parameter set: the rows of every run, or (executemany) none."""
    if rows:
        statement = query.last
        found = Rows((), {}, statement.sql)
        for params in param_sets:
            sql, args = statement.bind(params)
            cursor = conn.execute(sql, args)
            found += cursor.fetchall()
            found.columns = _columns(cursor, statement.sql)
        return found
    if query.before or len(param_sets) == 1:
        # a block runs statement by statement; and executemany costs a few µs more than
        # execute for one parameter set (a transition's usual event or message change)
        if query.listless:
            for params in param_sets:
                for statement in query.statements:
                    conn.execute(statement.sql, statement.values(params))
        else:
            for params in param_sets:
                for statement in query.statements:
                    conn.execute(*statement.bind(params))
    else:
        statement = query.last
        conn.executemany(statement.sql, statement.many(param_sets))
    return None


#: where each column of each statement's rows is, found once (``cursor.description`` builds a
#: new tuple of 7-tuples at every call)
_COLUMNS: dict[str, dict[str, int]] = {}


def _columns(cursor: sqlite3.Cursor, sql: str) -> dict[str, int]:
    """Where each column of the rows of ``sql`` (that ``cursor`` ran) is."""
    columns = _COLUMNS.get(sql)
    if columns is None:
        names = [column[0] for column in cursor.description or ()]
        columns = _COLUMNS[sql] = {name: index for index, name in enumerate(names)}
    return columns


def _rows(cursor: sqlite3.Cursor, sql: str) -> Rows:
    """Every row of a cursor (that ran ``sql``), with where its columns are."""
    return Rows(cursor.fetchall(), _columns(cursor, sql), sql)


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL, or the string itself when it has no such
    prefix; it refuses nothing (``service.open_store`` refuses an empty path and ``:memory:``)."""
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url


class SqliteStore(SqlStore):
    """The Store on one SQLite file."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        cache_mb: int = CACHE_MB,
        sealer: Sealer | None = None,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.sealer = sealer
        self._cache_mb = cache_mb
        self._writer = _GroupCommitWriter(self.path, synchronous, cache_mb)
        self._reader: sqlite3.Connection | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        if migrate:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.migrate()
        self._reader = _connect(self.path, self._cache_mb)
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
        await self.transitions.wait()
        await self._writer.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def announce_intake_waits(self) -> None:
        """Make this store's writer the API's: when it waits for the write lock it tells the
        engine's process, which then keeps its transactions short (:class:`IntakeSignal`)."""
        self._writer.announces = True

    def intake_waiting(self) -> bool:
        intake = self._writer.intake
        return intake is not None and not self._writer.announces and intake.held()

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer (group commit makes this < writes)."""
        return self._writer.commits

    @property
    def writes(self) -> int:
        """Writes committed so far."""
        return self._writer.writes

    # --- running plans ---------------------------------------------------------------------

    async def _read(self, plan: Plan[T] | Run, *, snapshot: bool = False) -> Any:
        # on the loop thread, without a thread hop: reads are short, and WAL never blocks them
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        try:
            if type(plan) is Run:  # one statement: no plan to step through
                return _execute(self._reader, plan)
            return run(self._reader, plan)  # type: ignore[arg-type]
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    async def _write(self, plan: Callable[[], Plan[T]] | Run) -> Any:
        if isinstance(plan, Run):
            step = plan
            return await self._writer.submit(lambda conn: _execute(conn, step))
        return await self._writer.submit(lambda conn: run(conn, plan()))

    async def accept(self, workflow: NewWorkflow) -> Accepted:
        try:
            rows = AcceptRows.of(workflow)
        except UnicodeError as exc:
            raise _wrap(exc) from exc
        result: Accepted = await self._writer.submit(_Accept(rows, self.idempotency_ttl))
        return result
