"""Run `sentinel` as a real subprocess against the moto server, and watch it from the outside.

Everything here waits for a condition (a line on stderr, a datagram, a file, a port answering)
under a bounded deadline; nothing sleeps to synchronise. The subprocess environment is built
explicitly (`AwsSandbox.env`), so a test states exactly what the daemon sees.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import boto3

from sentinel.sessions.errors import SessionNotFound
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession
from tests.support.moto import REGION, MotoServer

# Bounds every single wait. Generous on purpose: they catch hangs, they do not measure speed.
DEADLINE = 30.0
ROLE_NAME = "sentinel-e2e"
PROFILE = "demo"
# The base profile's fake keys: the daemon assumes the role with them; a child must never see them.
BASE_ACCESS_KEY = "AKIASENTINELE2EBASE01"
BASE_SECRET_KEY = "sentinel-e2e-base-secret-not-real"

TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
            }
        ],
    }
)

ALLOW_POLICY = """version: "1"
rules:
  - name: allow-demo
    effect: allow
    conditions:
      profiles: [demo]
      mode: [server, cli]
    reason: demo profile allowed
"""

DENY_POLICY = """version: "1"
rules:
  - name: deny-demo
    effect: deny
    conditions:
      profiles: [demo]
    reason: demo profile is closed for maintenance
"""

SERVER_ONLY_POLICY = """version: "1"
rules:
  - name: server-only
    effect: require_server
    conditions:
      profiles: [demo]
    reason: demo profile, server mode only
"""


# Passed as `token_file` to `start_serve`: give no --token-file flag at all.
DEFAULT_TOKEN_FILE = Path("<default>")


# -- the AWS side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwsSandbox:
    """An AWS config and credentials file with a `demo` profile whose role lives in moto."""

    directory: Path
    moto: MotoServer
    role_arn: str

    @property
    def endpoint(self) -> str:
        return self.moto.url

    def env(self, *, static_keys: bool = False, **extra: str) -> dict[str, str]:
        """The subprocess environment: the test process's (isolated by conftest), the sandbox's
        files and endpoint, plus `extra`.

        Without `static_keys` the conftest's fake AWS_ACCESS_KEY_ID/SECRET are removed, so the
        daemon's only credentials are the `base` profile's, as under systemd."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("SENTINEL_")}
        env.pop("NOTIFY_SOCKET", None)
        if not static_keys:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                env.pop(key, None)
        env.update(
            {
                "AWS_CONFIG_FILE": str(self.directory / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.directory / "aws-credentials"),
                "AWS_ENDPOINT_URL": self.moto.url,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                # Keep user state (default token file, default session db) inside the test dir.
                "HOME": str(self.directory / "home"),
                "XDG_STATE_HOME": str(self.directory / "home" / "state"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def ensure_role(self) -> None:
        """Create the role again if moto was restarted (moto_server.down() comes back empty)."""
        if not self.moto.running:
            self.moto.start()
        iam = _client("iam", self.moto.url)
        try:
            iam.get_role(RoleName=ROLE_NAME)
        except iam.exceptions.NoSuchEntityException:
            iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=TRUST_POLICY)


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=BASE_ACCESS_KEY,
        aws_secret_access_key=BASE_SECRET_KEY,
    )


def make_sandbox(directory: Path, moto: MotoServer) -> AwsSandbox:
    """Write the profile files and create the role (once per module is enough)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "home").mkdir(exist_ok=True)
    if not moto.running:
        moto.start()
    iam = _client("iam", moto.url)
    try:
        arn: str = iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=TRUST_POLICY)["Role"]["Arn"]
    (directory / "aws-credentials").write_text(
        f"[base]\naws_access_key_id = {BASE_ACCESS_KEY}\naws_secret_access_key = {BASE_SECRET_KEY}\n"
    )
    (directory / "aws-config").write_text(
        f"[profile {PROFILE}]\nrole_arn = {arn}\nsource_profile = base\nregion = {REGION}\n"
    )
    return AwsSandbox(directory, moto, arn)


# -- waiting ------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    """Poll `predicate` until true; fail naming `what` after `within` seconds.

    For conditions that only exist outside this process (a file, a port, a store row), polling
    is the only way to observe them; the short pause is a poll interval, not a synchronisation."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.02)


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, within: float = DEADLINE) -> str:
        self._sock.settimeout(within)
        data = self._sock.recv(65536).decode()
        self.messages.append(data)
        return data

    def wait_for(self, predicate: Callable[[str], bool], within: float = DEADLINE) -> str:
        """Receive datagrams until one satisfies `predicate`; return it."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching notification within {within}s: {self.messages}")
            try:
                message = self.receive(remaining)
            except TimeoutError:
                continue
            if predicate(message):
                return message

    def close(self) -> None:
        self._sock.close()


# -- the process ----------------------------------------------------------------------------------


@dataclass
class _Stream:
    lines: list[str] = field(default_factory=list)
    closed: bool = False


class SentinelProcess:
    """`python -m sentinel ARGS` with stdout and stderr read line by line in the background."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = list(args)
        self._condition = threading.Condition()
        self._streams = {"stdout": _Stream(), "stderr": _Stream()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentinel", *self.args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, name: str, stream: Any) -> None:
        with stream:
            for line in stream:
                with self._condition:
                    self._streams[name].lines.append(line.rstrip("\n"))
                    self._condition.notify_all()
        with self._condition:
            self._streams[name].closed = True
            self._condition.notify_all()

    @property
    def stdout_lines(self) -> list[str]:
        with self._condition:
            return list(self._streams["stdout"].lines)

    @property
    def stderr_lines(self) -> list[str]:
        with self._condition:
            return list(self._streams["stderr"].lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def wait_for_line(self, pattern: str, stream: str = "stderr", within: float = DEADLINE) -> re.Match[str]:
        """The first line of `stream` (seen so far or later) that `pattern` searches successfully."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        with self._condition:
            while True:
                for line in self._streams[stream].lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._streams[stream].closed or remaining <= 0:
                    raise AssertionError(
                        f"no {stream} line matching {pattern!r}; stderr so far:\n{self._describe()}"
                    )
                self._condition.wait(remaining)

    def _describe(self) -> str:
        return "\n".join(self._streams["stderr"].lines[-40:])

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, within: float = DEADLINE) -> int:
        """Wait for the exit (and for both streams to be read to the end); return the code."""
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sentinel {self.args[0]} still running after {within}s") from None
        for reader in self._readers:
            reader.join(within)
        return code

    def stop(self, signum: int = signal.SIGTERM, within: float = DEADLINE) -> int:
        self.send_signal(signum)
        return self.wait(within)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)


def run_sentinel(
    args: Sequence[str], env: dict[str, str], within: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run a short `sentinel` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


# -- a running `sentinel serve` -----------------------------------------------------------------


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


def http_get(port: int, path: str = "/", token: str = "", within: float = DEADLINE) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=within)
    try:
        headers = {"Authorization": token} if token else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(body)
    return response.status, body.decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}, comments skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line)
    return {key: value for key, value in pairs}


SMALL_INTERVALS = ("--flush-interval", "0.2", "--revocation-poll", "0.2", "--shutdown-timeout", "5")


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


# -- looking at the results ---------------------------------------------------------------------


def decision_statuses(path: Path) -> list[int]:
    """The HTTP status of every entry in a decision log file."""
    return [json.loads(line)["status"] for line in path.read_text().splitlines() if line]


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one rename, so a reload never reads half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def store_session(
    session_id: str, *, db: Path | None = None, table: str | None = None
) -> ServerSession | None:
    """The session record as the store has it (None if absent), read with the real store class.

    For DynamoDB the calling test must have the moto endpoint in its environment (`aws_endpoint`)."""

    async def read() -> ServerSession | None:
        store = await open_store(session_table=table, session_db=db, region=REGION)
        try:
            return await store.get(session_id)
        except SessionNotFound:
            return None
        finally:
            await store.aclose()

    return anyio.run(read)


def delete_store_session(session_id: str, *, db: Path | None = None, table: str | None = None) -> None:
    async def delete() -> None:
        store = await open_store(session_table=table, session_db=db, region=REGION)
        try:
            await store.delete(session_id)
        finally:
            await store.aclose()

    anyio.run(delete)


# What an application does: the default credential chain of botocore, in a fresh process.
BOTOCORE_FETCH = """
import json
import botocore.session
credentials = botocore.session.get_session().get_credentials()
frozen = credentials.get_frozen_credentials()
print(json.dumps({"method": credentials.method, "access_key": frozen.access_key,
                  "secret_key": frozen.secret_key, "token": frozen.token}))
"""


def workload_environment(base: dict[str, str], variables: dict[str, str]) -> dict[str, str]:
    """A workload's environment: no credentials of its own, plus `variables` (from the env file)."""
    env = {
        key: value
        for key, value in base.items()
        if key not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}
    }
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env.update(variables)
    return env


def fetch_with_botocore(env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", BOTOCORE_FETCH],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fetched: dict[str, Any] = json.loads(result.stdout)
    return fetched


def hammer(port: int, token: str, clients: int, requests: int) -> list[int]:
    """`clients` threads, each making `requests` credential requests on one keep-alive connection
    at the same time; returns every response status."""

    def client() -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
        statuses = []
        try:
            for _ in range(requests):
                connection.request("GET", "/", headers={"Authorization": token})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            connection.close()
        return statuses

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        return [status for future in futures for status in future.result(DEADLINE)]
