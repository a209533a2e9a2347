"""Which credentials are the base and which role is the target, from the AWS shared config.

Pure: it reads the parsed profiles (botocore's `full_config["profiles"]`), never the files.

The point of this module: a profile with `role_arn` + `source_profile` would make botocore assume
the role by itself, without a SourceIdentity. Sentinel must make that call, so the base credentials
are those of the *source*, and the profile's `role_arn` becomes Sentinel's target.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from sentinel.errors import CredentialError

_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")

Profiles = Mapping[str, Mapping[str, object]]


class BaseSource(StrEnum):
    """Where the base credentials come from."""

    PROFILE = "profile"
    """botocore's chain for `base_profile` (None: the default chain, environment first)."""
    PROFILE_KEYS = "profile-keys"
    """The profile's own keys/SSO/process, its `role_arn` ignored (`source_profile` is itself)."""
    ENVIRONMENT = "Environment"
    CONTAINER = "EcsContainer"
    INSTANCE = "Ec2InstanceMetadata"


_CREDENTIAL_SOURCES = {
    "Environment": BaseSource.ENVIRONMENT,
    "EcsContainer": BaseSource.CONTAINER,
    "Ec2InstanceMetadata": BaseSource.INSTANCE,
}


@dataclass(frozen=True, slots=True)
class ProfilePlan:
    """The outcome of reading the profile: enough to build the base session and call AssumeRole."""

    profile: str | None
    base_profile: str | None
    base_source: BaseSource
    role_arn: str
    region: str | None
    external_id: str | None = None


def _text(config: Mapping[str, object], key: str) -> str | None:
    value = config.get(key)
    return value.strip() or None if isinstance(value, str) else None


def plan_profile(
    profiles: Profiles,
    profile: str | None,
    *,
    region: str | None = None,
    role_arn: str | None = None,
) -> ProfilePlan:
    """Decide the base credentials and the target role for `profile` (None: the default profile).

    `role_arn` (the `--role-arn` flag) wins over the profile's `role_arn`. A profile that needs
    MFA, or names a role without saying where the base credentials come from, is refused here
    with a one-line CredentialError rather than failing later at the first request.
    """
    name = profile or "default"
    if profile is not None and profile not in profiles:
        raise CredentialError(f"AWS profile {profile!r} not found in the shared config or credentials file")
    config = profiles.get(name, {})
    region = region or _text(config, "region")
    profile_role = _text(config, "role_arn")
    base_profile, base_source, external_id = profile, BaseSource.PROFILE, None
    # With web_identity_token_file, role_arn is how botocore gets the *base* credentials
    # (AssumeRoleWithWebIdentity); the target must then come from --role-arn.
    if _text(config, "web_identity_token_file") is not None:
        profile_role = None
    elif profile_role is not None:
        base_profile, base_source = _role_base(profiles, name, config)
        external_id = _text(config, "external_id")
    target = role_arn or profile_role
    if target is None:
        raise CredentialError(f"no role to assume: pass --role-arn or set role_arn in AWS profile {name!r}")
    if _ROLE_ARN.fullmatch(target) is None:
        raise CredentialError(f"not an IAM role ARN: {target[:200]!r}")
    return ProfilePlan(profile, base_profile, base_source, target, region, external_id)


def _role_base(profiles: Profiles, name: str, config: Mapping[str, object]) -> tuple[str, BaseSource]:
    if _text(config, "mfa_serial") is not None:
        raise CredentialError(f"AWS profile {name!r} requires MFA (mfa_serial); a server cannot prompt")
    source_profile = _text(config, "source_profile")
    credential_source = _text(config, "credential_source")
    if source_profile is not None and credential_source is not None:
        raise CredentialError(f"AWS profile {name!r} sets both source_profile and credential_source")
    if source_profile is not None:
        if source_profile not in profiles:
            raise CredentialError(f"source_profile {source_profile!r} of AWS profile {name!r} not found")
        if source_profile == name:
            return name, BaseSource.PROFILE_KEYS
        # A source profile that itself assumes a role is a role chain; botocore resolves it.
        return source_profile, BaseSource.PROFILE
    if credential_source is not None:
        source = _CREDENTIAL_SOURCES.get(credential_source)
        if source is None:
            raise CredentialError(f"AWS profile {name!r}: unknown credential_source {credential_source!r}")
        return name, source
    raise CredentialError(f"AWS profile {name!r} has role_arn but no source_profile or credential_source")
