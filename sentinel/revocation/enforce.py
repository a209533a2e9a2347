"""Put revoked SourceIdentities into a role's deny policy, safely without conditional writes.

IAM has no compare-and-set: two admins revoking two sessions of one role at the same moment can
each read the policy, add their entry and write, and the second write drops the first entry. So
every change is read -> merge (and prune) -> write -> wait `settle` -> read back -> check that every
entry we wrote and that is still needed is there; otherwise retry with jittered backoff, a bounded
number of times. `settle` covers a concurrent writer between its read and its write, and IAM's own
eventual consistency; a writer stalled longer than that can still drop an entry, which a later
`server-session` shows and a repeated `server-revoke` repairs (docs/DESIGN.md §11).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import anyio

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.revocation.document import (
    MAX_INLINE_POLICY_CHARS,
    POLICY_NAME,
    RevocationDocument,
    parse,
    policy_size,
)
from sentinel.revocation.errors import EnforcementError, PolicyFull
from sentinel.sessions.retry import Backoff

SAFETY_MARGIN: Final = timedelta(minutes=15)
"""Added to every end of usefulness: clock skew between this host and AWS, and the server's own
delay in noticing its revocation (its revocation poll), during which it may still fetch credentials."""

# arn:<partition>:iam::<account>:role/<optional/path/>name
_ROLE_ARN: Final = re.compile(r"arn:[a-z-]+:iam::\d{12}:role/(?:[\x21-\x7e]*/)?([\w+=,.@-]{1,64})")

DEFAULT_ATTEMPTS: Final = 5
DEFAULT_SETTLE: Final = 1.0
DEFAULT_BACKOFF: Final = Backoff(initial=0.2, maximum=3.0)


def role_name(role_arn: str) -> str:
    """The role's name (the last path segment of its ARN); `EnforcementError` if it is no role ARN."""
    match = _ROLE_ARN.fullmatch(role_arn)
    if match is None:
        raise EnforcementError(f"not an IAM role ARN: {role_arn[:128]!r}")
    return match.group(1)


class RolePolicies(Protocol):
    """One named inline policy per role: the seam between the enforcement loop and IAM."""

    async def get(self, role: str, name: str) -> Mapping[str, Any] | None:
        """The policy document, or None if the role has no policy of that name."""
        ...

    async def put(self, role: str, name: str, document: str) -> None: ...

    async def delete(self, role: str, name: str) -> None:
        """Remove the policy; an absent one is not an error."""
        ...


@dataclass(frozen=True, slots=True)
class Enforced:
    """The outcome on one role: what the policy now denies for the identities asked for."""

    role_arn: str
    until: Mapping[str, datetime]  # identity -> end of usefulness as written (rounded up)
    pruned: frozenset[str]  # entries removed because their credentials can no longer be valid
    deleted: bool  # the policy was removed (nothing left to deny)
    attempts: int


class Enforcer:
    """Applies revocations to role policies through a `RolePolicies` seam."""

    def __init__(
        self,
        policies: RolePolicies,
        *,
        clock: Clock = SYSTEM_CLOCK,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: Backoff = DEFAULT_BACKOFF,
        settle: float = DEFAULT_SETTLE,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._policies = policies
        self._clock = clock
        self._attempts = attempts
        self._backoff = backoff
        self._settle = settle
        self._sleep = sleep

    async def enforce(self, role_arn: str, added: Mapping[str, datetime]) -> Enforced:
        """Deny `added` (identity -> end of usefulness) on the role, pruning what has run out.

        An empty `added` only prunes. `PolicyFull` if the policy would pass IAM's size limit even
        after pruning; `EnforcementError` (`IamRefused`) if IAM refuses or the write never sticks."""
        role = role_name(role_arn)
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                await self._sleep(self._backoff.delay(attempt - 2))
            current = parse(await self._policies.get(role, POLICY_NAME))
            now = self._clock.now()
            merged = current.with_entries(added)
            pruned = merged.expired(now)
            merged = merged.pruned(now)
            if merged != current:
                await self._write(role, merged)
                await self._sleep(self._settle)
                seen = parse(await self._policies.get(role, POLICY_NAME))
            else:
                seen = current
            if _holds(seen, merged, self._clock.now()):
                until = {
                    identity: merged.entries[identity] for identity in added if identity in merged.entries
                }
                return Enforced(role_arn, until, frozenset(pruned), merged.empty, attempt)
        raise EnforcementError(
            f"the revocation policy on role {role} did not keep our entries after {self._attempts}"
            " attempts (other writers kept replacing it); run the command again"
        )

    async def lookup(self, role_arn: str, identity: str) -> datetime | None:
        """Until when the role denies `identity` (None: it does not)."""
        document = parse(await self._policies.get(role_name(role_arn), POLICY_NAME))
        return document.entries.get(identity)

    async def _write(self, role: str, document: RevocationDocument) -> None:
        if document.empty:
            await self._policies.delete(role, POLICY_NAME)
            return
        text = document.render()
        size = policy_size(text)
        if size > MAX_INLINE_POLICY_CHARS:
            raise PolicyFull(
                f"the revocation policy on role {role} would be {size} characters after pruning,"
                f" over IAM's {MAX_INLINE_POLICY_CHARS} for a role's inline policies; revoke the"
                " role's sessions with AWS's 'Revoke active sessions' (aws:TokenIssueTime) instead"
            )
        await self._policies.put(role, POLICY_NAME, text)


def _holds(seen: RevocationDocument, wanted: RevocationDocument, now: datetime) -> bool:
    """Every entry of `wanted` still needed at `now` is in `seen`, at least as long."""
    return all(
        identity in seen.entries and seen.entries[identity] >= until
        for identity, until in wanted.entries.items()
        if until > now
    )
