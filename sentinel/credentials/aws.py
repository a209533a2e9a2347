"""The AWS side: the base session, the caller's identity, and the STS AssumeRole call.

AWS client types stay inside this package (DESIGN.md §2). Endpoints come only from the standard
variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_STS`), which botocore reads itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aioboto3
import anyio.to_thread
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioEnvProvider
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError

from sentinel.credentials.model import CallerIdentity, Credentials, user_from_arn
from sentinel.credentials.profile import BaseSource, ProfilePlan, Profiles, plan_profile
from sentinel.errors import CredentialError

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from types_aiobotocore_sts import STSClient

# Bounded so that one STS flight ends in well under a minute even against a black hole:
# 3 attempts x (3 s connect + 10 s read) plus standard-mode backoff. The cache's safe floor
# (minutes) is what absorbs this, not the request path.
CLIENT_CONFIG = AioConfig(
    connect_timeout=3,
    read_timeout=10,
    retries={"mode": "standard", "total_max_attempts": 3},
)

# The credential provider botocore names for each `credential_source` (its METHOD attribute).
_PROVIDER_FOR_SOURCE = {BaseSource.CONTAINER: "container-role", BaseSource.INSTANCE: "iam-role"}

# STS error codes are short identifiers (AccessDenied, RegionDisabledException, ...). Anything else
# is not passed on: the code is the only upstream text that may reach a message.
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


@dataclass(frozen=True, slots=True)
class AwsContext:
    """The base session (credentials of the base identity) and what to assume with it."""

    session: aioboto3.Session
    plan: ProfilePlan
    client_config: AioConfig = CLIENT_CONFIG

    @property
    def role_arn(self) -> str:
        return self.plan.role_arn

    def sts_client(self) -> AbstractAsyncContextManager[STSClient]:
        """An STS client on the base credentials; enter it once and keep it (connection reuse)."""
        return self.session.client("sts", region_name=self.plan.region, config=self.client_config)


def _read_profiles() -> tuple[str | None, Profiles]:
    # Reads ~/.aws/config and ~/.aws/credentials (or AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE);
    # the profile name from AWS_PROFILE counts as named explicitly, like the --profile flag.
    probe = AioSession()
    name = probe.get_config_variable("profile")
    profiles: Profiles = probe.full_config.get("profiles", {})
    return (name if isinstance(name, str) and name else None), profiles


def base_botocore_session(plan: ProfilePlan) -> AioSession:
    """A botocore session whose credentials are the plan's base credentials and never the role.

    botocore would assume a profile's `role_arn` by itself (no SourceIdentity); where the base is
    the profile itself, its credential chain is narrowed so that cannot happen.
    """
    botocore_session = AioSession(profile=plan.base_profile)
    if plan.base_source is not BaseSource.PROFILE:
        resolver = botocore_session.get_component("credential_provider")
        if plan.base_source is BaseSource.PROFILE_KEYS:
            resolver.remove("assume-role")
        elif plan.base_source is BaseSource.ENVIRONMENT:
            # An explicit profile drops the environment provider from botocore's chain; put it back alone.
            resolver.providers = [AioEnvProvider()]
        else:
            resolver.providers = [resolver.get_provider(_PROVIDER_FOR_SOURCE[plan.base_source])]
    return botocore_session


async def open_aws(
    profile: str | None,
    region: str | None,
    role_arn: str | None,
    *,
    client_config: AioConfig = CLIENT_CONFIG,
) -> AwsContext:
    """Resolve the profile, build the base session and check it has credentials at all.

    Raises CredentialError (one line, no upstream text) for unreadable config files, a missing
    profile, no role to assume, or no base credentials. No STS call is made here. A profile named
    by AWS_PROFILE is treated like one named by `profile` (its keys win over environment keys).
    """
    try:
        env_profile, profiles = await anyio.to_thread.run_sync(_read_profiles)
    except BotoCoreError as exc:
        raise CredentialError(f"cannot read the AWS config files: {type(exc).__name__}") from None
    plan = plan_profile(profiles, profile or env_profile, region=region, role_arn=role_arn)
    botocore_session = base_botocore_session(plan)
    shown = plan.base_profile or "default chain"
    try:
        credentials = await botocore_session.get_credentials()
    except BotoCoreError as exc:
        # botocore's text can carry credential_process output; the class name is enough to act on.
        raise CredentialError(f"cannot load base AWS credentials ({shown}): {type(exc).__name__}") from None
    if credentials is None:
        raise CredentialError(f"no base AWS credentials found ({shown})")
    session = aioboto3.Session(botocore_session=botocore_session, region_name=plan.region)
    return AwsContext(session, plan, client_config)


def _error_code(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "")
        return code if _ERROR_CODE.fullmatch(code) else "Unknown"
    return type(exc).__name__


async def resolve_user(sts: STSClient) -> CallerIdentity:
    """Who the base credentials belong to (STS GetCallerIdentity), once at startup."""
    try:
        response = await sts.get_caller_identity()
    except (ClientError, BotoCoreError) as exc:
        raise CredentialError(f"STS GetCallerIdentity failed: {_error_code(exc)}") from None
    arn = response.get("Arn", "")
    account = response.get("Account", "")
    if not arn or not account:
        raise CredentialError("STS GetCallerIdentity returned no ARN or account")
    return CallerIdentity(account=account, arn=arn, user=user_from_arn(arn))


class StsRoleAssumer:
    """The real `CredentialSource`: STS AssumeRole stamped with this session's SourceIdentity."""

    __slots__ = ("_external_id", "_role_session_name", "_source_identity", "_sts")

    def __init__(
        self,
        sts: STSClient,
        *,
        role_session_name: str,
        source_identity: str,
        external_id: str | None = None,
    ) -> None:
        self._sts = sts
        self._role_session_name = role_session_name
        self._source_identity = source_identity
        self._external_id = external_id

    @property
    def source_identity(self) -> str:
        return self._source_identity

    async def fetch(self, role_arn: str, duration_seconds: int) -> Credentials:
        """AssumeRole `role_arn` for `duration_seconds`; errors name only the STS error code."""
        extra: dict[str, Any] = {}
        if self._external_id is not None:
            extra["ExternalId"] = self._external_id
        try:
            response = await self._sts.assume_role(
                RoleArn=role_arn,
                RoleSessionName=self._role_session_name,
                SourceIdentity=self._source_identity,
                DurationSeconds=duration_seconds,
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            # `from None`: the upstream message must not reach a log through the exception chain.
            raise CredentialError(f"STS AssumeRole of {role_arn} failed: {_error_code(exc)}") from None
        return _credentials_from(response.get("Credentials"), role_arn)


def _credentials_from(data: Mapping[str, Any] | None, role_arn: str) -> Credentials:
    if not data:
        raise CredentialError(f"STS AssumeRole of {role_arn} returned no credentials")
    expiration = data.get("Expiration")
    try:
        if not isinstance(expiration, datetime):
            raise TypeError("expiration")
        return Credentials(
            access_key_id=str(data.get("AccessKeyId") or ""),
            secret_access_key=str(data.get("SecretAccessKey") or ""),
            session_token=str(data.get("SessionToken") or ""),
            expiration=expiration,
        )
    except (TypeError, ValueError):
        raise CredentialError(f"STS AssumeRole of {role_arn} returned incomplete credentials") from None


async def caller_arn(profile: str | None, region: str | None) -> str:
    """The ARN of whoever the standard chain for `profile` resolves to (for `revoked_by`).

    Unlike `open_aws` there is no role here: an admin revoking a session is who they are."""
    session = aioboto3.Session(profile_name=profile, region_name=region)
    try:
        async with session.client("sts", config=CLIENT_CONFIG) as sts:
            return (await resolve_user(sts)).arn
    except BotoCoreError as exc:
        raise CredentialError(f"cannot determine the caller's AWS identity: {type(exc).__name__}") from None
