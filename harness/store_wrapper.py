"""`DelegatingStore`: a `SessionStore` that forwards every operation to `inner` through one hook.

Subclasses (the tests' fault-injecting store, the benchmarks' metered store) override `_call`
alone, so the protocol's method list is written out once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from sentinel.sessions.model import ServerSession, SessionStatus
from sentinel.sessions.store import SessionStore

T = TypeVar("T")


class DelegatingStore:
    """Forwards to `inner`; `_call(operation, call)` runs each call and may wrap it."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    @property
    def name(self) -> str:
        return self.inner.name

    async def create(self, session: ServerSession) -> None:
        await self._call("create", lambda: self.inner.create(session))

    async def get(self, session_id: str) -> ServerSession:
        return await self._call("get", lambda: self.inner.get(session_id))

    async def update(self, session: ServerSession) -> ServerSession:
        return await self._call("update", lambda: self.inner.update(session))

    async def delete(self, session_id: str) -> None:
        await self._call("delete", lambda: self.inner.delete(session_id))

    async def list_by_user(self, user: str, limit: int | None = None) -> list[ServerSession]:
        return await self._call("list_by_user", lambda: self.inner.list_by_user(user, limit))

    async def list_by_status(self, status: SessionStatus, limit: int | None = None) -> list[ServerSession]:
        return await self._call("list_by_status", lambda: self.inner.list_by_status(status, limit))

    async def list_by_profile(self, profile: str, limit: int | None = None) -> list[ServerSession]:
        return await self._call("list_by_profile", lambda: self.inner.list_by_profile(profile, limit))

    async def find_active_by_server_instance(self, server_instance_id: str) -> list[ServerSession]:
        return await self._call(
            "find_active_by_server_instance",
            lambda: self.inner.find_active_by_server_instance(server_instance_id),
        )

    async def touch(
        self,
        session_id: str,
        count: int,
        last_access_at: datetime,
        *,
        seq: int | None = None,
        known_status: SessionStatus = SessionStatus.ACTIVE,
    ) -> SessionStatus:
        return await self._call(
            "touch",
            lambda: self.inner.touch(session_id, count, last_access_at, seq=seq, known_status=known_status),
        )

    async def renew(self, session_id: str) -> SessionStatus:
        return await self._call("renew", lambda: self.inner.renew(session_id))

    async def find_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        return await self._call("find_stale", lambda: self.inner.find_stale(now, server_instance_id))

    async def expire_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        return await self._call("expire_stale", lambda: self.inner.expire_stale(now, server_instance_id))

    async def revoke(self, session_id: str, by: str, reason: str) -> ServerSession:
        return await self._call("revoke", lambda: self.inner.revoke(session_id, by, reason))

    async def expire(self, session_id: str) -> ServerSession:
        return await self._call("expire", lambda: self.inner.expire(session_id))

    async def aclose(self) -> None:
        await self.inner.aclose()
