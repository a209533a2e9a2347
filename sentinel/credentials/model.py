"""The values the credentials package hands out: STS credentials and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

# The container-credentials response wants UTC with a literal `Z`: the JS SDK rejects `+00:00`
# (DESIGN.md §7). Whole seconds, as STS issues them; dropping sub-seconds only makes it earlier.
_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """Temporary AWS credentials with the container-protocol body precomputed.

    `repr()` (and therefore `str()`, logs and tracebacks) never shows the secret key or the session
    token. The access key id is not a secret (CloudTrail records it) and is shown.
    """

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    # Serialised once per credential rather than once per request: this is the hot-path body.
    _body: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.access_key_id and self.secret_access_key and self.session_token):
            # Never an empty credential (issue 3): refuse to even build one.
            raise ValueError("credentials need an access key id, a secret access key and a session token")
        if self.expiration.tzinfo is None or self.expiration.utcoffset() is None:
            raise ValueError("credential expiration must be timezone-aware")
        expiration = self.expiration.astimezone(UTC)
        object.__setattr__(self, "expiration", expiration)
        body = orjson.dumps(
            {
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "Token": self.session_token,
                "Expiration": expiration.strftime(_EXPIRATION_FORMAT),
            }
        )
        object.__setattr__(self, "_body", body)

    def to_container_json(self) -> bytes:
        """The container-credentials response body: four strings, `Expiration` in UTC with `Z`."""
        return self._body

    def remaining(self, now: datetime) -> float:
        """Seconds of validity left at `now` (negative once expired)."""
        return (self.expiration - now).total_seconds()

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key='<redacted>', "
            f"session_token='<redacted>', expiration={self.expiration.isoformat()!r})"
        )


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """Who the base credentials belong to, from STS GetCallerIdentity."""

    account: str
    arn: str
    user: str


def user_from_arn(arn: str) -> str:
    """The human-meaningful user name in a caller ARN.

    IAM user `…:user/path/alice` -> `alice`; assumed role `…:assumed-role/Role/alice@corp` -> the
    role session name (for SSO, the person); federated user `…:federated-user/bob` -> `bob`;
    the account root -> `root`. Anything else falls back to the last path element.
    """
    resource = arn.split(":", 5)[5] if arn.count(":") >= 5 else arn
    if resource == "root":
        return "root"
    kind, _, rest = resource.partition("/")
    if kind == "assumed-role":
        _role, _, session = rest.partition("/")
        return session or rest
    return resource.rsplit("/", 1)[-1] or resource
