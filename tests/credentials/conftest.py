"""Fixtures for the credentials tests: a role in moto, a recording STS proxy, a driven clock."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped]  # no boto3 stubs installed; test setup only
import orjson
import pytest

from tests.credentials.support import ManualClock, StsProxy
from tests.support.moto import MotoServer

TRUST_POLICY = orjson.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
            }
        ],
    }
).decode()


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
    response = iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST_POLICY, MaxSessionDuration=43200)
    arn: str = response["Role"]["Arn"]
    return arn
