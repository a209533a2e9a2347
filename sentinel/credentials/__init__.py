"""Base credentials (AWS profile chain) -> STS AssumeRole with SourceIdentity, cached (issue 3).

`open_aws` builds the base session and finds the target role; `resolve_user` names the caller;
`StsRoleAssumer` is the real `CredentialSource`; `CredentialCache` serves it to the hot path.
"""

from __future__ import annotations

from sentinel.credentials.aws import (
    CLIENT_CONFIG,
    AwsContext,
    StsRoleAssumer,
    caller_arn,
    open_aws,
    resolve_user,
)
from sentinel.credentials.cache import (
    CacheKey,
    CacheStatistics,
    CredentialCache,
    CredentialSource,
    RefreshPolicy,
)
from sentinel.credentials.model import CallerIdentity, Credentials, user_from_arn
from sentinel.credentials.params import (
    DEFAULT_SERVER_DURATION,
    effective_duration,
    role_session_name,
    source_identity,
)
from sentinel.credentials.profile import BaseSource, ProfilePlan, plan_profile

__all__ = [
    "CLIENT_CONFIG",
    "DEFAULT_SERVER_DURATION",
    "AwsContext",
    "BaseSource",
    "CacheKey",
    "CacheStatistics",
    "CallerIdentity",
    "CredentialCache",
    "CredentialSource",
    "Credentials",
    "ProfilePlan",
    "RefreshPolicy",
    "StsRoleAssumer",
    "caller_arn",
    "effective_duration",
    "open_aws",
    "plan_profile",
    "resolve_user",
    "role_session_name",
    "source_identity",
    "user_from_arn",
]
