"""What a session tracker counts: its statistics and shutdown summary values, and their export
on `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sentinel.metrics import Registry
from sentinel.sessions.model import SessionStatus


@dataclass(frozen=True, slots=True)
class TrackerStatistics:
    """A snapshot of the tracker's counters. Event counts satisfy, at any moment,
    `queued == flushed + discarded + pending + queue_depth` and `touches == queued + dropped`
    (`pending` includes a batch in flight, issue 12)."""

    queued: int  # touch events accepted onto the queue
    dropped: int  # touch events refused: queue full, or after shutdown began
    coalesced: int  # events merged into an existing pending entry
    flushed: int  # events written into a session record
    discarded: int  # events with no record to go to: ours went missing, or an unknown session
    flush_calls: int  # store writes (create or touch) made for our session
    flush_failures: int  # flush rounds that failed and were put back
    polls: int  # idle status reads (revocation watch)
    poll_failures: int
    pending: int  # events drained and not yet written (including a flush in flight)
    queue_depth: int
    flush_in_flight: bool
    last_flush_at: datetime | None
    last_flush_latency: float | None  # seconds
    revoked: bool  # the session gate: no more credentials
    ended: SessionStatus | None  # the terminal status the store reported, if any
    session_created: bool  # the record exists as far as this process knows
    stale_expired: int  # sessions of an earlier process with our instance id, ended at startup
    degraded: bool  # the store is failing; tracking retries in the background
    degraded_reason: str | None = None  # one line: the last failure, while degraded
    last_heard: float | None = None  # Clock.monotonic() when the store last answered (None: never)
    stale: bool = False  # no answer for longer than the staleness limit (issue 10 item 7)
    revoked_reason: str | None = None  # the 403 message while revoked: revoked, or record missing


@dataclass(frozen=True, slots=True)
class ShutdownSummary:
    """How tracking ended. `flushed + dropped + discarded + unflushed` equals the number of
    `touch_nowait` calls, always, a shutdown that timed out included (issue 12); with a reachable
    store `unflushed` is 0."""

    flushed: int
    dropped: int
    discarded: int
    unflushed: int  # pending and in-flight counts a dead store never confirmed: lost with the process
    expired: bool  # the record ends with status expired
    timed_out: bool  # some step ran out of its deadline


def export_metrics(registry: Registry, statistics: Callable[[], TrackerStatistics]) -> None:
    """Expose the tracker's counters on `/metrics`, read at scrape time (no per-touch cost).

    A `_total` name is a count that only goes up, so it is exposed as a counter (Prometheus's
    convention, which `rate()` relies on); the rest are gauges."""

    def export(name: str, help_text: str, read: Callable[[TrackerStatistics], float]) -> None:
        metric = (
            registry.counter(name, help_text) if name.endswith("_total") else registry.gauge(name, help_text)
        )
        metric.set_function(lambda: read(statistics()))

    export("session_touch_queued_total", "Touch events accepted onto the queue.", lambda s: s.queued)
    export("session_touch_dropped_total", "Touch events dropped on a full queue.", lambda s: s.dropped)
    export(
        "session_touch_coalesced_total", "Touch events merged into a pending entry.", lambda s: s.coalesced
    )
    export("session_touch_flushed_total", "Touch events written to the session store.", lambda s: s.flushed)
    export(
        "session_touch_discarded_total",
        "Touch events with no session record to count them.",
        lambda s: s.discarded,
    )
    export("session_touch_pending", "Touch events drained but not yet written.", lambda s: s.pending)
    export("session_touch_queue_depth", "Touch events waiting in the queue.", lambda s: s.queue_depth)
    export("session_flush_calls_total", "Session store writes made by flushes.", lambda s: s.flush_calls)
    export(
        "session_flush_failures_total", "Flushes that failed and will be retried.", lambda s: s.flush_failures
    )
    export("session_polls_total", "Session status polls while idle.", lambda s: s.polls)
    export("session_poll_failures_total", "Session status polls that failed.", lambda s: s.poll_failures)
    export(
        "session_last_flush_timestamp_seconds",
        "Unix time of the last successful flush (0: none yet).",
        lambda s: s.last_flush_at.timestamp() if s.last_flush_at else 0,
    )
    export(
        "session_last_flush_latency_seconds",
        "Duration of the last successful flush.",
        lambda s: s.last_flush_latency or 0,
    )
    export("session_revoked", "1 once this server's session is revoked or ended.", lambda s: s.revoked)
    export("session_created", "1 while the session record is known to exist.", lambda s: s.session_created)
    export("session_store_degraded", "1 while the session store is failing.", lambda s: s.degraded)
