"""A running `sentinel serve` subprocess: start it, wait for its files, talk to it, read its
shutdown summary."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.loopback import http_get, parse_metrics
from harness.sandbox import PROFILE
from harness.waiting import DEADLINE, wait_until
from tests.support.notify_socket import NotifySocket
from tests.support.sentinel_process import SentinelProcess

# Passed as `token_file` to `start_serve`: give no --token-file flag at all.
DEFAULT_TOKEN_FILE = Path("<default>")
SMALL_INTERVALS = ("--flush-interval", "0.2", "--revocation-poll", "0.2", "--shutdown-timeout", "5")


@dataclass
class Served:
    """A `sentinel serve` process that has written its token and env file."""

    process: SentinelProcess
    url: str
    token: str
    token_file: Path
    env_file: Path

    @property
    def port(self) -> int:
        match = re.search(r":(\d+)/$", self.url)
        assert match is not None
        return int(match.group(1))

    def get(self, path: str = "/", token: str | None = None) -> tuple[int, Any]:
        """One GET on a fresh connection: (status, parsed JSON or text)."""
        return http_get(self.port, path, self.token if token is None else token)

    def credentials(self) -> tuple[int, Any]:
        return self.get("/")

    def health(self) -> Any:
        status, body = self.get("/healthz", token="")
        assert status == 200, body
        return body

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse_metrics(body)

    @property
    def session_id(self) -> str:
        session_id: str = self.health()["session"]["id"]
        return session_id


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line)
    return {key: value for key, value in pairs}


def start_serve(
    env: dict[str, str],
    directory: Path,
    *args: str,
    notify: NotifySocket | None = None,
    token_file: Path | None = None,
    within: float = DEADLINE,
) -> Served:
    """Start `sentinel serve` and wait until its env file exists (it is written after the token
    file and right before READY=1). Pass --policy-file and the store flags in `args`.

    `token_file` None: `DIRECTORY/token`; pass `DEFAULT_TOKEN_FILE` to leave the flag out (the
    env file says where the token went)."""
    directory.mkdir(parents=True, exist_ok=True)
    env_file = directory / "workload.env"
    token_args: list[str] = []
    if token_file is not DEFAULT_TOKEN_FILE:
        token_args = ["--token-file", str(token_file or directory / "token")]
    if notify is not None:
        env = {**env, "NOTIFY_SOCKET": str(notify.path)}
    process = SentinelProcess(
        ["serve", "--profile", PROFILE, *token_args, "--env-file", str(env_file), *SMALL_INTERVALS, *args],
        env,
    )
    try:
        wait_until(lambda: env_file.exists() or process.proc.poll() is not None, "the env file", within)
        if not env_file.exists():
            process.wait()
            raise AssertionError(f"sentinel serve exited with {process.proc.returncode}:\n{process.stderr}")
    except BaseException:
        process.kill()
        raise
    variables = read_env_file(env_file)
    written_token_file = Path(variables["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
    return Served(
        process=process,
        url=variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        token=written_token_file.read_text(),
        token_file=written_token_file,
        env_file=env_file,
    )


@contextmanager
def serving(
    env: dict[str, str],
    directory: Path,
    *args: str,
    notify: NotifySocket | None = None,
    token_file: Path | None = None,
) -> Iterator[Served]:
    """`start_serve`, and make sure the process is gone when the block ends."""
    served = start_serve(env, directory, *args, notify=notify, token_file=token_file)
    try:
        yield served
    finally:
        served.process.kill()


def shutdown_summary(stderr: str) -> dict[str, Any]:
    """The tracker's final `ShutdownSummary(...)` log line, as a dict of its fields."""
    match = re.search(r"ShutdownSummary\(([^)]*)\)", stderr)
    assert match is not None, f"no shutdown summary in:\n{stderr}"
    fields: dict[str, Any] = {}
    for part in match.group(1).split(", "):
        key, value = part.split("=", 1)
        fields[key] = int(value) if value.isdigit() else value == "True"
    return fields
