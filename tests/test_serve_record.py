"""Issue 10 through a real `sentinel serve`: a store that is not there at startup, a store that
stops answering, and a stop while the store is locked.

Real parts only: a SQLite file write-locked by this test's own connection (the way another
process holding a long transaction locks it), and a moto server of the test's own, stopped with
SIGSTOP, as a DynamoDB endpoint that accepts connections and never answers.
"""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from harness.aws_env import REGION
from harness.moto import MotoServer
from harness.sandbox import AwsSandbox
from harness.waiting import wait_until
from sentinel.sessions.dynamodb import create_session_table
from sentinel.sessions.model import SessionStatus
from sentinel.sessions.sqlite import DEFAULT_BUSY_TIMEOUT, SqliteSessionStore
from tests.support.sentinel_process import run_sentinel
from tests.support.serve import Served, serving
from tests.support.store_rows import store_session

# The interpreter's own exit and the closing of clients after the shutdown budget (DESIGN.md §5),
# as in tests/test_daemon.py.
MARGIN = 3.0
STALE = (503, {"Message": "session store unreachable: revocation status unknown"})


class WriteLock:
    """The file's write lock (a `BEGIN IMMEDIATE` transaction), held from creation to `release()`.
    The schema is made first, so the server finds a valid file and waits on the lock like any
    other writer."""

    def __init__(self, db: Path) -> None:
        anyio.run(_make_schema, db)
        self._holder: sqlite3.Connection | None = sqlite3.connect(db, isolation_level=None)
        self._holder.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()


@contextmanager
def write_locked(db: Path) -> Iterator[WriteLock]:
    lock = WriteLock(db)
    try:
        yield lock
    finally:
        lock.release()


async def _make_schema(db: Path) -> None:
    async with await SqliteSessionStore.open(db):
        pass


class Counted:
    """Every credentials answer a test got from one server, so its accounting adds up."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.ok = 0

    def get(self) -> tuple[int, object]:
        reply = self.served.credentials()
        self.ok += reply[0] == 200
        return reply


def test_a_store_locked_at_startup_is_created_later_and_revocation_then_works(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """Issue 10 item 2 (before: tracking off for the life of the process, healthz "ok",
    server-revoke "not found").
    1. The SQLite file is write-locked before serve starts: serve still starts and serves 200s;
       /healthz says tracking "degraded" with the store's error, no record yet.
    2. The lock goes: the tracker, retrying in the background, creates the record.
    3. server-revoke works: 403 "session revoked", and the record, after SIGTERM, holds every 200
       served (the ones while locked included)."""
    db = tmp_path / "sessions.db"
    args = ("--policy-file", str(policy), "--session-db", str(db))
    with write_locked(db) as lock, serving(env, tmp_path / "s", *args) as served:
        client = Counted(served)
        assert client.get()[0] == 200
        session = served.health()["session"]
        assert (session["tracking"], session["created"]) == ("degraded", False)
        assert session["tracking_problem"]
        # The retry in the background ends in the store's own error, which names the lock.
        wait_until(lambda: "locked" in served.health()["session"]["tracking_problem"], "the reason")
        assert client.get()[0] == 200
        lock.release()
        wait_until(lambda: served.health()["session"]["created"], "the record to be created")
        session_id = served.session_id
        assert client.get()[0] == 200
        result = run_sentinel(
            ["server-revoke", session_id, "--reason", "test", "--no-enforce", "--session-db", str(db)], env
        )
        assert result.returncode == 0, result.stderr
        revoked = (403, {"Message": "session revoked"})
        wait_until(lambda: client.get() == revoked, "the revocation to reach the server")
        assert served.process.stop() == 0
    record = store_session(session_id, db=db)
    assert record is not None
    assert record.status is SessionStatus.REVOKED
    assert record.request_count == client.ok


def test_sigterm_while_the_store_is_locked_ends_within_the_shutdown_timeout(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """Issue 10, startup and shutdown must win over a store that waits on a lock. Before: each
    SQLite call sat in SQLite's busy wait for up to 5 s in a worker thread that no cancellation
    ends, and the process waited for it at exit.
    1. serve with --shutdown-timeout 1 on a write-locked SQLite file; it serves (degraded).
    2. SIGTERM: exit 0 within the shutdown timeout plus the margin, less than one busy wait."""
    db = tmp_path / "sessions.db"
    with (
        write_locked(db),
        serving(
            env,
            tmp_path / "s",
            "--policy-file",
            str(policy),
            "--session-db",
            str(db),
            "--shutdown-timeout",
            "1",
        ) as served,
    ):
        assert served.credentials()[0] == 200
        started = time.monotonic()
        code = served.process.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
    assert code == 0, served.process.stderr
    assert elapsed < min(1 + MARGIN, DEFAULT_BUSY_TIMEOUT), elapsed


def test_two_live_servers_with_one_instance_id_both_keep_serving(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """Issue 10 item 5 (before: the second server's startup sweep expired the first one's live
    session, which then answered 403 forever).
    1. A and B start with the same --server-instance-id on one SQLite file (cloned hosts, or two
       exec runs): B's startup sweep finds A's lease alive and leaves it.
    2. Both serve 200; both records stay active; after SIGTERM both end expired with their own
       counts."""
    db = tmp_path / "sessions.db"
    args = ("--policy-file", str(policy), "--session-db", str(db), "--server-instance-id", "cloned")
    with serving(env, tmp_path / "a", *args) as a:
        wait_until(lambda: a.health()["session"]["created"], "A's record")
        with serving(env, tmp_path / "b", *args) as b:
            wait_until(lambda: b.health()["session"]["created"], "B's record")
            ids = a.session_id, b.session_id
            counted = Counted(a), Counted(b)
            for _ in range(3):
                assert [client.get()[0] for client in counted] == [200, 200]
            assert [_status(session_id, db) for session_id in ids] == [SessionStatus.ACTIVE] * 2
            assert b.process.stop() == 0
        assert a.credentials()[0] == 200
        assert a.process.stop() == 0
    records = [store_session(session_id, db=db) for session_id in ids]
    assert [(r.status, r.request_count) for r in records if r is not None] == [
        (SessionStatus.EXPIRED, 4),
        (SessionStatus.EXPIRED, 3),
    ]


def _status(session_id: str, db: Path) -> SessionStatus | None:
    record = store_session(session_id, db=db)
    return None if record is None else record.status


def test_past_the_staleness_limit_the_server_refuses_until_the_store_answers(
    sandbox: AwsSandbox,
    tmp_path: Path,
    policy: Path,
    spare_moto: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10 item 7, `--revocation-staleness-limit` (off by default; fail-closed for those who
    want it).
    1. serve on a DynamoDB table of its own moto server, limit 1 s: 200, not stale.
    2. The DynamoDB endpoint hangs (SIGSTOP): within the poll bound the answer becomes 503 with
       the staleness message, and /healthz says stale, with how long since the store answered.
    3. It answers again (SIGCONT): 200 again. Every 200 this test got is on the record."""
    table = f"sentinel-stale-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", spare_moto.url)
    anyio.run(_create_table, table)
    env = sandbox.env(AWS_ENDPOINT_URL_DYNAMODB=spare_moto.url)
    args = ("--policy-file", str(policy), "--session-table", table, "--revocation-staleness-limit", "1s")
    with serving(env, tmp_path / "s", *args) as served:
        client = Counted(served)
        wait_until(lambda: served.health()["session"]["created"], "the record to be created")
        assert client.get()[0] == 200
        assert served.health()["session"]["stale"] is False
        with spare_moto.paused():
            wait_until(lambda: client.get() == STALE, "the server to refuse on a stale view")
            session = served.health()["session"]
            assert session["stale"] is True
            assert session["revocation_staleness_seconds"] >= 1
        wait_until(lambda: client.get()[0] == 200, "the server to serve again")
        session_id = served.session_id
        assert served.process.stop() == 0
    record = store_session(session_id, table=table)
    assert record is not None
    assert record.request_count == client.ok


async def _create_table(table: str) -> None:
    await create_session_table(table, region=REGION, poll_interval=0.1)
