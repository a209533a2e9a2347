"""`sentinel exec [--server] -- child` as a real subprocess, with a real Python child (issue 5).

The child is the witness: it prints what it sees (its environment, where boto3 found credentials)
as JSON on stdout, traps the signals it is sent, and exits with the code a test asks for.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.policies import DENY_POLICY, SERVER_ONLY_POLICY
from harness.sandbox import BASE_ACCESS_KEY, PROFILE, AwsSandbox
from sentinel.sessions.model import SessionStatus
from tests.support.files import decision_statuses
from tests.support.notify_socket import NotifySocket
from tests.support.sentinel_process import SentinelProcess, imported_modules, run_sentinel
from tests.support.serve import SMALL_INTERVALS
from tests.support.store_rows import store_session

# Prints its AWS environment, then uses boto3's default chain as any application would.
WITNESS = """
import json, os, urllib.request
import boto3

seen = {k: v for k, v in os.environ.items()
        if k.startswith(("AWS_", "NOTIFY_", "WATCHDOG_", "SENTINEL_"))}
session = boto3.Session()
credentials = session.get_credentials()          # one credential fetch from Sentinel
method = credentials.method
fetches = 1
for _ in range(3):                                # three more, by hand, like any SDK would
    url = os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if url:
        request = urllib.request.Request(url, headers={
            "Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            fetches += 1
arn = session.client("sts").get_caller_identity()["Arn"]   # no region given: it must be set
print(json.dumps({"env": seen, "method": method, "arn": arn, "min_fetches": fetches,
                  "access_key": credentials.get_frozen_credentials().access_key}))
"""

# Reports each forwarded signal; SIGTERM ends it with 42.
TRAPPER = """
import signal, sys, time
def report(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
    if signum == signal.SIGTERM:
        sys.exit(42)
for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, report)
print("ready", flush=True)
while True:
    signal.pause()
"""


def _exec(policy: Path, *args: str) -> list[str]:
    return ["exec", "--profile", PROFILE, "--policy-file", str(policy), *args]


def _python(code: str) -> list[str]:
    return ["--", sys.executable, "-c", code]


def test_the_child_gets_sentinel_credentials_and_no_others(
    sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """The parent environment holds every other credential source (static keys, AWS_PROFILE, a
    container URI, a notify socket and watchdog) and no region variable.

    1. `sentinel exec --server` runs the witness; it exits 0.
    2. The child saw only Sentinel: FULL_URI + token + AWS_SENTINEL, config files /dev/null, no
       static keys, no AWS_PROFILE, no NOTIFY_SOCKET/WATCHDOG_*; the region came from the profile.
    3. boto3's default chain used the container provider, and the assumed role's identity.
    4. The session ended expired, its request_count equal to the 200s in the decision log, at
       least the four fetches the child made by itself."""
    notify = NotifySocket(tmp_path / "notify")
    db = tmp_path / "sessions.db"
    decisions = tmp_path / "decisions.jsonl"
    env = sandbox.env(
        static_keys=True,
        AWS_PROFILE=PROFILE,
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/not-sentinel",
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="30000000",
    )
    del env["AWS_REGION"], env["AWS_DEFAULT_REGION"]
    try:
        result = run_sentinel(
            [
                *_exec(policy, "--server", "--session-db", str(db), "--decision-log", str(decisions)),
                *SMALL_INTERVALS,
                *_python(WITNESS),
            ],
            env,
        )
    finally:
        notify.close()
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    child_env: dict[str, str] = seen["env"]
    assert child_env["AWS_CONFIG_FILE"] == child_env["AWS_SHARED_CREDENTIALS_FILE"] == "/dev/null"
    assert child_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    assert len(child_env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]) >= 43
    for absent in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ):
        assert absent not in child_env
    assert child_env["AWS_REGION"] == "us-east-1"
    session_id = child_env["AWS_SENTINEL"]
    assert seen["method"] == "container-role"
    assert ":assumed-role/sentinel-e2e/" in seen["arn"]
    assert seen["access_key"] != BASE_ACCESS_KEY

    fetches = decision_statuses(decisions)
    assert fetches.count(200) == len(fetches) >= seen["min_fetches"] == 4
    record = store_session(session_id, db=db)
    assert record is not None
    assert record.status is SessionStatus.EXPIRED
    assert record.request_count == fetches.count(200)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit(7)", 7),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
    ],
    ids=["exit-3", "exit-7", "killed-by-sigkill"],
)
def test_the_exit_code_is_the_childs(
    env: dict[str, str], tmp_path: Path, policy: Path, code: str, expected: int
) -> None:
    result = run_sentinel(
        [*_exec(policy, "--server", "--session-db", str(tmp_path / "s.db")), *_python(code)], env
    )
    assert result.returncode == expected, result.stderr
    assert "Traceback" not in result.stderr


def test_a_sqlite_exec_never_imports_the_asyncio_aws_sdk(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """Issue 12: a quick exec imports only what its store and mode need.

    1. `sentinel exec --server` with a SQLite store and a policy file runs `true` under Python's
       own import log (PYTHONPROFILEIMPORTTIME). 2. It exits 0 having imported botocore (STS), and
       none of aioboto3, aiobotocore, aiohttp or the DynamoDB store."""
    imported = imported_modules(
        [*_exec(policy, "--server", "--session-db", str(tmp_path / "s.db")), "--", "true"], env
    )
    assert "botocore.session" in imported
    unwanted = ("aioboto3", "aiobotocore", "aiohttp", "sentinel.sessions.dynamodb")
    assert sorted(m for m in imported if m.split(".")[0] in unwanted or m.startswith(unwanted)) == []


def test_a_missing_command_exits_127_with_one_line(env: dict[str, str], tmp_path: Path, policy: Path) -> None:
    result = run_sentinel(
        [
            *_exec(policy, "--server", "--session-db", str(tmp_path / "s.db")),
            "--",
            "sentinel-no-such-command",
        ],
        env,
    )
    assert result.returncode == 127
    assert result.stderr.splitlines() == ["sentinel: exec: command not found: sentinel-no-such-command"]


def test_signals_are_forwarded_to_the_child(env: dict[str, str], tmp_path: Path, policy: Path) -> None:
    """1. The child traps SIGHUP, SIGINT and SIGTERM and says when it is ready.
    2. Each signal sent to `sentinel exec` (only to it, not to the group) reaches the child.
    3. The child exits 42 on SIGTERM; sentinel exits 42; the session is expired with no requests."""
    db = tmp_path / "sessions.db"
    process = SentinelProcess([*_exec(policy, "--server", "--session-db", str(db)), *_python(TRAPPER)], env)
    try:
        process.wait_for_line("^ready$", stream="stdout")
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            process.send_signal(signum)
            process.wait_for_line(f"^got {signum.name}$", stream="stdout")
        assert process.wait() == 42
    finally:
        process.kill()
    (session,) = _sessions(env, db)
    assert (session["status"], session["request_count"]) == ("expired", 0)


def _sessions(env: dict[str, str], db: Path) -> list[dict[str, Any]]:
    listed = run_sentinel(["server-sessions", "--session-db", str(db), "--json"], env)
    assert listed.returncode == 0, listed.stderr
    sessions: list[dict[str, Any]] = json.loads(listed.stdout)
    return sessions


def test_nested_exec_is_refused(env: dict[str, str], tmp_path: Path, policy: Path) -> None:
    """A child of `sentinel exec --server` runs `sentinel exec` twice (with and without
    --server); each is refused with one clear line and exit 1, and the outer exec passes the
    child's exit code on."""
    inner = [sys.executable, "-m", "sentinel", *_exec(policy)]
    code = f"""
import subprocess, sys, json
results = []
for extra in (["--server"], []):
    done = subprocess.run({inner!r} + extra + ["--", "true"], capture_output=True, text=True)
    results.append({{"code": done.returncode, "stderr": done.stderr}})
print(json.dumps(results))
sys.exit(5)
"""
    result = run_sentinel(
        [*_exec(policy, "--server", "--session-db", str(tmp_path / "s.db")), *_python(code)], env
    )
    assert result.returncode == 5, result.stderr
    for nested in json.loads(result.stdout):
        assert nested["code"] == 1
        (line,) = nested["stderr"].splitlines()
        assert line.startswith("sentinel: refusing to run sentinel exec inside another sentinel exec")


def test_no_session_tracking_creates_no_session(env: dict[str, str], tmp_path: Path, policy: Path) -> None:
    db = tmp_path / "sessions.db"
    code = "import boto3; assert boto3.Session().get_credentials().method == 'container-role'"
    result = run_sentinel(
        [*_exec(policy, "--server", "--no-session-tracking", "--session-db", str(db)), *_python(code)], env
    )
    assert result.returncode == 0, result.stderr
    assert not db.exists()


def test_without_server_the_child_gets_role_credentials_as_variables(
    sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """exec without --server: policy evaluated once in cli mode; the child gets the assumed role's
    keys as AWS_ACCESS_KEY_ID etc. (not the base keys), no container variables, and AWS_SENTINEL."""
    env = sandbox.env(static_keys=True)
    code = """
import json, os, boto3
session = boto3.Session()
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith("AWS_")},
                  "method": session.get_credentials().method,
                  "arn": session.client("sts").get_caller_identity()["Arn"]}))
"""
    result = run_sentinel([*_exec(policy), *_python(code)], env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    child_env = seen["env"]
    assert child_env["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert child_env["AWS_ACCESS_KEY_ID"] not in (BASE_ACCESS_KEY, "testing")
    assert {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION", "AWS_SENTINEL"} <= set(
        child_env
    )
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in child_env
    assert child_env["AWS_CONFIG_FILE"] == "/dev/null"
    assert seen["method"] == "env"
    assert ":assumed-role/sentinel-e2e/" in seen["arn"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (DENY_POLICY, "demo profile is closed for maintenance"),
        (SERVER_ONLY_POLICY, "demo profile, server mode only"),
    ],
    ids=["deny", "require-server"],
)
def test_without_server_a_policy_denial_refuses_in_one_line(
    env: dict[str, str], tmp_path: Path, policy: Path, text: str, reason: str
) -> None:
    """A deny rule, and a require_server rule in cli mode: one line naming the reason, exit 1,
    and the child never runs."""
    policy.write_text(text)
    marker = tmp_path / "child-ran"
    result = run_sentinel([*_exec(policy), *_python(f"open({str(marker)!r}, 'w')")], env)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"sentinel: exec: credentials refused: {reason}")
    assert not marker.exists()
