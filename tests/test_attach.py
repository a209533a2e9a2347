"""`sentinel exec --attach -- child` against a real `sentinel serve` subprocess (issue 14).

The daemon runs as in production (`serve --env-file`, a SQLite store, a decision log) on the moto
server; `sentinel exec --attach` is a real subprocess too, and its child a Python process with
boto3 inside, the witness: it prints what it sees and fetches credentials through boto3's own
container provider. Attach replaces itself with the child, so the child's pid is the one the test
started and what reaches that pid (signals, the exit) is the child's business alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.loopback import free_port
from harness.moto import MotoServer
from harness.sandbox import BASE_ACCESS_KEY, PROFILE, AwsSandbox
from harness.waiting import wait_until
from sentinel.attach import URI
from sentinel.files import ENV_MODE, write_env_file, write_file_safely
from tests.support.files import decision_statuses
from tests.support.other_user import SYSTEM_PYTHON, other_user
from tests.support.sentinel_process import SentinelProcess, imported_modules, run_sentinel
from tests.support.serve import Served, serving
from tests.support.store_rows import store_session

# Prints its environment, then gets credentials as an application would (boto3's default chain),
# fetches twice more by hand with the token read from the file, as the SDK does, and calls STS.
WITNESS = """
import json, os, urllib.request
import boto3

session = boto3.Session()
credentials = session.get_credentials()               # one fetch from Sentinel
fetches = 1
for _ in range(2):
    with open(os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]) as file:
        token = file.read()
    request = urllib.request.Request(
        os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"], headers={"Authorization": token})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        fetches += 1
arn = session.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"pid": os.getpid(), "env": dict(os.environ), "method": credentials.method,
                  "arn": arn, "fetches": fetches,
                  "access_key": credentials.get_frozen_credentials().access_key}))
"""

# Prints only the environment it was given.
ENVIRONMENT = "import json, os; print(json.dumps(dict(os.environ)))"

# Says its pid, then exits 42 on SIGTERM.
TRAPPER = """
import os, signal, sys
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(42))
print(os.getpid(), flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def daemon(env: dict[str, str], tmp_path: Path, policy: Path) -> Iterator[Served]:
    """`sentinel serve --env-file DIR/workload.env`: credentials for an hour, so the SDK fetches once."""
    args = (
        "--policy-file",
        str(policy),
        "--session-db",
        str(tmp_path / "sessions.db"),
        "--decision-log",
        str(tmp_path / "decisions.jsonl"),
        "--server-duration",
        "1h",
    )
    with serving(env, tmp_path / "run", *args) as served:
        yield served


def _attach(env_file: Path | None, *args: str) -> list[str]:
    return ["exec", "--attach", *(["--env-file", str(env_file)] if env_file else []), *args]


def _python(code: str) -> list[str]:
    return ["--", sys.executable, "-c", code]


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    return line


def _env_file(path: Path, text: str) -> Path:
    """An env file written the way serve writes its own (root's or ours, 0644, atomically)."""
    write_file_safely(path, text.encode(), ENV_MODE)
    return path


def test_the_child_gets_the_daemons_credentials_through_its_token_file(
    daemon: Served, sandbox: AwsSandbox, tmp_path: Path
) -> None:
    """The parent environment holds every other credential source, a token of its own and a
    container URI elsewhere.

    1. `sentinel exec --attach --env-file PATH` runs the witness, which exits 0; its pid is the
       one we started (attach became the child).
    2. Its environment names the daemon's URL and token *file*; no token value anywhere in it;
       no static keys, no AWS_PROFILE; config files /dev/null; AWS_SENTINEL = the daemon's session.
    3. boto3's container provider got the assumed role's credentials; STS on moto says so.
    4. The daemon counted exactly the three fetches the child made: three 200s in its decision
       log, the session's request_count up by three (attach's /healthz is not a request)."""
    db = tmp_path / "sessions.db"
    before = store_session(daemon.session_id, db=db)
    assert before is not None
    env = sandbox.env(
        static_keys=True,
        AWS_PROFILE=PROFILE,
        AWS_CONTAINER_AUTHORIZATION_TOKEN="not-sentinels-token",
        AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.170.23/v1/elsewhere",
    )
    process = SentinelProcess([*_attach(daemon.env_file), *_python(WITNESS)], env)
    try:
        assert process.wait() == 0, process.stderr
    finally:
        process.kill()
    seen: dict[str, Any] = json.loads(process.stdout_lines[-1])
    assert seen["pid"] == process.pid
    child_env: dict[str, str] = seen["env"]
    assert child_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == daemon.url
    assert child_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == str(daemon.token_file)
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" not in child_env
    assert daemon.token not in json.dumps(child_env)
    for absent in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        assert absent not in child_env
    assert child_env["AWS_CONFIG_FILE"] == child_env["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
    assert child_env["AWS_SENTINEL"] == daemon.session_id
    assert seen["method"] == "container-role"
    assert ":assumed-role/sentinel-e2e/" in seen["arn"]
    assert seen["access_key"] != BASE_ACCESS_KEY

    assert seen["fetches"] == 3
    assert decision_statuses(tmp_path / "decisions.jsonl") == [200] * 3
    wait_until(
        lambda: (
            (record := store_session(daemon.session_id, db=db)) is not None
            and record.request_count == before.request_count + 3
        ),
        "the session's request_count to count the child's three fetches",
    )


def test_attach_loads_no_aws_sdk_and_no_event_loop(daemon: Served, env: dict[str, str]) -> None:
    """`exec --attach -- true` under Python's import log: it exits 0 having imported no AWS
    library, no event loop (anyio, uvloop, asyncio), and none of http.client, orjson, logging,
    secrets or hmac, which its path has no use for (issue 14)."""
    imported = imported_modules([*_attach(daemon.env_file), "--", "true"], env)
    assert "sentinel.attach" in imported
    unwanted = {"botocore", "boto3", "aioboto3", "aiobotocore", "anyio", "uvloop", "asyncio"}
    unwanted |= {"http", "orjson", "logging", "secrets", "hmac"}
    assert sorted(m for m in imported if m.split(".")[0] in unwanted) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [("import sys; sys.exit(3)", 3), ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -9)],
    ids=["exit-3", "killed-by-sigkill"],
)
def test_the_exit_status_is_the_childs_own(
    daemon: Served, env: dict[str, str], code: str, expected: int
) -> None:
    """The caller sees what it would see had it started the child itself: exit 3 is 3, and a
    child killed by SIGKILL is a process killed by SIGKILL (a shell shows 137)."""
    result = run_sentinel([*_attach(daemon.env_file), *_python(code)], env)
    assert result.returncode == expected, result.stderr
    assert result.stderr == ""


def test_signals_reach_the_child_directly_and_as_from_a_shell(daemon: Served, env: dict[str, str]) -> None:
    """1. The trapper says its pid: the process we started. SIGTERM to it ends it with 42.
    2. A command's ignored signals are what a shell would leave: Python ignores SIGPIPE and
       SIGXFSZ, attach gives them back their default (`yes | head` must end)."""
    process = SentinelProcess([*_attach(daemon.env_file), *_python(TRAPPER)], env)
    try:
        match = process.wait_for_line(r"^\d+$", stream="stdout")
        assert int(match.group(0)) == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait() == 42
    finally:
        process.kill()
    if not Path("/proc/self/status").exists():
        return
    result = run_sentinel([*_attach(daemon.env_file), "--", "grep", "^SigIgn:", "/proc/self/status"], env)
    assert result.returncode == 0, result.stderr
    ignored = int(result.stdout.split()[1], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), signum.name


def test_a_command_that_cannot_run_is_127_or_126_in_one_line(
    daemon: Served, env: dict[str, str], tmp_path: Path
) -> None:
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    missing = run_sentinel([*_attach(daemon.env_file), "--", "sentinel-no-such-command"], env)
    assert missing.returncode == 127
    assert _one_line(missing) == "sentinel: exec: command not found: sentinel-no-such-command"
    denied = run_sentinel([*_attach(daemon.env_file), "--", str(not_executable)], env)
    assert denied.returncode == 126
    assert _one_line(denied) == f"sentinel: exec: permission denied: {not_executable}"


@pytest.mark.parametrize("answering", ["nothing", "not-sentinel"])
def test_without_a_daemon_one_line_exit_69_and_no_child(
    env: dict[str, str], tmp_path: Path, moto_server: MotoServer, answering: str
) -> None:
    """The env file is sound but nothing listens on its port, or something else does (the moto
    server: its /healthz is an S3 error). One line naming the URL and `sentinel serve`, exit 69
    (EX_UNAVAILABLE), and the child never ran."""
    port = free_port() if answering == "nothing" else moto_server.port
    env_file = tmp_path / "run" / "workload.env"
    write_env_file(env_file, f"http://127.0.0.1:{port}/", tmp_path / "run" / "token")
    marker = tmp_path / "child-ran"
    result = run_sentinel([*_attach(env_file), *_python(f"open({str(marker)!r}, 'w')")], env)
    assert result.returncode == 69
    line = _one_line(result)
    assert line.startswith("sentinel: exec --attach: ")
    assert f"http://127.0.0.1:{port}/healthz" in line
    assert "`sentinel serve`" in line
    assert ("nothing answers" if answering == "nothing" else "does not look like Sentinel") in line
    assert not marker.exists()


def test_without_an_env_file_configured_exit_78(env: dict[str, str], tmp_path: Path) -> None:
    """No --env-file, SENTINEL_ENV_FILE or env_file in --config: one line, exit 78. A configured
    path where no file is: one line naming it, exit 78."""
    result = run_sentinel([*_attach(None), "--", "true"], env)
    assert result.returncode == 78
    assert _one_line(result).startswith("sentinel: exec --attach: no env file: give --env-file PATH")
    missing = tmp_path / "nowhere.env"
    result = run_sentinel([*_attach(None), "--", "true"], {**env, "SENTINEL_ENV_FILE": str(missing)})
    assert result.returncode == 78
    assert f"{missing}: no such env file" in _one_line(result)


def test_an_env_file_others_could_have_written_is_refused(
    daemon: Served, env: dict[str, str], tmp_path: Path
) -> None:
    """A copy of the daemon's env file is refused (exit 78, one line, the child never runs)
    group-writable, world-writable, as a directory, and owned by another user; at 0644 and ours
    the same copy works."""
    copy = _env_file(tmp_path / "copy" / "workload.env", daemon.env_file.read_text())
    marker = tmp_path / "child-ran"
    child = _python(f"open({str(marker)!r}, 'w')")

    def refused(path: Path, reason: str) -> None:
        result = run_sentinel([*_attach(path), *child], env)
        assert result.returncode == 78, result.stderr
        assert _one_line(result) == f"sentinel: {path}: refusing to use: {reason}"
        assert not marker.exists()

    copy.chmod(0o664)
    refused(copy, "writable by other users (mode 0664)")
    copy.chmod(0o646)
    refused(copy, "writable by other users (mode 0646)")
    copy.chmod(0o644)
    directory = tmp_path / "directory.env"
    directory.mkdir()
    refused(directory, "not a regular file")
    if os.geteuid() == 0:
        user = other_user()
        os.chown(copy, user.uid, user.gid)
        refused(copy, f"owned by another user (uid {user.uid})")
        os.chown(copy, 0, 0)
    assert run_sentinel([*_attach(copy), *child], env).returncode == 0
    assert marker.exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1:9911/", "'10.0.0.1' is not a loopback address"),
        ("http://example.com:9911/", "'example.com' is not a loopback address"),
        ("https://127.0.0.1:9911/", "not a plain http:// URL"),
        ("http://user:secret@127.0.0.1:9911/", "not a plain http:// URL"),
        ("http://127.0.0.1/", "no port"),
    ],
    ids=["private-address", "host-name", "https", "userinfo", "no-port"],
)
def test_a_url_that_is_not_http_on_loopback_is_refused(
    env: dict[str, str], tmp_path: Path, url: str, reason: str
) -> None:
    """Exit 78 (not 69: no connection was tried, not even the 2 s one to 10.0.0.1), one line."""
    env_file = tmp_path / "workload.env"
    write_env_file(env_file, url, tmp_path / "token")
    result = run_sentinel([*_attach(env_file), "--", "true"], env)
    assert result.returncode == 78
    line = _one_line(result)
    assert line.startswith(f"sentinel: exec --attach: {env_file}: refusing {URI}={url!r}: ")
    assert reason in line


def test_attach_with_server_or_inside_exec_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    """`--attach --server`: a usage error (exit 2, one line). Inside a sentinel exec child
    (AWS_SENTINEL set): refused like any nested exec (exit 1, one line)."""
    both = run_sentinel(["exec", "--attach", "--server", "--", "true"], env)
    assert both.returncode == 2
    assert "--server: not allowed with argument --attach" in _one_line(both)
    nested = run_sentinel(
        [*_attach(tmp_path / "workload.env"), "--", "true"], {**env, "AWS_SENTINEL": "0123456789abcdef"}
    )
    assert nested.returncode == 1
    assert _one_line(nested).startswith(
        "sentinel: refusing to run sentinel exec inside another sentinel exec"
    )


def test_profiles_file_and_daemon_must_agree(daemon: Served, env: dict[str, str], tmp_path: Path) -> None:
    """The multi-profile convention (issue 14) against today's single-profile daemon:

    1. `--profile demo` (or SENTINEL_PROFILE=demo): no `demo.env` beside the env file, which
       names no profile: the daemon serves one profile, taken to be it; the child runs.
    2. `ops.env` beside it (its URL `/profiles/ops`): `--profile ops` picks it, and the daemon,
       which lists no profiles, does not serve `ops`: exit 78, one line.
    3. An env file saying SENTINEL_PROFILE=ops refuses `--profile demo`.
    4. Optional and unknown lines: AWS_REGION is the child's region when it has none; a comment
       and a key attach does not know are ignored."""
    served = daemon.env_file.read_text()
    for extra in (["--profile", PROFILE], []):
        as_demo = run_sentinel(
            [*_attach(daemon.env_file), *extra, "--", "true"], {**env, "SENTINEL_PROFILE": PROFILE}
        )
        assert as_demo.returncode == 0, as_demo.stderr

    _env_file(
        daemon.env_file.parent / "ops.env",
        f"AWS_CONTAINER_CREDENTIALS_FULL_URI={daemon.url}profiles/ops\n"
        f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={daemon.token_file.parent / 'ops.token'}\n",
    )
    ops = run_sentinel([*_attach(daemon.env_file), "--profile", "ops", "--", "true"], env)
    assert ops.returncode == 78
    assert _one_line(ops).endswith("does not serve profile 'ops'")
    assert "ops.env" in _one_line(ops)

    labelled = _env_file(
        tmp_path / "labelled" / "workload.env",
        f"# written for ops\n{served}SENTINEL_PROFILE=ops\nAWS_REGION=eu-west-2\nSENTINEL_FUTURE=1\n",
    )
    wrong = run_sentinel([*_attach(labelled), "--profile", PROFILE, "--", "true"], env)
    assert wrong.returncode == 78
    assert _one_line(wrong).endswith(f"serves profile 'ops', not '{PROFILE}'")

    without_region = {k: v for k, v in env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    seen = run_sentinel([*_attach(labelled), *_python(ENVIRONMENT)], without_region)
    assert seen.returncode == 0, seen.stderr
    child_env = json.loads(seen.stdout)
    assert child_env["AWS_REGION"] == child_env["AWS_DEFAULT_REGION"] == "eu-west-2"
    assert child_env["AWS_SENTINEL"] == daemon.session_id
    assert "SENTINEL_FUTURE" not in child_env


# Run as the other user, as attach's child: what the SDK would do with the token file, and what
# it was handed.
_READ_TOKEN = """
import json, os
try:
    with open(os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]) as file:
        read = file.read()
except OSError as exc:
    read = type(exc).__name__
print(json.dumps({"read": read, "env": dict(os.environ), "uid": os.getuid()}))
"""


def test_another_user_cannot_read_the_token_through_attach(
    env: dict[str, str], policy: Path, tmp_path: Path, shared_dir: Path
) -> None:
    """The daemon (root) writes its env file (0644) and token (0600) where `nobody` can reach
    them. `nobody` runs `sentinel exec --attach` (the system Python: the attach path needs only
    the standard library): the env file is root's, so it is trusted, and the child runs as
    `nobody`; but the token file stays unreadable to it: attach neither read it nor passed its
    value on, and nothing new holding it appeared beside it."""
    user = other_user()
    shared_dir.chmod(0o755)
    args = ("--policy-file", str(policy), "--no-session-tracking")
    with serving(env, shared_dir, *args) as served:
        # A copy of the package where `nobody` can read it: the checkout may sit below a
        # directory only its owner can enter (a clean clone in a mktemp directory, as in CI).
        code = shared_dir / "code"
        shutil.copytree(
            Path(__file__).resolve().parents[1] / "sentinel",
            code / "sentinel",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for path in (code, *code.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        result = subprocess.run(
            user.argv(
                SYSTEM_PYTHON,
                "-m",
                "sentinel",
                *_attach(served.env_file),
                "--",
                SYSTEM_PYTHON,
                "-c",
                _READ_TOKEN,
            ),
            env={**env, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert (seen["uid"], seen["read"]) == (user.uid, "PermissionError")
        assert seen["env"]["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == str(served.token_file)
        assert served.token not in result.stdout + result.stderr
        assert sorted(p.name for p in shared_dir.iterdir()) == ["code", "token", "workload.env"]
