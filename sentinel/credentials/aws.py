"""The AWS side: the base session, the caller's identity, and the STS AssumeRole call.

AWS client types stay inside this package (DESIGN.md §2). Endpoints come only from the standard
variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_STS`), which botocore reads itself.

STS goes through plain botocore, each call in a daemon thread (`blocking.py` says why): importing
aiobotocore (aiohttp) was most of `sentinel exec`'s start-up (issue 12, item 3). aioboto3 is
imported only for what needs an asyncio client, the DynamoDB store (`AwsContext.aio_session`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.session
from botocore.config import Config
from botocore.credentials import EnvProvider
from botocore.exceptions import BotoCoreError, ClientError

from sentinel.credentials.blocking import run_blocking
from sentinel.credentials.model import CallerIdentity, Credentials, user_from_arn
from sentinel.credentials.profile import BaseSource, ProfilePlan, Profiles, plan_profile
from sentinel.errors import CredentialError

if TYPE_CHECKING:
    import aioboto3

# Bounded so that one STS flight ends in well under a minute even against a black hole:
# 3 attempts x (3 s connect + 10 s read) plus standard-mode backoff. The cache's safe floor
# (minutes) is what absorbs this, not the request path.
CLIENT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 3,
    "read_timeout": 10,
    "retries": {"mode": "standard", "total_max_attempts": 3},
}
CLIENT_CONFIG = Config(**CLIENT_OPTIONS)
"""The botocore form; aiobotocore clients (IAM for the admin) take `AioConfig(**CLIENT_OPTIONS)`."""

_S = TypeVar("_S", bound=botocore.session.Session)

# The credential provider botocore names for each `credential_source` (its METHOD attribute).
_PROVIDER_FOR_SOURCE = {BaseSource.CONTAINER: "container-role", BaseSource.INSTANCE: "iam-role"}

# STS error codes are short identifiers (AccessDenied, RegionDisabledException, ...). Anything else
# is not passed on: the code is the only upstream text that may reach a message.
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


class StsClient:
    """A botocore STS client whose calls run off the event loop (botocore clients are thread-safe).

    Only the two calls Sentinel makes; each returns botocore's parsed response."""

    __slots__ = ("_client",)

    def __init__(self, client: Any) -> None:
        # Any: botocore generates client methods at runtime and no STS stubs are installed.
        self._client = client

    async def get_caller_identity(self) -> Mapping[str, Any]:
        response: Mapping[str, Any] = await run_blocking(
            self._client.get_caller_identity, name="sts GetCallerIdentity"
        )
        return response

    async def assume_role(self, **params: Any) -> Mapping[str, Any]:
        call = functools.partial(self._client.assume_role, **params)
        response: Mapping[str, Any] = await run_blocking(call, name="sts AssumeRole")
        return response

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class AwsContext:
    """The base session (credentials of the base identity) and what to assume with it."""

    session: botocore.session.Session
    plan: ProfilePlan
    client_config: Config = CLIENT_CONFIG

    @property
    def role_arn(self) -> str:
        return self.plan.role_arn

    @asynccontextmanager
    async def sts_client(self) -> AsyncIterator[StsClient]:
        """An STS client on the base credentials; enter it once and keep it (connection reuse)."""
        # In a thread: building a client loads STS's service model and endpoint rules from disk.
        create = functools.partial(
            self.session.create_client, "sts", region_name=self.plan.region, config=self.client_config
        )
        client = StsClient(await run_blocking(create, name="sts client"))
        try:
            yield client
        finally:
            client.close()

    def aio_session(self) -> aioboto3.Session:
        """An aioboto3 session on the same base credentials, for the DynamoDB session store.

        Its own credential chain, narrowed like `session`'s: the two resolve (and refresh) the
        base credentials independently. Imports aioboto3, so only a DynamoDB user pays for it."""
        import aioboto3
        from aiobotocore.credentials import AioEnvProvider
        from aiobotocore.session import AioSession

        aio = _narrowed(AioSession(profile=self.plan.base_profile), self.plan, AioEnvProvider)
        return aioboto3.Session(botocore_session=aio, region_name=self.plan.region)


def _narrowed(session: _S, plan: ProfilePlan, env_provider: type[Any]) -> _S:
    """`session`, its credentials narrowed to the plan's base credentials and never the role.

    botocore would assume a profile's `role_arn` by itself (no SourceIdentity); where the base is
    the profile itself, its credential chain is narrowed so that cannot happen. `env_provider` is
    botocore's or aiobotocore's environment provider, matching `session`.
    """
    if plan.base_source is not BaseSource.PROFILE:
        resolver = session.get_component("credential_provider")
        if plan.base_source is BaseSource.PROFILE_KEYS:
            resolver.remove("assume-role")
        elif plan.base_source is BaseSource.ENVIRONMENT:
            # An explicit profile drops the environment provider from botocore's chain; put it back alone.
            resolver.providers = [env_provider()]
        else:
            resolver.providers = [resolver.get_provider(_PROVIDER_FOR_SOURCE[plan.base_source])]
    return session


def _open_base(profile: str | None, region: str | None, role_arn: str | None) -> AwsContext:
    """The blocking part of `open_aws`: config files, the plan, and the base credentials."""
    try:
        # Reads ~/.aws/config and ~/.aws/credentials (or AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE);
        # the profile name from AWS_PROFILE counts as named explicitly, like the --profile flag.
        session = botocore.session.Session()
        env_profile = session.get_config_variable("profile")
        profiles: Profiles = session.full_config.get("profiles", {})
    except BotoCoreError as exc:
        raise CredentialError(f"cannot read the AWS config files: {type(exc).__name__}") from None
    named = env_profile if isinstance(env_profile, str) and env_profile else None
    plan = plan_profile(profiles, profile or named, region=region, role_arn=role_arn)
    if plan.base_profile is not None:
        # What boto3.Session(profile_name=...) does: one session (building one costs ~5 ms), the
        # files read once. The credential chain is created lazily, so it sees this profile.
        session.set_config_variable("profile", plan.base_profile)
    _narrowed(session, plan, EnvProvider)
    shown = plan.base_profile or "default chain"
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        # botocore's text can carry credential_process output; the class name is enough to act on.
        raise CredentialError(f"cannot load base AWS credentials ({shown}): {type(exc).__name__}") from None
    if credentials is None:
        raise CredentialError(f"no base AWS credentials found ({shown})")
    return AwsContext(session, plan)


async def open_aws(
    profile: str | None,
    region: str | None,
    role_arn: str | None,
    *,
    client_config: Config = CLIENT_CONFIG,
) -> AwsContext:
    """Resolve the profile, build the base session and check it has credentials at all.

    Raises CredentialError (one line, no upstream text) for unreadable config files, a missing
    profile, no role to assume, or no base credentials. No STS call is made here. A profile named
    by AWS_PROFILE is treated like one named by `profile` (its keys win over environment keys).
    """
    # In a thread: the files are read, and base credentials may come from a process or the network.
    opened = functools.partial(_open_base, profile, region, role_arn)
    context = await run_blocking(opened, name="aws base credentials")
    return AwsContext(context.session, context.plan, client_config)


def _error_code(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "")
        return code if _ERROR_CODE.fullmatch(code) else "Unknown"
    return type(exc).__name__


async def resolve_user(sts: StsClient) -> CallerIdentity:
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
        sts: StsClient,
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
    session = botocore.session.Session(profile=profile)
    try:
        create = functools.partial(session.create_client, "sts", region_name=region, config=CLIENT_CONFIG)
        client = StsClient(await run_blocking(create, name="sts client"))
    except BotoCoreError as exc:
        raise CredentialError(f"cannot determine the caller's AWS identity: {type(exc).__name__}") from None
    try:
        return (await resolve_user(client)).arn
    finally:
        client.close()
