"""The local AWS emulator for the benchmarks: a moto server, a role to assume, a session table.

Everything the Sentinel targets need goes through the standard variables (DESIGN.md §6), so the
targets run the product's own client code against moto, never against a real account.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import boto3  # type: ignore[import-untyped]  # aioboto3 depends on boto3; used for setup only

from sentinel.sessions.dynamodb import create_session_table
from tests.support.moto import MotoServer, free_port

REGION = "us-east-1"
TABLE = "sentinel-bench-sessions"
_TRUST_POLICY = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
    '"Principal":{"AWS":"arn:aws:iam::123456789012:root"},'
    '"Action":["sts:AssumeRole","sts:SetSourceIdentity"]}]}'
)


def isolate(work: Path, endpoint: str) -> None:
    """Set the harness's own environment, which every process it starts inherits: fake keys,
    private (empty) AWS config files, the emulator's endpoint, and nothing inherited that could
    reach a real account (as tests/conftest.py does for the test suite)."""
    (work / "aws-config").write_text("")
    (work / "aws-credentials").write_text("")
    for key in list(os.environ):
        if key.startswith(("AWS_", "SENTINEL_")):
            del os.environ[key]
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": str(work / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )


def closed_port_endpoint() -> str:
    """An endpoint where nothing listens (scenario f: the store is unreachable, connections are
    refused). The port was free a moment ago; nothing in the harness binds it afterwards."""
    return f"http://127.0.0.1:{free_port()}"


def prepare(moto: MotoServer) -> str:
    """After `isolate`: create the role to assume and the session table in moto; return the role ARN."""
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION)
    role = iam.create_role(
        RoleName="sentinel-bench", AssumeRolePolicyDocument=_TRUST_POLICY, MaxSessionDuration=43200
    )
    arn: str = role["Role"]["Arn"]
    # The product's own table creation (GSIs, TTL), through the environment `isolate` set.
    asyncio.run(create_session_table(TABLE, region=REGION, poll_interval=0.1))
    return arn


POLICY = """\
version: "1"
rules:
  # Not matched (another profile): the benchmark pays for evaluating more than one rule.
  - name: no-prod
    effect: deny
    conditions: {profiles: [prod]}
    reason: production needs a ticket
  - name: bench
    effect: allow
    conditions: {mode: [server]}
"""
