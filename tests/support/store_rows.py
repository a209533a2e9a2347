"""Reading and deleting a session record with the real store classes, from outside the daemon."""

from __future__ import annotations

from pathlib import Path

import anyio

from harness.aws_env import REGION
from sentinel.sessions.errors import SessionNotFound
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession


def store_session(
    session_id: str, *, db: Path | None = None, table: str | None = None
) -> ServerSession | None:
    """The session record as the store has it (None if absent), read with the real store class.

    For DynamoDB the calling test must have the moto endpoint in its environment (`aws_endpoint`)."""

    async def read() -> ServerSession | None:
        store = await open_store(session_table=table, session_db=db, region=REGION)
        try:
            return await store.get(session_id)
        except SessionNotFound:
            return None
        finally:
            await store.aclose()

    return anyio.run(read)


def delete_store_session(session_id: str, *, db: Path | None = None, table: str | None = None) -> None:
    """Remove the session record behind the daemon's back (a record an admin or TTL deleted)."""

    async def delete() -> None:
        store = await open_store(session_table=table, session_db=db, region=REGION)
        try:
            await store.delete(session_id)
        finally:
            await store.aclose()

    anyio.run(delete)
