"""`sentinel serve`'s lifecycle when signals arrive at awkward moments (issues 10 and 11).

Real subprocesses and real signals; slowness is made with real parts: a moto server stopped with
SIGSTOP (connections are accepted, nothing answers), so STS, SSM or DynamoDB hang exactly as a
black-holed endpoint does. Each test waits for the `startup: ...` log line or the notification
that shows the process reached the step, never for a fixed time.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from harness.aws_env import REGION
from harness.moto import MotoServer
from tests.support.notify_socket import NotifySocket
from tests.support.policies import ALLOW_POLICY
from tests.support.sandbox import BASE_ACCESS_KEY, BASE_SECRET_KEY, PROFILE, AwsSandbox
from tests.support.sentinel_process import SentinelProcess
from tests.support.serve import serving

SHUTDOWN_TIMEOUT = 3.0
# The interpreter's own exit and the closing of clients after the shutdown budget (DESIGN.md §5).
MARGIN = 3.0


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


@pytest.fixture
def spare_moto() -> Iterator[MotoServer]:
    """A moto server of this test's own, to stop with SIGSTOP without stalling anyone else."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


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
