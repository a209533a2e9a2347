"""`sentinel serve`'s lifecycle when signals arrive at awkward moments (issues 10 and 11).

Real subprocesses and real signals; slowness is made with real parts: a moto server stopped with
SIGSTOP (connections are accepted, nothing answers), so STS, SSM or DynamoDB hang exactly as a
black-holed endpoint does. Each test waits for the `startup: ...` log line or the notification
that shows the process reached the step, never for a fixed time.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from harness.aws_env import REGION
from harness.moto import MotoServer
from harness.policies import ALLOW_POLICY
from harness.sandbox import BASE_ACCESS_KEY, BASE_SECRET_KEY, PROFILE, AwsSandbox
from sentinel.config import default_server_instance_id
from sentinel.sessions.model import SessionStatus
from tests.support.notify_socket import NotifySocket
from tests.support.sentinel_process import SentinelProcess, run_sentinel
from tests.support.serve import read_env_file, serving
from tests.support.store_rows import store_session

# The default; the tracker's final flush gets 1.8 s of it (DESIGN.md §5), room on a busy machine.
SHUTDOWN_TIMEOUT = 5.0
# The interpreter's own exit and the closing of clients after the shutdown budget (DESIGN.md §5).
MARGIN = 3.0


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def _put_policy(moto: MotoServer) -> str:
    name = f"/sentinel/test/{uuid.uuid4().hex}/policy"
    ssm = boto3.client(
        "ssm",
        endpoint_url=moto.url,
        region_name=REGION,
        aws_access_key_id=BASE_ACCESS_KEY,
        aws_secret_access_key=BASE_SECRET_KEY,
    )
    ssm.put_parameter(Name=name, Value=ALLOW_POLICY, Type="SecureString")
    return name


def _serve(env: dict[str, str], tmp_path: Path, notify: NotifySocket, *args: str) -> SentinelProcess:
    return SentinelProcess(
        [
            "serve",
            "--profile",
            PROFILE,
            "--token-file",
            str(tmp_path / "run" / "token"),
            "--shutdown-timeout",
            str(SHUTDOWN_TIMEOUT),
            *args,
        ],
        {**env, "NOTIFY_SOCKET": str(notify.path)},
    )


def _stop(process: SentinelProcess, signum: int = signal.SIGTERM) -> tuple[int, float]:
    """Send `signum`; the exit code and the seconds from the signal to the exit."""
    started = time.monotonic()
    process.send_signal(signum)
    code = process.wait()
    return code, time.monotonic() - started


def _is(message: str, assignment: str) -> bool:
    return assignment in message.split("\n")


def _drain(notify: NotifySocket) -> list[str]:
    """Every notification the process sent (call after it exited)."""
    while True:
        try:
            notify.receive(within=0.01)
        except TimeoutError:
            return notify.messages


def _assert_stopped_before_ready(
    process: SentinelProcess, notify: NotifySocket, code: int, elapsed: float
) -> None:
    """A stop during startup: exit 0 within the shutdown deadline, STOPPING=1, never READY=1."""
    assert code == 0, process.stderr
    assert elapsed < SHUTDOWN_TIMEOUT + MARGIN, process.stderr
    messages = _drain(notify)
    assert any(_is(m, "STOPPING=1") for m in messages)
    assert not any(_is(m, "READY=1") for m in messages)
    assert "Traceback" not in process.stderr


# -- issue 10: startup is interruptible -----------------------------------------------------------


def test_sigterm_while_the_policy_load_hangs(
    sandbox: AwsSandbox, tmp_path: Path, notify: NotifySocket, spare_moto: MotoServer
) -> None:
    """1. The policy is an SSM parameter on a moto server of its own, stopped with SIGSTOP.
    2. serve logs `startup: loading the policy` (GetParameter now hangs); SIGTERM.
    3. Exit 0 within --shutdown-timeout (plus the margin), STOPPING=1 and never READY=1; no token
       file was written and no session record created."""
    name = _put_policy(spare_moto)
    env = sandbox.env(AWS_ENDPOINT_URL_SSM=spare_moto.url)
    db = tmp_path / "sessions.db"
    with spare_moto.paused():
        process = _serve(env, tmp_path, notify, "--policy-parameter", name, "--session-db", str(db))
        try:
            process.wait_for_line(rf"startup: loading the policy from ssm:{name}")
            code, elapsed = _stop(process)
        finally:
            process.kill()
    _assert_stopped_before_ready(process, notify, code, elapsed)
    assert not (tmp_path / "run" / "token").exists()
    assert not db.exists()  # the store is opened after the policy: nothing was created
    assert "received SIGTERM: shutting down" in process.stderr


def test_sigterm_while_sts_hangs(
    env: dict[str, str], tmp_path: Path, notify: NotifySocket, policy: Path, moto_server: MotoServer
) -> None:
    """1. The moto server holding STS is stopped with SIGSTOP.
    2. serve logs `startup: asking STS` (GetCallerIdentity now hangs: 3 attempts x 10 s read
       timeout if nothing interrupted it); SIGINT, as Ctrl-C sends.
    3. Exit 0 within --shutdown-timeout (plus the margin), STOPPING=1, never READY=1."""
    with moto_server.paused():
        process = _serve(env, tmp_path, notify, "--policy-file", str(policy), "--no-session-tracking")
        try:
            process.wait_for_line(r"startup: asking STS")
            code, elapsed = _stop(process, signal.SIGINT)
        finally:
            process.kill()
    _assert_stopped_before_ready(process, notify, code, elapsed)


def test_sigterm_while_the_session_record_is_created_ends_it_expired(
    sandbox: AwsSandbox, tmp_path: Path, notify: NotifySocket, spare_moto: MotoServer
) -> None:
    """1. The DynamoDB session table lives on a moto server of its own, stopped with SIGSTOP;
       STS and the policy answer.
    2. serve logs `startup: creating the session record` (the store calls now hang); SIGTERM;
       the test resumes the store right after the signal.
    3. Exit 0 within --shutdown-timeout (plus the margin), STOPPING=1, never READY=1.
    4. The shutdown of the interrupted startup still ran the tracker's: the one session record in
       the table is expired, not left active."""
    env = sandbox.env(AWS_ENDPOINT_URL_DYNAMODB=spare_moto.url)
    table = f"sentinel-life-{uuid.uuid4().hex[:10]}"
    admin = sandbox.env(AWS_ENDPOINT_URL_DYNAMODB=spare_moto.url, AWS_PROFILE="base")
    created = run_sentinel(["create-session-table", "--session-table", table], admin)
    assert created.returncode == 0, created.stderr
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_POLICY)
    with spare_moto.paused():
        process = _serve(env, tmp_path, notify, "--policy-file", str(policy), "--session-table", table)
        try:
            process.wait_for_line(r"startup: creating the session record")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
        except BaseException:
            process.kill()
            raise
    try:
        code = process.wait()
        elapsed = time.monotonic() - started
    finally:
        process.kill()
    _assert_stopped_before_ready(process, notify, code, elapsed)
    listed = run_sentinel(["server-sessions", "--session-table", table, "--json"], admin)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [record["status"] for record in records] == ["expired"], process.stderr


def test_sighup_during_startup_is_remembered_not_fatal(
    sandbox: AwsSandbox, tmp_path: Path, notify: NotifySocket, spare_moto: MotoServer
) -> None:
    """1. The SSM policy hangs (its moto server stopped); serve logs `startup: loading the policy`.
    2. SIGHUP, then the test resumes SSM.
    3. The server comes up (READY=1), then does the reload it was asked for (RELOADING=1,
       READY=1), and serves; SIGTERM, exit 0."""
    name = _put_policy(spare_moto)
    env = sandbox.env(AWS_ENDPOINT_URL_SSM=spare_moto.url)
    with spare_moto.paused():
        process = _serve(env, tmp_path, notify, "--policy-parameter", name, "--no-session-tracking")
        try:
            process.wait_for_line(r"startup: loading the policy")
            process.send_signal(signal.SIGHUP)
            process.wait_for_line(r"received SIGHUP: reload requested")
        except BaseException:
            process.kill()
            raise
    try:
        notify.wait_for(lambda m: _is(m, "READY=1"))
        notify.wait_for(lambda m: _is(m, "RELOADING=1"))
        notify.wait_for(lambda m: _is(m, "READY=1"))
        process.wait_for_line(r"reload on SIGHUP: policy current")
        assert process.stop() == 0, process.stderr
    finally:
        process.kill()


# -- issue 11: shutdown wins over a reload; SIGHUP restores the workload files -------------------


def test_sigterm_interrupts_a_reload_hung_on_ssm(
    sandbox: AwsSandbox, tmp_path: Path, notify: NotifySocket, spare_moto: MotoServer
) -> None:
    """1. serve --policy-parameter (SSM on a moto server of its own) with an SQLite store: READY=1.
    2. SSM stops answering (SIGSTOP); SIGHUP; RELOADING=1 arrives (the reload now hangs: it may
       take 30 s before giving up).
    3. SIGTERM: exit 0 within --shutdown-timeout (plus the margin); STOPPING=1, and no READY=1
       after the RELOADING=1; the session record is expired."""
    name = _put_policy(spare_moto)
    env = sandbox.env(AWS_ENDPOINT_URL_SSM=spare_moto.url)
    db = tmp_path / "sessions.db"
    process = _serve(env, tmp_path, notify, "--policy-parameter", name, "--session-db", str(db))
    try:
        notify.wait_for(lambda m: _is(m, "READY=1"))
        session_id = process.wait_for_line(r"session ([0-9a-f]{16}) created").group(1)
        with spare_moto.paused():
            process.send_signal(signal.SIGHUP)
            notify.wait_for(lambda m: _is(m, "RELOADING=1"))
            code, elapsed = _stop(process)
    finally:
        process.kill()
    assert code == 0, process.stderr
    assert elapsed < SHUTDOWN_TIMEOUT + MARGIN, process.stderr
    messages = _drain(notify)
    after_reloading = messages[next(i for i, m in enumerate(messages) if _is(m, "RELOADING=1")) :]
    assert any(_is(m, "STOPPING=1") for m in after_reloading)
    assert not any(_is(m, "READY=1") for m in after_reloading)
    record = store_session(session_id, db=db)
    assert record is not None
    assert record.status is SessionStatus.EXPIRED


def test_sighup_rewrites_deleted_workload_files_and_survives_a_refusal(
    env: dict[str, str], tmp_path: Path, notify: NotifySocket, policy: Path
) -> None:
    """1. serve with a token file and an env file, no --server-instance-id: the record carries the
       stable default `<hostname>-demo`.
    2. Both files are deleted; SIGHUP: after RELOADING=1 / READY=1 both are back, the same token
       and URL, mode 0600 and 0644, and one warning line each says so.
    3. Their directory is made writable by everyone (not sticky) and the token file deleted
       again; SIGHUP: one error line names the refusal, READY=1 still follows, the server still
       serves with the token the workload holds; SIGTERM, exit 0."""
    db = tmp_path / "sessions.db"
    with serving(
        env, tmp_path / "run", "--policy-file", str(policy), "--session-db", str(db), notify=notify
    ) as served:
        notify.wait_for(lambda m: _is(m, "READY=1"))
        record = store_session(served.session_id, db=db)
        assert record is not None
        assert record.server_instance_id == default_server_instance_id(PROFILE)
        env_before = served.env_file.read_text()
        served.token_file.unlink()
        served.env_file.unlink()
        served.process.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: _is(m, "RELOADING=1"))
        notify.wait_for(lambda m: _is(m, "READY=1"))
        assert served.token_file.read_text() == served.token
        assert served.env_file.read_text() == env_before
        assert read_env_file(served.env_file)["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == served.url
        assert served.token_file.stat().st_mode & 0o777 == 0o600
        assert served.env_file.stat().st_mode & 0o777 == 0o644
        for option in ("--token-file", "--env-file"):
            served.process.wait_for_line(
                rf"^warning sentinel: {option} \S+ was missing or altered: rewritten"
            )

        served.token_file.parent.chmod(0o777)
        served.token_file.unlink()
        served.process.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: _is(m, "RELOADING=1"))
        notify.wait_for(lambda m: _is(m, "READY=1"))
        served.process.wait_for_line(
            r"^error sentinel: --token-file .*writable by other users and not sticky"
        )
        assert not served.token_file.exists()
        assert served.credentials()[0] == 200
        assert served.process.stop() == 0
    errors = [line for line in served.process.stderr_lines if line.startswith("error ")]
    assert len(errors) == 1, served.process.stderr
    assert "Traceback" not in served.process.stderr


def test_policy_parameter_is_read_with_the_servers_profile_and_region(
    sandbox: AwsSandbox, tmp_path: Path, moto_server: MotoServer
) -> None:
    """serve --profile demo --policy-parameter NAME, as under systemd: no AWS_PROFILE, no keys in
    the environment, no [default] profile, no region variable; the region and the credentials
    exist only in the `demo` profile. The policy is read through them and the server serves 200."""
    sandbox.ensure_role()
    name = _put_policy(moto_server)
    env = sandbox.env()
    for variable in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"):
        env.pop(variable, None)
    with serving(env, tmp_path / "run", "--policy-parameter", name, "--no-session-tracking") as served:
        assert served.credentials()[0] == 200
        served.process.wait_for_line(rf"policy loaded from ssm:{name}")
        assert served.process.stop() == 0
