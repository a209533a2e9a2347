"""Revocation that AWS enforces (issue 13): a role policy denying revoked sessions' SourceIdentity.

`document` builds and reads the policy, `iam` talks to IAM, `enforce` runs the read-merge-write-
readback loop. `admin.py` decides what to revoke; `cli.py` prints. docs/enforcement.md has the why.
"""

from sentinel.revocation.document import MAX_INLINE_POLICY_CHARS, POLICY_NAME, RevocationDocument
from sentinel.revocation.enforce import SAFETY_MARGIN, Enforced, Enforcer
from sentinel.revocation.iam import (
    EnforcementError,
    IamRefused,
    IamRolePolicies,
    PolicyFull,
    RolePolicies,
    open_role_policies,
    role_name,
)

__all__ = [
    "MAX_INLINE_POLICY_CHARS",
    "POLICY_NAME",
    "SAFETY_MARGIN",
    "Enforced",
    "EnforcementError",
    "Enforcer",
    "IamRefused",
    "IamRolePolicies",
    "PolicyFull",
    "RevocationDocument",
    "RolePolicies",
    "open_role_policies",
    "role_name",
]
