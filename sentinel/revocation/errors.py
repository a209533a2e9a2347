"""Why a revocation was not enforced on AWS: one line each, mapped to exit codes in `cli.py`."""

from __future__ import annotations

from sentinel.errors import SentinelError


class EnforcementError(SentinelError):
    """AWS did not take (or could not be asked to take) the revocation policy."""


class IamRefused(EnforcementError):
    """An IAM call failed: `code` is the AWS error code (AccessDenied, ...) or the client error."""

    def __init__(self, operation: str, role: str, code: str) -> None:
        self.operation = operation
        self.role = role
        self.code = code
        super().__init__(f"IAM {operation} on role {role} failed: {code}")


class PolicyFull(EnforcementError):
    """The revocation policy would not fit the role's inline-policy size limit."""
