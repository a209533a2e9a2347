"""Typed session-store errors. Each names the store (table or file) and the operation, on one line.

Stores translate every backend failure (botocore, sqlite3, OS errors) into one of these; a raw
backend exception never escapes a store.
"""

from __future__ import annotations

from sentinel.errors import SentinelError
from sentinel.sessions.model import SessionStatus


class SessionStoreError(SentinelError):
    """Base of the store errors: `store` describes the backend, `operation` the call that failed."""

    def __init__(self, store: str, operation: str, detail: str) -> None:
        self.store = store
        self.operation = operation
        self.detail = detail
        super().__init__(f"{store}: {operation}: {detail}")


class SessionNotFound(SessionStoreError):
    def __init__(self, store: str, operation: str, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(store, operation, f"session {session_id} not found")


class SessionExists(SessionStoreError):
    def __init__(self, store: str, operation: str, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(store, operation, f"session {session_id} already exists")


class ConcurrentModification(SessionStoreError):
    """An `update` lost the optimistic lock: the record changed since it was read."""

    def __init__(self, store: str, operation: str, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(store, operation, f"session {session_id} was modified concurrently; re-read it")


class InvalidTransition(SessionStoreError):
    """A status change the state machine forbids (terminal states never change)."""

    def __init__(
        self, store: str, operation: str, session_id: str, current: SessionStatus, wanted: SessionStatus
    ) -> None:
        self.session_id = session_id
        self.current = current
        self.wanted = wanted
        detail = (
            f"session {session_id} is already {current.value}"
            if current.is_terminal
            else f"session {session_id} cannot go from {current.value} to {wanted.value}"
        )
        super().__init__(store, operation, detail)


class StoreUnavailable(SessionStoreError):
    """The backend cannot be used right now: network failure, throttling, missing table, access
    denied, a locked or unreadable file. Callers treat it as transient unless told otherwise."""
