"""What the admin commands do (list, show, revoke sessions and enforce revocations on AWS; create
the table), apart from printing.

`cli.py` parses and prints; this module opens the store, talks to it and returns values.
"""

from __future__ import annotations

import getpass
import heapq
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.config import ServerConfig
from sentinel.errors import SentinelError
from sentinel.revocation import SAFETY_MARGIN, EnforcementError, Enforcer
from sentinel.sessions.errors import InvalidTransition
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import (
    DEFAULT_RETENTION,
    Retention,
    ServerSession,
    SessionStatus,
    utc_now,
    validate_session_id,
)
from sentinel.sessions.store import MAX_LIST_LIMIT, SessionStore, clamp_limit


class UsageError(SentinelError):
    """A command given arguments that cannot work (e.g. an empty revocation reason)."""


@dataclass(frozen=True, slots=True)
class ListFilter:
    status: SessionStatus | None = None
    user: str | None = None
    profile: str | None = None
    limit: int | None = None


@asynccontextmanager
async def store_for(config: ServerConfig) -> AsyncIterator[SessionStore]:
    store = await open_store(
        session_table=config.session_table, session_db=config.session_db, region=config.region
    )
    try:
        yield store
    finally:
        await store.aclose()


async def list_sessions(store: SessionStore, query: ListFilter) -> list[ServerSession]:
    """Newest first. One index serves the query; the other filters apply to its results.

    Without any filter, the three status lists are merged (a store has no cheap "all" query:
    DynamoDB would need a Scan)."""
    limit = clamp_limit(query.limit)
    # Over-read when filtering after the index query, so a filter does not starve the page.
    fetch = limit if _filters_after(query) == 0 else clamp_limit(limit * 10)
    if query.user is not None:
        found = await store.list_by_user(query.user, fetch)
    elif query.profile is not None:
        found = await store.list_by_profile(query.profile, fetch)
    elif query.status is not None:
        found = await store.list_by_status(query.status, fetch)
    else:
        per_status = [await store.list_by_status(status, limit) for status in SessionStatus]
        found = list(heapq.merge(*per_status, key=lambda s: s.created_at, reverse=True))
    matching = [
        session
        for session in found
        if (query.status is None or session.status is query.status)
        and (query.user is None or session.user == query.user)
        and (query.profile is None or session.profile == query.profile)
    ]
    return matching[:limit]


def _filters_after(query: ListFilter) -> int:
    given = [query.user is not None, query.profile is not None, query.status is not None]
    return max(0, sum(given) - 1)


async def get_session(store: SessionStore, session_id: str) -> ServerSession:
    return await store.get(validate_session_id(session_id))


def shown_status(session: ServerSession, now: datetime, retention: Retention = DEFAULT_RETENTION) -> str:
    """The status an admin reads: `active (stale)` for an active session whose lease lapsed
    (issue 10: its server stopped renewing it, most likely killed), else the status itself."""
    if retention.is_stale(session, now):
        return f"{session.status.value} (stale)"
    return session.status.value


async def expire_stale_sessions(store: SessionStore, *, dry_run: bool) -> list[ServerSession]:
    """End every active session whose lease lapsed, whatever its instance id (issue 10); with
    `dry_run`, only name them. Each expiry is conditional on the lease still having lapsed, so a
    server that renews meanwhile keeps its session."""
    now = utc_now()
    if dry_run:
        return await store.find_stale(now)
    return await store.expire_stale(now)


def revocation_arguments(
    session_id: str | None, reason: str, user: str | None = None
) -> tuple[str | None, str]:
    """The id, checked, and the reason with its whitespace folded; refuses an empty reason, and
    both or neither of an id and `--user`.

    Checked before the store is opened or the caller's identity looked up, so a typo costs no
    AWS call and creates no database file."""
    if (session_id is None) == (user is None):
        raise UsageError("server-revoke: give a session ID or --user NAME (one of them)")
    if session_id is not None:
        validate_session_id(session_id)
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("server-revoke: --reason must not be empty")
    return session_id, reason


class NoActiveSessions(SentinelError):
    """`server-revoke --user NAME` found nothing to revoke."""


async def revoker_identity(config: ServerConfig) -> str:
    """Who is revoking: the caller's AWS identity (ARN) for DynamoDB, the login name for SQLite."""
    if not config.session_table:
        return local_identity()
    from sentinel.credentials import caller_arn

    return await caller_arn(config.profile, config.region)


def local_identity() -> str:
    """Who is revoking, for a local SQLite store: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# -- revocation that AWS enforces (issue 13) ------------------------------------------------------

# What a record without a lifetime could have served: STS's longest (credentials.params has it as
# STS_MAX_DURATION; not imported, since `sentinel.credentials` loads the AWS SDK).
_UNKNOWN_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Revoked:
    """One revoked session and what AWS now does about it.

    `enforced_until`: the role denies the session's SourceIdentity until then. None with no
    `error`: nothing to enforce (no role recorded, or `--no-enforce`). `error`: the store
    revocation stands, AWS enforcement failed."""

    session: ServerSession
    already_revoked: bool = False
    enforced_until: datetime | None = None
    skipped: str | None = None
    error: EnforcementError | None = None


@dataclass(frozen=True, slots=True)
class EnforcementState:
    """What `server-session` says about a revoked session's enforcement on AWS."""

    state: Literal["enforced", "not-enforced", "no-longer-needed", "unknown"]
    role_arn: str
    until: datetime | None = None
    detail: str = ""


@asynccontextmanager
async def enforcer_for(config: ServerConfig, *, enforce: bool) -> AsyncIterator[Enforcer | None]:
    """An `Enforcer` on IAM as the admin (profile and region as for the store), or None."""
    if not enforce:
        yield None
        return
    from sentinel.revocation.iam import open_role_policies

    async with open_role_policies(config.profile, config.region) as policies:
        yield Enforcer(policies)


def end_of_usefulness(session: ServerSession, now: datetime) -> datetime:
    """When no credential the session served can still be valid, counting from `now` (the latest
    the server can have learnt of its revocation), plus the safety margin."""
    lifetime = (
        timedelta(seconds=session.credential_lifetime) if session.credential_lifetime else _UNKNOWN_LIFETIME
    )
    return now + lifetime + SAFETY_MARGIN


async def revoke_sessions(
    store: SessionStore,
    enforcer: Enforcer | None,
    session_ids: list[str],
    reason: str,
    by: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> list[Revoked]:
    """Revoke each session in the store, then deny their credentials on AWS, one write per role.

    A session already revoked is not revoked again, but its enforcement is applied again (the
    repair after an IAM failure); without a role to enforce on, it is a conflict as before."""
    revoked: list[Revoked] = []
    for session_id in session_ids:
        try:
            revoked.append(Revoked(await store.revoke(session_id, by, reason)))
        except InvalidTransition as error:
            if error.current is not SessionStatus.REVOKED or enforcer is None:
                raise
            session = await store.get(session_id)
            if session.role_arn is None:
                raise
            revoked.append(Revoked(session, already_revoked=True))
    if enforcer is None:
        return [replace(r, skipped="--no-enforce") for r in revoked]
    return await _enforce(enforcer, revoked, clock.now())


async def _enforce(enforcer: Enforcer, revoked: list[Revoked], now: datetime) -> list[Revoked]:
    by_role: dict[str, list[Revoked]] = {}
    for item in revoked:
        if item.session.role_arn is not None:
            by_role.setdefault(item.session.role_arn, []).append(item)
    results = {id(item): replace(item, skipped="no role recorded") for item in revoked}
    for role_arn, items in by_role.items():
        added = {item.session.source_identity: end_of_usefulness(item.session, now) for item in items}
        try:
            done = await enforcer.enforce(role_arn, added)
        except EnforcementError as error:
            results.update({id(item): replace(item, error=error) for item in items})
            continue
        results.update(
            {
                id(item): replace(item, enforced_until=done.until.get(item.session.source_identity))
                for item in items
            }
        )
    return [results[id(item)] for item in revoked]


async def active_session_ids(store: SessionStore, user: str) -> list[str]:
    """The ids of a user's active sessions (at most the store's list maximum), newest first;
    `NoActiveSessions` if there are none."""
    sessions = await store.list_by_user(user, MAX_LIST_LIMIT)
    found = [session.id for session in sessions if session.status is SessionStatus.ACTIVE]
    if not found:
        raise NoActiveSessions(f"server-revoke: user {user[:128]!r} has no active sessions")
    return found


async def enforcement_state(
    config: ServerConfig, session: ServerSession, *, clock: Clock = SYSTEM_CLOCK
) -> EnforcementState | None:
    """Whether the role denies a revoked session's credentials now (None: not applicable).

    Asks IAM as the admin; an IAM failure is an `unknown` state, not an error of the command."""
    if session.status is not SessionStatus.REVOKED or session.role_arn is None:
        return None
    role_arn = session.role_arn
    from sentinel.revocation.iam import open_role_policies

    try:
        async with open_role_policies(config.profile, config.region) as policies:
            until = await Enforcer(policies).lookup(role_arn, session.source_identity)
    except EnforcementError as error:
        return EnforcementState("unknown", role_arn, detail=str(error))
    now = clock.now()
    if until is not None and until > now:
        return EnforcementState("enforced", role_arn, until)
    # Revoked at `updated_at` (terminal records do not change): past this, nothing is left to deny.
    needed_until = end_of_usefulness(session, session.updated_at)
    if needed_until <= now:
        return EnforcementState("no-longer-needed", role_arn, detail="its credentials have all expired")
    return EnforcementState(
        "not-enforced", role_arn, detail="the role does not deny it; run server-revoke again to enforce"
    )
