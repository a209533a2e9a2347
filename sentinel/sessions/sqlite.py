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

PURGE_INTERVAL: Final = 300.0
"""Monotonic seconds between opportunistic purges of rows past their `ttl` (like DynamoDB TTL)."""

_T = TypeVar("_T")

_COLUMNS: Final = (
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
    "role_arn",
    "credential_lifetime",
)

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

# Version 2 (issue 13): the role a session's credentials come from and their longest lifetime,
# nullable so rows written by version 1 stay valid.
_SCHEMA_V2: Final = (
    "ALTER TABLE sessions ADD COLUMN role_arn TEXT",
    "ALTER TABLE sessions ADD COLUMN credential_lifetime INTEGER",
)

# What takes a file from version N to N + 1, in order.
_MIGRATIONS: Final = (_SCHEMA_V1, _SCHEMA_V2)

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
_TOUCH: Final = (
    "UPDATE sessions SET request_count = request_count + ?, last_access_at = ?, expires_at = ?,"
    " ttl = ?, updated_at = ? WHERE id = ? AND status = 'active'"
)
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
    ) -> None:
        """Wrap an already opened connection; use `open`, which also prepares the file."""
        self._path = path
        self._name = _store_name(path)
        self._conn: sqlite3.Connection | None = connection
        self._retention = retention
        self._clock = clock
        # One token: the connection is used by one worker thread at a time, in call order.
        self._limiter = anyio.CapacityLimiter(1)
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
        try:
            connection = await anyio.to_thread.run_sync(_connect, path, busy_timeout, cutoff)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(_store_name(path), "open", _describe(exc)) from None
        return cls(path, connection, retention=retention, clock=clock)

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
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close, limiter=self._limiter)

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

    async def touch(self, session_id: str, count: int, last_access_at: datetime) -> SessionStatus:
        values = (
            count,
            format_timestamp(last_access_at),
            format_timestamp(self._retention.expires_at(last_access_at)),
            self._retention.ttl(last_access_at),
            format_timestamp(self._clock.now()),
            session_id,
        )
        cutoff = self._purge_cutoff()

        def work(conn: sqlite3.Connection) -> SessionStatus:
            with _immediate(conn):
                self._purge(conn, cutoff)
                if conn.execute(_TOUCH, values).rowcount == 1:
                    return SessionStatus.ACTIVE
                # Same transaction: the status read is the one that made the update not apply.
                return self._existing_status(conn, "touch", session_id)

        return await self._run("touch", work)

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
        return await anyio.to_thread.run_sync(self._guarded, operation, work, limiter=self._limiter)

    def _guarded(self, operation: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Worker-thread side of every call: roll back what failed, translate every backend error."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(self._name, operation, "the store is closed")
        try:
            return work(conn)
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, SessionStoreError):
                raise
            if isinstance(exc, sqlite3.Error | OSError):
                raise StoreUnavailable(self._name, operation, _describe(exc)) from None
            raise

    def _close(self) -> None:
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


def _connect(path: Path, busy_timeout: float, cutoff: int) -> sqlite3.Connection:
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
        # `timeout` is SQLite's busy timeout: how long a statement waits for another writer's lock.
        conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(conn, cutoff)
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
        if version < SCHEMA_VERSION:
            for migration in _MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement)
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
