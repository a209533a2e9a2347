"""`sentinel serve` as a real subprocess: systemd notifications, files, signals, logs (issue 5),
and the session lifecycle seen from outside the process (issue 4).

The daemon runs against the shared moto server for STS, with an SQLite file or a DynamoDB table
(moto) as its store; a test binds a real AF_UNIX datagram socket as NOTIFY_SOCKET, sends real
signals, and reads the store with the real store classes. The in-process counterpart (a slow
store, request latency) is `test_pipeline.py`.
"""

from __future__ import annotations

import base64
import getpass
import json
import re
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from harness.aws_env import REGION
from harness.loopback import http_get
from harness.moto import MotoServer
from harness.policies import DENY_POLICY
from harness.sandbox import PROFILE, AwsSandbox
from harness.waiting import wait_until
from sentinel.sessions.dynamodb import create_session_table
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import SessionStatus, utc_now
from tests.support.files import decision_statuses, write_atomically
from tests.support.notify_socket import NotifySocket
from tests.support.sentinel_process import SentinelProcess, run_sentinel
from tests.support.serve import (
    DEFAULT_TOKEN_FILE,
    SMALL_INTERVALS,
    Served,
    read_env_file,
    serving,
    shutdown_summary,
)
from tests.support.store_rows import delete_store_session, store_session
from tests.support.workload import fetch_with_botocore, hammer, workload_environment

BROKEN_POLICY = 'version: "1"\nrules:\n  - name: half-edited\n    effect: alow\n'


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def _is(message: str, assignment: str) -> bool:
    return assignment in message.split("\n")


def test_serve_lifecycle_under_a_fake_systemd(
    env: dict[str, str], tmp_path: Path, policy: Path, notify: NotifySocket
) -> None:
    """1. serve with NOTIFY_SOCKET and WATCHDOG_USEC; when READY=1 arrives the session record
       exists and the port answers at once.
    2. A STATUS= line came first, naming the port, the session id and the profile.
    3. boto3 in another process, configured only from --env-file, gets the served credentials.
    4. WATCHDOG=1 pings keep coming.
    5. SIGHUP with a broken policy: RELOADING=1 with MONOTONIC_USEC, then READY=1; exactly one
       error line is logged and the old policy still answers 200.
    6. SIGHUP with a deny policy: RELOADING=1, READY=1, and now 403 with the rule's reason.
    7. SIGTERM: STOPPING=1, exit 0, and the SQLite session is expired with request_count equal
       to the number of 200s the decision log recorded."""
    db = tmp_path / "sessions.db"
    decisions = tmp_path / "decisions.jsonl"
    token_file = tmp_path / "run" / "token"
    env_file = tmp_path / "run" / "workload.env"
    # Relative on purpose: the env file must still name it absolutely (other units read it).
    relative_token_file = token_file.relative_to(tmp_path)
    process = SentinelProcess(
        [
            "serve",
            "--profile",
            PROFILE,
            "--policy-file",
            str(policy),
            "--session-db",
            str(db),
            "--token-file",
            str(relative_token_file),
            "--env-file",
            str(env_file),
            "--decision-log",
            str(decisions),
            *SMALL_INTERVALS,
        ],
        {**env, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"},
        cwd=tmp_path,
    )
    try:
        notify.wait_for(lambda m: _is(m, "READY=1"))
        token = token_file.read_text()
        (status_line,) = [m for m in notify.messages if m.startswith("STATUS=")]
        match = re.fullmatch(
            r"STATUS=serving on port (\d+); session ([0-9a-f]{16}); profile demo", status_line
        )
        assert match is not None, status_line
        port, session_id = int(match.group(1)), match.group(2)
        # The listener was bound and the session created before READY=1.
        assert _status(session_id, db) is SessionStatus.ACTIVE
        status, served = http_get(port, "/", token)
        assert status == 200, served
        assert read_env_file(env_file) == {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{port}/",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        }

        fetched = fetch_with_botocore(workload_environment(env, read_env_file(env_file)))
        assert fetched == {
            "method": "container-role",
            "access_key": served["AccessKeyId"],
            "secret_key": served["SecretAccessKey"],
            "token": served["Token"],
        }

        for _ in range(2):
            notify.wait_for(lambda m: _is(m, "WATCHDOG=1"))

        errors_before = _error_lines(process.stderr_lines)
        write_atomically(policy, BROKEN_POLICY)
        process.send_signal(signal.SIGHUP)
        reloading = notify.wait_for(lambda m: _is(m, "RELOADING=1"))
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading), reloading
        notify.wait_for(lambda m: _is(m, "READY=1"))
        assert http_get(port, "/", token)[0] == 200
        new_errors = _error_lines(process.stderr_lines)[len(errors_before) :]
        assert len(new_errors) == 1, process.stderr
        assert str(policy) in new_errors[0]
        assert "keeping the current policy" in new_errors[0]

        write_atomically(policy, DENY_POLICY)
        process.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: _is(m, "RELOADING=1"))
        notify.wait_for(lambda m: _is(m, "READY=1"))
        assert http_get(port, "/", token) == (403, {"Message": "demo profile is closed for maintenance"})

        process.send_signal(signal.SIGTERM)
        notify.wait_for(lambda m: _is(m, "STOPPING=1"))
        assert process.wait() == 0
    finally:
        process.kill()

    successes = decision_statuses(decisions).count(200)
    assert successes >= 3  # ours, and at least one per botocore fetch
    record = store_session(session_id, db=db)
    assert record is not None
    assert record.status is SessionStatus.EXPIRED
    assert record.request_count == successes
    assert record.profile == PROFILE
    _assert_no_secrets(process.stderr, token, served)


def _error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error ")]


def _assert_no_secrets(stderr: str, token: str, served: dict[str, str]) -> None:
    for secret in (token, served["SecretAccessKey"], served["Token"]):
        assert secret not in stderr


def test_token_file_default_locations_mode_and_entropy(
    sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """Without --token-file the token goes to $RUNTIME_DIRECTORY/token under systemd, else to
    ~/.local/state/sentinel/token. Each time: mode 0600, no trailing
    newline, at least 32 random bytes (base64url), a new token per start; the env file names the
    token file (absolute), is 0644 and holds no secret."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    plain = sandbox.env()
    del plain["XDG_STATE_HOME"]  # (XDG_STATE_HOME itself: test_config.py)
    cases = [
        (sandbox.env(RUNTIME_DIRECTORY=str(runtime)), runtime / "token"),
        (plain, Path(plain["HOME"]) / ".local" / "state" / "sentinel" / "token"),
    ]
    tokens = set()
    for number, (case_env, expected) in enumerate(cases):
        with serving(
            case_env,
            tmp_path / f"run-{number}",
            "--policy-file",
            str(policy),
            "--no-session-tracking",
            token_file=DEFAULT_TOKEN_FILE,
        ) as served:
            assert served.token_file == expected
            assert stat.S_IMODE(expected.stat().st_mode) == 0o600
            assert stat.S_IMODE(served.env_file.stat().st_mode) == 0o644
            raw = expected.read_bytes()
            assert not raw.endswith(b"\n")
            assert len(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))) >= 32
            assert raw.decode() not in served.env_file.read_text()
            assert served.credentials()[0] == 200
            tokens.add(raw)
            assert served.process.stop() == 0
    assert len(tokens) == len(cases)


def test_an_unwritable_token_file_is_one_line_and_ends_the_session(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """--token-file below a regular file: exit 78 with one error line naming the option, and the
    session the server had already created is expired, not left active."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    db = tmp_path / "sessions.db"
    process = SentinelProcess(
        [
            "serve",
            "--profile",
            PROFILE,
            "--policy-file",
            str(policy),
            "--session-db",
            str(db),
            "--token-file",
            str(blocker / "token"),
        ],
        env,
    )
    try:
        assert process.wait() == 78
    finally:
        process.kill()
    errors = [line for line in process.stderr_lines if line.startswith("sentinel: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"sentinel: --token-file {blocker / 'token'}: cannot write")
    session_id = process.wait_for_line(r"session ([0-9a-f]{16}) created").group(1)
    assert _status(session_id, db) is SessionStatus.EXPIRED


def test_json_logs_are_json_lines_and_never_carry_secrets(
    env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """serve --log-format json with the decision log on stderr too, through a busy life: served
    and refused requests, health and metrics, a failed reload, a revocation, SIGTERM. Every
    stderr line is a JSON object, and neither the token nor any served secret appears."""
    db = tmp_path / "sessions.db"
    with serving(
        env,
        tmp_path / "run",
        "--policy-file",
        str(policy),
        "--session-db",
        str(db),
        "--log-format",
        "json",
        "--decision-log",
        "-",
    ) as served:
        status, credentials = served.credentials()
        assert status == 200
        assert served.get("/", token="not-the-token")[0] == 401
        served.health()
        served.metrics()
        write_atomically(policy, BROKEN_POLICY)
        served.process.send_signal(signal.SIGHUP)
        served.process.wait_for_line(r'"level":"error"')
        revoke = run_sentinel(
            ["server-revoke", served.session_id, "--reason", "json test", "--session-db", str(db)],
            # An admin with AWS credentials: the revocation is also enforced on the role (issue 13).
            {**env, "AWS_PROFILE": "base"},
        )
        assert revoke.returncode == 0, revoke.stderr
        wait_until(lambda: served.credentials()[0] == 403, "the revocation to reach the server")
        assert served.process.stop() == 0
    lines = served.process.stderr_lines
    assert len(lines) > 8
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict)
    messages = [json.loads(line).get("message", "") for line in lines]
    assert any("revoked" in message for message in messages)
    # The decision log shares stderr: a request refused by the session gate is logged as a deny.
    decisions = [entry for entry in map(json.loads, lines) if "request_id" in entry]
    refused = [entry for entry in decisions if entry["status"] == 403]
    assert refused
    assert all((e["effect"], e["reason"]) == ("deny", "session revoked") for e in refused)
    assert {e["effect"] for e in decisions if e["status"] == 200} == {"allow"}
    _assert_no_secrets("\n".join(lines), served.token, credentials)


# -- issue 4: the session lifecycle seen from outside the process --------------------------------


def test_revocation_from_another_process_reaches_the_server_and_sticks(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """Two servers, A and B, on one SQLite file.

    1. Each serves three 200s.
    2. `sentinel server-revoke` (another process, through the store) revokes both sessions.
    3. Within the poll bound both answer 403 {"Message": "session revoked"}.
    4. B's record is deleted meanwhile: B keeps answering 403 and /healthz still says revoked.
    5. SIGTERM both, exit 0: A's record is revoked (not expired), revoked_by the local user, and
       every 200 it served (three, plus any while the test waited) is accounted for; B's record
       was not recreated."""
    db = tmp_path / "sessions.db"
    # Two instance ids: by default both would be `<hostname>-demo`, and B's stale sweep would end
    # A's session at B's start, unless the sweep also checks a lease (issue 10 item 5).
    with (
        serving(
            env, tmp_path / "a", "--policy-file", str(policy), "--session-db", str(db), *_instance("a")
        ) as a,
        serving(
            env, tmp_path / "b", "--policy-file", str(policy), "--session-db", str(db), *_instance("b")
        ) as b,
    ):
        for served in (a, b):
            assert [served.credentials()[0] for _ in range(3)] == [200, 200, 200]
        for served in (a, b):
            result = run_sentinel(
                ["server-revoke", served.session_id, "--reason", "laptop stolen", "--session-db", str(db)],
                # An admin with AWS credentials: the revocation is also enforced on the role (issue 13).
                {**env, "AWS_PROFILE": "base"},
            )
            assert result.returncode == 0, result.stderr
        revoked = (403, {"Message": "session revoked"})
        # Until a server has seen the revocation, the requests made while waiting are served too:
        # count every 200 this test caused, or the accounting below is off on a busy machine.
        served_200 = {"a": 3, "b": 3}

        def answers_revoked(name: str, server: Served) -> bool:
            reply = server.credentials()
            served_200[name] += reply[0] == 200
            return reply == revoked

        # The bound: 25 revocation polls (0.2 s each), far below anything a user would notice.
        wait_until(lambda: answers_revoked("a", a), "A to answer 403 session revoked", within=5)
        wait_until(lambda: answers_revoked("b", b), "B to answer 403 session revoked", within=5)
        b_id = b.session_id
        delete_store_session(b_id, db=db)
        assert b.credentials() == revoked
        assert b.health()["session"]["revoked"] is True
        a_id = a.session_id
        assert a.process.stop() == 0
        assert b.process.stop() == 0
    record = store_session(a_id, db=db)
    assert record is not None
    assert record.status is SessionStatus.REVOKED
    assert record.revoked_reason == "laptop stolen"
    # Touches still pending when the revocation landed are refused by the store (it only counts
    # for active sessions) and counted as discarded; nothing is lost without a trace.
    summary = shutdown_summary(a.process.stderr)
    assert record.request_count + summary["discarded"] == served_200["a"]
    assert summary["dropped"] == summary["unflushed"] == 0
    assert record.revoked_by == getpass.getuser()
    assert store_session(b_id, db=db) is None
    assert "recreated" not in b.process.stderr


@pytest.mark.parametrize(
    "instance", [("--server-instance-id", "web-1"), ()], ids=["explicit-instance-id", "default-instance-id"]
)
def test_a_restart_after_sigkill_expires_the_stale_session(
    env: dict[str, str], tmp_path: Path, policy: Path, instance: tuple[str, ...]
) -> None:
    """1. A serves with --server-instance-id web-1, or with the default, stable one (host and
       profile, issue 10 item 4); its session is active in the store.
    2. SIGKILL: nothing ends the session; it stays active, and nothing renews its lease: the
       test moves the lease into the past, as the 3 minutes of a lease would (issue 10).
    3. B starts with the same instance id: A's session is now expired, B's active, and B said so.
    4. B stops cleanly on SIGINT: its own session ends expired too."""
    db = tmp_path / "sessions.db"
    args = ("--policy-file", str(policy), "--session-db", str(db), *instance)
    with serving(env, tmp_path / "a", *args) as a:
        assert a.credentials()[0] == 200
        a_id = a.session_id
        wait_until(lambda: _status(a_id, db) is SessionStatus.ACTIVE, "A's session record")
        assert a.process.stop(signal.SIGKILL) == -signal.SIGKILL
    assert _status(a_id, db) is SessionStatus.ACTIVE
    anyio.run(_lapse_lease, a_id, db)
    with serving(env, tmp_path / "b", *args) as b:
        b_id = b.session_id
        assert b_id != a_id
        assert _status(a_id, db) is SessionStatus.EXPIRED
        assert _status(b_id, db) is SessionStatus.ACTIVE
        b.process.wait_for_line(rf"expired stale session {a_id}")
        assert b.process.stop(signal.SIGINT) == 0  # Ctrl-C stops as cleanly as SIGTERM
    assert _status(b_id, db) is SessionStatus.EXPIRED


async def _lapse_lease(session_id: str, db: Path) -> None:
    """What the passing of a lease does to a killed server's record, without waiting for it."""
    store = await open_store(session_table=None, session_db=db, region=REGION)
    try:
        record = await store.get(session_id)
        await store.update(record.with_changes(lease_until=utc_now() - timedelta(seconds=1)))
    finally:
        await store.aclose()


def _instance(name: str) -> tuple[str, str]:
    return ("--server-instance-id", f"test-serve-{name}")


def _status(session_id: str, db: Path) -> SessionStatus | None:
    record = store_session(session_id, db=db)
    return None if record is None else record.status


def _create_table(sandbox: AwsSandbox) -> str:
    table = f"sentinel-e2e-{uuid.uuid4().hex[:10]}"
    result = run_sentinel(["create-session-table", "--session-table", table], _admin_env(sandbox))
    assert result.returncode == 0, result.stderr
    return table


def _admin_env(sandbox: AwsSandbox) -> dict[str, str]:
    # An admin's shell: the base profile by name, the default chain for the store.
    return sandbox.env(AWS_PROFILE="base")


def test_shutdown_with_the_store_unreachable_returns_within_the_deadline(
    sandbox: AwsSandbox, env: dict[str, str], tmp_path: Path, policy: Path, moto_server: MotoServer
) -> None:
    """1. serve with a DynamoDB store (moto) and --shutdown-timeout 2; it serves.
    2. moto goes away (the store is unreachable); SIGTERM.
    3. The process exits 0 within the 2 s deadline plus a generous margin for the interpreter."""
    table = _create_table(sandbox)
    with serving(
        env,
        tmp_path / "run",
        "--policy-file",
        str(policy),
        "--session-table",
        table,
        "--shutdown-timeout",
        "2",
    ) as served:
        assert served.credentials()[0] == 200
        with moto_server.down():
            started = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            code = served.process.wait()
            elapsed = time.monotonic() - started
    assert code == 0, served.process.stderr
    # The margin covers the interpreter's own exit, not a store call: those all fit in the 2 s.
    assert elapsed < 2 + 3, served.process.stderr
    summary = shutdown_summary(served.process.stderr)
    assert (summary["expired"], summary["timed_out"], summary["unflushed"]) == (False, True, 1)


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-queue-1", "dynamodb"])
def test_accounting_invariant_under_concurrent_load(
    request: pytest.FixtureRequest,
    sandbox: AwsSandbox,
    env: dict[str, str],
    tmp_path: Path,
    policy: Path,
    kind: str,
) -> None:
    """8 clients x 60 requests at once against a real server; after SIGTERM the stored
    request_count plus the dropped touches (from the final log line) equals the 200s served,
    exactly. `sqlite-queue-1` makes drops likely (a one-slot touch queue)."""
    if kind == "dynamodb":
        request.getfixturevalue("aws_endpoint")  # the test process reads the table too
        store_args = ["--session-table", _create_table(sandbox)]
    else:
        store_args = ["--session-db", str(tmp_path / "sessions.db")]
    if kind == "sqlite-queue-1":
        store_args += ["--queue-size", "1"]
    with serving(env, tmp_path / "run", "--policy-file", str(policy), *store_args) as served:
        statuses = hammer(served.port, served.token, clients=8, requests=60)
        dropped_before = served.metrics()["sentinel_session_touch_dropped_total"]
        session_id = served.session_id
        assert served.process.stop() == 0
    successes = statuses.count(200)
    assert successes == len(statuses) == 480
    summary = shutdown_summary(served.process.stderr)
    assert summary["dropped"] >= dropped_before
    assert summary["timed_out"] is False
    record = store_session(session_id, **_store_of(store_args))
    assert record is not None
    assert record.status is SessionStatus.EXPIRED
    assert record.request_count + summary["dropped"] == successes


def _store_of(store_args: list[str]) -> dict[str, Any]:
    if store_args[0] == "--session-table":
        return {"table": store_args[1]}
    return {"db": Path(store_args[1])}


def test_store_down_for_the_whole_run_then_back(
    sandbox: AwsSandbox, tmp_path: Path, policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DynamoDB on its own endpoint, a second moto server that is not running (STS stays up).

    1. serve starts anyway (one warning), /healthz says the record is not created yet.
    2. 4 x 50 concurrent requests: every one is answered 200.
    3. The store comes back (the server starts, the table is created).
    4. The server creates its record with every count (pending 0); SIGTERM, exit 0.
    5. The record is expired with request_count == the 200s served (no drops, no loss)."""
    sandbox.ensure_role()
    dynamodb = MotoServer()
    env = sandbox.env(AWS_ENDPOINT_URL_DYNAMODB=dynamodb.url)
    table = f"sentinel-e2e-{uuid.uuid4().hex[:10]}"
    try:
        # --shutdown-timeout also bounds the startup's attempt to create the record.
        with serving(
            env,
            tmp_path / "run",
            "--policy-file",
            str(policy),
            "--session-table",
            table,
            "--shutdown-timeout",
            "1",
        ) as served:
            session = served.health()["session"]
            assert (session["created"], session["tracking"]) == (False, "degraded")
            statuses = hammer(served.port, served.token, clients=4, requests=50)
            assert statuses == [200] * 200
            dynamodb.start()
            monkeypatch.setenv("AWS_ENDPOINT_URL", dynamodb.url)
            anyio.run(_create_table_in_process, table)
            wait_until(lambda: _flushed(served.health()["session"]), "the counts to reach the store")
            session_id = served.session_id
            assert served.process.stop() == 0
        summary = shutdown_summary(served.process.stderr)
        assert (summary["dropped"], summary["unflushed"], summary["expired"]) == (0, 0, True)
        record = store_session(session_id, table=table)
        assert record is not None
        assert record.status is SessionStatus.EXPIRED
        assert record.request_count == 200
    finally:
        dynamodb.stop()


def _flushed(session: dict[str, Any]) -> bool:
    return bool(session["created"]) and session["pending"] == 0 and session["tracking"] == "ok"


async def _create_table_in_process(table: str) -> None:
    await create_session_table(table, region=REGION, poll_interval=0.1)
