"""Fixtures for the credentials tests: a role in moto, a recording STS proxy, a driven clock."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped]  # no boto3 stubs installed; test setup only
import pytest

from harness.aws_env import ensure_role
from harness.moto import MotoServer
from tests.credentials.support import ManualClock, StsProxy


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sts_proxy(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StsProxy]:
    """STS calls go through a recording proxy to moto (AWS_ENDPOINT_URL_STS, the standard variable)."""
    proxy = StsProxy(aws_endpoint)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", proxy.url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def iam(moto_server: MotoServer) -> Iterator[Any]:
    """One IAM client for test setup (loading IAM's large model once, not per test)."""
    client = boto3.client("iam", endpoint_url=moto_server.url, region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture
def role_arn(iam: Any, aws_endpoint: str) -> str:
    """A fresh IAM role in moto (unique name, so moto's records of it belong to this test)."""
    name = f"sentinel-test-{secrets.token_hex(4)}"
    return ensure_role(iam, name)
