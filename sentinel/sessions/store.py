"""The `SessionStore` protocol (DESIGN.md §4): every store passes one shared contract suite."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sentinel.sessions.model import ServerSession, SessionStatus

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


def clamp_limit(limit: int | None) -> int:
    """The list limit actually used: default 100, at least 1, at most 1000."""
    if limit is None:
        return DEFAULT_LIST_LIMIT
    return max(1, min(int(limit), MAX_LIST_LIMIT))


class SessionStore(Protocol):
    """Async session storage. Every method raises only `SessionStoreError` subclasses."""

    @property
    def name(self) -> str:
        """Human description naming the backend, e.g. `dynamodb table sentinel-sessions`."""
        ...

    async def create(self, session: ServerSession) -> None:
        """Store a new session; `SessionExists` if the id is taken."""
        ...

    async def get(self, session_id: str) -> ServerSession:
        """The session; `SessionNotFound` if absent."""
        ...

    async def update(self, session: ServerSession) -> ServerSession:
        """Replace the record if its stored `updated_at` still equals `session.updated_at`
        (optimistic lock; else `ConcurrentModification`). Returns the stored record with a new
        `updated_at`. A status change must be legal (`InvalidTransition`)."""
        ...

    async def delete(self, session_id: str) -> None:
        """Remove the record; deleting an absent record is not an error."""
        ...

    async def list_by_user(self, user: str, limit: int | None = None) -> list[ServerSession]:
        """Newest first (by created_at); default limit 100, max 1000."""
        ...

    async def list_by_status(self, status: SessionStatus, limit: int | None = None) -> list[ServerSession]:
        """Newest first (by created_at); default limit 100, max 1000."""
        ...

    async def list_by_profile(self, profile: str, limit: int | None = None) -> list[ServerSession]:
        """Newest first (by created_at); default limit 100, max 1000."""
        ...

    async def find_active_by_server_instance(self, server_instance_id: str) -> list[ServerSession]:
        """Active sessions of one server instance (normally at most one)."""
        ...

    async def touch(
        self,
        session_id: str,
        count: int,
        last_access_at: datetime,
        *,
        seq: int | None = None,
        known_status: SessionStatus = SessionStatus.ACTIVE,
    ) -> SessionStatus:
        """One atomic update that counts `count` requests in ANY status (issue 10: every served
        credential is on the record): add to request_count, set last_access_at and updated_at.
        Only an active record also gets expires_at/ttl pushed forward and its lease renewed.

        `seq` makes the batch idempotent (issue 12): it is stored as `flush_seq`, and a batch whose
        `seq` is not above the stored one has already been applied and changes nothing. Without
        `seq` the touch always applies (at-least-once).

        `known_status` is the caller's belief; a store may use it to pick the request form
        (DynamoDB sends one conditional `UpdateItem` for the believed status, a second only when
        the belief was wrong). Returns the record's status. `SessionNotFound` if absent."""
        ...

    async def renew(self, session_id: str) -> SessionStatus:
        """Renew the lease of an active session (`lease_until` = now + lease); a terminal record
        is left unchanged. Returns the status. `SessionNotFound` if absent."""
        ...

    async def find_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        """Active sessions (of one server instance, or all) whose lease lapsed before `now`
        (`Retention.is_stale`), newest first. No limit: a sweep must see them all."""
        ...

    async def expire_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        """Expire every session `find_stale` names, each conditional on its lease still having
        lapsed at write time (a renewal racing the sweep wins). Returns the expired records."""
        ...

    async def revoke(self, session_id: str, by: str, reason: str) -> ServerSession:
        """Conditional active -> revoked; `InvalidTransition` if already terminal."""
        ...

    async def expire(self, session_id: str) -> ServerSession:
        """Conditional active -> expired; `InvalidTransition` if already terminal."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (clients, connections)."""
        ...
