"""Open the session store the configuration selects: DynamoDB with `--session-table`, else SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.config import default_session_db
from sentinel.sessions.model import DEFAULT_RETENTION, Retention
from sentinel.sessions.store import SessionStore

if TYPE_CHECKING:
    from sentinel.credentials import AwsContext


async def open_store(
    *,
    session_table: str | None,
    session_db: Path | None,
    region: str | None,
    aws: AwsContext | None = None,
    retention: Retention = DEFAULT_RETENTION,
    clock: Clock = SYSTEM_CLOCK,
) -> SessionStore:
    """The caller owns the store and must `aclose()` it. Imports are local so a SQLite user never
    pays for importing aioboto3 and a DynamoDB user never opens a file.

    `aws` carries the credentials DynamoDB is called with; the server passes its base context,
    since the SDK's default chain may have neither credentials nor a region (a named profile and
    no AWS_PROFILE, as under systemd). Its aioboto3 session is built only here, for DynamoDB."""
    if session_table:
        from sentinel.sessions.dynamodb import DynamoDBSessionStore

        return await DynamoDBSessionStore.open(
            session_table,
            region=region,
            session=aws.aio_session() if aws else None,
            retention=retention,
            clock=clock,
        )
    from sentinel.sessions.sqlite import SqliteSessionStore

    return await SqliteSessionStore.open(session_db or default_session_db(), retention=retention, clock=clock)
