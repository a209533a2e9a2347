"""The store side of this server's own session (issue 4 items 1, 2 and 4).

`SessionRecorder` turns "N more requests, the latest at T" into store calls: it creates the record
on the first write (expiring stale sessions a crashed earlier process left behind), touches it
afterwards, recreates it if it disappeared, and remembers a terminal status for good. It never
retries and never sleeps: a failure surfaces as `SessionStoreError`, and the tracker decides when to
try again with the same counts.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sentinel.clock import Clock
from sentinel.sessions.errors import InvalidTransition, SessionExists, SessionNotFound
from sentinel.sessions.model import Retention, ServerSession, SessionStatus
from sentinel.sessions.store import SessionStore


class SessionRecorder:
    """Keeps one session's record in step with the requests this process served.

    `stored_total` counts the events this process has written into the record; a recreated record
    starts from it, so the stored `request_count` always equals what was issued and flushed
    (issue 4 item 5). `ended` is set once the store reports the session revoked or expired by
    someone else, and is never cleared: revoked is sticky for the life of the process."""

    def __init__(
        self,
        store: SessionStore,
        template: ServerSession,
        *,
        clock: Clock,
        logger: logging.Logger,
        retention: Retention,
    ) -> None:
        self._store = store
        self._template = template
        self._clock = clock
        self._log = logger
        self._retention = retention
        self.created = False
        self.stored_total = 0
        self.ended: SessionStatus | None = None
        self.writes = 0
        self.stale_expired = 0
        self._stale_checked = False
        self._ever_created = False

    @property
    def session_id(self) -> str:
        return self._template.id

    async def write(self, count: int, last_access_at: datetime | None) -> int:
        """Add `count` requests (the latest at `last_access_at`) to the record, creating or
        recreating it if needed. Returns how many of them the record now holds.

        Usually all or none; fewer only when a create turns out to have landed earlier with part
        of the counts (see `_reconcile`). Returns 0 once the session has ended: the store no
        longer accepts touches, and the caller discards them."""
        if self.ended is not None:
            return 0
        if not self.created:
            return await self._create(count, last_access_at)
        self.writes += 1
        try:
            status = await self._store.touch(self.session_id, count, last_access_at or self._clock.now())
        except SessionNotFound:
            self._lost()
            return await self._create(count, last_access_at)
        if status is SessionStatus.ACTIVE:
            self.stored_total += count
            return count
        self._end(status)
        return 0

    async def poll(self) -> None:
        """Read the record's status (an idle server's revocation watch, issue 4 item 2).

        A missing record clears `created`, so the tracker's next flush recreates it."""
        if not self.created or self.ended is not None:
            return
        try:
            session = await self._store.get(self.session_id)
        except SessionNotFound:
            self._lost()
            return
        if session.status.is_terminal:
            self._end(session.status)

    async def expire(self) -> bool:
        """Mark the session expired at shutdown, only if it is still active (issue 4 item 4).

        Returns True if the record ends expired. A revoked session stays revoked: the store
        refuses the transition and the revocation is remembered here."""
        if not self.created or self.ended is not None:
            return self.ended is SessionStatus.EXPIRED
        try:
            await self._store.expire(self.session_id)
        except InvalidTransition as exc:
            self._end(exc.current)
            return exc.current is SessionStatus.EXPIRED
        except SessionNotFound:
            # Deleted after the final flush: there is nothing left to mark.
            return False
        return True

    async def _create(self, count: int, last_access_at: datetime | None) -> int:
        if not self._stale_checked:
            await self._expire_stale()
            self._stale_checked = True
        record = self._record(self.stored_total + count, last_access_at)
        self.writes += 1
        try:
            await self._store.create(record)
        except SessionExists:
            return await self._reconcile(count)
        self.created = True
        self.stored_total += count
        if self._ever_created:
            self._log.warning(
                "session %s recreated in %s with request_count=%d",
                self.session_id,
                self._store.name,
                record.request_count,
            )
        else:
            self._log.info("session %s created in %s", self.session_id, self._store.name)
        self._ever_created = True
        return count

    async def _reconcile(self, count: int) -> int:
        # The id is ours alone (64 random bits), so an existing record means an earlier create of
        # ours landed although its reply was lost (a timeout after the write). Its request_count
        # says how much of the counts it took; the rest stays pending. Touching blindly instead
        # would count those requests twice.
        stored = await self._store.get(self.session_id)
        applied = min(max(stored.request_count - self.stored_total, 0), count)
        self.created = True
        self._ever_created = True
        self.stored_total += applied
        if stored.status.is_terminal:
            self._end(stored.status)
        return applied

    async def _expire_stale(self) -> None:
        # Issue 4 item 1: a process killed with SIGKILL never expired its session; a restart with
        # the same server instance id ends it, so only one active session per instance remains.
        instance = self._template.server_instance_id
        for stale in await self._store.find_active_by_server_instance(instance):
            if stale.id == self.session_id:
                continue
            try:
                await self._store.expire(stale.id)
            except (InvalidTransition, SessionNotFound):
                continue  # ended or removed by someone else meanwhile: the goal is met
            self.stale_expired += 1
            self._log.warning(
                "expired stale session %s left active by an earlier process of instance %s",
                stale.id,
                instance,
            )

    def _record(self, total: int, last_access_at: datetime | None) -> ServerSession:
        template = self._template
        last = template.last_access_at if last_access_at is None else max(last_access_at, template.started_at)
        return template.with_changes(
            request_count=total,
            last_access_at=last,
            expires_at=self._retention.expires_at(last),
            ttl=self._retention.ttl(last),
            updated_at=max(self._clock.now(), template.created_at),
        )

    def _lost(self) -> None:
        # Deleted by an admin, or removed by DynamoDB TTL: recreate it with everything counted so
        # far (issue 4 item 2). `ended` is checked before every store call, so a session this
        # process has seen revoked is never brought back.
        self.created = False
        self._log.warning(
            "session %s is gone from %s (deleted, or expired by TTL); it will be recreated",
            self.session_id,
            self._store.name,
        )

    def _end(self, status: SessionStatus) -> None:
        if self.ended is not None or not status.is_terminal:
            return
        self.ended = status
        self._log.warning(
            "session %s is %s in %s; no more credentials will be served",
            self.session_id,
            status.value,
            self._store.name,
        )
