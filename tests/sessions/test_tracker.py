"""The session tracker against real stores and injected faults (issue 4 items 1, 2, 4, 5 and 6).

Stores come from `tests/sessions/conftest.py` (`store`/`backend`: a fresh SQLite file or a fresh
DynamoDB table on the moto server). "Another process" is a second client opened on the same
backend. Faults come from `FaultyStore`, a wrapper around the real store. Nothing sleeps to
synchronise: tests wait on the tracker's and the wrapper's conditions under generous bounds.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

from harness.aws_env import REGION
from harness.faulty_store import FaultyStore
from harness.moto import MotoServer
from sentinel.metrics import Registry
from sentinel.ratelimit import Throttle
from sentinel.sessions.errors import SessionNotFound, StoreUnavailable
from sentinel.sessions.model import DEFAULT_RETENTION, ServerSession, SessionStatus, new_session_id
from sentinel.sessions.null_tracker import NullTracker
from sentinel.sessions.retry import Backoff
from sentinel.sessions.sqlite import SqliteSessionStore
from sentinel.sessions.store import SessionStore
from sentinel.sessions.tracker import SessionTracker, Tracker
from tests.sessions.conftest import FakeClock, StoreBackend

# Small intervals keep the worker busy in a test's time scale; the logic does not depend on them.
FAST_BACKOFF = Backoff(initial=0.01, maximum=0.05)
WAIT = 10.0  # generous bound for any condition a test waits on

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def make_template(clock: FakeClock, instance: str = "host-a") -> ServerSession:
    session_id = new_session_id()
    return ServerSession.start(
        user="alice",
        profile="dev",
        server_instance_id=instance,
        source_identity=f"sentinel:alice:{session_id}",
        session_id=session_id,
        now=clock.now(),
    )


def make_tracker(
    store: SessionStore,
    template: ServerSession,
    clock: FakeClock,
    *,
    queue_size: int = 10_000,
    flush_interval: float = 0.01,
    flush_threshold: int | None = None,
    revocation_poll: float = 0.05,
    registry: Registry | None = None,
) -> SessionTracker:
    return SessionTracker(
        store,
        template,
        clock=clock,
        registry=registry,
        queue_size=queue_size,
        flush_interval=flush_interval,
        flush_threshold=flush_threshold,
        revocation_poll=revocation_poll,
        backoff=FAST_BACKOFF,
    )


@asynccontextmanager
async def running(tracker: SessionTracker) -> AsyncIterator[SessionTracker]:
    """The worker in a task group, as the daemon runs it; cancelled if the test body fails."""
    async with anyio.create_task_group() as tg:
        await tg.start(tracker.run)
        try:
            yield tracker
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def second_client(backend: StoreBackend) -> AsyncIterator[SessionStore]:
    """Another process's view of the same file or table: its own connection or client."""
    other = await backend.open()
    try:
        yield other
    finally:
        await other.aclose()


async def touch_concurrently(tracker: SessionTracker, tasks: int, per_task: int, burst: int) -> int:
    """`tasks` request handlers each issuing `per_task` times, yielding to the loop every `burst`
    issuances as a server does between requests. Returns the number of touches."""

    async def handler() -> None:
        for i in range(per_task):
            tracker.touch_nowait()
            if i % burst == burst - 1:
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(handler)
    return tasks * per_task


async def touch_and_flush(tracker: SessionTracker, count: int) -> None:
    """`count` issuances, then wait (bounded) until the store has them."""
    for _ in range(count):
        tracker.touch_nowait()
    with anyio.fail_after(WAIT):
        await tracker.flush()


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# -- the accounting invariant (issue 4 item 5) ----------------------------------------------------


async def test_invariant_under_concurrent_load(store: SessionStore, clock: FakeClock) -> None:
    """20 handlers touch 10,000 times through a 256-slot queue while flushes run, then shutdown.

    1. Create the session; start the worker.
    2. Touch concurrently (bursts overflow the queue, so some touches drop) while another task
       asks for flushes five times.
    3. Shut down: the record is expired and stored count + dropped == touches, exactly."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, queue_size=256)
    touches = 0
    async with running(tracker):
        assert await tracker.start_session()

        async def load() -> None:
            nonlocal touches
            touches = await touch_concurrently(tracker, tasks=20, per_task=500, burst=16)

        async def flusher() -> None:
            for _ in range(5):
                await anyio.lowlevel.checkpoint()  # let the handlers run a burst first
                await tracker.flush()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                tg.start_soon(flusher)
            summary = await tracker.shutdown(5.0)

    stats = tracker.statistics()
    record = await store.get(template.id)
    assert record.status is SessionStatus.EXPIRED
    assert summary.expired
    assert not summary.timed_out
    assert stats.dropped > 0
    assert stats.coalesced > 0
    assert stats.flush_calls >= 3
    assert summary.unflushed == summary.discarded == 0
    assert record.request_count + summary.dropped == touches == 10_000
    assert stats.queued == stats.flushed == record.request_count


# -- a slow or dead store never blocks the hot path or the draining ----------------------------------


@sqlite_only
async def test_slow_store_never_stops_the_draining(store: SessionStore, clock: FakeClock) -> None:
    """The store takes 2 s per call; the queue keeps emptying while a flush is in flight.

    1. Create the session, then make every store call sleep 2 s.
    2. Touch 50 times; wait until the worker's flush of them is inside the store.
    3. Touch 1,000 more from 10 handlers; wait until the queue is empty.
    4. The first flush is still in flight and all 1,050 events are pending: draining went on.
    5. Heal, flush, shut down: the record holds every touch."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    tracker = make_tracker(faulty, template, clock)
    async with running(tracker):
        assert await tracker.start_session()
        faulty.slow(2.0)
        for _ in range(50):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await faulty.wait_started("touch", 1)
        touches = 50 + await touch_concurrently(tracker, tasks=10, per_task=100, burst=10)
        with anyio.fail_after(WAIT):
            await tracker.wait_drained()
        stats = tracker.statistics()
        assert stats.flush_in_flight
        assert faulty.finished["touch"] == 0
        assert stats.queue_depth == 0
        assert stats.dropped == 0
        assert stats.pending == touches
        faulty.heal()
        with anyio.fail_after(WAIT):
            await tracker.flush()
            summary = await tracker.shutdown(5.0)
    record = await store.get(template.id)
    assert record.request_count == touches
    assert summary.expired
    assert summary.flushed == touches


@sqlite_only
async def test_store_down_for_the_whole_run(
    store: SessionStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails every call from startup on, then comes back.

    1. Startup cannot create the session: one warning, serving goes on.
    2. 1,000 touches all succeed; creation is retried in the background (several failures).
    3. The store heals: the session is created with every count; shutdown expires it.
    4. One "failing" warning in all, not one per attempt."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    faulty.fail()
    tracker = make_tracker(faulty, template, clock)
    assert not await tracker.start_session()
    async with running(tracker):
        touches = await touch_concurrently(tracker, tasks=10, per_task=100, burst=10)
        with anyio.fail_after(WAIT):
            await faulty.wait_failed("expire_stale", 4)
        stats = tracker.statistics()
        assert stats.degraded
        assert not stats.session_created
        assert stats.flush_failures >= 4
        assert stats.pending + stats.queue_depth == touches
        faulty.heal()
        with anyio.fail_after(WAIT):
            await tracker.flush()
            summary = await tracker.shutdown(5.0)
    record = await store.get(template.id)
    assert record.request_count + summary.dropped == touches
    assert record.status is SessionStatus.EXPIRED
    assert summary.expired
    assert len(warnings_with(caplog, "failing")) == 1
    assert not tracker.statistics().degraded


@pytest.mark.slow
async def test_moto_outage_then_recovery(
    aws_endpoint: str, moto_server: MotoServer, clock: FakeClock
) -> None:
    """The real DynamoDB endpoint (moto server) goes away and comes back empty.

    Issue 10 reverses what this test used to check (the record was recreated with every count):
    a record that existed and is gone is a revocation, never a reason to recreate it.
    1. Create the session on a fresh table; touch and flush 100 events.
    2. Stop moto: touches keep succeeding, flushes fail (the tracker is degraded).
    3. moto restarts empty; the test recreates the table (what an operator would do).
    4. The tracker finds its record missing: revoked ("session record missing"), the 100 events
       it could not store are discarded, nothing is recreated, shutdown expires nothing."""
    from sentinel.sessions.dynamodb import DynamoDBSessionStore, create_session_table

    table = f"sentinel-tracker-{uuid.uuid4().hex[:12]}"
    await create_session_table(table, region=REGION)
    inner = await DynamoDBSessionStore.open(table, region=REGION, clock=clock)
    observed = FaultyStore(inner)  # no faults: it only counts the real store's outcomes
    template = make_template(clock)
    tracker = make_tracker(observed, template, clock)
    try:
        async with running(tracker):
            assert await tracker.start_session()
            touches = await touch_concurrently(tracker, tasks=5, per_task=20, burst=5)
            with anyio.fail_after(WAIT):
                await tracker.flush()
            with moto_server.down():
                touches += await touch_concurrently(tracker, tasks=5, per_task=20, burst=5)
                tracker.flush_nowait()
                with anyio.fail_after(30):
                    await observed.wait_failed("touch", 1)
                assert tracker.statistics().degraded
            await create_session_table(table, region=REGION)
            with anyio.fail_after(30):
                await tracker.wait_revoked()
                summary = await tracker.shutdown(10.0)
            with pytest.raises(SessionNotFound):
                await inner.get(template.id)
    finally:
        await inner.aclose()
    assert touches == 200
    assert tracker.revoked_reason == "session record missing"
    assert (summary.flushed, summary.discarded, summary.unflushed) == (100, 100, 0)
    assert not summary.expired
    assert observed.finished["create"] == 1  # created at startup, never again


# -- overflow --------------------------------------------------------------------------------------


@sqlite_only
async def test_overflow_drops_counts_and_warns_once_per_interval(
    store: SessionStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A 4-slot queue and no worker yet: every touch past 4 is dropped and counted.

    1. 10 touches: 4 queued, 6 dropped, one warning.
    2. 10 more within the same 10 s: 16 dropped, still one warning.
    3. The clock moves 10 s; one more touch: 17 dropped, a second warning with that count.
    4. The worker runs and shuts down: stored 4 + dropped 17 == 21 touches."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, queue_size=4)
    for _ in range(10):
        tracker.touch_nowait()
    stats = tracker.statistics()
    assert (stats.queued, stats.dropped, stats.queue_depth) == (4, 6, 4)
    assert len(warnings_with(caplog, "dropped")) == 1
    for _ in range(10):
        tracker.touch_nowait()
    assert tracker.statistics().dropped == 16
    assert len(warnings_with(caplog, "dropped")) == 1
    clock.advance(10.0)
    tracker.touch_nowait()
    drops = warnings_with(caplog, "dropped")
    assert len(drops) == 2
    assert "17 touch events dropped" in drops[1]
    async with running(tracker):
        with anyio.fail_after(WAIT):
            summary = await tracker.shutdown(5.0)
    record = await store.get(template.id)
    assert record.request_count == 4
    assert record.request_count + summary.dropped == 21


# -- revocation (issue 4 items 2 and 3) ------------------------------------------------------------


async def test_revocation_is_seen_in_a_flush_result(
    store: SessionStore, backend: StoreBackend, clock: FakeClock
) -> None:
    """Another process revokes the session; the next flush's status carries the news.

    1. Touch 3 times and flush. Polling is off in practice (one hour).
    2. Revoke through a second client: the tracker cannot know yet.
    3. Touch 5 more and flush: the store counts them (issue 10: every served credential is on
       the record) and says revoked: `revoked` turns True without a poll.
    4. Shutdown leaves the record revoked with all 8 requests counted, none discarded."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, revocation_poll=3600)
    async with second_client(backend) as other, running(tracker):
        assert await tracker.start_session()
        for _ in range(3):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.flush()
        await other.revoke(template.id, by="admin", reason="laptop lost")
        assert not tracker.revoked
        for _ in range(5):
            tracker.touch_nowait()
        tracker.flush_nowait()
        with anyio.fail_after(WAIT):
            await tracker.wait_revoked()
            summary = await tracker.shutdown(5.0)
        record = await other.get(template.id)
    stats = tracker.statistics()
    assert stats.polls == 0
    assert stats.ended is SessionStatus.REVOKED
    assert summary.discarded == 0
    assert summary.flushed == 8
    assert not summary.expired
    assert record.status is SessionStatus.REVOKED
    assert record.request_count == 8
    assert record.revoked_by == "admin"
    assert tracker.revoked


async def test_revocation_is_seen_by_the_idle_poll_and_never_undone(
    store: SessionStore, backend: StoreBackend, clock: FakeClock
) -> None:
    """An idle server learns of a revocation by polling; nothing brings the session back.

    1. Create the session; no touches. Revoke through a second client.
    2. `revoked` turns True within the poll interval (bounded generously).
    3. Delete the record, touch 3 times, flush: the flush tries to count them on the revoked
       record (issue 10), finds it missing, and recreates nothing.
    4. Shutdown neither recreates nor expires it; `revoked` stays True."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, revocation_poll=0.05)
    async with second_client(backend) as other, running(tracker):
        assert await tracker.start_session()
        await other.revoke(template.id, by="admin", reason="offboarding")
        with anyio.fail_after(WAIT):
            await tracker.wait_revoked()
        assert tracker.statistics().polls >= 1
        await other.delete(template.id)
        for _ in range(3):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.flush()
        with pytest.raises(SessionNotFound):
            await other.get(template.id)
        with anyio.fail_after(WAIT):
            summary = await tracker.shutdown(5.0)
        with pytest.raises(SessionNotFound):
            await other.get(template.id)
    assert tracker.revoked
    assert not summary.expired
    assert summary.discarded == 3
    assert summary.unflushed == 0
    # The create at startup, then one touch for the 3 events (issue 10), which found no record.
    assert tracker.statistics().flush_calls == 2
    assert tracker.revoked_reason == "session record missing"


@sqlite_only
async def test_externally_expired_session_stops_serving(
    store: SessionStore, backend: StoreBackend, clock: FakeClock
) -> None:
    """Someone else marks the session expired: it is terminal, so the server stops serving.

    The store refuses touches for it, so serving on would hand out credentials no record counts."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock)
    async with second_client(backend) as other, running(tracker):
        assert await tracker.start_session()
        await other.expire(template.id)
        with anyio.fail_after(WAIT):
            await tracker.wait_revoked()
            summary = await tracker.shutdown(5.0)
    assert tracker.statistics().ended is SessionStatus.EXPIRED
    assert summary.expired  # the record ends expired, as it should after a shutdown
    assert (await store.get(template.id)).status is SessionStatus.EXPIRED


async def test_revoke_racing_heavy_touching(
    store: SessionStore, backend: StoreBackend, clock: FakeClock
) -> None:
    """A revocation lands in the middle of heavy touching.

    1. 10 handlers touch 4,000 times; meanwhile a task waits for one flush, then revokes
       through a second client.
    2. No exception anywhere; the record ends revoked, and every touch is either stored (before
       the revocation), dropped on the queue, or discarded (the store refused it after)."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, queue_size=512)
    touches = 0
    async with second_client(backend) as other, running(tracker):
        assert await tracker.start_session()

        async def load() -> None:
            nonlocal touches
            touches = await touch_concurrently(tracker, tasks=10, per_task=400, burst=20)

        async def revoker() -> None:
            await tracker.flush()
            await other.revoke(template.id, by="admin", reason="incident")

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                tg.start_soon(revoker)
            summary = await tracker.shutdown(5.0)
        record = await other.get(template.id)
    assert record.status is SessionStatus.REVOKED
    assert tracker.revoked
    assert not summary.expired
    assert summary.unflushed == 0
    assert record.request_count + summary.dropped + summary.discarded == touches


# -- shutdown (issue 4 item 4) ---------------------------------------------------------------------


@sqlite_only
async def test_shutdown_with_a_hanging_store_returns_within_its_deadline(
    store: SessionStore, clock: FakeClock
) -> None:
    """The store stops answering (calls hang); shutdown still returns within its budget.

    1. Create the session, then make every call hang; touch 10 times and let a flush hang.
    2. shutdown(0.5) returns (bounded generously), reporting the timeout and the 10 unflushed."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    tracker = make_tracker(faulty, template, clock)
    async with running(tracker):
        assert await tracker.start_session()
        faulty.block()
        for _ in range(10):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await faulty.wait_started("touch", 1)
        with anyio.fail_after(0.5 + 2.0):
            summary = await tracker.shutdown(0.5)
    faulty.heal()
    assert summary.timed_out
    assert not summary.expired
    assert summary.unflushed == 10
    assert summary.flushed == 0
    record = await store.get(template.id)
    assert record.status is SessionStatus.ACTIVE
    assert record.request_count == 0


@sqlite_only
async def test_touches_after_shutdown_are_dropped_and_counted(store: SessionStore, clock: FakeClock) -> None:
    template = make_template(clock)
    tracker = make_tracker(store, template, clock)
    async with running(tracker):
        tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            summary = await tracker.shutdown(5.0)
    tracker.touch_nowait()
    assert (summary.flushed, summary.dropped) == (1, 0)
    assert tracker.statistics().dropped == 1
    assert await tracker.shutdown(5.0) is summary


# -- a record that disappeared (issue 4 item 2) ----------------------------------------------------


@pytest.mark.parametrize("noticed_by", ["flush", "poll"])
async def test_deleted_record_is_a_revocation_and_never_recreated(
    store: SessionStore, backend: StoreBackend, clock: FakeClock, noticed_by: str
) -> None:
    """Issue 10 (this replaces "deleted record is recreated with the accumulated counts"): a
    missing record is not a licence.

    1. Touch 5 times and flush; delete the record through a second client.
    2. flush: touch 7 more; the flush's touch finds no record.
       poll: no touches; the idle poll finds no record.
    3. `revoked` turns True with the reason "session record missing" and one error line; the 7
       are discarded; no create is ever sent again, and shutdown leaves no record behind."""
    template = make_template(clock)
    observed = FaultyStore(store)
    tracker = make_tracker(observed, template, clock, revocation_poll=3600 if noticed_by == "flush" else 0.05)
    async with second_client(backend) as other, running(tracker):
        assert await tracker.start_session()
        for _ in range(5):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.flush()
        await other.delete(template.id)
        with anyio.fail_after(WAIT):
            if noticed_by == "flush":
                for _ in range(7):
                    tracker.touch_nowait()
                await tracker.flush()
                assert observed.failed["touch"] == 1
            await tracker.wait_revoked()
        assert tracker.revoked_reason == "session record missing"
        tracker.touch_nowait()  # a request that raced the gate: nowhere to count it
        with anyio.fail_after(WAIT):
            summary = await tracker.shutdown(5.0)
        with pytest.raises(SessionNotFound):
            await other.get(template.id)
    assert observed.started["create"] == 1
    assert not summary.expired
    assert summary.flushed == 5
    assert summary.discarded == (8 if noticed_by == "flush" else 1)
    assert summary.unflushed == 0


# -- startup (issue 4 item 1) ----------------------------------------------------------------------


@sqlite_only
async def test_startup_retries_creation_and_expires_stale_sessions(
    store: SessionStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart of instance host-a while the store is failing.

    1. The store holds two active sessions of host-a (left by a killed process), one of host-b.
    2. The store fails: startup warns once and serves; 4 touches are kept; creation is retried.
    3. The store heals: host-a's stale sessions are expired, host-b's is untouched, and our
       session exists with the 4 touches."""
    lapsed = clock.now() - timedelta(seconds=1)  # issue 10: a killed process stops renewing
    stale = [make_template(clock, "host-a").with_changes(lease_until=lapsed) for _ in range(2)]
    neighbour = make_template(clock, "host-b").with_changes(lease_until=lapsed)
    for session in [*stale, neighbour]:
        await store.create(session)
    template = make_template(clock, "host-a")
    faulty = FaultyStore(store)
    faulty.fail()
    tracker = make_tracker(faulty, template, clock)
    assert not await tracker.start_session()
    assert len(warnings_with(caplog, "failing")) == 1
    async with running(tracker):
        for _ in range(4):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await faulty.wait_failed("expire_stale", 3)
        assert not tracker.statistics().session_created
        faulty.heal()
        with anyio.fail_after(WAIT):
            await tracker.wait_session_created()
            await tracker.flush()
        assert [(await store.get(s.id)).status for s in stale] == [SessionStatus.EXPIRED] * 2
        assert (await store.get(neighbour.id)).status is SessionStatus.ACTIVE
        assert (await store.get(template.id)).request_count == 4
        assert tracker.statistics().stale_expired == 2
        with anyio.fail_after(WAIT):
            await tracker.shutdown(5.0)
    assert len(warnings_with(caplog, "failing")) == 1


@sqlite_only
async def test_start_session_is_bounded_by_the_callers_deadline(
    store: SessionStore, clock: FakeClock
) -> None:
    """A store that hangs cannot hold startup: the caller's cancel scope ends the attempt, and the
    worker creates the session once the store answers again."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    faulty.block()
    tracker = make_tracker(faulty, template, clock)
    with anyio.move_on_after(0.1) as scope:
        await tracker.start_session()
    assert scope.cancelled_caught
    assert not tracker.statistics().session_created
    faulty.heal()
    async with running(tracker):
        with anyio.fail_after(WAIT):
            await tracker.wait_session_created()
            summary = await tracker.shutdown(5.0)
    assert summary.expired


# -- flushing policy and observation ---------------------------------------------------------------


@sqlite_only
async def test_first_touches_on_an_idle_server_are_flushed_after_the_interval(
    store: SessionStore, clock: FakeClock
) -> None:
    """An idle worker waits for its next poll (an hour away here); the first touch must bring
    the flush forward to the flush interval instead."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, revocation_poll=3600)
    async with running(tracker):
        assert await tracker.start_session()
        tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.wait_flushed()
            await tracker.shutdown(5.0)
    assert (await store.get(template.id)).request_count == 1


@sqlite_only
async def test_threshold_flushes_before_the_interval(store: SessionStore, clock: FakeClock) -> None:
    """With a one-hour interval, reaching the event threshold (10) is what triggers the flush."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, flush_interval=3600, flush_threshold=10)
    async with running(tracker):
        assert await tracker.start_session()
        for _ in range(9):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.wait_drained()
        assert tracker.statistics().pending == 9
        tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.wait_flushed()
            await tracker.shutdown(5.0)
    assert (await store.get(template.id)).request_count == 10


@sqlite_only
async def test_statistics_are_exported_as_metrics(store: SessionStore, clock: FakeClock) -> None:
    registry = Registry()
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, registry=registry)
    async with running(tracker):
        assert await tracker.start_session()
        for _ in range(3):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.flush()
        text = registry.render()
        with anyio.fail_after(WAIT):
            await tracker.shutdown(5.0)
    assert "sentinel_session_touch_queued_total 3" in text
    assert "sentinel_session_touch_flushed_total 3" in text
    assert "sentinel_session_touch_dropped_total 0" in text
    assert "sentinel_session_created 1" in text
    assert "sentinel_session_revoked 0" in text


@sqlite_only
async def test_null_tracker_does_nothing(store: SessionStore, clock: FakeClock) -> None:
    """Tracking off: the daemon holds a `Tracker` either way (checked by mypy here)."""
    real: Tracker = make_tracker(store, make_template(clock), clock)
    tracker: Tracker = NullTracker()
    assert type(real) is not type(tracker)
    tracker.touch_nowait()
    async with anyio.create_task_group() as tg:
        await tg.start(tracker.run)
    assert not tracker.revoked
    assert not await tracker.start_session()
    assert (await tracker.shutdown(1.0)).flushed == 0
    assert tracker.statistics().queued == 0


def test_backoff_grows_is_capped_and_jittered_within_half() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    assert [backoff.ceiling(n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.ceiling(10_000) == 30.0
    assert backoff.delay(3, uniform=lambda: 0.0) == 2.0
    assert backoff.delay(3, uniform=lambda: 0.999) == pytest.approx(4.0, rel=1e-3)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2.0, maximum=1.0)


def test_throttle_lets_one_through_per_interval() -> None:
    throttle = Throttle(10.0)
    assert [throttle.allow(t) for t in (0.0, 5.0, 9.99, 10.0, 15.0)] == [True, False, False, True, False]
    throttle.reset()
    assert throttle.allow(15.0)


# -- issue 12: exactly once, and a summary that adds up ----------------------------------------------


async def test_a_lost_answer_is_retried_as_is_and_never_counted_twice(
    store: SessionStore, clock: FakeClock
) -> None:
    """The store applies a touch and the answer is lost, three times over, while touches go on.

    1. 10 touches, flushed. 2. The next 3 touch calls are applied by the real store but raise
    (a timed-out reply). 3. 15 more touches arrive while the batch is retried; then 5 more.
    4. The batch is resent with its number and count until the store says it has it; the later
    touches go in later batches. 5. After shutdown: stored == flushed == 30 exactly."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    tracker = make_tracker(faulty, template, clock)
    async with running(tracker):
        assert await tracker.start_session()
        await touch_and_flush(tracker, 10)
        faulty.lose(3, "touch")
        for _ in range(15):
            tracker.touch_nowait()
        tracker.flush_nowait()
        with anyio.fail_after(WAIT):
            await faulty.wait_failed("touch", 1)
        for _ in range(5):
            tracker.touch_nowait()
        with anyio.fail_after(WAIT):
            await tracker.flush()
            summary = await tracker.shutdown(5.0)
    record = await store.get(template.id)
    assert faulty.failed["touch"] == 3
    assert record.request_count == summary.flushed == 30
    assert (summary.dropped, summary.discarded, summary.unflushed) == (0, 0, 0)
    assert record.flush_seq >= 3


@sqlite_only
async def test_shutdown_with_the_file_locked_still_adds_up(
    backend: StoreBackend, tmp_path: pytest.TempPathFactory, clock: FakeClock
) -> None:
    """Issue 12 item 2. 1. 20 issuances flushed. 2. Another connection takes SQLite's write lock.
    3. 20 more issuances; shutdown with a 3 s budget: the flush cannot land (busy), the deadline
    passes. 4. The summary adds up to 40: 20 flushed, 20 unflushed (the batch in flight)."""
    path = tmp_path / "locked.db"  # type: ignore[operator]
    store = await SqliteSessionStore.open(path, clock=clock, busy_timeout=0.5)
    template = make_template(clock)
    tracker = make_tracker(store, template, clock)
    try:
        async with running(tracker):
            assert await tracker.start_session()
            await touch_and_flush(tracker, 20)
            blocker = sqlite3.connect(path, isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                for _ in range(20):
                    tracker.touch_nowait()
                with anyio.fail_after(WAIT):
                    summary = await tracker.shutdown(3.0)
            finally:
                blocker.close()
        assert summary.timed_out
        assert summary.flushed + summary.dropped + summary.discarded + summary.unflushed == 40
        assert (summary.flushed, summary.unflushed) == (20, 20)
        assert (await store.get(template.id)).request_count == 20
    finally:
        await store.aclose()


# -- issue 10: liveness by lease, missing records, staleness, opening in the background --------------


async def test_two_live_trackers_with_one_instance_id_both_keep_working(
    backend: StoreBackend, clock: FakeClock
) -> None:
    """Issue 10 item 5. 1. A leftover of instance host-a whose lease lapsed (a SIGKILLed server).
    2. Trackers A and B start on host-a (a cloned host): the leftover is expired, once; neither
    live session is. 4. Both count their touches and neither is
    revoked; shutdown expires each."""
    leftover = make_template(clock, "host-a").with_changes(lease_until=clock.now() - timedelta(seconds=1))
    first, second = make_template(clock, "host-a"), make_template(clock, "host-a")
    async with second_client(backend) as a_store, second_client(backend) as b_store:
        await a_store.create(leftover)
        a, b = make_tracker(a_store, first, clock), make_tracker(b_store, second, clock)
        async with running(a), running(b):
            assert await a.start_session()
            assert await b.start_session()
            for _ in range(4):
                a.touch_nowait()
                b.touch_nowait()
            b.touch_nowait()
            with anyio.fail_after(WAIT):
                await a.flush()
                await b.flush()
            assert not a.revoked
            assert not b.revoked
            assert (await b_store.get(first.id)).status is SessionStatus.ACTIVE
            with anyio.fail_after(WAIT):
                summaries = [await a.shutdown(5.0), await b.shutdown(5.0)]
        records = [await a_store.get(s.id) for s in (leftover, first, second)]
    assert [r.status for r in records] == [SessionStatus.EXPIRED] * 3
    assert [r.request_count for r in records[1:]] == [4, 5]
    # Both workers start at once, so either may be the one whose sweep ends the leftover.
    assert sorted([a.statistics().stale_expired, b.statistics().stale_expired]) == [0, 1]
    assert all(s.expired for s in summaries)


async def test_an_idle_server_renews_its_lease_rarely(store: SessionStore, clock: FakeClock) -> None:
    """1. An idle tracker polls every 0.05 s and renews every 0.3 s (60 s in production).
    2. The wall clock moves 2 minutes. 3. A renewal lands: the lease runs 3 minutes from the new
    now. Renewals are a small share of the store calls: most idle calls stay reads."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    tracker = SessionTracker(
        faulty, template, clock=clock, revocation_poll=0.05, lease_renewal=0.3, backoff=FAST_BACKOFF
    )
    async with running(tracker):
        assert await tracker.start_session()
        now = clock.advance(120)
        renewals = faulty.started["renew"]
        with anyio.fail_after(WAIT):
            await faulty.wait_finished("renew", renewals + 2)
            await faulty.wait_finished("get", faulty.finished["get"] + 1)
        record = await store.get(template.id)
        assert record.lease_until == now + DEFAULT_RETENTION.lease
        assert faulty.finished["get"] > faulty.finished["renew"]
        assert "touch" not in faulty.started  # no write without a request or a renewal
        with anyio.fail_after(WAIT):
            await tracker.shutdown(5.0)


async def test_staleness_is_reported_and_flags_past_its_limit(store: SessionStore, clock: FakeClock) -> None:
    """Issue 10 item 7. 1. A tracker with a 0.3 s staleness limit hears from the store.
    2. The store fails: statistics say degraded with the store's one-line reason; once 0.3 s
    pass without an answer, `stale` is True. 3. The store heals: the next answer clears it and
    the staleness is back near zero."""
    template = make_template(clock)
    faulty = FaultyStore(store)
    tracker = SessionTracker(
        faulty, template, clock=clock, revocation_poll=0.05, backoff=FAST_BACKOFF, staleness_limit=0.3
    )
    async with running(tracker):
        assert await tracker.start_session()
        assert tracker.statistics().last_heard is not None
        faulty.fail()
        with anyio.fail_after(WAIT):
            await tracker.wait_stale()
        stats = tracker.statistics()
        assert stats.stale
        assert stats.degraded
        assert stats.degraded_reason is not None
        assert "injected fault" in stats.degraded_reason
        assert "\n" not in stats.degraded_reason
        assert tracker.revocation_staleness() >= 0.3
        faulty.heal()
        with anyio.fail_after(WAIT):
            await tracker.wait_heard()
        assert not tracker.stale
        assert tracker.revocation_staleness() < 0.3
        assert tracker.statistics().degraded_reason is None
        with anyio.fail_after(WAIT):
            await tracker.shutdown(5.0)


async def test_a_store_that_cannot_be_opened_is_retried_in_the_background(
    tmp_path: pytest.TempPathFactory, clock: FakeClock
) -> None:
    """Issue 10 item 2: tracking never switches itself off. 1. The SQLite path is a directory:
    opening fails; start_session says False and the tracker is degraded. 2. 3 touches are kept.
    3. The directory goes away: the opener succeeds, the record is created with the 3 touches.
    4. A revocation through another client is seen. 5. Shutdown closes the store it opened."""
    path = tmp_path / "sessions.db"  # type: ignore[operator]
    path.mkdir()
    opened: list[SqliteSessionStore] = []

    async def opener() -> SessionStore:
        opened.append(await SqliteSessionStore.open(path, clock=clock))
        return opened[-1]

    template = make_template(clock)
    tracker = SessionTracker(opener, template, clock=clock, revocation_poll=0.05, backoff=FAST_BACKOFF)
    assert not await tracker.start_session()
    assert tracker.statistics().degraded
    async with running(tracker):
        for _ in range(3):
            tracker.touch_nowait()
        path.rmdir()
        with anyio.fail_after(WAIT):
            await tracker.wait_session_created()
            await tracker.flush()
        async with await SqliteSessionStore.open(path, clock=clock) as other:
            assert (await other.get(template.id)).request_count == 3
            await other.revoke(template.id, "admin", "test")
            with anyio.fail_after(WAIT):
                await tracker.wait_revoked()
            with anyio.fail_after(WAIT):
                summary = await tracker.shutdown(5.0)
            assert (await other.get(template.id)).status is SessionStatus.REVOKED
    assert len(opened) == 1
    assert summary.flushed == 3
    assert tracker.revoked_reason == "session revoked"
    with pytest.raises(StoreUnavailable, match="closed"):
        await opened[0].get(template.id)


async def test_a_revoked_sessions_record_holds_every_served_count(
    store: SessionStore, backend: StoreBackend, clock: FakeClock
) -> None:
    """Issue 10 item 6. 1. 36 issuances flushed in three batches. 2. An admin revokes the session
    through another client. 3. 20 more, issued before the server learned of it, flushed in two
    batches: the first learns the revocation, the second is sent as a revoked touch.
    4. After shutdown the revoked record holds all 56; nothing is discarded."""
    template = make_template(clock)
    tracker = make_tracker(store, template, clock, revocation_poll=3600)
    async with second_client(backend) as other, running(tracker):
        assert await tracker.start_session()
        for _ in range(3):
            await touch_and_flush(tracker, 12)
        await other.revoke(template.id, by="admin", reason="incident")
        await touch_and_flush(tracker, 10)
        assert tracker.revoked
        await touch_and_flush(tracker, 10)
        with anyio.fail_after(WAIT):
            summary = await tracker.shutdown(5.0)
        record = await other.get(template.id)
    assert record.status is SessionStatus.REVOKED
    assert record.request_count + summary.dropped == 56
    assert (summary.flushed, summary.discarded, summary.unflushed) == (56, 0, 0)
    assert record.flush_seq == 5
