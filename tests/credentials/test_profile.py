"""Reading the shared config: which credentials are the base and which role is the target."""

from __future__ import annotations

import pytest

from sentinel.credentials import BaseSource, plan_profile
from sentinel.errors import CredentialError

ROLE = "arn:aws:iam::123456789012:role/dev"
OTHER = "arn:aws:iam::123456789012:role/other"

PROFILES = {
    "default": {"region": "us-east-1"},
    "base": {"aws_access_key_id": "AKIABASE", "aws_secret_access_key": "x"},
    "dev": {"role_arn": ROLE, "source_profile": "base", "region": "eu-west-1", "external_id": "ext-1"},
    "self": {"role_arn": ROLE, "source_profile": "self", "aws_access_key_id": "AKIASELF"},
    "chain": {"role_arn": OTHER, "source_profile": "dev"},
    "env": {"role_arn": ROLE, "credential_source": "Environment"},
    "ecs": {"role_arn": ROLE, "credential_source": "EcsContainer"},
    "imds": {"role_arn": ROLE, "credential_source": "Ec2InstanceMetadata"},
    "web": {"role_arn": ROLE, "web_identity_token_file": "/var/run/token"},
    "mfa": {"role_arn": ROLE, "source_profile": "base", "mfa_serial": "arn:aws:iam::123456789012:mfa/a"},
    "both": {"role_arn": ROLE, "source_profile": "base", "credential_source": "Environment"},
    "orphan": {"role_arn": ROLE},
    "lost": {"role_arn": ROLE, "source_profile": "missing"},
    "odd": {"role_arn": ROLE, "credential_source": "Floppy"},
    "badarn": {"role_arn": "arn:aws:iam::123456789012:user/alice", "source_profile": "base"},
}


def test_role_profile_uses_the_source_profile_as_base() -> None:
    """Given role_arn + source_profile, the base is the source profile and the role is the target
    (botocore must not assume the role itself, without SourceIdentity)."""
    plan = plan_profile(PROFILES, "dev")
    assert (plan.base_profile, plan.base_source) == ("base", BaseSource.PROFILE)
    assert plan.role_arn == ROLE
    assert plan.region == "eu-west-1"
    assert plan.external_id == "ext-1"


def test_role_arn_flag_overrides_the_profile() -> None:
    plan = plan_profile(PROFILES, "dev", role_arn=OTHER)
    assert plan.role_arn == OTHER
    assert plan.base_profile == "base"


def test_region_flag_overrides_the_profile() -> None:
    assert plan_profile(PROFILES, "dev", region="ap-south-1").region == "ap-south-1"


def test_plain_profile_with_role_flag_is_its_own_base() -> None:
    plan = plan_profile(PROFILES, "base", role_arn=ROLE)
    assert (plan.base_profile, plan.base_source, plan.role_arn) == ("base", BaseSource.PROFILE, ROLE)


def test_no_profile_means_the_default_chain() -> None:
    plan = plan_profile(PROFILES, None, role_arn=ROLE)
    assert (plan.profile, plan.base_profile, plan.base_source) == (None, None, BaseSource.PROFILE)
    assert plan.region == "us-east-1"


def test_self_sourced_profile_uses_its_own_keys() -> None:
    plan = plan_profile(PROFILES, "self")
    assert (plan.base_profile, plan.base_source) == ("self", BaseSource.PROFILE_KEYS)


def test_chained_source_profile_is_left_to_botocore() -> None:
    """The source profile may itself assume a role (a chain); the last hop is Sentinel's."""
    plan = plan_profile(PROFILES, "chain")
    assert (plan.base_profile, plan.base_source, plan.role_arn) == ("dev", BaseSource.PROFILE, OTHER)


@pytest.mark.parametrize(
    ("profile", "source"),
    [("env", BaseSource.ENVIRONMENT), ("ecs", BaseSource.CONTAINER), ("imds", BaseSource.INSTANCE)],
)
def test_credential_source(profile: str, source: BaseSource) -> None:
    plan = plan_profile(PROFILES, profile)
    assert (plan.base_profile, plan.base_source, plan.role_arn) == (profile, source, ROLE)


def test_web_identity_role_is_the_base_not_the_target() -> None:
    """With web_identity_token_file the profile's role_arn is how botocore gets base credentials."""
    with pytest.raises(CredentialError, match="no role to assume"):
        plan_profile(PROFILES, "web")
    plan = plan_profile(PROFILES, "web", role_arn=OTHER)
    assert (plan.base_profile, plan.base_source, plan.role_arn) == ("web", BaseSource.PROFILE, OTHER)


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("base", "no role to assume: pass --role-arn or set role_arn in AWS profile 'base'"),
        ("nope", "AWS profile 'nope' not found"),
        ("mfa", "requires MFA"),
        ("both", "sets both source_profile and credential_source"),
        ("orphan", "has role_arn but no source_profile or credential_source"),
        ("lost", "source_profile 'missing' of AWS profile 'lost' not found"),
        ("odd", "unknown credential_source 'Floppy'"),
        ("badarn", "not an IAM role ARN"),
    ],
)
def test_unusable_profiles_are_one_line_errors(profile: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message) as caught:
        plan_profile(PROFILES, profile)
    assert "\n" not in str(caught.value)


def test_no_role_anywhere() -> None:
    with pytest.raises(CredentialError, match="no role to assume"):
        plan_profile({}, None)
