"""What the admin commands do (list, show, revoke sessions; create the table), apart from printing.

`cli.py` parses and prints; this module opens the store, talks to it and returns values.
"""

from __future__ import annotations

import getpass
import heapq
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sentinel.config import ServerConfig
from sentinel.errors import SentinelError
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import (
    DEFAULT_RETENTION,
    Retention,
    ServerSession,
    SessionStatus,
    utc_now,
    validate_session_id,
)
from sentinel.sessions.store import SessionStore, clamp_limit


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


def revocation_arguments(session_id: str, reason: str) -> tuple[str, str]:
    """The id, checked, and the reason with its whitespace folded; refuses an empty reason.

    Checked before the store is opened or the caller's identity looked up, so a typo costs no
    AWS call and creates no database file."""
    validate_session_id(session_id)
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("server-revoke: --reason must not be empty")
    return session_id, reason


async def revoke_session(store: SessionStore, session_id: str, reason: str, by: str) -> ServerSession:
    """Revoke one session; the server serving it answers 403 within its revocation poll."""
    session_id, reason = revocation_arguments(session_id, reason)
    return await store.revoke(session_id, by, reason)


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
