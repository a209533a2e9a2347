"""Test-wide setup: an isolated AWS environment pointed at one real moto server process."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import aws_env
from harness.moto import MotoServer
from harness.policies import ALLOW_POLICY
from harness.sandbox import AwsSandbox, make_sandbox


@pytest.fixture(scope="session", autouse=True)
def isolated_aws_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test can reach a real AWS account or the developer's ~/.aws: fake keys, empty files."""
    with aws_env.isolated_aws_environment(tmp_path_factory.mktemp("aws-home")):
        yield


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server process for the whole run, reached over HTTP on loopback."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def spare_moto() -> Iterator[MotoServer]:
    """A moto server of this test's own, to stop with SIGSTOP without stalling anyone else."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws_endpoint(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every AWS SDK client in this test at the moto server via the standard variable."""
    if not moto_server.running:
        moto_server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    return moto_server.url


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory below /tmp, which another local user can reach (pytest's tmp_path is 0700
    root's), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sentinel-shared-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def sandbox(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> AwsSandbox:
    """A moto role plus AWS config/credentials files for `sentinel` subprocesses, per test module."""
    return make_sandbox(tmp_path_factory.mktemp("aws"), moto_server)


@pytest.fixture
def env(sandbox: AwsSandbox) -> dict[str, str]:
    """The environment for a `sentinel` subprocess (the role is recreated if moto restarted)."""
    sandbox.ensure_role()
    return sandbox.env()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    """A policy file allowing the demo profile."""
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_POLICY)
    return path
