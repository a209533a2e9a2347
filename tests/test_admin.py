"""The admin commands as a security team runs them, against both stores (issue 5 item 3).

Each store is seeded with the real store class (a real SQLite file; a real table on the moto
server, created by `sentinel create-session-table`), then every command runs as a subprocess:
`server-sessions` (table and JSON, filters), `server-session`, `server-revoke`, and the errors.
"""

from __future__ import annotations

import getpass
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from harness.aws_env import REGION
from harness.sandbox import AwsSandbox
from sentinel.sessions.dynamodb import create_session_table
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession, SessionStatus, new_session_id
from sentinel.sessions.store import SessionStore
from tests.support.sentinel_process import run_sentinel

EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_CONFIG = 2, 3, 4, 78

# (user, profile, status, request_count, minutes ago), oldest first.
SEED = [
    ("alice", "dev", SessionStatus.ACTIVE, 5, 50),
    ("alice", "prod", SessionStatus.REVOKED, 0, 40),
    ("bob", "prod", SessionStatus.EXPIRED, 12, 30),
    ("bob", "dev", SessionStatus.ACTIVE, 1, 20),
    ("carol-with-a-long-name", "prod", SessionStatus.ACTIVE, 1234, 10),
]


@dataclass(frozen=True, slots=True)
class Store:
    """A store (SQLite file or DynamoDB table), and how to point a command at it."""

    kind: str
    args: list[str]
    env: dict[str, str]
    sessions: list[ServerSession] = field(default_factory=list)  # SEED order, if seeded

    def run(self, *command: str) -> tuple[int, str, str]:
        result = run_sentinel([*command, *self.args], self.env)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, result.stdout, result.stderr

    def by(self, user: str, profile: str) -> ServerSession:
        return next(s for s in self.sessions if (s.user, s.profile) == (user, profile))

    def read(self, session_id: str) -> ServerSession:
        async def get() -> ServerSession:
            store = await self.open()
            try:
                return await store.get(session_id)
            finally:
                await store.aclose()

        return anyio.run(get)

    async def open(self) -> SessionStore:
        flag, value = self.args
        if flag == "--session-table":
            return await open_store(session_table=value, session_db=None, region=REGION)
        return await open_store(session_table=None, session_db=Path(value), region=REGION)

    def add(self, *seed: tuple[str, str, SessionStatus, int, int]) -> list[ServerSession]:
        """Create sessions (user, profile, status, request_count, minutes ago) in the store."""
        return anyio.run(_create_sessions, self, list(seed))


async def _create_sessions(
    store_ref: Store, seed: list[tuple[str, str, SessionStatus, int, int]]
) -> list[ServerSession]:
    store = await store_ref.open()
    now = datetime.now(UTC)
    sessions = []
    try:
        for user, profile, status, count, minutes_ago in seed:
            started = now - timedelta(minutes=minutes_ago)
            session_id = new_session_id()
            session = ServerSession.start(
                user=user,
                profile=profile,
                server_instance_id=f"host-{user}",
                source_identity=f"sentinel.{user}.{session_id}",
                session_id=session_id,
                now=started,
            )
            await store.create(session)
            if count:
                await store.touch(session_id, count, started + timedelta(minutes=1))
            if status is SessionStatus.REVOKED:
                await store.revoke(session_id, "seed", "seeded revoked")
            elif status is SessionStatus.EXPIRED:
                await store.expire(session_id)
            sessions.append(await store.get(session_id))
    finally:
        await store.aclose()
    return sessions


@pytest.fixture(scope="module")
def admin_env(sandbox: AwsSandbox) -> dict[str, str]:
    # An admin's shell: the default chain finds the base profile's keys.
    return sandbox.env(AWS_PROFILE="base")


@pytest.fixture(scope="module")
def endpoint(sandbox: AwsSandbox) -> Iterator[None]:
    """The moto endpoint in this process's environment too (it seeds and reads tables)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", sandbox.endpoint)
        yield


@pytest.fixture(scope="module")
def seeded_sqlite(admin_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(
        "sqlite", ["--session-db", str(tmp_path_factory.mktemp("admin") / "sessions.db")], admin_env
    )
    store.sessions.extend(store.add(*SEED))
    return store


@pytest.fixture(scope="module")
def seeded_dynamodb(admin_env: dict[str, str], endpoint: None) -> Store:
    """The table is made by `sentinel create-session-table`, as an operator would."""
    table = f"sentinel-admin-{uuid.uuid4().hex[:10]}"
    created = run_sentinel(["create-session-table", "--session-table", table], admin_env)
    assert created.returncode == 0, created.stderr
    assert created.stdout == f"table {table} is active\n"
    store = Store("dynamodb", ["--session-table", table], admin_env)
    store.sessions.extend(store.add(*SEED))
    return store


def _new_table(admin_env: dict[str, str]) -> Store:
    table = f"sentinel-admin-{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        await create_session_table(table, region=REGION, poll_interval=0.1)

    anyio.run(create)
    return Store("dynamodb", ["--session-table", table], admin_env)


@pytest.fixture(scope="module")
def scratch_dynamodb(admin_env: dict[str, str], endpoint: None) -> Store:
    """A second table for the tests that change sessions (each adds its own)."""
    return _new_table(admin_env)


@pytest.fixture
def scratch_sqlite(admin_env: dict[str, str], tmp_path: Path) -> Store:
    return Store("sqlite", ["--session-db", str(tmp_path / "scratch.db")], admin_env)


def _seeded(request: pytest.FixtureRequest, kind: str) -> Store:
    store: Store = request.getfixturevalue(f"seeded_{kind}")
    return store


def _scratch(request: pytest.FixtureRequest, kind: str) -> Store:
    store: Store = request.getfixturevalue(f"scratch_{kind}")
    return store


BOTH = ["sqlite", "dynamodb"]


def _ids(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:]]


def _newest_first(sessions: list[ServerSession]) -> list[str]:
    return [s.id for s in sorted(sessions, key=lambda s: s.created_at, reverse=True)]


@pytest.mark.parametrize("kind", BOTH)
def test_server_sessions_prints_an_aligned_table_newest_first(
    request: pytest.FixtureRequest, kind: str
) -> None:
    store = _seeded(request, kind)
    code, stdout, stderr = store.run("server-sessions")
    assert (code, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "USER",
        "PROFILE",
        "STARTED",
        "(UTC)",
        "LAST",
        "ACCESS",
        "(UTC)",
        "REQUESTS",
    ]
    assert _ids(stdout) == _newest_first(store.sessions)
    # Aligned: every column starts at the same offset on every line; the counts end together.
    starts = [match.start() for match in re.finditer(r"(?<=  )\S", lines[0])]
    for line in lines[1:]:
        for start in starts[:-1]:
            assert line[start - 1] == " ", (line, start)
            assert line[start] != " ", (line, start)
    assert len({len(line) for line in lines}) == 1
    carol = store.by("carol-with-a-long-name", "prod")
    (row,) = [line for line in lines if line.startswith(carol.id)]
    assert row.split()[1:4] == ["active", "carol-with-a-long-name", "prod"]
    assert row.endswith(" 1234")


@pytest.mark.parametrize("kind", BOTH)
def test_server_sessions_json_is_the_records(request: pytest.FixtureRequest, kind: str) -> None:
    store = _seeded(request, kind)
    code, stdout, _ = store.run("server-sessions", "--json")
    assert code == 0
    listed = json.loads(stdout)
    assert [entry["id"] for entry in listed] == _newest_first(store.sessions)
    by_id = {s.id: s for s in store.sessions}
    for entry in listed:
        assert entry == by_id[entry["id"]].to_record()


# Each store answers the index queries itself (status, user, profile); the rest is shared code,
# so the cases that only exercise it run against SQLite alone.
FILTERS = [
    (
        "status",
        BOTH,
        ["--status", "active"],
        [("carol-with-a-long-name", "prod"), ("bob", "dev"), ("alice", "dev")],
    ),
    ("user", BOTH, ["--user", "alice"], [("alice", "prod"), ("alice", "dev")]),
    (
        "profile",
        BOTH,
        ["--profile", "prod"],
        [("carol-with-a-long-name", "prod"), ("bob", "prod"), ("alice", "prod")],
    ),
    ("user+status", BOTH, ["--user", "bob", "--status", "expired"], [("bob", "prod")]),
    (
        "profile+status+limit",
        ["sqlite"],
        ["--profile", "dev", "--status", "active", "--limit", "1"],
        [("bob", "dev")],
    ),
    ("limit", ["sqlite"], ["--limit", "2"], [("carol-with-a-long-name", "prod"), ("bob", "dev")]),
    ("no-match", ["sqlite"], ["--user", "nobody"], []),
]


@pytest.mark.parametrize(
    ("kind", "filters", "expected"),
    [
        pytest.param(kind, filters, expected, id=f"{kind}-{name}")
        for name, kinds, filters, expected in FILTERS
        for kind in kinds
    ],
)
def test_server_sessions_filters(
    request: pytest.FixtureRequest, kind: str, filters: list[str], expected: list[tuple[str, str]]
) -> None:
    store = _seeded(request, kind)
    code, stdout, _ = store.run("server-sessions", *filters, "--json")
    assert code == 0
    assert [entry["id"] for entry in json.loads(stdout)] == [store.by(*pair).id for pair in expected]
    if not expected:
        code, stdout, _ = store.run("server-sessions", *filters)
        assert (code, stdout) == (0, "no sessions\n")


@pytest.mark.parametrize("kind", BOTH)
def test_server_session_shows_one_record(request: pytest.FixtureRequest, kind: str) -> None:
    store = _seeded(request, kind)
    bob = store.by("bob", "prod")
    code, stdout, _ = store.run("server-session", bob.id, "--json")
    assert code == 0
    assert json.loads(stdout) == bob.to_record()
    if kind == "sqlite":  # the text form is shared code
        code, stdout, _ = store.run("server-session", bob.id)
        assert code == 0
        fields = dict(line.split(None, 1) for line in stdout.splitlines())
        assert (fields["id"], fields["status"], fields["request_count"]) == (bob.id, "expired", "12")


@pytest.mark.parametrize("kind", BOTH)
def test_server_revoke_records_who_and_why(request: pytest.FixtureRequest, kind: str) -> None:
    """Revoke an active session; the record says revoked, the reason (whitespace folded) and who:
    the local user name for SQLite, the caller's AWS identity (an ARN) for DynamoDB."""
    store = _scratch(request, kind)
    first, second = store.add(
        ("dave", "dev", SessionStatus.ACTIVE, 3, 5), ("erin", "ops", SessionStatus.ACTIVE, 0, 4)
    )
    code, stdout, stderr = store.run("server-revoke", first.id, "--reason", "  laptop\n stolen ", "--json")
    assert (code, stderr) == (0, "")
    record = store.read(first.id)
    assert json.loads(stdout) == record.to_record()
    assert record.status is SessionStatus.REVOKED
    assert (record.revoked_reason, record.request_count) == ("laptop stolen", 3)
    if kind == "sqlite":
        assert record.revoked_by == getpass.getuser()
    else:
        assert record.revoked_by is not None
        assert record.revoked_by.startswith("arn:aws:")
    code, stdout, _ = store.run("server-revoke", second.id, "--reason", "off-boarded")
    assert code == 0
    assert stdout == f"revoked session {second.id} (user erin, profile ops)\n"


REFUSALS = [
    ("not-found", BOTH, EXIT_NOT_FOUND, "not found"),
    ("already-revoked", BOTH, EXIT_CONFLICT, "revoked"),
    ("already-expired", BOTH, EXIT_CONFLICT, "expired"),
    ("empty-reason", ["sqlite"], EXIT_USAGE, "--reason must not be empty"),
    ("invalid-id", ["sqlite"], EXIT_USAGE, "not-a-session"),
]


@pytest.mark.parametrize(
    ("kind", "case", "expected_code", "needle"),
    [
        pytest.param(kind, case, code, needle, id=f"{kind}-{case}")
        for case, kinds, code, needle in REFUSALS
        for kind in kinds
    ],
)
def test_server_revoke_refusals_are_one_line_with_distinct_codes(
    request: pytest.FixtureRequest, kind: str, case: str, expected_code: int, needle: str
) -> None:
    store = _scratch(request, kind)
    status = {"already-revoked": SessionStatus.REVOKED, "already-expired": SessionStatus.EXPIRED}
    (session,) = store.add(("frank", "ops", status.get(case, SessionStatus.ACTIVE), 0, 1))
    target = {"not-found": "0123456789abcdef", "invalid-id": "not-a-session"}.get(case, session.id)
    reason = "   " if case == "empty-reason" else "incident 42"
    code, stdout, stderr = store.run("server-revoke", target, "--reason", reason)
    assert code == expected_code, stderr
    assert stdout == ""
    (line,) = stderr.splitlines()
    assert line.startswith("sentinel: ")
    assert needle in line
    assert store.read(session.id) == session  # nothing changed


@pytest.mark.parametrize("kind", BOTH)
def test_server_session_not_found(request: pytest.FixtureRequest, kind: str) -> None:
    code, _, stderr = _seeded(request, kind).run("server-session", "fedcba9876543210")
    assert code == EXIT_NOT_FOUND
    assert len(stderr.splitlines()) == 1


def test_an_invalid_id_is_refused_before_the_store_is_touched(
    admin_env: dict[str, str], tmp_path: Path
) -> None:
    """server-session and server-revoke with a malformed id (or an empty reason): one line,
    exit 2, and the database file is not even created."""
    db = tmp_path / "never-created.db"
    for command in (
        ["server-session", "FEDCBA"],
        ["server-revoke", "FEDCBA", "--reason", "r"],
        ["server-revoke", "0123456789abcdef", "--reason", " "],
    ):
        result = run_sentinel([*command, "--session-db", str(db)], admin_env)
        assert result.returncode == EXIT_USAGE, result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert not db.exists()


def test_list_limit_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    result = run_sentinel(["server-sessions", "--limit", "0", "--session-db", str(tmp_path / "s.db")], {})
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == ["sentinel: --limit: must be between 1 and 1000"]


def test_create_session_table_requires_a_name(sandbox: AwsSandbox) -> None:
    result = run_sentinel(["create-session-table"], sandbox.env())
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == ["sentinel: create-session-table: --session-table is required"]


@pytest.fixture
def fresh_dynamodb(admin_env: dict[str, str], endpoint: None) -> Store:
    """A table of its own: a bulk sweep must not reach the sessions other tests left behind."""
    return _new_table(admin_env)


@pytest.mark.parametrize("kind", BOTH)
def test_stale_sessions_are_shown_and_expired_in_bulk(request: pytest.FixtureRequest, kind: str) -> None:
    """Issue 10: liveness by lease.
    1. Three active sessions: one whose lease lapsed (a killed server), one live, and one whose
       lease lapsed but is of another instance id. 2. `server-sessions` shows the two lapsed ones
       as `active (stale)` in the table and the JSON, the live one as `active`.
    3. `server-expire-stale --dry-run` names both and changes nothing.
    4. `server-expire-stale` expires both, prints what it did; the live one stays active."""
    store: Store = request.getfixturevalue("scratch_sqlite" if kind == "sqlite" else "fresh_dynamodb")
    # A session that started 10 minutes ago and was never touched: its 3-minute lease lapsed.
    leftover, other, live = store.add(
        ("frank", "dev", SessionStatus.ACTIVE, 0, 10),
        ("grace", "dev", SessionStatus.ACTIVE, 0, 9),
        ("heidi", "dev", SessionStatus.ACTIVE, 2, 8),  # the touch renewed its lease just now
    )
    code, stdout, stderr = store.run("server-sessions")
    assert (code, stderr) == (0, "")
    rows = {line.split()[0]: line for line in stdout.splitlines()[1:]}
    assert rows[leftover.id].split()[1:3] == ["active", "(stale)"]
    assert rows[other.id].split()[1:3] == ["active", "(stale)"]
    assert rows[live.id].split()[1:3] == ["active", "heidi"]
    code, stdout, _ = store.run("server-sessions", "--json")
    listed = {entry["id"]: entry for entry in json.loads(stdout)}
    assert (listed[leftover.id]["status"], listed[leftover.id]["stale"]) == ("active (stale)", True)
    assert listed[live.id] == store.read(live.id).to_record()

    code, stdout, stderr = store.run("server-expire-stale", "--dry-run")
    assert (code, stderr) == (0, "")
    assert stdout.splitlines()[-1] == "2 stale sessions would expire"
    assert f"would expire stale session {leftover.id} (user frank, profile dev" in stdout
    assert store.read(leftover.id).status is SessionStatus.ACTIVE

    code, stdout, stderr = store.run("server-expire-stale")
    assert (code, stderr) == (0, "")
    assert stdout.splitlines()[-1] == "2 stale sessions expired"
    assert f"expired stale session {other.id} (user grace, profile dev" in stdout
    assert [store.read(s.id).status for s in (leftover, other, live)] == [
        SessionStatus.EXPIRED,
        SessionStatus.EXPIRED,
        SessionStatus.ACTIVE,
    ]
    code, stdout, _ = store.run("server-expire-stale")
    assert (code, stdout) == (0, "0 stale sessions expired\n")
