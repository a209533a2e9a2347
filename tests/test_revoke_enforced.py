"""`sentinel serve` + `sentinel server-revoke` as real subprocesses against the moto server (issue 13).

moto stores and validates the role's inline policy but does not evaluate `aws:SourceIdentity` when
it authorises API calls, so these tests check what AWS would enforce (the policy on the role), not
a denied API call: no end-to-end denial is observed here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from harness.aws_env import REGION, TRUST_POLICY
from harness.loopback import free_port
from harness.moto import MotoServer
from harness.sandbox import AwsSandbox
from harness.waiting import wait_until
from sentinel.cli import EXIT_NOT_ENFORCED, EXIT_POLICY_FULL
from sentinel.revocation import MAX_INLINE_POLICY_CHARS, POLICY_NAME, RevocationDocument
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession, SessionStatus, new_session_id
from tests.revocation.roles import denied, iam_client, identities, new_role
from tests.support.sentinel_process import SentinelProcess, run_sentinel
from tests.support.serve import read_env_file, serving
from tests.support.store_rows import store_session
from tests.support.workload import fetch_with_botocore, workload_environment


def test_a_served_session_records_its_role_and_credential_lifetime(
    env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """1. `sentinel serve --server-duration 2h` on an SQLite file. 2. its record names the role its
    credentials come from and their longest lifetime (7200 s), which a revocation needs later."""
    db = tmp_path / "sessions.db"
    with serving(
        env, tmp_path / "a", "--policy-file", str(policy), "--session-db", str(db), "--server-duration", "2h"
    ) as served:
        record = store_session(served.session_id, db=db)
    assert record is not None
    assert (record.role_arn, record.credential_lifetime) == (sandbox.role_arn, 7200)


# -- helpers --------------------------------------------------------------------------------------


def _seed(db: Path, role_arn: str, *users: str) -> list[ServerSession]:
    """Active sessions on an SQLite file, as servers using `role_arn` (15-minute credentials) wrote them."""

    async def create() -> list[ServerSession]:
        store = await open_store(session_table=None, session_db=db, region=REGION)
        sessions = []
        try:
            for user in users:
                session_id = new_session_id()
                session = ServerSession.start(
                    user=user,
                    profile="demo",
                    server_instance_id=f"host-{user}",
                    source_identity=f"sentinel.{user}.{session_id}",
                    session_id=session_id,
                    role_arn=role_arn,
                    credential_lifetime=900,
                )
                await store.create(session)
                sessions.append(session)
        finally:
            await store.aclose()
        return sessions

    return anyio.run(create)


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = run_sentinel(list(args), env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def admin_env(env: dict[str, str]) -> dict[str, str]:
    """An admin's shell: the default chain finds the base profile's keys."""
    return {**env, "AWS_PROFILE": "base"}


# -- the whole flow, against a real server ----------------------------------------------------------


def test_serve_fetch_revoke_enforced_shown_and_a_later_revocation_prunes(
    admin_env: dict[str, str], env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """1. `sentinel serve`; a workload fetches credentials through botocore.
    2. the role's policy already holds an entry whose credentials ran out an hour ago.
    3. `server-revoke` the session: exit 0, the output names the role and the session's identity;
       the role now denies that SourceIdentity, and the stale entry was pruned on the way.
    4. the server answers 403; `server-session` says the revocation is enforced, until when.
    (moto does not evaluate aws:SourceIdentity: no denied AWS call is observed here.)"""
    db = tmp_path / "sessions.db"
    role = sandbox.role_arn.rsplit("/", 1)[1]
    stale = "sentinel.gone.00000000000000aa"
    past = datetime.now(UTC) - timedelta(hours=1)
    iam_client(sandbox.endpoint).put_role_policy(
        RoleName=role,
        PolicyName=POLICY_NAME,
        PolicyDocument=RevocationDocument().with_entries({stale: past - timedelta(hours=1)}).render(),
    )
    with serving(env, tmp_path / "a", "--policy-file", str(policy), "--session-db", str(db)) as served:
        fetched = fetch_with_botocore(workload_environment(env, read_env_file(served.env_file)))
        assert fetched["method"] == "container-role"
        session_id = served.session_id
        record = store_session(session_id, db=db)
        assert record is not None
        code, stdout, stderr = _run(
            admin_env, "server-revoke", session_id, "--reason", "laptop lost", "--session-db", str(db)
        )
        assert (code, stderr) == (0, "")
        lines = stdout.splitlines()
        assert lines[0] == f"revoked session {session_id} (user {record.user}, profile demo)"
        assert (
            f"enforced on AWS: role {sandbox.role_arn} denies SourceIdentity {record.source_identity} until "
            in lines[1]
        )
        now_denied = identities(denied(sandbox.endpoint, sandbox.role_arn))
        assert record.source_identity in now_denied
        assert stale not in now_denied
        wait_until(
            lambda: served.credentials() == (403, {"Message": "session revoked"}),
            "403 session revoked",
            within=5,
        )
        code, stdout, _ = _run(admin_env, "server-session", session_id, "--session-db", str(db), "--json")
        assert code == 0
        enforcement = json.loads(stdout)["enforcement"]
        assert (enforcement["state"], enforcement["role_arn"]) == ("enforced", sandbox.role_arn)
        until = datetime.fromisoformat(enforcement["until"].replace("Z", "+00:00"))
        # 15-minute credentials + the 15-minute margin, rounded up to the hour.
        assert timedelta(minutes=30) <= until - datetime.now(UTC) <= timedelta(hours=1, minutes=31)
        code, stdout, _ = _run(admin_env, "server-session", session_id, "--session-db", str(db))
        assert code == 0
        assert "enforced on AWS until" in stdout
        assert served.process.stop() == 0


# -- the command's own paths ------------------------------------------------------------------------


def test_revoke_by_user_revokes_and_enforces_every_active_session(
    admin_env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path
) -> None:
    """1. two active sessions of dana and one of erik on a fresh role. 2. `server-revoke --user dana
    --json`: both of dana's are revoked and denied on the role in one policy, erik's are not.
    3. again: dana has no active sessions left, exit 3."""
    db = tmp_path / "sessions.db"
    role_arn = new_role(sandbox.endpoint)
    first, second, erik = _seed(db, role_arn, "dana", "dana", "erik")
    code, stdout, stderr = _run(
        admin_env, "server-revoke", "--user", "dana", "--reason", "left", "--session-db", str(db), "--json"
    )
    assert (code, stderr) == (0, "")
    listed = json.loads(stdout)
    assert {entry["id"] for entry in listed} == {first.id, second.id}
    assert all(entry["status"] == "revoked" and entry["enforcement"]["enforced_until"] for entry in listed)
    assert identities(denied(sandbox.endpoint, role_arn)) == {first.source_identity, second.source_identity}
    stored = store_session(erik.id, db=db)
    assert stored is not None
    assert stored.status is SessionStatus.ACTIVE
    code, stdout, stderr = _run(
        admin_env, "server-revoke", "--user", "dana", "--reason", "left", "--session-db", str(db)
    )
    assert (code, stdout) == (3, "")
    assert stderr == "sentinel: server-revoke: user 'dana' has no active sessions\n"


def test_no_enforce_leaves_the_role_alone_and_a_rerun_enforces(
    admin_env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path
) -> None:
    """1. `server-revoke --no-enforce`: revoked in the store, the role has no policy, the output
    says it was not enforced. 2. `server-session` says not enforced. 3. `server-revoke` again:
    the session was already revoked, and now the role denies it."""
    db = tmp_path / "sessions.db"
    role_arn = new_role(sandbox.endpoint)
    (session,) = _seed(db, role_arn, "fred")
    code, stdout, stderr = _run(
        admin_env, "server-revoke", session.id, "--reason", "r", "--no-enforce", "--session-db", str(db)
    )
    assert (code, stderr) == (0, "")
    assert stdout.splitlines()[1] == "  not enforced on AWS (--no-enforce)"
    assert denied(sandbox.endpoint, role_arn) is None
    code, stdout, _ = _run(admin_env, "server-session", session.id, "--session-db", str(db), "--json")
    assert json.loads(stdout)["enforcement"]["state"] == "not-enforced"
    code, stdout, stderr = _run(
        admin_env, "server-revoke", session.id, "--reason", "r", "--session-db", str(db)
    )
    assert (code, stderr) == (0, "")
    assert stdout.startswith(f"session {session.id} was already revoked")
    assert identities(denied(sandbox.endpoint, role_arn)) == {session.source_identity}


def test_an_id_and_user_together_or_neither_is_a_usage_error(
    admin_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "never-created.db"
    for extra in (["0123456789abcdef", "--user", "dana"], []):
        code, stdout, stderr = _run(
            admin_env, "server-revoke", *extra, "--reason", "r", "--session-db", str(db)
        )
        assert (code, stdout) == (2, "")
        assert stderr == "sentinel: server-revoke: give a session ID or --user NAME (one of them)\n"
    assert not db.exists()


def test_two_concurrent_server_revoke_processes_on_one_role_both_land(
    admin_env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path
) -> None:
    """Two `sentinel server-revoke` processes started together, two sessions of one role: both
    exit 0 and the role denies both identities (whatever the interleaving of their IAM calls)."""
    db = tmp_path / "sessions.db"
    role_arn = new_role(sandbox.endpoint)
    sessions = _seed(db, role_arn, "gina", "hugo")
    processes = [
        SentinelProcess(["server-revoke", s.id, "--reason", "r", "--session-db", str(db)], admin_env)
        for s in sessions
    ]
    try:
        assert [process.wait() for process in processes] == [0, 0], [p.stderr for p in processes]
    finally:
        for process in processes:
            process.kill()
    assert identities(denied(sandbox.endpoint, role_arn)) == {s.source_identity for s in sessions}


# -- IAM refuses --------------------------------------------------------------------------------------


@pytest.fixture
def iam_with_authorization(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[MotoServer, str, dict[str, str]]]:
    """A moto server of its own with IAM authorization switched on, a role, and an admin user who
    may read role policies (iam:GetRolePolicy) but not write them. Yields the server, the role ARN
    and the user's keys."""
    # moto lets the first N requests through unchecked: the N = 4 that set the account up below.
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "4")
    server = MotoServer()
    server.start()
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    try:
        iam = iam_client(server.url)
        role_arn: str = iam.create_role(RoleName="sentinel-locked", AssumeRolePolicyDocument=TRUST_POLICY)[
            "Role"
        ]["Arn"]
        iam.create_user(UserName="auditor")
        key = iam.create_access_key(UserName="auditor")["AccessKey"]
        iam.put_user_policy(
            UserName="auditor",
            PolicyName="read-only",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "iam:GetRolePolicy", "Resource": "*"}],
                }
            ),
        )
        yield (
            server,
            role_arn,
            {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]},
        )
    finally:
        server.stop()


def test_iam_access_denied_leaves_the_store_revoked_and_says_so_in_one_line(
    env: dict[str, str], tmp_path: Path, iam_with_authorization: tuple[MotoServer, str, dict[str, str]]
) -> None:
    """1. an admin whose IAM rights stop at reading role policies. 2. `server-revoke`: exit 5 and
    one line "revoked in the store but not enforced on AWS: ... PutRolePolicy ... AccessDenied".
    3. the store says revoked; the role has no policy. 4. `server-session` says not enforced."""
    server, role_arn, keys = iam_with_authorization
    db = tmp_path / "sessions.db"
    (session,) = _seed(db, role_arn, "ivan")
    admin = {
        **env,
        "AWS_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": keys["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": keys["aws_secret_access_key"],
    }
    code, stdout, stderr = _run(
        admin, "server-revoke", session.id, "--reason", "stolen", "--session-db", str(db)
    )
    assert code == EXIT_NOT_ENFORCED
    assert stdout == f"revoked session {session.id} (user ivan, profile demo)\n"
    assert stderr == (
        f"sentinel: session {session.id} revoked in the store but not enforced on AWS:"
        f" IAM PutRolePolicy on role sentinel-locked failed: AccessDenied\n"
    )
    stored = store_session(session.id, db=db)
    assert stored is not None
    assert stored.status is SessionStatus.REVOKED
    assert denied(server.url, role_arn, **keys) is None
    code, stdout, _ = _run(admin, "server-session", session.id, "--session-db", str(db), "--json")
    assert code == 0
    assert json.loads(stdout)["enforcement"]["state"] == "not-enforced"


def test_a_full_revocation_policy_is_refused_with_exit_6_and_the_store_revoked(
    admin_env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path
) -> None:
    """1. the role's revocation policy is filled with live entries to just under IAM's limit.
    2. `server-revoke`: exit 6, one line saying revoked in the store but not enforced, and why.
    3. the store says revoked; the role's policy is unchanged."""
    db = tmp_path / "sessions.db"
    role_arn = new_role(sandbox.endpoint)
    (session,) = _seed(db, role_arn, "jane")
    live = datetime.now(UTC) + timedelta(hours=6)
    filler: dict[str, datetime] = {}
    for n in range(1000):
        candidate = {**filler, f"sentinel.filler-user-with-a-long-name.{n:016x}": live}
        if len(RevocationDocument().with_entries(candidate).render()) > MAX_INLINE_POLICY_CHARS:
            break
        filler = candidate
    document = RevocationDocument().with_entries(filler).render()
    iam_client(sandbox.endpoint).put_role_policy(
        RoleName=role_arn.rsplit("/", 1)[1], PolicyName=POLICY_NAME, PolicyDocument=document
    )
    before = denied(sandbox.endpoint, role_arn)
    code, stdout, stderr = _run(
        admin_env, "server-revoke", session.id, "--reason", "r", "--session-db", str(db)
    )
    assert code == EXIT_POLICY_FULL
    assert stdout == f"revoked session {session.id} (user jane, profile demo)\n"
    (line,) = stderr.splitlines()
    assert line.startswith(f"sentinel: session {session.id} revoked in the store but not enforced on AWS: ")
    assert "over IAM's 10240" in line
    stored = store_session(session.id, db=db)
    assert stored is not None
    assert stored.status is SessionStatus.REVOKED
    assert denied(sandbox.endpoint, role_arn) == before


def test_iam_unreachable_is_exit_5_for_revoke_and_unknown_for_session(
    admin_env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path
) -> None:
    """IAM's endpoint (AWS_ENDPOINT_URL_IAM) is a closed loopback port. 1. `server-revoke`: the
    store revokes, exit 5, one line naming the connection error. 2. `server-session` still shows
    the record, exit 0, enforcement `unknown` with the reason."""
    db = tmp_path / "sessions.db"
    (session,) = _seed(db, new_role(sandbox.endpoint), "kate")
    unreachable = {**admin_env, "AWS_ENDPOINT_URL_IAM": f"http://127.0.0.1:{free_port()}"}
    code, _, stderr = _run(unreachable, "server-revoke", session.id, "--reason", "r", "--session-db", str(db))
    assert code == EXIT_NOT_ENFORCED
    (line,) = stderr.splitlines()
    assert session.role_arn is not None
    role = session.role_arn.rsplit("/", 1)[1]
    assert line.endswith(
        f"not enforced on AWS: IAM GetRolePolicy on role {role} failed: EndpointConnectionError"
    )
    code, stdout, stderr = _run(unreachable, "server-session", session.id, "--session-db", str(db), "--json")
    assert (code, stderr) == (0, "")
    record = json.loads(stdout)
    assert record["status"] == "revoked"
    assert record["enforcement"]["state"] == "unknown"
    assert "EndpointConnectionError" in record["enforcement"]["detail"]
