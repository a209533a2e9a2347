"""A `SessionStore` wrapper for the benchmarks: counts every call at the store, and can add latency.

Counting here, not in the tracker, is the point: "store writes" in the report are requests the
store actually received, whichever code path (flusher, recorder, baseline) sent them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import anyio

from sentinel.sessions.model import ServerSession, SessionStatus
from sentinel.sessions.store import SessionStore

T = TypeVar("T")

WRITES = frozenset({"create", "update", "delete", "touch", "revoke", "expire"})


class MeteredStore:
    """Forwards to `inner` after sleeping `delay` seconds (0: no sleep), counting calls and failures."""

    def __init__(self, inner: SessionStore, *, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def counts(self) -> dict[str, object]:
        writes = sum(n for op, n in self.calls.items() if op in WRITES)
        failed_writes = sum(n for op, n in self.failures.items() if op in WRITES)
        return {
            "writes": writes,
            "failed_writes": failed_writes,
            "failed_calls": sum(self.failures.values()),
            "reads": sum(self.calls.values()) - writes,
            "calls": dict(self.calls),
            "failures": dict(self.failures),
        }

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.delay:
            await anyio.sleep(self.delay)
        self.calls[operation] += 1
        try:
            return await call()
        except Exception:
            # Counted, then re-raised unchanged: the caller's own error handling is what is measured.
            self.failures[operation] += 1
            raise

    # -- SessionStore ----------------------------------------------------------------------------

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

    async def touch(self, session_id: str, count: int, last_access_at: datetime) -> SessionStatus:
        return await self._call("touch", lambda: self.inner.touch(session_id, count, last_access_at))

    async def revoke(self, session_id: str, by: str, reason: str) -> ServerSession:
        return await self._call("revoke", lambda: self.inner.revoke(session_id, by, reason))

    async def expire(self, session_id: str) -> ServerSession:
        return await self._call("expire", lambda: self.inner.expire(session_id))

    async def aclose(self) -> None:
        await self.inner.aclose()
