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

    async def touch(self, session_id: str, count: int, last_access_at: datetime) -> SessionStatus:
        """One atomic update: add `count` to request_count, set last_access_at and updated_at,
        push expires_at/ttl forward; applied only while the session is active.

        Returns the status: ACTIVE when applied, the terminal status when not (no change made).
        `SessionNotFound` if the record is absent."""
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
