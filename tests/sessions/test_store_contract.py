"""The `SessionStore` contract (DESIGN.md §4), run against every store kind.

Each test gets a fresh backend (a new SQLite file, a new DynamoDB table on the moto server) through
the `store` / `backend` fixtures of `conftest.py`, parametrized over "sqlite" and "dynamodb".
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta, timezone

import pytest

from sentinel.sessions.errors import (
    ConcurrentModification,
    InvalidTransition,
    SessionExists,
    SessionNotFound,
    SessionStoreError,
    StoreUnavailable,
)
from sentinel.sessions.model import (
    DEFAULT_RETENTION,
    ServerSession,
    SessionStatus,
    new_session_id,
)
from sentinel.sessions.store import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, SessionStore
from tests.sessions.conftest import FakeClock, Opener, StoreBackend, make_session

ACTIVE, REVOKED, EXPIRED = SessionStatus.ACTIVE, SessionStatus.REVOKED, SessionStatus.EXPIRED

# A deadline feature: a dead store must fail a flush or a shutdown step in seconds. Generous, since
# CI machines are slow; the stores aim for well under this.
PROMPT_SECONDS = 15.0


async def create_all(store: SessionStore, sessions: Iterable[ServerSession], concurrency: int = 16) -> None:
    """Create many rows quickly, in a shuffled order, with bounded concurrency."""
    pending = list(sessions)
    random.shuffle(pending)  # insertion order must not be what orders a list
    limit = asyncio.Semaphore(concurrency)

    async def create(session: ServerSession) -> None:
        async with limit:
            await store.create(session)

    await asyncio.gather(*(create(session) for session in pending))


def newest_first(sessions: Iterable[ServerSession]) -> list[str]:
    return [s.id for s in sorted(sessions, key=lambda s: s.created_at, reverse=True)]


def ids(sessions: Iterable[ServerSession]) -> list[str]:
    return [s.id for s in sessions]


def assert_names(error: SessionStoreError, store: SessionStore, operation: str) -> None:
    """Every store error is one line naming the store and the operation, and hides the backend."""
    message = str(error)
    assert "\n" not in message
    assert "Traceback" not in message
    assert error.store == store.name
    assert error.operation == operation
    assert message.startswith(f"{store.name}: {operation}: ")


# --- create / get / delete ------------------------------------------------------------------------


async def test_create_then_get_returns_the_same_session(store: SessionStore, clock: FakeClock) -> None:
    """1. create a session. 2. get it: every field comes back equal."""
    session = make_session(clock)
    await store.create(session)
    assert await store.get(session.id) == session


async def test_create_with_a_taken_id_raises_session_exists(store: SessionStore, clock: FakeClock) -> None:
    """1. create a session. 2. create another with the same id: SessionExists, first one kept."""
    session = make_session(clock)
    await store.create(session)
    impostor = make_session(clock, user="mallory").with_changes(id=session.id)
    with pytest.raises(SessionExists) as caught:
        await store.create(impostor)
    assert caught.value.session_id == session.id
    assert_names(caught.value, store, "create")
    assert await store.get(session.id) == session


async def test_get_of_an_absent_session_raises_session_not_found(store: SessionStore) -> None:
    session_id = new_session_id()
    with pytest.raises(SessionNotFound) as caught:
        await store.get(session_id)
    assert caught.value.session_id == session_id
    assert session_id in str(caught.value)
    assert_names(caught.value, store, "get")


async def test_revoked_fields_round_trip(store: SessionStore, clock: FakeClock) -> None:
    """Optional fields that are set (revoked_by, revoked_reason) come back too."""
    session = make_session(clock).with_changes(status=REVOKED, revoked_by="ops", revoked_reason="ticket 7")
    await store.create(session)
    assert await store.get(session.id) == session


async def test_role_and_credential_lifetime_round_trip_and_survive_revoke(
    store: SessionStore, clock: FakeClock
) -> None:
    """1. create a session with role_arn and credential_lifetime. 2. get returns them. 3. touch and
    revoke keep them (an AWS-side revocation needs both after the fact, issue 13)."""
    session = make_session(clock).with_changes(
        role_arn="arn:aws:iam::123456789012:role/dev", credential_lifetime=43200
    )
    await store.create(session)
    assert await store.get(session.id) == session
    await store.touch(session.id, 2, clock.now())
    revoked = await store.revoke(session.id, "admin", "lost laptop")
    assert (revoked.role_arn, revoked.credential_lifetime) == (session.role_arn, 43200)
    assert await store.get(session.id) == revoked


async def test_timestamps_round_trip_as_utc_aware_datetimes(store: SessionStore, clock: FakeClock) -> None:
    """1. create a session whose timestamps carry a +05:30 offset and odd microseconds.
    2. get it: the same instants, in UTC, to the microsecond."""
    india = timezone(timedelta(hours=5, minutes=30))
    moment = clock.now().astimezone(india).replace(microsecond=7)
    session = make_session(clock).with_changes(
        started_at=moment,
        last_access_at=moment + timedelta(seconds=1),
        expires_at=moment + timedelta(hours=12),
        created_at=moment,
        updated_at=moment + timedelta(seconds=1),
    )
    await store.create(session)
    got = await store.get(session.id)
    for field in ("started_at", "last_access_at", "expires_at", "created_at", "updated_at"):
        value = getattr(got, field)
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0), field
        assert value == getattr(session, field), field
    assert got.started_at.microsecond == 7


async def test_delete_removes_the_session_and_is_idempotent(store: SessionStore, clock: FakeClock) -> None:
    """1. create two sessions. 2. delete one, twice. 3. it is gone, the other is untouched.
    4. deleting an id that never existed is fine too."""
    doomed, kept = make_session(clock), make_session(clock)
    await create_all(store, [doomed, kept])
    await store.delete(doomed.id)
    await store.delete(doomed.id)
    await store.delete(new_session_id())
    with pytest.raises(SessionNotFound):
        await store.get(doomed.id)
    assert await store.get(kept.id) == kept
    assert ids(await store.list_by_user("alice")) == [kept.id]


# --- update (optimistic lock) ---------------------------------------------------------------------


async def test_update_replaces_the_record_with_a_strictly_newer_updated_at(
    store: SessionStore, clock: FakeClock
) -> None:
    """1. create. 2. update some fields while the clock stands still. 3. the returned record has the
    changes and an updated_at strictly after the old one; get returns exactly it."""
    session = make_session(clock)
    await store.create(session)
    edited = session.with_changes(profile="prod", request_count=41, source_identity="sentinel.edited")
    stored = await store.update(edited)
    assert stored.updated_at > session.updated_at
    assert stored == edited.with_changes(updated_at=stored.updated_at)
    assert await store.get(session.id) == stored


async def test_update_follows_the_clock(store: SessionStore, clock: FakeClock) -> None:
    session = make_session(clock)
    await store.create(session)
    later = clock.advance(30)
    stored = await store.update(session.with_changes(request_count=1))
    assert stored.updated_at == later


async def test_update_with_a_stale_updated_at_raises_concurrent_modification(
    store: SessionStore, clock: FakeClock
) -> None:
    """1. two writers read the same version. 2. the first update wins. 3. the second one gets
    ConcurrentModification and changes nothing. 4. after a re-read it succeeds."""
    session = make_session(clock)
    await store.create(session)
    first = await store.update(session.with_changes(profile="first"))
    with pytest.raises(ConcurrentModification) as caught:
        await store.update(session.with_changes(profile="second"))
    assert caught.value.session_id == session.id
    assert_names(caught.value, store, "update")
    assert await store.get(session.id) == first
    fresh = await store.get(session.id)
    assert (await store.update(fresh.with_changes(profile="second"))).profile == "second"


@pytest.mark.parametrize("writer", ["touch", "revoke", "expire"])
async def test_other_writes_invalidate_a_read_version(
    store: SessionStore, clock: FakeClock, writer: str
) -> None:
    """1. read a session. 2. (later) someone touches, revokes or expires it. 3. an update of the
    read version raises ConcurrentModification: no write is lost behind the lock's back."""
    session = make_session(clock)
    await store.create(session)
    read = await store.get(session.id)
    clock.advance(1)
    if writer == "touch":
        await store.touch(session.id, 1, clock.now())
    elif writer == "revoke":
        await store.revoke(session.id, "ops", "test")
    else:
        await store.expire(session.id)
    changed = await store.get(session.id)
    with pytest.raises(ConcurrentModification):
        await store.update(read.with_changes(profile="edited"))
    assert await store.get(session.id) == changed


async def test_update_of_an_absent_session_raises_session_not_found(
    store: SessionStore, clock: FakeClock
) -> None:
    session = make_session(clock)
    with pytest.raises(SessionNotFound) as caught:
        await store.update(session)
    assert_names(caught.value, store, "update")
    with pytest.raises(SessionNotFound):
        await store.get(session.id)


@pytest.mark.parametrize("target", [REVOKED, EXPIRED])
async def test_update_may_make_a_legal_transition(
    store: SessionStore, clock: FakeClock, target: SessionStatus
) -> None:
    """active -> revoked and active -> expired are legal through update as well."""
    session = make_session(clock)
    await store.create(session)
    stored = await store.update(session.with_changes(status=target, revoked_reason="edited"))
    assert stored.status is target
    assert (await store.get(session.id)).status is target


@pytest.mark.parametrize(
    ("terminal", "wanted"),
    [(REVOKED, EXPIRED), (EXPIRED, REVOKED), (REVOKED, ACTIVE), (EXPIRED, ACTIVE)],
)
async def test_update_refuses_an_illegal_transition(
    store: SessionStore, clock: FakeClock, terminal: SessionStatus, wanted: SessionStatus
) -> None:
    """1. a session reaches a terminal status. 2. an update of the current version that changes
    the status raises InvalidTransition with the current status. 3. nothing changed."""
    session = make_session(clock)
    await store.create(session)
    current = await (
        store.revoke(session.id, "ops", "r") if terminal is REVOKED else store.expire(session.id)
    )
    with pytest.raises(InvalidTransition) as caught:
        await store.update(current.with_changes(status=wanted))
    assert (caught.value.current, caught.value.wanted) == (terminal, wanted)
    assert_names(caught.value, store, "update")
    assert await store.get(session.id) == current


# --- revoke / expire ------------------------------------------------------------------------------


async def test_revoke_marks_an_active_session_revoked(store: SessionStore, clock: FakeClock) -> None:
    """1. create. 2. revoke later: status, who, why and updated_at change, nothing else does."""
    session = make_session(clock)
    await store.create(session)
    later = clock.advance(5)
    revoked = await store.revoke(session.id, "ops@example.com", "laptop stolen")
    assert revoked == session.with_changes(
        status=REVOKED, revoked_by="ops@example.com", revoked_reason="laptop stolen", updated_at=later
    )
    assert await store.get(session.id) == revoked


async def test_expire_marks_an_active_session_expired(store: SessionStore, clock: FakeClock) -> None:
    session = make_session(clock)
    await store.create(session)
    later = clock.advance(5)
    expired = await store.expire(session.id)
    assert expired == session.with_changes(status=EXPIRED, updated_at=later)
    assert await store.get(session.id) == expired


@pytest.mark.parametrize("first", ["revoke", "expire"])
@pytest.mark.parametrize("second", ["revoke", "expire"])
async def test_a_terminal_status_never_changes(
    store: SessionStore, clock: FakeClock, first: str, second: str
) -> None:
    """revoked -> revoked, revoked -> expired, expired -> revoked, expired -> expired: each raises
    InvalidTransition naming the current status, and the record stays exactly as it was."""

    async def apply(operation: str) -> ServerSession:
        if operation == "revoke":
            return await store.revoke(session.id, "ops", f"{operation} reason")
        return await store.expire(session.id)

    session = make_session(clock)
    await store.create(session)
    terminal = await apply(first)
    clock.advance(5)
    with pytest.raises(InvalidTransition) as caught:
        await apply(second)
    wanted = REVOKED if second == "revoke" else EXPIRED
    assert (caught.value.current, caught.value.wanted) == (terminal.status, wanted)
    assert caught.value.session_id == session.id
    assert f"already {terminal.status.value}" in str(caught.value)
    assert_names(caught.value, store, second)
    assert await store.get(session.id) == terminal


@pytest.mark.parametrize("operation", ["revoke", "expire"])
async def test_revoke_and_expire_of_an_absent_session_raise_session_not_found(
    store: SessionStore, operation: str
) -> None:
    session_id = new_session_id()
    with pytest.raises(SessionNotFound) as caught:
        await (store.revoke(session_id, "ops", "r") if operation == "revoke" else store.expire(session_id))
    assert_names(caught.value, store, operation)
    with pytest.raises(SessionNotFound):
        await store.get(session_id)


# --- touch ----------------------------------------------------------------------------------------


async def test_touch_adds_counts_and_moves_the_access_times(store: SessionStore, clock: FakeClock) -> None:
    """1. create. 2. touch twice, later, with an access time a little before the clock's now.
    3. ACTIVE both times; counts add up; last_access_at, expires_at and ttl follow the access time,
    updated_at the clock; nothing else changes."""
    session = make_session(clock)
    await store.create(session)
    clock.advance(60)
    assert await store.touch(session.id, 3, clock.now() - timedelta(seconds=2)) is ACTIVE
    now = clock.advance(60)
    accessed = now - timedelta(seconds=1)
    assert await store.touch(session.id, 4, accessed) is ACTIVE
    got = await store.get(session.id)
    assert got == session.with_changes(
        request_count=7,
        last_access_at=accessed,
        expires_at=DEFAULT_RETENTION.expires_at(accessed),
        ttl=DEFAULT_RETENTION.ttl(accessed),
        updated_at=now,
        lease_until=DEFAULT_RETENTION.lease_until(now),  # issue 10: a touch renews the lease
    )
    assert got.expires_at > session.expires_at
    assert got.ttl > session.ttl


@pytest.mark.parametrize("terminal", [REVOKED, EXPIRED])
async def test_touch_of_a_terminal_session_counts_but_keeps_its_lifetime(
    store: SessionStore, clock: FakeClock, terminal: SessionStatus
) -> None:
    """Issue 10 (this replaces "touch of a terminal session changes nothing"): every served
    credential is on the record. 1. a session is revoked (or expired). 2. touch returns that status,
    whether or not the caller knew it. 3. both touches are counted and last_access_at moves; the
    status, expires_at, ttl and lease stay as the revoke left them."""
    session = make_session(clock)
    await store.create(session)
    await store.touch(session.id, 2, clock.now())
    ended = await (store.revoke(session.id, "ops", "r") if terminal is REVOKED else store.expire(session.id))
    now = clock.advance(60)
    assert await store.touch(session.id, 5, now) is terminal
    assert await store.touch(session.id, 1, now, known_status=terminal) is terminal
    got = await store.get(session.id)
    assert got == ended.with_changes(request_count=8, last_access_at=now, updated_at=now)


async def test_a_replayed_batch_is_not_applied_twice(store: SessionStore, clock: FakeClock) -> None:
    """Issue 12: a batch carries a sequence number, stored as flush_seq. 1. batch 1 (3 requests)
    is sent twice, as after a lost answer. 2. batch 2 (4) lands. 3. batch 1 again, and batch 2
    again after a revocation. 4. the record holds 7 and flush_seq 2; every replay returned the
    status as if applied."""
    session = make_session(clock)
    await store.create(session)
    assert await store.touch(session.id, 3, clock.now(), seq=1) is ACTIVE
    assert await store.touch(session.id, 3, clock.now(), seq=1) is ACTIVE
    assert await store.touch(session.id, 4, clock.now(), seq=2) is ACTIVE
    assert await store.touch(session.id, 3, clock.now(), seq=1) is ACTIVE
    await store.revoke(session.id, "ops", "r")
    assert await store.touch(session.id, 4, clock.now(), seq=2) is REVOKED
    assert await store.touch(session.id, 4, clock.now(), seq=2, known_status=REVOKED) is REVOKED
    got = await store.get(session.id)
    assert (got.request_count, got.flush_seq) == (7, 2)
    assert await store.touch(session.id, 1, clock.now(), seq=3) is REVOKED
    assert (await store.get(session.id)).request_count == 8


async def test_renew_moves_the_lease_of_an_active_session_only(store: SessionStore, clock: FakeClock) -> None:
    """1. create: the lease runs `lease` from the start. 2. later, renew: it runs from now and
    nothing else but updated_at changes. 3. after a revoke, renew says REVOKED and changes nothing.
    4. an absent session raises SessionNotFound."""
    session = make_session(clock)
    await store.create(session)
    assert session.lease_until == clock.now() + DEFAULT_RETENTION.lease
    now = clock.advance(90)
    assert await store.renew(session.id) is ACTIVE
    renewed = await store.get(session.id)
    assert renewed == session.with_changes(lease_until=now + DEFAULT_RETENTION.lease, updated_at=now)
    revoked = await store.revoke(session.id, "ops", "r")
    clock.advance(90)
    assert await store.renew(session.id) is REVOKED
    assert await store.get(session.id) == revoked
    with pytest.raises(SessionNotFound):
        await store.renew(new_session_id())


async def test_expire_stale_ends_only_lapsed_leases_whatever_the_instance(
    store: SessionStore, clock: FakeClock
) -> None:
    """Issue 10: liveness by lease. 1. on instance i-1: a crash leftover (lease lapsed), a live
    session (lease renewed) and a pre-lease record not written for longer than a lease; on i-2 a
    leftover; a revoked session with a lapsed lease. 2. find_stale names the three stale active
    ones (one instance: its two). 3. expire_stale for i-1 ends exactly its two; the live one and
    i-2's leftover stay active. 4. a sweep of all then ends i-2's leftover alone."""
    lease = DEFAULT_RETENTION.lease.total_seconds()
    leftover = make_session(clock, server_instance_id="i-1", age=lease + 60)
    live = make_session(clock, server_instance_id="i-1", age=lease + 60)
    old_row = make_session(clock, server_instance_id="i-1", age=lease + 60).with_changes(lease_until=None)
    other = make_session(clock, server_instance_id="i-2", age=lease + 60)
    ended = make_session(clock, server_instance_id="i-1", age=lease + 60)
    await create_all(store, [leftover, live, old_row, other, ended])
    await store.revoke(ended.id, "ops", "r")
    assert await store.renew(live.id) is ACTIVE
    now = clock.now()
    assert set(ids(await store.find_stale(now))) == {leftover.id, old_row.id, other.id}
    assert set(ids(await store.find_stale(now, "i-1"))) == {leftover.id, old_row.id}
    expired = await store.expire_stale(now, "i-1")
    assert set(ids(expired)) == {leftover.id, old_row.id}
    assert all(s.status is EXPIRED for s in expired)
    assert (await store.get(live.id)).status is ACTIVE
    assert (await store.get(other.id)).status is ACTIVE
    assert ids(await store.expire_stale(now)) == [other.id]
    assert await store.find_stale(now) == []


async def test_expire_stale_loses_to_a_renewal_racing_it(
    store: SessionStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. a session's lease lapses and a sweep reads it as stale. 2. its server renews before the
    sweep writes (forced here by handing the sweep the stale read). 3. the sweep expires nothing:
    its write is conditional on the lease still having lapsed."""
    lease = DEFAULT_RETENTION.lease.total_seconds()
    session = make_session(clock, age=lease + 60)
    await store.create(session)
    now = clock.now()
    stale_read = await store.find_stale(now)
    assert ids(stale_read) == [session.id]
    assert await store.renew(session.id) is ACTIVE

    async def stale_index(now: object, server_instance_id: object = None) -> list[ServerSession]:
        return stale_read

    monkeypatch.setattr(store, "find_stale", stale_index)
    assert await store.expire_stale(now) == []
    assert (await store.get(session.id)).status is ACTIVE


async def test_touch_of_an_absent_session_raises_session_not_found(
    store: SessionStore, clock: FakeClock
) -> None:
    session_id = new_session_id()
    with pytest.raises(SessionNotFound) as caught:
        await store.touch(session_id, 1, clock.now())
    assert_names(caught.value, store, "touch")
    with pytest.raises(SessionNotFound):
        await store.get(session_id)  # touch never creates a record


async def test_concurrent_touches_lose_no_count(backend: StoreBackend, clock: FakeClock) -> None:
    """1. two store clients on the same backend. 2. N tasks spread over both touch the same session
    M times each, all at once. 3. the stored count is exactly N x M."""
    tasks, touches = 8, 25
    first, second = await backend.open(), await backend.open()
    try:
        session = make_session(clock)
        await first.create(session)

        async def toucher(store: SessionStore) -> None:
            for _ in range(touches):
                assert await store.touch(session.id, 1, clock.now()) is ACTIVE

        await asyncio.gather(*(toucher(first if n % 2 else second) for n in range(tasks)))
        assert (await second.get(session.id)).request_count == tasks * touches
    finally:
        await first.aclose()
        await second.aclose()


async def test_revoke_racing_touches_wins_and_stays(backend: StoreBackend, clock: FakeClock) -> None:
    """1. six tasks on two clients touch one session in a loop. 2. once some touches landed, a third
    client revokes it; each task goes on until three of its touches started after the revoke had
    returned. 3. every one of those says REVOKED. 4. the record stays as revoke left it, and
    (issue 10) its count is exactly every touch made, those that said REVOKED included."""
    tasks, after_revoke, most = 6, 3, 500  # `most` only bounds a store that never lets revoke in
    clients = [await backend.open() for _ in range(3)]
    try:
        session = make_session(clock)
        await clients[0].create(session)
        applied = made = 0
        some_landed = asyncio.Event()
        revoke_done = asyncio.Event()
        late_statuses: list[SessionStatus] = []

        async def toucher(store: SessionStore) -> None:
            nonlocal applied, made
            late = 0
            for _ in range(most):
                started_after_revoke = revoke_done.is_set()
                status = await store.touch(session.id, 1, clock.now())
                made += 1
                if status is ACTIVE:
                    applied += 1
                    if applied >= tasks * 3:
                        some_landed.set()
                else:
                    assert status is REVOKED
                if started_after_revoke:
                    late_statuses.append(status)
                    late += 1
                    if late == after_revoke:
                        return
            raise AssertionError(f"revoke did not complete during {most} touches")

        async def revoker() -> ServerSession:
            await some_landed.wait()
            revoked = await clients[2].revoke(session.id, "ops", "racing")
            revoke_done.set()
            return revoked

        async with asyncio.TaskGroup() as group:
            for n in range(tasks):
                group.create_task(toucher(clients[n % 2]))
            revoking = group.create_task(revoker())
        revoked = revoking.result()

        assert late_statuses == [REVOKED] * (tasks * after_revoke)
        stored = await clients[0].get(session.id)
        ended_fields = ("status", "revoked_by", "revoked_reason", "expires_at", "ttl", "lease_until")
        assert all(getattr(stored, name) == getattr(revoked, name) for name in ended_fields)
        assert stored.status is REVOKED
        assert stored.request_count == made > applied
        assert applied >= tasks * 3
        with pytest.raises(InvalidTransition):
            await clients[1].expire(session.id)
    finally:
        for client in clients:
            await client.aclose()


# --- lists ----------------------------------------------------------------------------------------


async def test_lists_filter_and_order_newest_first(store: SessionStore, clock: FakeClock) -> None:
    """1. sessions of two users, two profiles and all three statuses, created a second apart, in
    shuffled order. 2. each list holds exactly its matches, newest created first."""
    sessions = [
        make_session(clock, user=user, profile=profile, age=float(age))
        for age, (user, profile) in enumerate(
            [("alice", "dev"), ("bob", "prod"), ("alice", "prod"), ("bob", "dev")] * 5
        )
    ]
    await create_all(store, sessions)
    final: dict[str, ServerSession] = {s.id: s for s in sessions}
    for n, session in enumerate(sessions):
        if n % 3 == 1:
            final[session.id] = await store.revoke(session.id, "ops", "r")
        elif n % 3 == 2:
            final[session.id] = await store.expire(session.id)
    stored = list(final.values())

    for user in ("alice", "bob", "carol"):
        found = await store.list_by_user(user)
        assert ids(found) == newest_first(s for s in stored if s.user == user)
        assert found == [final[i] for i in ids(found)]
    for profile in ("dev", "prod", "none"):
        found = await store.list_by_profile(profile)
        assert ids(found) == newest_first(s for s in stored if s.profile == profile)
    for status in SessionStatus:
        found = await store.list_by_status(status)
        assert ids(found) == newest_first(s for s in stored if s.status is status)
        assert all(s.status is status for s in found)


async def test_list_limits_and_paging(store: SessionStore, clock: FakeClock) -> None:
    """1. 160 sessions of one user and profile, interleaved with 40 of another, a second apart.
    2. every list returns the newest `limit` of its matches, in order: limit 120 and 1000, the
    default of 100, and limits below 1 mean 1. More rows than one page must be followed."""
    mine = [make_session(clock, user="bob", profile="big", age=float(2 * n)) for n in range(160)]
    others = [make_session(clock, user="eve", profile="small", age=float(2 * n + 1)) for n in range(40)]
    await create_all(store, mine + others)
    expected = newest_first(mine)
    everyone = newest_first(mine + others)

    assert ids(await store.list_by_user("bob", 120)) == expected[:120]
    assert ids(await store.list_by_user("bob")) == expected[:DEFAULT_LIST_LIMIT]
    assert ids(await store.list_by_user("bob", None)) == expected[:DEFAULT_LIST_LIMIT]
    assert ids(await store.list_by_user("bob", 1000)) == expected
    assert ids(await store.list_by_user("bob", 0)) == expected[:1]
    assert ids(await store.list_by_user("bob", -5)) == expected[:1]
    assert ids(await store.list_by_profile("big", 120)) == expected[:120]
    assert ids(await store.list_by_profile("big")) == expected[:DEFAULT_LIST_LIMIT]
    assert ids(await store.list_by_status(ACTIVE, 150)) == everyone[:150]
    assert ids(await store.list_by_status(ACTIVE, 1000)) == everyone
    assert await store.list_by_status(REVOKED, 1000) == []


@pytest.mark.slow
async def test_list_limit_is_capped_at_the_maximum(store: SessionStore, clock: FakeClock) -> None:
    """1. 1005 sessions of one user. 2. a limit above 1000 returns exactly the newest 1000."""
    sessions = [make_session(clock, user="many", age=n / 10) for n in range(MAX_LIST_LIMIT + 5)]
    await create_all(store, sessions, concurrency=32)
    expected = newest_first(sessions)[:MAX_LIST_LIMIT]
    assert ids(await store.list_by_user("many", 5000)) == expected
    assert ids(await store.list_by_status(ACTIVE, MAX_LIST_LIMIT + 1)) == expected


async def test_find_active_by_server_instance(store: SessionStore, clock: FakeClock) -> None:
    """1. an instance with two active, one revoked and one expired session; another instance with
    one active. 2. the lookup returns exactly the active sessions of the instance asked for."""
    live = [make_session(clock, server_instance_id="i-1", age=age) for age in (1.0, 2.0)]
    revoked, expired = (make_session(clock, server_instance_id="i-1", age=age) for age in (3.0, 4.0))
    elsewhere = make_session(clock, server_instance_id="i-2")
    await create_all(store, [*live, revoked, expired, elsewhere])
    await store.revoke(revoked.id, "ops", "r")
    await store.expire(expired.id)

    found = await store.find_active_by_server_instance("i-1")
    assert sorted(ids(found)) == sorted(ids(live))
    assert {s.id: s for s in found} == {s.id: s for s in live}
    assert ids(await store.find_active_by_server_instance("i-2")) == [elsewhere.id]
    assert await store.find_active_by_server_instance("i-unknown") == []
    await store.expire(elsewhere.id)
    assert await store.find_active_by_server_instance("i-2") == []


# --- an unusable backend --------------------------------------------------------------------------


Call = Callable[[SessionStore], Awaitable[object]]

_CALLS: dict[str, Call] = {
    "create": lambda store: store.create(make_session(FakeClock())),
    "get": lambda store: store.get(new_session_id()),
    "update": lambda store: store.update(make_session(FakeClock())),
    "delete": lambda store: store.delete(new_session_id()),
    "list_by_user": lambda store: store.list_by_user("alice"),
    "list_by_status": lambda store: store.list_by_status(ACTIVE),
    "list_by_profile": lambda store: store.list_by_profile("dev"),
    "find_active_by_server_instance": lambda store: store.find_active_by_server_instance("i-1"),
    "touch": lambda store: store.touch(new_session_id(), 1, FakeClock().now()),
    "revoke": lambda store: store.revoke(new_session_id(), "ops", "r"),
    "expire": lambda store: store.expire(new_session_id()),
}


async def assert_unavailable_promptly(opener: Opener, operations: Iterable[str]) -> None:
    """Opening fails with StoreUnavailable, or else every operation does, each within the bound."""
    started = time.monotonic()
    try:
        store = await opener()
    except StoreUnavailable as error:
        failed_open: StoreUnavailable | None = error
    else:
        failed_open = None
    if failed_open is not None:
        assert time.monotonic() - started < PROMPT_SECONDS
        assert failed_open.operation  # what failed: opening, or the first request open makes
        assert "\n" not in str(failed_open)
        assert str(failed_open).startswith(f"{failed_open.store}: {failed_open.operation}: ")
        return
    try:
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await _CALLS[operation](store)
            assert time.monotonic() - started < PROMPT_SECONDS, operation
            assert_names(caught.value, store, operation)
    finally:
        await store.aclose()


async def test_an_unreachable_store_raises_store_unavailable_promptly(unreachable: Opener) -> None:
    """A store whose file cannot be opened or whose endpoint refuses connections fails every call
    with a one-line StoreUnavailable within seconds, never a raw backend error."""
    await assert_unavailable_promptly(unreachable, ["get", "touch", "create", "list_by_user"])


async def test_a_missing_table_raises_store_unavailable_promptly(missing_table: Opener) -> None:
    """DynamoDB only (SQLite creates its schema): a table that does not exist is StoreUnavailable,
    for every operation, not SessionNotFound."""
    await assert_unavailable_promptly(missing_table, list(_CALLS))
