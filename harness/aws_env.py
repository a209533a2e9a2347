"""The AWS side every test and benchmark runs on: an environment that cannot reach a real account,
and the role to assume in moto.

One function isolates the environment for both the test session (tests/conftest.py) and the
benchmarks (bench/lab.py), so neither can drift into reading a developer's ~/.aws.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The region every AWS client here uses (the isolated environment sets it too).
REGION = "us-east-1"
# Long enough for any credential duration a test or scenario asks for (STS's 12 h ceiling).
MAX_SESSION_DURATION = 43200

TRUST_POLICY = json.dumps(
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
)


@contextmanager
def isolated_aws_environment(directory: Path, **extra: str) -> Iterator[None]:
    """Inside the block this process's environment, which every process it starts inherits, has
    fake keys, private empty AWS config files in `directory`, the region, plus `extra`; nothing
    inherited (AWS_*, SENTINEL_*, NOTIFY_SOCKET) that could reach a real account or a real
    systemd. The environment is restored afterwards."""
    config, credentials = directory / "aws-config", directory / "aws-credentials"
    config.write_text("")
    credentials.write_text("")
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("AWS_", "SENTINEL_")) or key == "NOTIFY_SOCKET":
            del os.environ[key]
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_EC2_METADATA_DISABLED": "true",
            **extra,
        }
    )
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def ensure_role(iam: Any, name: str) -> str:
    """The ARN of role `name` (an IAM client on moto), created first if it does not exist (moto
    comes back empty after a restart)."""
    try:
        arn: str = iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=TRUST_POLICY, MaxSessionDuration=MAX_SESSION_DURATION
        )
        arn = role["Role"]["Arn"]
    return arn
