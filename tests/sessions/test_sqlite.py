"""What only the SQLite store promises: a private WAL file with a versioned schema, shared safely by
several processes, that refuses what it cannot read and purges rows past their ttl."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sentinel.sessions import sqlite as sqlite_module
from sentinel.sessions.errors import SessionNotFound, StoreUnavailable
from sentinel.sessions.model import Retention, SessionStatus
from sentinel.sessions.sqlite import PURGE_INTERVAL, SCHEMA_VERSION, SqliteSessionStore
from tests.sessions.conftest import FakeClock, make_session

REPO = Path(__file__).resolve().parents[2]

# A second process, as another `sentinel` on the same machine would be: open the file, say
# "ready", wait for "go" on stdin, then touch the session from several tasks as fast as it can.
TOUCHER = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from sentinel.sessions.model import SessionStatus
from sentinel.sessions.sqlite import SqliteSessionStore

async def main(path, session_id, tasks, touches):
    async with await SqliteSessionStore.open(Path(path)) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        async def worker():
            for _ in range(touches):
                if await store.touch(session_id, 1, datetime.now(UTC)) is not SessionStatus.ACTIVE:
                    raise SystemExit("touch not applied")
        await asyncio.gather(*(worker() for _ in range(tasks)))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as another tool (or another Sentinel version) would open it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def assert_one_line_unavailable(error: StoreUnavailable, path: Path, operation: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert "Traceback" not in message
    assert error.store == f"sqlite file {path}"
    assert message.startswith(f"sqlite file {path}: {operation}: ")
    # No sqlite3 exception chained on for a logger to print with its traceback.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


async def test_name_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    async with await SqliteSessionStore.open(path) as store:
        assert store.name == f"sqlite file {path}"


@pytest.mark.slow
async def test_two_processes_touching_one_session_lose_no_count(tmp_path: Path, clock: FakeClock) -> None:
    """1. create a session. 2. start two OS processes on the same file, each with 4 tasks of 250
    touches, and release them at once; this process touches too. 3. the count is exactly the sum."""
    path = tmp_path / "sessions.db"
    tasks, touches, local = 4, 250, 300
    async with await SqliteSessionStore.open(path, clock=clock) as store:
        session = make_session(clock)
        await store.create(session)
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                TOUCHER,
                str(path),
                session.id,
                str(tasks),
                str(touches),
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            for child in children:
                assert child.stdout is not None
                async with asyncio.timeout(60):
                    assert await child.stdout.readline() == b"ready\n"
            for child in children:
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                await child.stdin.drain()
            for _ in range(local):
                assert await store.touch(session.id, 1, clock.now()) is SessionStatus.ACTIVE
            async with asyncio.timeout(120):
                results = [await child.communicate() for child in children]
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
        for child, (_, stderr) in zip(children, results, strict=True):
            assert child.returncode == 0, stderr.decode(errors="replace")
        stored = await store.get(session.id)
    assert stored.request_count == 2 * tasks * touches + local


async def test_file_and_directory_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """1. with a permissive umask, open a store in a directory that does not exist yet and write.
    2. the directory is 0700; the file and its -wal and -shm siblings are 0600. 3. the umask is
    restored."""
    path = tmp_path / "state" / "sentinel" / "sessions.db"
    previous = os.umask(0)
    try:
        async with await SqliteSessionStore.open(path) as store:
            await store.create(make_session(FakeClock()))
            assert os.umask(0) == 0  # open put the umask back
            assert mode(path.parent) == 0o700
            assert mode(path) == 0o600
            for sibling in ("-wal", "-shm"):
                extra = path.with_name(path.name + sibling)
                assert extra.exists(), sibling
                assert mode(extra) & 0o077 == 0, sibling
    finally:
        os.umask(previous)


async def test_the_file_is_in_wal_mode_with_the_schema_version_recorded(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    async with await SqliteSessionStore.open(path):
        pass
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


@pytest.mark.parametrize(
    ("where", "query"),
    [
        ("user", "WHERE user = ? ORDER BY created_at DESC, id DESC LIMIT 100"),
        ("status", "WHERE status = ? ORDER BY created_at DESC, id DESC LIMIT 100"),
        ("profile", "WHERE profile = ? ORDER BY created_at DESC, id DESC LIMIT 100"),
        ("instance", "WHERE server_instance_id = ? AND status = 'active' ORDER BY created_at DESC"),
        ("ttl", "WHERE ttl < ?"),
    ],
)
async def test_the_schema_indexes_every_lookup(tmp_path: Path, where: str, query: str) -> None:
    """Each list, the instance lookup and the purge walk an index, with no full scan and no sort."""
    path = tmp_path / "sessions.db"
    async with await SqliteSessionStore.open(path):
        pass
    with raw(path) as conn:
        sql = f"EXPLAIN QUERY PLAN SELECT id FROM sessions {query}"  # noqa: S608 - constant test SQL
        plan = " | ".join(row[-1] for row in conn.execute(sql, ("x",)))
    assert "INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


async def test_reopening_keeps_the_data(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "sessions.db"
    session = make_session(clock)
    async with await SqliteSessionStore.open(path, clock=clock) as store:
        await store.create(session)
    async with await SqliteSessionStore.open(path, clock=clock) as store:
        assert await store.get(session.id) == session


async def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    """1. a file written by a newer Sentinel (user_version 3). 2. open raises StoreUnavailable
    naming the file and both versions. 3. the file is left as it was."""
    path = tmp_path / "sessions.db"
    async with await SqliteSessionStore.open(path):
        pass
    with raw(path) as conn:
        conn.execute("PRAGMA user_version = 3")
    with pytest.raises(StoreUnavailable) as caught:
        await SqliteSessionStore.open(path)
    assert_one_line_unavailable(caught.value, path, "open")
    assert "schema version 3" in str(caught.value)
    assert f"({SCHEMA_VERSION})" in str(caught.value)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


async def test_a_version_1_file_is_migrated_and_keeps_its_rows(tmp_path: Path, clock: FakeClock) -> None:
    """1. a file as version 1 wrote it (no role_arn, no credential_lifetime columns), with a row.
    2. open migrates it to the current version. 3. the old row reads back with both fields None,
    and a new session with them set round-trips."""
    path = tmp_path / "sessions.db"
    old = make_session(clock)
    with raw(path) as conn:
        for statement in sqlite_module._SCHEMA_V1:
            conn.execute(statement)
        record = old.to_record()
        columns = ", ".join(record)
        conn.execute(
            f"INSERT INTO sessions ({columns}) VALUES ({', '.join('?' * len(record))})",  # noqa: S608
            tuple(record.values()),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    new = make_session(clock).with_changes(
        role_arn="arn:aws:iam::123456789012:role/dev", credential_lifetime=3600
    )
    async with await SqliteSessionStore.open(path, clock=clock) as store:
        assert await store.get(old.id) == old
        await store.create(new)
        assert await store.get(new.id) == new
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_corrupt_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """1. a file of garbage bytes where the database should be. 2. open raises StoreUnavailable,
    one line, naming the file, saying it is corrupt. 3. the garbage is not overwritten."""
    path = tmp_path / "sessions.db"
    garbage = b"this is not a sqlite database \x00\xff" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreUnavailable) as caught:
        await SqliteSessionStore.open(path)
    assert_one_line_unavailable(caught.value, path, "open")
    assert "not a database" in str(caught.value)
    assert "corrupt" in str(caught.value)
    assert path.read_bytes() == garbage


async def test_a_file_locked_by_another_process_is_unavailable_not_stuck(
    tmp_path: Path, clock: FakeClock
) -> None:
    """1. open with a short busy timeout; create a session. 2. another connection holds the write
    lock. 3. reads still work (WAL); a touch fails with StoreUnavailable after about the busy
    timeout, and the event loop keeps running while it waits. 4. once the lock is released the
    same store works again."""
    path = tmp_path / "sessions.db"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with await SqliteSessionStore.open(path, clock=clock, busy_timeout=0.3) as store:
        session = make_session(clock)
        await store.create(session)
        with raw(path) as other:
            other.execute("BEGIN IMMEDIATE")
            assert await store.get(session.id) == session
            started = time.monotonic()
            ticking = asyncio.create_task(ticker())
            with pytest.raises(StoreUnavailable) as caught:
                await store.touch(session.id, 1, clock.now())
            ticking.cancel()
            assert time.monotonic() - started < 5
            assert ticks >= 5, "the event loop was blocked while the write waited for the lock"
            assert_one_line_unavailable(caught.value, path, "touch")
            assert "locked" in str(caught.value)
            other.execute("ROLLBACK")
        assert await store.touch(session.id, 1, clock.now()) is SessionStatus.ACTIVE
        assert (await store.get(session.id)).request_count == 1


async def test_a_malformed_row_is_store_unavailable(tmp_path: Path, clock: FakeClock) -> None:
    """A row edited by hand into something that is not a session: reading it is StoreUnavailable
    naming the session, not a ValueError."""
    path = tmp_path / "sessions.db"
    async with await SqliteSessionStore.open(path, clock=clock) as store:
        session = make_session(clock)
        await store.create(session)
        with raw(path) as other:
            other.execute("UPDATE sessions SET created_at = 'yesterday'")
        for call in (store.get(session.id), store.list_by_user(session.user)):
            with pytest.raises(StoreUnavailable) as caught:
                await call
            assert "malformed" in str(caught.value)
            assert session.id in str(caught.value)


async def test_odd_characters_in_the_path_are_not_taken_for_uri_syntax(tmp_path: Path) -> None:
    path = tmp_path / "a dir?x=1#frag%20" / "sessions.db"
    async with await SqliteSessionStore.open(path) as store:
        await store.create(make_session(FakeClock()))
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".db"] == ["sessions.db"]


async def test_a_closed_store_is_unavailable_and_closing_twice_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = await SqliteSessionStore.open(path)
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreUnavailable) as caught:
        await store.list_by_status(SessionStatus.ACTIVE)
    assert_one_line_unavailable(caught.value, path, "list_by_status")
    assert "closed" in str(caught.value)


# --- TTL-like removal -----------------------------------------------------------------------------

SHORT = Retention(idle_lifetime=timedelta(minutes=1), retention=timedelta(minutes=1))


async def test_purge_expired_deletes_only_rows_past_their_ttl(tmp_path: Path, clock: FakeClock) -> None:
    """1. an old session and a touched one, whatever their status. 2. the clock passes the old one's
    ttl (2 minutes after its last access). 3. purge_expired deletes it alone and says 1."""
    async with await SqliteSessionStore.open(tmp_path / "s.db", clock=clock, retention=SHORT) as store:
        old, ended, kept = (make_session(clock) for _ in range(3))
        for session in (old, ended, kept):
            await store.create(session.with_changes(ttl=SHORT.ttl(session.last_access_at)))
        await store.revoke(ended.id, "ops", "r")
        clock.advance(90)
        await store.touch(kept.id, 1, clock.now())
        clock.advance(60)  # 150 s after creation: past old's and ended's ttl (120 s), not kept's
        assert await store.purge_expired() == 2
        assert await store.purge_expired() == 0
        for gone in (old, ended):
            with pytest.raises(SessionNotFound):
                await store.get(gone.id)
        assert (await store.get(kept.id)).request_count == 1


async def test_rows_past_their_ttl_are_purged_on_open(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.db"
    session = make_session(clock)
    async with await SqliteSessionStore.open(path, clock=clock, retention=SHORT) as store:
        await store.create(session.with_changes(ttl=SHORT.ttl(session.last_access_at)))
    clock.advance(180)
    async with await SqliteSessionStore.open(path, clock=clock, retention=SHORT) as store:
        assert await store.list_by_user(session.user) == []


async def test_normal_writes_purge_at_most_every_interval(tmp_path: Path, clock: FakeClock) -> None:
    """1. a session whose ttl has already passed. 2. a write soon after does not purge it (the
    purge is not due). 3. once PURGE_INTERVAL has passed since open, the next write removes it."""
    async with await SqliteSessionStore.open(tmp_path / "s.db", clock=clock, retention=SHORT) as store:
        stale = make_session(clock, age=3600)
        await store.create(stale.with_changes(ttl=SHORT.ttl(stale.last_access_at)))
        clock.advance(PURGE_INTERVAL / 2)
        await store.create(make_session(clock))
        assert (await store.get(stale.id)).id == stale.id
        clock.advance(PURGE_INTERVAL / 2)
        await store.create(make_session(clock))
        with pytest.raises(SessionNotFound):
            await store.get(stale.id)
        assert len(await store.list_by_user(stale.user)) == 2
