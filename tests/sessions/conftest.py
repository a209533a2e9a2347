"""Fixtures for the session tests: a driven clock, and every store kind behind one `store` fixture.

The contract suite (`test_store_contract.py`) asks for `store` (or `backend`, to open a second
store on the same file or table) and runs once per kind: `-k sqlite` or `-k dynamodb` picks one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.aws_env import REGION
from harness.loopback import free_port
from sentinel.sessions.model import DEFAULT_RETENTION, Retention, ServerSession, new_session_id
from sentinel.sessions.sqlite import SqliteSessionStore
from sentinel.sessions.store import SessionStore
from tests.support.dynamodb_lint import linted_session

STORE_KINDS = ["sqlite", "dynamodb"]

Opener = Callable[[], Awaitable[SessionStore]]


class FakeClock:
    """A `Clock` the test drives: wall time stands still until `advance`; monotonic time is the
    real monotonic clock plus every `advance`, so timeouts inside a store still run while a test
    can jump past an interval."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        self._offset = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> datetime:
        """Move both clocks forward; returns the new wall time."""
        self._now += timedelta(seconds=seconds)
        self._offset += seconds
        return self._now


def make_session(
    clock: FakeClock,
    *,
    user: str = "alice",
    profile: str = "dev",
    server_instance_id: str = "i-0001",
    age: float = 0.0,
) -> ServerSession:
    """A fresh active session, started `age` seconds before the clock's now."""
    session_id = new_session_id()
    return ServerSession.start(
        user=user,
        profile=profile,
        server_instance_id=server_instance_id,
        source_identity=f"sentinel.{user}.{session_id}",
        session_id=session_id,
        now=clock.now() - timedelta(seconds=age),
    )


@dataclass(frozen=True, slots=True)
class StoreBackend:
    """One file or table, and how to open a store on it (call `open` again for a second client)."""

    kind: str
    open: Opener


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def retention() -> Retention:
    return DEFAULT_RETENTION


def _dynamodb_opener(
    request: pytest.FixtureRequest, table: str, retention: Retention, clock: FakeClock
) -> Opener:
    """Every request of every client opened is checked against what the real DynamoDB accepts."""
    from sentinel.sessions.dynamodb import DynamoDBSessionStore  # only dynamodb runs need aioboto3

    session = linted_session(request)

    async def open_store() -> SessionStore:
        return await DynamoDBSessionStore.open(
            table, region=REGION, retention=retention, clock=clock, session=session
        )

    return open_store


def _sqlite_opener(path: Path, retention: Retention, clock: FakeClock) -> Opener:
    async def open_store() -> SessionStore:
        return await SqliteSessionStore.open(path, retention=retention, clock=clock)

    return open_store


@pytest.fixture(params=STORE_KINDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, retention: Retention
) -> StoreBackend:
    """A fresh, empty backend of each kind: a new SQLite file, or a new table on the moto server."""
    kind: str = request.param
    if kind == "sqlite":
        return StoreBackend(kind, _sqlite_opener(tmp_path / "sessions.db", retention, clock))
    request.getfixturevalue("aws_endpoint")
    from sentinel.sessions.dynamodb import create_session_table

    table = f"sentinel-test-{uuid.uuid4().hex[:12]}"
    await create_session_table(table, region=REGION, session=linted_session(request))
    return StoreBackend(kind, _dynamodb_opener(request, table, retention, clock))


@pytest.fixture
async def store(backend: StoreBackend) -> AsyncIterator[SessionStore]:
    opened = await backend.open()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=["sqlite-under-a-file", "sqlite-is-a-directory", "dynamodb-closed-port"])
def unreachable(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> Opener:
    """Opens a store whose backend cannot be used. Tests run as root, so a chmod would not stop
    anything: the SQLite cases use a path below a regular file, and a path that is a directory."""
    kind: str = request.param
    if kind == "sqlite-under-a-file":
        blocker = tmp_path / "a-regular-file"
        blocker.write_bytes(b"")
        return _sqlite_opener(blocker / "sessions.db", DEFAULT_RETENTION, clock)
    if kind == "sqlite-is-a-directory":
        directory = tmp_path / "sessions.db"
        directory.mkdir()
        return _sqlite_opener(directory, DEFAULT_RETENTION, clock)
    # Nothing listens on a port just released; the endpoint refuses every connection.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    return _dynamodb_opener(request, "sentinel-unreachable", DEFAULT_RETENTION, clock)


@pytest.fixture
def missing_table(request: pytest.FixtureRequest, aws_endpoint: str, clock: FakeClock) -> Opener:
    """Opens a DynamoDB store on a reachable endpoint where the table does not exist."""
    table = f"sentinel-missing-{uuid.uuid4().hex[:12]}"
    return _dynamodb_opener(request, table, DEFAULT_RETENTION, clock)
