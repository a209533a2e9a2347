"""Several profiles from one `sentinel serve` (issue 14), as a real subprocess against moto.

Two profiles, `demo` (the default, role `sentinel-e2e`) and `ops` (role `sentinel-e2e-ops`), each
with its own token, path, session record and revocation; what they share is the listener, the
policy, the decision log and the SQLite store. Workloads fetch through botocore's container
provider with the env file the server wrote for their profile, and STS (moto) says which role
the credentials are for.
"""

from __future__ import annotations

import json
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.aws_env import REGION
from harness.loopback import http_get
from harness.sandbox import PROFILE, AwsSandbox
from harness.waiting import wait_until
from sentinel.sessions.model import SessionStatus
from tests.credentials.support import StsProxy
from tests.support.sentinel_process import SentinelProcess, run_sentinel
from tests.support.serve import SMALL_INTERVALS, read_env_file
from tests.support.store_rows import store_session
from tests.support.workload import fetch_with_botocore, workload_environment

pytestmark = pytest.mark.slow

OPS = "ops"
OPS_ROLE = "sentinel-e2e-ops"
BOTH_POLICY = """version: "1"
rules:
  - name: allow-both
    effect: allow
    conditions:
      profiles: [demo, ops]
    reason: demo and ops allowed
"""
DEMO_ONLY_POLICY = """version: "1"
rules:
  - name: allow-demo
    effect: allow
    conditions:
      profiles: [demo]
    reason: demo allowed
"""


@pytest.fixture(scope="module")
def ops_role(sandbox: AwsSandbox) -> str:
    """A second profile, `ops`, on a role of its own, beside the sandbox's `demo`."""
    return sandbox.add_profile(OPS, OPS_ROLE)


class Profiles:
    """A running two-profile server: its files, and a client that counts its own 200s."""

    def __init__(self, process: SentinelProcess, directory: Path) -> None:
        self.process = process
        self.directory = directory
        self.env = {name: read_env_file(directory / f"{name}.env") for name in (PROFILE, OPS)}
        self.tokens = {
            name: Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text()
            for name, env in self.env.items()
        }
        url = self.env[PROFILE]["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        self.served = {PROFILE: 0, OPS: 0}  # 200s this test got, per profile

    def get(self, path: str, token: str) -> tuple[int, Any]:
        status, body = http_get(self.port, path, token)
        for name, own in self.tokens.items():
            if status == 200 and token == own and path in ("/", f"/profiles/{name}"):
                self.served[name] += 1
        return status, body

    def credentials(self, name: str) -> tuple[int, Any]:
        return self.get("/" if name == PROFILE else f"/profiles/{name}", self.tokens[name])

    def health(self) -> Any:
        status, body = http_get(self.port, "/healthz")
        assert status == 200, body
        return body


@pytest.fixture
def profiles(env: dict[str, str], tmp_path: Path, ops_role: str) -> Iterator[Profiles]:
    """`serve --profile demo --profile ops`, with the token and env file of the default given and
    those of `ops` left to the convention (`ops.token`, `ops.env` beside them)."""
    directory = tmp_path / "run"
    directory.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(BOTH_POLICY)
    args = [
        "serve",
        "--profile",
        PROFILE,
        "--profile",
        OPS,
        "--token-file",
        str(directory / f"{PROFILE}.token"),
        "--env-file",
        str(directory / f"{PROFILE}.env"),
        "--policy-file",
        str(policy),
        "--session-db",
        str(tmp_path / "sessions.db"),
        "--decision-log",
        str(tmp_path / "decisions.log"),
        *SMALL_INTERVALS,
    ]
    process = SentinelProcess(args, env)
    try:
        process.wait_for_line(r"startup: creating the session records")
        wait_until(
            lambda: (directory / f"{OPS}.env").exists() or process.proc.poll() is not None, "the env files"
        )
        assert process.proc.poll() is None, process.stderr
        yield Profiles(process, directory)
    finally:
        process.kill()


def test_each_profile_has_its_own_path_token_files_and_role(profiles: Profiles, env: dict[str, str]) -> None:
    """1. The env and token files: the default's where the flags say, ops's beside them as
       `ops.env` / `ops.token` (0644 / 0600), naming `/` and `/profiles/ops` on one port.
    2. botocore's container provider, given each env file, gets credentials whose STS identity
       is that profile's role."""
    directory = profiles.directory
    assert profiles.env[OPS] == {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{profiles.port}/profiles/{OPS}",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(directory / f"{OPS}.token"),
    }
    assert profiles.env[PROFILE]["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://127.0.0.1:{profiles.port}/"
    assert stat.S_IMODE((directory / f"{OPS}.token").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / f"{OPS}.env").stat().st_mode) == 0o644
    assert profiles.tokens[PROFILE] != profiles.tokens[OPS]
    for name, role in ((PROFILE, "sentinel-e2e"), (OPS, OPS_ROLE)):
        fetched = fetch_with_botocore(workload_environment(env, profiles.env[name]))
        assert fetched["method"] == "container-role"
        sts = boto3.client(
            "sts",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=REGION,
            aws_access_key_id=fetched["access_key"],
            aws_secret_access_key=fetched["secret_key"],
            aws_session_token=fetched["token"],
        )
        assert f":assumed-role/{role}/" in sts.get_caller_identity()["Arn"]


def test_a_token_opens_only_its_own_profile(profiles: Profiles) -> None:
    """1. demo's token on ops's path, and ops's token on `/`: 401, no credentials.
    2. An unknown profile: 404 with a valid token, 401 without one (no probing for names).
    3. Each token on its own path: 200; `/profiles/demo` serves the default profile too."""
    demo, ops = profiles.tokens[PROFILE], profiles.tokens[OPS]
    assert profiles.get(f"/profiles/{OPS}", demo)[0] == 401
    assert profiles.get("/", ops)[0] == 401
    assert profiles.get("/profiles/nope", ops)[0] == 404
    assert profiles.get("/profiles/nope", "")[0] == 401
    assert profiles.get("/profiles/nope", "not-a-token")[0] == 401
    assert profiles.credentials(OPS)[0] == 200
    assert profiles.credentials(PROFILE)[0] == 200
    status, body = profiles.get(f"/profiles/{PROFILE}", demo)
    assert status == 200
    assert body["AccessKeyId"]


def test_revoking_one_profile_leaves_the_other_serving_and_both_records_count(
    profiles: Profiles, env: dict[str, str], tmp_path: Path
) -> None:
    """1. /healthz names both sessions; server-sessions lists both active, one per profile.
    2. server-revoke ops's session: ops answers 403 "session revoked", demo keeps serving.
    3. /metrics (checked by Prometheus's own parser) counts decisions per profile.
    4. SIGTERM: exit 0; demo's record expired, ops's revoked, each counting exactly the 200s
       this test got on its path (the ones made while waiting included)."""
    health = profiles.health()
    sessions = {name: section["session"]["id"] for name, section in health["profiles"].items()}
    assert set(sessions) == {PROFILE, OPS}
    assert sessions[PROFILE] != sessions[OPS]
    assert health["session"]["id"] == sessions[PROFILE]
    assert health["profiles"][PROFILE]["default"]
    db = tmp_path / "sessions.db"
    wait_until(
        lambda: all(s["session"]["created"] for s in profiles.health()["profiles"].values()), "records"
    )
    listed = run_sentinel(["server-sessions", "--status", "active", "--json", "--session-db", str(db)], env)
    assert listed.returncode == 0, listed.stderr
    assert {(r["id"], r["profile"]) for r in json.loads(listed.stdout)} == {
        (sessions[PROFILE], PROFILE),
        (sessions[OPS], OPS),
    }

    assert profiles.credentials(OPS)[0] == 200
    assert profiles.credentials(PROFILE)[0] == 200
    revoked = run_sentinel(
        ["server-revoke", sessions[OPS], "--reason", "test", "--no-enforce", "--session-db", str(db)], env
    )
    assert revoked.returncode == 0, revoked.stderr
    wait_until(
        lambda: profiles.credentials(OPS) == (403, {"Message": "session revoked"}), "ops to be revoked"
    )
    assert profiles.credentials(PROFILE)[0] == 200
    assert profiles.health()["profiles"][OPS]["session"]["revoked"] is True

    status, text = http_get(profiles.port, "/metrics", profiles.tokens[PROFILE])
    assert status == 200
    decisions = {
        (sample.labels["profile"], sample.labels["effect"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "sentinel_policy_decisions"
        for sample in family.samples
        if sample.name == "sentinel_policy_decisions_total"
    }
    assert decisions[(PROFILE, "allow")] == profiles.served[PROFILE]
    assert decisions[(OPS, "allow")] == profiles.served[OPS]
    assert decisions[(OPS, "revoked")] >= 1

    assert profiles.process.stop(signal.SIGTERM) == 0
    demo_record = store_session(sessions[PROFILE], db=db)
    ops_record = store_session(sessions[OPS], db=db)
    assert demo_record is not None
    assert ops_record is not None
    assert (demo_record.status, ops_record.status) == (SessionStatus.EXPIRED, SessionStatus.REVOKED)
    assert demo_record.request_count == profiles.served[PROFILE]
    assert ops_record.request_count == profiles.served[OPS]


def test_sighup_reloads_the_policy_for_every_profile(profiles: Profiles, tmp_path: Path) -> None:
    """The policy is evaluated per (user, profile): a reloaded policy that allows only demo makes
    ops answer 403 with the policy's reason, while demo keeps serving."""
    assert profiles.credentials(OPS)[0] == 200
    (tmp_path / "policy.yaml").write_text(DEMO_ONLY_POLICY)
    profiles.process.send_signal(signal.SIGHUP)
    profiles.process.wait_for_line(r"reload on SIGHUP: policy current")
    status, body = profiles.credentials(OPS)
    assert status == 403, body
    assert profiles.credentials(PROFILE)[0] == 200


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (["--profile", PROFILE, "--profile", PROFILE], None, "profile 'demo' is given twice"),
        (["--profile", PROFILE, "--profile", "a/b"], None, "'a/b' cannot be served beside another profile"),
        (
            ["--profile", PROFILE, "--profile", OPS, "--token-file", "{dir}/t"],
            f'[profiles.{OPS}]\ntoken_file = "{{dir}}/t"\n',
            "would share one token file",
        ),
        (
            [],
            f'[profiles.{OPS}]\npolicy_file = "x"\n',
            "'policy_file' in [profiles.ops] is not a per-profile option",
        ),
    ],
)
def test_bad_profile_combinations_fail_at_startup_in_one_line(
    env: dict[str, str], tmp_path: Path, args: list[str], toml: str | None, message: str
) -> None:
    """Each bad combination: exit 78 before any AWS call, one line on stderr naming the problem."""
    command = [
        "serve",
        *(arg.replace("{dir}", str(tmp_path)) for arg in args),
        "--policy-file",
        str(tmp_path / "p"),
    ]
    if toml is not None:
        config = tmp_path / "sentinel.toml"
        config.write_text(f'profile = "{PROFILE}"\n' + toml.replace("{dir}", str(tmp_path)))
        command += ["--config", str(config)]
    result = run_sentinel(command, env)
    assert result.returncode == 78, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_a_profile_whose_role_cannot_be_assumed_fails_the_start_naming_it(
    env: dict[str, str], tmp_path: Path, ops_role: str
) -> None:
    """STS (a real proxy in front of moto) refuses AssumeRole for ops's role only.
    1. serve demo + ops: exit 69 after prefetching both at once; the last line names profile ops
       (and not demo) and says --lazy.
    2. The same with --lazy: it starts; demo serves, ops answers 500 "credentials unavailable"."""
    proxy = StsProxy(env["AWS_ENDPOINT_URL"])
    proxy.error = (403, "AccessDenied", "not authorized to assume this role")
    proxy.error_when = lambda call: call.get("Action") == "AssumeRole" and call.get("RoleArn") == ops_role
    proxy.start()
    try:
        refusing = {**env, "AWS_ENDPOINT_URL_STS": proxy.url}
        policy = tmp_path / "policy.yaml"
        policy.write_text(BOTH_POLICY)
        args = ["serve", "--profile", PROFILE, "--profile", OPS, "--policy-file", str(policy)]
        args += ["--token-file", str(tmp_path / "run" / "demo.token"), "--session-db", str(tmp_path / "s.db")]
        (tmp_path / "run").mkdir()
        result = run_sentinel(args, refusing)
        assert result.returncode == 69, result.stderr
        last = result.stderr.splitlines()[-1]
        assert f"profile {OPS}:" in last
        assert f"profile {PROFILE}:" not in last
        assert "--lazy" in last
        assert "Traceback" not in result.stderr

        lazy = SentinelProcess([*args, "--lazy"], refusing)
        try:
            token_file = tmp_path / "run" / f"{OPS}.token"
            wait_until(lambda: token_file.exists() or lazy.proc.poll() is not None, "the ops token file")
            assert lazy.proc.poll() is None, lazy.stderr
            port = int(lazy.wait_for_line(r"listening on 127\.0\.0\.1 port (\d+)").group(1))
            demo_token = (tmp_path / "run" / "demo.token").read_text()
            assert http_get(port, "/", demo_token)[0] == 200
            assert http_get(port, f"/profiles/{OPS}", token_file.read_text()) == (
                500,
                {"Message": "credentials unavailable"},
            )
            assert lazy.stop() == 0
        finally:
            lazy.kill()
    finally:
        proxy.stop()


def test_exec_attach_finds_each_profile_through_the_shared_config(
    env: dict[str, str], tmp_path: Path, ops_role: str
) -> None:
    """One TOML file for serve and attach; ops's env file is where its table says, not beside
    the default's.
    1. `exec --attach --config F` runs a child on the default profile: `/`, demo's session.
    2. `exec --attach --config F --profile ops`: `/profiles/ops`, ops's token file and session.
    3. `--profile nope`: one line, exit 78, no child."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(BOTH_POLICY)
    config = tmp_path / "sentinel.toml"
    config.write_text(
        f'profile = "{PROFILE}"\npolicy_file = "{policy}"\nsession_db = "{tmp_path / "s.db"}"\n'
        f'token_file = "{run / "token"}"\nenv_file = "{run / "workload.env"}"\n'
        f'[profiles.{OPS}]\nenv_file = "{elsewhere / "ops-workload.env"}"\n'
    )
    serve = SentinelProcess(["serve", "--config", str(config)], env)
    try:
        ops_env = elsewhere / "ops-workload.env"
        wait_until(lambda: ops_env.exists() or serve.proc.poll() is not None, "ops's env file")
        assert serve.proc.poll() is None, serve.stderr
        port = int(serve.wait_for_line(r"listening on 127\.0\.0\.1 port (\d+)").group(1))
        status, health = http_get(port, "/healthz")
        assert status == 200
        sessions = {name: section["session"]["id"] for name, section in health["profiles"].items()}
        witness = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
        for asked, path, token_file in (
            ((), "/", run / "token"),
            (("--profile", OPS), f"/profiles/{OPS}", run / f"{OPS}.token"),
        ):
            result = run_sentinel(["exec", "--attach", "--config", str(config), *asked, "--", *witness], env)
            assert result.returncode == 0, result.stderr
            seen = json.loads(result.stdout)
            assert seen["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://127.0.0.1:{port}{path}"
            assert seen["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == str(token_file)
            assert seen["AWS_SENTINEL"] == sessions[OPS if asked else PROFILE]
        refused = run_sentinel(
            ["exec", "--attach", "--config", str(config), "--profile", "nope", "--", *witness], env
        )
        assert refused.returncode == 78, refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        assert refused.stdout == ""
        assert serve.stop() == 0
    finally:
        serve.kill()
