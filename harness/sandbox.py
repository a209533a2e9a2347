"""An AWS config and credentials file with a `demo` profile whose role lives in moto, and the
environment a `sentinel` subprocess gets from it (stated explicitly, so a test says exactly what
the daemon sees)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]  # aioboto3 depends on boto3; used for setup only

from harness.aws_env import REGION, ensure_role
from harness.moto import MotoServer

ROLE_NAME = "sentinel-e2e"
PROFILE = "demo"
# The base profile's fake keys: the daemon assumes the role with them; a child must never see them.
BASE_ACCESS_KEY = "AKIASENTINELE2EBASE01"
BASE_SECRET_KEY = "sentinel-e2e-base-secret-not-real"  # noqa: S105 - a fake key for moto


@dataclass(frozen=True, slots=True)
class AwsSandbox:
    """The profile files in `directory`, and the moto server their role lives in."""

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

    def add_profile(self, name: str, role_name: str) -> str:
        """Another profile on the same base credentials, assuming a role of its own (created in
        moto if missing); returns that role's ARN. For servers with several profiles (issue 14)."""
        arn = ensure_role(_iam(self.moto.url), role_name)
        with (self.directory / "aws-config").open("a") as config:
            config.write(f"\n[profile {name}]\nrole_arn = {arn}\nsource_profile = base\nregion = {REGION}\n")
        return arn

    def ensure_role(self) -> None:
        """Create the role again if moto was restarted (moto_server.down() comes back empty)."""
        if not self.moto.running:
            self.moto.start()
        ensure_role(_iam(self.moto.url), ROLE_NAME)


def _iam(endpoint: str) -> Any:
    return boto3.client(
        "iam",
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
    arn = ensure_role(_iam(moto.url), ROLE_NAME)
    (directory / "aws-credentials").write_text(
        f"[base]\naws_access_key_id = {BASE_ACCESS_KEY}\naws_secret_access_key = {BASE_SECRET_KEY}\n"
    )
    (directory / "aws-config").write_text(
        f"[profile {PROFILE}]\nrole_arn = {arn}\nsource_profile = base\nregion = {REGION}\n"
    )
    return AwsSandbox(directory, moto, arn)
