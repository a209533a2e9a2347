"""Scenario g: the design Sentinel replaces, written only here (issue 6).

The original Go server touched the session and read it back (the revocation check) against the
store inline, on every request, before answering. `InlineTouchService` puts exactly that in
front of the real pipeline: no fast path, two awaited store round trips per request.
"""

from __future__ import annotations

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.pipeline import REVOKED_MESSAGE, Pipeline, error_reply
from sentinel.server.service import Caller, Reply
from sentinel.sessions.errors import SessionStoreError
from sentinel.sessions.model import SessionStatus
from sentinel.sessions.store import SessionStore


class InlineTouchService:
    """A `CredentialService` that awaits `store.touch` and `store.get` before the pipeline answers.

    The pipeline behind it must run with a `NullTracker`, so each request is counted once."""

    def __init__(
        self, pipeline: Pipeline, store: SessionStore, session_id: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._pipeline = pipeline
        self._store = store
        self._session_id = session_id
        self._clock = clock
        self._revoked = error_reply(403, REVOKED_MESSAGE)
        # The old design failed closed on store errors: no session record, no credentials.
        self._unavailable = error_reply(503, "session store unavailable")

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        return None  # every request waits on the store: there is no synchronous answer

    async def issue(self, caller: Caller | None = None) -> Reply:
        try:
            await self._store.touch(self._session_id, 1, self._clock.now())
            session = await self._store.get(self._session_id)
        except SessionStoreError:
            return self._unavailable
        if session.status is not SessionStatus.ACTIVE:
            return self._revoked
        return await self._pipeline.issue(caller)

    def health(self) -> Reply:
        return self._pipeline.health()

    def metrics(self) -> Reply:
        return self._pipeline.metrics()
