"""The embedded session store: one SQLite file in WAL mode, shared safely by several processes.

Every write is one `BEGIN IMMEDIATE` transaction, so it takes the file's write lock before it reads
anything: a touch, revoke or expire in one process can never interleave with another process's
write to the same row, and waiting for the lock is bounded by `busy_timeout`. Blocking calls run in
a worker thread; one connection per store, used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import anyio
import anyio.to_thread

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.sessions.errors import (
    ConcurrentModification,
    InvalidTransition,
    SessionExists,
    SessionNotFound,
    SessionStoreError,
    StoreUnavailable,
)
from sentinel.sessions.model import (
    DEFAULT_RETENTION,
    Retention,
    ServerSession,
    SessionStatus,
    format_timestamp,
)
from sentinel.sessions.store import MAX_LIST_LIMIT, clamp_limit

SCHEMA_VERSION: Final = 2
"""Recorded in `PRAGMA user_version`; a file with a newer version is refused, an older one migrated."""

DEFAULT_BUSY_TIMEOUT: Final = 5.0
"""Seconds a write waits for another process's write lock before failing with `StoreUnavailable`."""

_BUSY_SLICE: Final = 0.05
"""SQLite's own busy wait, per attempt. `sqlite3_interrupt` does not end a busy wait, and a worker
thread blocked in one outlives a cancelled caller (and holds up interpreter exit). So SQLite waits
in slices and the worker retries between them until `busy_timeout`, giving up early when its
caller was cancelled or the store closed (issue 10: SIGTERM during startup on a locked file)."""

_BUSY_CODES: Final = frozenset((sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED))

PURGE_INTERVAL: Final = 300.0
"""Monotonic seconds between opportunistic purges of rows past their `ttl` (like DynamoDB TTL)."""

_T = TypeVar("_T")

_COLUMNS_V1: Final = (
    "id",
    "user",
    "profile",
    "server_instance_id",
    "status",
    "started_at",
    "last_access_at",
    "expires_at",
    "request_count",
    "source_identity",
    "created_at",
    "updated_at",
    "ttl",
    "revoked_by",
    "revoked_reason",
)
_COLUMNS: Final = (*_COLUMNS_V1, "lease_until", "flush_seq", "role_arn", "credential_lifetime")

# Version 1. The (…, created_at, id) indexes serve the newest-first lists without a sort step; the
# ttl index makes the purge a range delete.
_SCHEMA_V1: Final = (
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY NOT NULL,
        user TEXT NOT NULL,
        profile TEXT NOT NULL,
        server_instance_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'revoked', 'expired')),
        started_at TEXT NOT NULL,
        last_access_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        request_count INTEGER NOT NULL,
        source_identity TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        ttl INTEGER NOT NULL,
        revoked_by TEXT,
        revoked_reason TEXT
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user, created_at, id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_profile ON sessions (profile, created_at, id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_server_instance"
    " ON sessions (server_instance_id, status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_ttl ON sessions (ttl)",
)

# Version 2 (issues 10, 12, 13): the lease, the last applied touch batch, the role and the longest
# credential lifetime. Added columns only, so a version 1 file keeps every row as it was.
_SCHEMA_V2: Final = (
    "ALTER TABLE sessions ADD COLUMN lease_until TEXT",
    "ALTER TABLE sessions ADD COLUMN flush_seq INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sessions ADD COLUMN role_arn TEXT",
    "ALTER TABLE sessions ADD COLUMN credential_lifetime INTEGER",
)

# Statements that take a file from version N-1 to N, applied in order from the file's version.
_MIGRATIONS: Final = {1: _SCHEMA_V1, 2: _SCHEMA_V2}

_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM sessions"  # noqa: S608 - constant column names
_NEWEST_FIRST: Final = "ORDER BY created_at DESC, id DESC LIMIT ?"
_INSERT: Final = (
    f"INSERT INTO sessions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
    " ON CONFLICT (id) DO NOTHING"
)
_REPLACE: Final = (
    f"UPDATE sessions SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])}"  # noqa: S608
    " WHERE id = ?"
)
# Issue 10: a touch counts in any status; only an active record gets its lifetime and lease moved.
_TOUCH_ACTIVE: Final = (
    "UPDATE sessions SET request_count = request_count + ?, last_access_at = ?, expires_at = ?,"
    " ttl = ?, lease_until = ?, updated_at = ?, flush_seq = ? WHERE id = ?"
)
_TOUCH_ENDED: Final = (
    "UPDATE sessions SET request_count = request_count + ?, last_access_at = ?, updated_at = ?,"
    " flush_seq = ? WHERE id = ?"
)
_RENEW: Final = "UPDATE sessions SET lease_until = ?, updated_at = ? WHERE id = ? AND status = 'active'"
# A record without a lease (written before version 2) is stale once updated_at + lease has passed.
_STALE: Final = "status = 'active' AND (lease_until < ? OR (lease_until IS NULL AND updated_at < ?))"
_EXPIRE_STALE: Final = f"UPDATE sessions SET status = 'expired', updated_at = ? WHERE id = ? AND {_STALE}"  # noqa: S608
_REVOKE: Final = (
    "UPDATE sessions SET status = 'revoked', revoked_by = ?, revoked_reason = ?, updated_at = ?"
    " WHERE id = ? AND status = 'active'"
)
_EXPIRE: Final = "UPDATE sessions SET status = 'expired', updated_at = ? WHERE id = ? AND status = 'active'"
_PURGE: Final = "DELETE FROM sessions WHERE ttl < ?"

# sqlite3's own wording is terse; say what it usually means.
_HINTS: Final = {
    "database is locked": "another process or connection held the write lock past the busy timeout",
    "file is not a database": "the file is corrupt or not a Sentinel session store",
    "unable to open database file": "check that the directory exists and is writable",
    "attempt to write a readonly database": "check the permissions of the file and its directory",
}


class SqliteSessionStore:
    """`SessionStore` on one SQLite file. Create it with `await SqliteSessionStore.open(path)`."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        *,
        retention: Retention = DEFAULT_RETENTION,
        clock: Clock = SYSTEM_CLOCK,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        """Wrap an already opened connection; use `open`, which also prepares the file."""
        self._path = path
        self._name = _store_name(path)
        self._conn: sqlite3.Connection | None = connection
        self._retention = retention
        self._clock = clock
        self._busy_timeout = busy_timeout
        # One token: calls reach the connection in call order. The lock is what really keeps it to
        # one thread at a time: a cancelled call's thread is abandoned (its token returned) and
        # may still be finishing when the next call's thread starts.
        self._limiter = anyio.CapacityLimiter(1)
        self._lock = threading.Lock()
        self._closing = False
        self._next_purge = clock.monotonic() + PURGE_INTERVAL

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        retention: Retention = DEFAULT_RETENTION,
        clock: Clock = SYSTEM_CLOCK,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> SqliteSessionStore:
        """Open (creating with mode 0600, in a 0700 directory) the file, switch it to WAL, create or
        check the schema and purge rows past their ttl. `StoreUnavailable` on any failure."""
        path = Path(path)
        cutoff = int(clock.now().timestamp())
        call = _Call()
        try:
            connection = await anyio.to_thread.run_sync(
                _connect, path, busy_timeout, cutoff, call, abandon_on_cancel=True
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(_store_name(path), "open", _describe(exc)) from None
        except anyio.get_cancelled_exc_class():
            call.abandoned = True
            raise
        return cls(path, connection, retention=retention, clock=clock, busy_timeout=busy_timeout)

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> Path:
        return self._path

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (idempotent). Shielded: a cancelled caller still closes it."""
        self._closing = True  # a call waiting on a lock gives up at its next slice
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close)

    # -- SessionStore -------------------------------------------------------------------------

    async def create(self, session: ServerSession) -> None:
        values = _values(session.to_record())
        cutoff = self._purge_cutoff()

        def work(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                self._purge(conn, cutoff)
                if conn.execute(_INSERT, values).rowcount == 0:
                    raise SessionExists(self._name, "create", session.id)

        await self._run("create", work)

    async def get(self, session_id: str) -> ServerSession:
        def work(conn: sqlite3.Connection) -> ServerSession:
            return self._fetch(conn, "get", session_id)

        return await self._run("get", work)

    async def update(self, session: ServerSession) -> ServerSession:
        # Strictly newer than the version it replaces, even if the clock has not moved (or went back).
        record = session.with_changes(
            updated_at=max(self._clock.now(), session.updated_at + timedelta(microseconds=1))
        ).to_record()
        stored = ServerSession.from_record(dict(record))  # as `get` will return it: UTC timestamps
        values = (*_values(record)[1:], session.id)
        expected = format_timestamp(session.updated_at)
        cutoff = self._purge_cutoff()

        def work(conn: sqlite3.Connection) -> ServerSession:
            with _immediate(conn):
                self._purge(conn, cutoff)
                # Read and write under the write lock taken by BEGIN IMMEDIATE: no other writer can
                # slip in between, in this process or another.
                row = conn.execute(
                    "SELECT status, updated_at FROM sessions WHERE id = ?", (session.id,)
                ).fetchone()
                if row is None:
                    raise SessionNotFound(self._name, "update", session.id)
                if row[1] != expected:
                    raise ConcurrentModification(self._name, "update", session.id)
                current = SessionStatus(row[0])
                if session.status is not current and not current.can_become(session.status):
                    raise InvalidTransition(self._name, "update", session.id, current, session.status)
                conn.execute(_REPLACE, values)
                return stored

        return await self._run("update", work)

    async def delete(self, session_id: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

        await self._run("delete", work)

    async def list_by_user(self, user: str, limit: int | None = None) -> list[ServerSession]:
        return await self._select("list_by_user", "WHERE user = ?", user, limit)

    async def list_by_status(self, status: SessionStatus, limit: int | None = None) -> list[ServerSession]:
        return await self._select("list_by_status", "WHERE status = ?", SessionStatus(status).value, limit)

    async def list_by_profile(self, profile: str, limit: int | None = None) -> list[ServerSession]:
        return await self._select("list_by_profile", "WHERE profile = ?", profile, limit)

    async def find_active_by_server_instance(self, server_instance_id: str) -> list[ServerSession]:
        return await self._select(
            "find_active_by_server_instance",
            "WHERE server_instance_id = ? AND status = 'active'",
            server_instance_id,
            MAX_LIST_LIMIT,
        )

    async def touch(
        self,
        session_id: str,
        count: int,
        last_access_at: datetime,
        *,
        seq: int | None = None,
        known_status: SessionStatus = SessionStatus.ACTIVE,
    ) -> SessionStatus:
        now = self._clock.now()
        accessed, stamp = format_timestamp(last_access_at), format_timestamp(now)
        active = (
            count,
            accessed,
            format_timestamp(self._retention.expires_at(last_access_at)),
            self._retention.ttl(last_access_at),
            format_timestamp(self._retention.lease_until(now)),
            stamp,
        )
        cutoff = self._purge_cutoff()

        def work(conn: sqlite3.Connection) -> SessionStatus:
            # One transaction under the write lock: the status and flush_seq read here are the
            # ones the update is decided on (`known_status` is a DynamoDB request-count hint).
            with _immediate(conn):
                self._purge(conn, cutoff)
                row = conn.execute(
                    "SELECT status, flush_seq FROM sessions WHERE id = ?", (session_id,)
                ).fetchone()
                if row is None:
                    raise SessionNotFound(self._name, "touch", session_id)
                status, stored_seq = SessionStatus(row[0]), int(row[1])
                if seq is not None and stored_seq >= seq:
                    return status  # this batch was applied before; its answer was lost
                new_seq = stored_seq if seq is None else seq
                if status is SessionStatus.ACTIVE:
                    conn.execute(_TOUCH_ACTIVE, (*active, new_seq, session_id))
                else:
                    conn.execute(_TOUCH_ENDED, (count, accessed, stamp, new_seq, session_id))
                return status

        return await self._run("touch", work)

    async def renew(self, session_id: str) -> SessionStatus:
        now = self._clock.now()
        values = (format_timestamp(self._retention.lease_until(now)), format_timestamp(now), session_id)

        def work(conn: sqlite3.Connection) -> SessionStatus:
            with _immediate(conn):
                if conn.execute(_RENEW, values).rowcount == 1:
                    return SessionStatus.ACTIVE
                return self._existing_status(conn, "renew", session_id)

        return await self._run("renew", work)

    async def find_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        sql, params = self._stale_query(now, server_instance_id)

        def work(conn: sqlite3.Connection) -> list[ServerSession]:
            return [_decode(row) for row in conn.execute(sql, params)]

        return await self._run("find_stale", work)

    async def expire_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        sql, params = self._stale_query(now, server_instance_id)
        cutoff = format_timestamp(now - self._retention.lease)
        lapsed = format_timestamp(now)
        stamp = format_timestamp(self._clock.now())

        def work(conn: sqlite3.Connection) -> list[ServerSession]:
            # Find and expire in one write transaction: no renewal can land in between, and the
            # UPDATE repeats the staleness condition all the same (the rule lives in the SQL).
            with _immediate(conn):
                expired = []
                for row in conn.execute(sql, params).fetchall():
                    stale = _decode(row)
                    if conn.execute(_EXPIRE_STALE, (stamp, stale.id, lapsed, cutoff)).rowcount == 1:
                        expired.append(self._fetch(conn, "expire_stale", stale.id))
                return expired

        return await self._run("expire_stale", work)

    def _stale_query(self, now: datetime, server_instance_id: str | None) -> tuple[str, tuple[str, ...]]:
        params: tuple[str, ...] = (format_timestamp(now), format_timestamp(now - self._retention.lease))
        where = f"WHERE {_STALE}"
        if server_instance_id is not None:
            where += " AND server_instance_id = ?"
            params = (*params, server_instance_id)
        return f"{_SELECT} {where} ORDER BY created_at DESC, id DESC", params

    async def revoke(self, session_id: str, by: str, reason: str) -> ServerSession:
        values = (by, reason, format_timestamp(self._clock.now()), session_id)
        return await self._transition("revoke", _REVOKE, values, session_id, SessionStatus.REVOKED)

    async def expire(self, session_id: str) -> ServerSession:
        values = (format_timestamp(self._clock.now()), session_id)
        return await self._transition("expire", _EXPIRE, values, session_id, SessionStatus.EXPIRED)

    # -- maintenance --------------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Delete every row whose `ttl` (epoch seconds) is in the past; returns how many went."""
        self._next_purge = self._clock.monotonic() + PURGE_INTERVAL
        cutoff = int(self._clock.now().timestamp())

        def work(conn: sqlite3.Connection) -> int:
            with _immediate(conn):
                return conn.execute(_PURGE, (cutoff,)).rowcount

        return await self._run("purge_expired", work)

    # -- internals ----------------------------------------------------------------------------

    async def _run(self, operation: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        call = _Call()
        try:
            return await anyio.to_thread.run_sync(
                self._guarded, operation, work, call, abandon_on_cancel=True, limiter=self._limiter
            )
        except anyio.get_cancelled_exc_class():
            call.abandoned = True  # its thread stops at the next busy slice
            raise

    def _guarded(self, operation: str, work: Callable[[sqlite3.Connection], _T], call: _Call) -> _T:
        """Worker-thread side of every call: wait out other writers' locks in slices, roll back what
        failed, translate every backend error."""
        with self._lock:
            try:
                conn = self._conn
                if conn is None:
                    raise StoreUnavailable(self._name, operation, "the store is closed")
                deadline = time.monotonic() + self._busy_timeout
                while True:
                    try:
                        return work(conn)
                    except Exception as exc:
                        if conn.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        if _busy(exc) and not (call.abandoned or self._closing) and _wait_slice(deadline):
                            continue
                        if isinstance(exc, SessionStoreError):
                            raise
                        if isinstance(exc, sqlite3.Error | OSError):
                            raise StoreUnavailable(self._name, operation, _describe(exc)) from None
                        raise
            finally:
                if self._closing:
                    self._close_locked()

    def _close(self) -> None:
        """Close now, or, while a call holds the connection, when that call ends."""
        if self._lock.acquire(blocking=False):
            try:
                self._close_locked()
            finally:
                self._lock.release()

    def _close_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise StoreUnavailable(self._name, "close", _describe(exc)) from None

    async def _select(self, operation: str, where: str, key: str, limit: int | None) -> list[ServerSession]:
        sql = f"{_SELECT} {where} {_NEWEST_FIRST}"
        params = (key, clamp_limit(limit))

        def work(conn: sqlite3.Connection) -> list[ServerSession]:
            return [_decode(row) for row in conn.execute(sql, params)]

        return await self._run(operation, work)

    async def _transition(
        self, operation: str, sql: str, values: tuple[str, ...], session_id: str, wanted: SessionStatus
    ) -> ServerSession:
        """One conditional UPDATE (status = active); on no change, say why from the same transaction."""
        cutoff = self._purge_cutoff()

        def work(conn: sqlite3.Connection) -> ServerSession:
            with _immediate(conn):
                self._purge(conn, cutoff)
                if conn.execute(sql, values).rowcount == 0:
                    current = self._existing_status(conn, operation, session_id)
                    raise InvalidTransition(self._name, operation, session_id, current, wanted)
                return self._fetch(conn, operation, session_id)

        return await self._run(operation, work)

    def _existing_status(self, conn: sqlite3.Connection, operation: str, session_id: str) -> SessionStatus:
        row = conn.execute("SELECT status FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(self._name, operation, session_id)
        return SessionStatus(row[0])

    def _fetch(self, conn: sqlite3.Connection, operation: str, session_id: str) -> ServerSession:
        row = conn.execute(f"{_SELECT} WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(self._name, operation, session_id)
        return _decode(row)

    def _purge_cutoff(self) -> int | None:
        """The ttl cutoff if an opportunistic purge is due (at most every PURGE_INTERVAL), else None."""
        now = self._clock.monotonic()
        if now < self._next_purge:
            return None
        self._next_purge = now + PURGE_INTERVAL
        return int(self._clock.now().timestamp())

    @staticmethod
    def _purge(conn: sqlite3.Connection, cutoff: int | None) -> None:
        if cutoff is not None:
            conn.execute(_PURGE, (cutoff,))


def _store_name(path: Path) -> str:
    return f"sqlite file {path}"


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that holds the write lock from its first statement (no upgrade races).

    On an exception the caller (`_guarded`) rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    yield
    conn.execute("COMMIT")


class _Call:
    """One store call as its worker thread sees it: `abandoned` once the caller was cancelled."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in _BUSY_CODES


def _wait_slice(deadline: float) -> bool:
    """Before another attempt: False once the busy timeout has passed. SQLite already waited a
    slice in most busy cases; this only paces the ones it answers at once (a WAL snapshot)."""
    if time.monotonic() >= deadline:
        return False
    time.sleep(_BUSY_SLICE / 5)
    return True


def _connect(path: Path, busy_timeout: float, cutoff: int, call: _Call) -> sqlite3.Connection:
    """Worker thread: create the file privately, open it, switch to WAL, migrate, purge."""
    # The umask covers what SQLite creates beside the file (-wal, -shm), which SQLite also gives
    # the database file's mode. It is process-wide: for these few milliseconds, files other threads
    # create are private too, which is harmless.
    old_umask = os.umask(0o077)
    try:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as exc:  # a file, not a directory, is in the way: say so
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename) from None
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        # mode=rw: SQLite must open the file made above, never create one with its own mode.
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw"
        # `timeout` is SQLite's own busy wait, one slice of `busy_timeout` (see _BUSY_SLICE).
        conn = sqlite3.connect(
            uri, uri=True, timeout=_BUSY_SLICE, isolation_level=None, check_same_thread=False
        )
        try:
            deadline = time.monotonic() + busy_timeout
            while True:
                try:
                    _prepare(conn, cutoff)
                    break
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if not (_busy(exc) and not call.abandoned and _wait_slice(deadline)):
                        raise
            if call.abandoned:
                raise sqlite3.OperationalError("open abandoned by its caller")
        except BaseException:
            conn.close()
            raise
        return conn
    finally:
        os.umask(old_umask)


def _prepare(conn: sqlite3.Connection, cutoff: int) -> None:
    # Read first: a corrupt or too new file is refused before anything is written to it.
    _check_version(conn)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (still {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable across crashes of the process in WAL mode
    with _immediate(conn):
        version = _check_version(conn)
        # Every step from the file's version up, in the same transaction: a failed migration
        # leaves the file as it was.
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(_PURGE, (cutoff,))


def _check_version(conn: sqlite3.Connection) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this Sentinel supports ({SCHEMA_VERSION});"
            " upgrade Sentinel or use another file"
        )
    return version


def _values(record: dict[str, str | int]) -> tuple[str | int | None, ...]:
    return tuple(record.get(column) for column in _COLUMNS)


def _decode(row: tuple[object, ...]) -> ServerSession:
    try:
        return ServerSession.from_record(dict(zip(_COLUMNS, row, strict=True)))
    except (ValueError, KeyError, TypeError) as exc:
        # A row this store did not write (hand edits, a foreign tool): treat as a broken file.
        raise sqlite3.DatabaseError(f"malformed session record {row[0]!r}: {exc}") from None


def _describe(exc: sqlite3.Error | OSError) -> str:
    """One line for an error message; never the traceback, never multi-line backend text."""
    if isinstance(exc, OSError):
        what = exc.strerror or type(exc).__name__
        return f"{what}: {exc.filename}" if exc.filename else what
    text = str(exc) or type(exc).__name__
    notes = [note for note in (getattr(exc, "sqlite_errorname", None), _HINTS.get(text)) if note]
    return f"{text} ({'; '.join(notes)})" if notes else text
