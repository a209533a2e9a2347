"""Revocation that AWS enforces (issue 13): a role policy denying revoked sessions' SourceIdentity.

`document` builds and reads the policy, `iam` talks to IAM (import it directly: it loads the AWS
SDK, which the admin commands that never reach IAM do without), `enforce` runs the read-merge-
write-readback loop. `admin.py` decides what to revoke; `cli.py` prints. docs/DESIGN.md §11 has the why.
"""

from sentinel.revocation.document import MAX_INLINE_POLICY_CHARS, POLICY_NAME, RevocationDocument
from sentinel.revocation.enforce import SAFETY_MARGIN, Enforced, Enforcer, RolePolicies, role_name
from sentinel.revocation.errors import EnforcementError, IamRefused, PolicyFull

__all__ = [
    "MAX_INLINE_POLICY_CHARS",
    "POLICY_NAME",
    "SAFETY_MARGIN",
    "Enforced",
    "EnforcementError",
    "Enforcer",
    "IamRefused",
    "PolicyFull",
    "RevocationDocument",
    "RolePolicies",
    "role_name",
]
