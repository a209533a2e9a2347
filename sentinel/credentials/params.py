"""The values Sentinel sends to STS AssumeRole, kept inside STS's own limits.

STS's service model gives SourceIdentity and RoleSessionName the pattern `[\\w+=,.@-]*` and a length
of 2-64 (`\\w` is ASCII there). DESIGN.md §7 once said `sentinel:<user>:<session id>`; the colon is
rejected by the real STS (moto does not check), so the separator is `.`.
"""

from __future__ import annotations

import re
from datetime import timedelta

_MAX_LENGTH = 64
_DISALLOWED = re.compile(r"[^A-Za-z0-9_+=,.@-]")
_SESSION_ID = re.compile(r"[0-9a-f]{16}")

SOURCE_IDENTITY_PREFIX = "sentinel."
ROLE_SESSION_PREFIX = "sentinel-"

DEFAULT_SERVER_DURATION = timedelta(minutes=15)
STS_MIN_DURATION = timedelta(seconds=900)
STS_MAX_DURATION = timedelta(hours=12)


def _sanitise(user: str, room: int) -> str:
    # Each character outside the allowed set becomes one `-` (so the result keeps the user's shape),
    # then the tail is cut: the prefix and the session id are what make the value useful.
    cleaned = _DISALLOWED.sub("-", user)[:room]
    return cleaned or "unknown"


def source_identity(user: str, session_id: str) -> str:
    """`sentinel.<user>.<session id>`, valid for STS whatever the user name contains.

    The prefix and the 16-hex session id are always kept whole; only the user part is shortened.
    The value never starts with `aws:` (reserved by STS) because it starts with `sentinel.`.
    """
    if _SESSION_ID.fullmatch(session_id) is None:
        raise ValueError("session id must be 16 lowercase hex characters")
    room = _MAX_LENGTH - len(SOURCE_IDENTITY_PREFIX) - 1 - len(session_id)
    return f"{SOURCE_IDENTITY_PREFIX}{_sanitise(user, room)}.{session_id}"


def role_session_name(user: str) -> str:
    """`sentinel-<user>`, sanitised and cut to STS's 64 characters.

    CloudTrail shows it next to the role; the per-session link is the SourceIdentity.
    """
    return ROLE_SESSION_PREFIX + _sanitise(user, _MAX_LENGTH - len(ROLE_SESSION_PREFIX))


def effective_duration(server_duration: timedelta, rule_max: timedelta | None) -> timedelta:
    """The DurationSeconds to ask for: `server_duration` capped by the rule's maximum.

    Clamped to STS's range [900 s, 12 h] and to whole seconds. The floor wins over a rule maximum
    below 15 minutes: STS cannot issue shorter credentials. A role whose MaxSessionDuration is
    below the result (1 h by default), or role chaining (1 h), makes STS reject the call; that
    surfaces as a CredentialError naming the STS error code.
    """
    duration = server_duration if rule_max is None else min(server_duration, rule_max)
    duration = max(STS_MIN_DURATION, min(STS_MAX_DURATION, duration))
    return timedelta(seconds=int(duration.total_seconds()))
