"""The store side of this server's own session (issue 4 items 1, 2 and 4; issues 10 and 12).

`SessionRecorder` turns "batch N: M more requests, the latest at T" into store calls: it creates the
record on the first write (expiring sessions whose lease lapsed, left behind by a crashed earlier
process of our instance id), touches it afterwards with the batch's sequence number, renews its
lease, and remembers for good a terminal status or the loss of the record. It never retries and
never sleeps: a failure surfaces as `SessionStoreError`, and the tracker sends the same batch again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sentinel.clock import Clock
from sentinel.sessions.errors import InvalidTransition, SessionExists, SessionNotFound, StoreUnavailable
from sentinel.sessions.model import Retention, ServerSession, SessionStatus
from sentinel.sessions.store import SessionStore

# The session gate's 403 messages (DESIGN.md §3 step 3): why this server serves no more.
REVOKED_REASON = "session revoked"
MISSING_REASON = "session record missing"


class SessionRecorder:
    """Keeps one session's record in step with the requests this process served.

    `ended` is set once the store reports the session revoked or expired by someone else, and
    `missing` once the record has disappeared after it existed (issue 10: a missing record is not a
    licence; it is never recreated). Neither is ever cleared."""

    def __init__(
        self,
        store: SessionStore | None,
        template: ServerSession,
        *,
        clock: Clock,
        logger: logging.Logger,
        retention: Retention,
    ) -> None:
        self.store = store  # None until the tracker has opened it
        self._template = template
        self._clock = clock
        self._log = logger
        self._retention = retention
        self.created = False
        self.ended: SessionStatus | None = None
        self.missing = False
        self.writes = 0
        self.stale_expired = 0
        self._stale_checked = False

    @property
    def session_id(self) -> str:
        return self._template.id

    @property
    def reason(self) -> str | None:
        """Why no more credentials may be served, or None while the session is live."""
        if self.missing:
            return MISSING_REASON
        return None if self.ended is None else REVOKED_REASON

    async def write(
        self, count: int, last_access_at: datetime | None, seq: int | None
    ) -> SessionStatus | None:
        """Apply batch `seq` (`count` requests, the latest at `last_access_at`) to the record,
        creating it first if it never existed; `count` 0 with `seq` None only creates it.

        Returns the record's status once the batch is on it (applied now, or found applied
        earlier: issue 12), or None when the record is missing and the batch cannot be stored."""
        if self.missing:
            return None
        if not self.created:
            return await self._create(count, last_access_at, seq)
        if seq is None:
            return self.ended or SessionStatus.ACTIVE
        self.writes += 1
        try:
            status = await self._open().touch(
                self.session_id,
                count,
                last_access_at or self._clock.now(),
                seq=seq,
                known_status=self.ended or SessionStatus.ACTIVE,
            )
        except SessionNotFound:
            self._lost()
            return None
        self._end(status)
        return status

    async def renew(self) -> None:
        """Renew the lease of an idle session (issue 10); also the revocation watch's answer."""
        if not self._live():
            return
        self.writes += 1
        try:
            status = await self._open().renew(self.session_id)
        except SessionNotFound:
            self._lost()
            return
        self._end(status)

    async def poll(self) -> None:
        """Read the record's status (an idle server's revocation watch, issue 4 item 2)."""
        if not self._live():
            return
        try:
            session = await self._open().get(self.session_id)
        except SessionNotFound:
            self._lost()
            return
        self._end(session.status)

    async def expire(self) -> bool:
        """Mark the session expired at shutdown, only if it is still active (issue 4 item 4).

        Returns True if the record ends expired. A revoked session stays revoked: the store
        refuses the transition and the revocation is remembered here."""
        if not self._live():
            return self.ended is SessionStatus.EXPIRED
        try:
            await self._open().expire(self.session_id)
        except InvalidTransition as exc:
            self._end(exc.current)
            return exc.current is SessionStatus.EXPIRED
        except SessionNotFound:
            self._lost()
            return False
        return True

    def _live(self) -> bool:
        return self.created and self.ended is None and not self.missing

    def _open(self) -> SessionStore:
        if self.store is None:
            raise StoreUnavailable("session store", "open", "not open yet")
        return self.store

    async def _create(
        self, count: int, last_access_at: datetime | None, seq: int | None
    ) -> SessionStatus | None:
        store = self._open()
        if not self._stale_checked:
            await self._expire_stale(store)
            self._stale_checked = True
        record = self._record(count, last_access_at, seq)
        self.writes += 1
        try:
            await store.create(record)
        except SessionExists:
            # The id is ours alone (64 random bits), so an earlier create of ours landed although
            # its reply was lost. Its flush_seq says whether it carried this batch.
            self.created = True
            try:
                stored = await store.get(self.session_id)
            except SessionNotFound:
                self._lost()
                return None
            self._end(stored.status)
            if seq is None or stored.flush_seq >= seq:
                return stored.status
            return await self.write(count, last_access_at, seq)
        self.created = True
        self._log.info("session %s created in %s", self.session_id, store.name)
        return SessionStatus.ACTIVE

    async def _expire_stale(self, store: SessionStore) -> None:
        # Issue 10: a process killed with SIGKILL never expired its session. Its lease lapses
        # within minutes, and the next start of the same instance id ends it. A live server's
        # lease has not lapsed, so two live servers sharing an instance id never end each other.
        instance = self._template.server_instance_id
        for stale in await store.expire_stale(self._clock.now(), instance):
            self.stale_expired += 1
            self._log.warning(
                "expired stale session %s of instance %s: its lease lapsed at %s",
                stale.id,
                instance,
                stale.lease_until or "(no lease)",
            )

    def _record(self, count: int, last_access_at: datetime | None, seq: int | None) -> ServerSession:
        template = self._template
        last = template.last_access_at if last_access_at is None else max(last_access_at, template.started_at)
        now = max(self._clock.now(), template.created_at)
        return template.with_changes(
            request_count=count,
            flush_seq=seq or 0,
            last_access_at=last,
            expires_at=self._retention.expires_at(last),
            ttl=self._retention.ttl(last),
            lease_until=self._retention.lease_until(now),
            updated_at=now,
        )

    def _lost(self) -> None:
        # Issue 10: the heartbeat keeps a live record's TTL from lapsing, so a record that existed
        # and is gone was removed by someone. Treat it as a revocation; never bring it back.
        if self.missing:
            return
        self.missing = True
        self._log.error(
            "session %s record is missing from %s (deleted?); treated as revoked: no more"
            " credentials will be served",
            self.session_id,
            self.store.name if self.store is not None else "the session store",
        )

    def _end(self, status: SessionStatus) -> None:
        if self.ended is not None or not status.is_terminal:
            return
        self.ended = status
        self._log.warning(
            "session %s is %s in %s; no more credentials will be served",
            self.session_id,
            status.value,
            self.store.name if self.store is not None else "the session store",
        )
