"""`NullTracker`: session tracking switched off (`--no-session-tracking`, or a store that cannot
be opened)."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from sentinel.sessions.statistics import ShutdownSummary, TrackerStatistics

_IDLE = TrackerStatistics(
    queued=0,
    dropped=0,
    coalesced=0,
    flushed=0,
    discarded=0,
    flush_calls=0,
    flush_failures=0,
    polls=0,
    poll_failures=0,
    pending=0,
    queue_depth=0,
    flush_in_flight=False,
    last_flush_at=None,
    last_flush_latency=None,
    revoked=False,
    ended=None,
    session_created=False,
    stale_expired=0,
    degraded=False,
)


class NullTracker:
    """Tracking switched off (`--no-session-tracking`): every call is a no-op, never revoked."""

    @property
    def revoked(self) -> bool:
        return False

    stale = False

    @property
    def revoked_reason(self) -> str | None:
        return None

    def revocation_staleness(self) -> float:
        return 0.0

    def touch_nowait(self, session_id: str | None = None) -> None:
        return None

    async def start_session(self) -> bool:
        return False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def shutdown(self, deadline: float) -> ShutdownSummary:
        return ShutdownSummary(flushed=0, dropped=0, discarded=0, unflushed=0, expired=False, timed_out=False)

    def statistics(self) -> TrackerStatistics:
        return _IDLE
