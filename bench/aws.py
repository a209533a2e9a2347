"""The local AWS emulator for the benchmarks: a moto server, a role to assume, a session table.

Everything the Sentinel targets need goes through the standard variables (DESIGN.md §6), so the
targets run the product's own client code against moto, never against a real account. The
environment itself is isolated by `harness.aws_env`, as for the test suite.
"""

from __future__ import annotations

import asyncio

import boto3  # type: ignore[import-untyped]  # aioboto3 depends on boto3; used for setup only

from harness.aws_env import REGION, ensure_role
from harness.loopback import free_port
from harness.moto import MotoServer
from sentinel.sessions.dynamodb import create_session_table

TABLE = "sentinel-bench-sessions"


def closed_port_endpoint() -> str:
    """An endpoint where nothing listens (scenario f: the store is unreachable, connections are
    refused). The port was free a moment ago; nothing in the harness binds it afterwards."""
    return f"http://127.0.0.1:{free_port()}"


def prepare(moto: MotoServer) -> str:
    """In the isolated environment: create the role to assume and the session table in moto;
    return the role ARN."""
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION)
    arn = ensure_role(iam, "sentinel-bench")
    # The product's own table creation (GSIs, TTL), through the isolated environment.
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
