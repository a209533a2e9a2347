"""Roles on the moto server and what their revocation policy denies, read with plain boto3."""

from __future__ import annotations

import uuid
from typing import Any

import boto3

from harness.aws_env import REGION, TRUST_POLICY
from sentinel.revocation import POLICY_NAME


def iam_client(endpoint: str, **keys: str) -> Any:
    return boto3.client("iam", endpoint_url=endpoint, region_name=REGION, **keys)


def new_role(endpoint: str, prefix: str = "sentinel-revoke") -> str:
    """A fresh role (its own policy, untouched by other tests); returns its ARN."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    created = iam_client(endpoint).create_role(RoleName=name, AssumeRolePolicyDocument=TRUST_POLICY)
    arn: str = created["Role"]["Arn"]
    return arn


def denied(endpoint: str, role_arn: str, **keys: str) -> dict[str, list[str]] | None:
    """The role's revocation policy as IAM returns it: Sid -> identities (None: no policy)."""
    iam = iam_client(endpoint, **keys)
    try:
        document = iam.get_role_policy(RoleName=role_arn.rsplit("/", 1)[1], PolicyName=POLICY_NAME)
    except iam.exceptions.NoSuchEntityException:
        return None
    statements = document["PolicyDocument"]["Statement"]
    return {s["Sid"]: s["Condition"]["StringEquals"]["aws:SourceIdentity"] for s in statements}


def identities(policy: dict[str, list[str]] | None) -> set[str]:
    """Every identity a `denied` result lists."""
    return {identity for listed in (policy or {}).values() for identity in listed}
