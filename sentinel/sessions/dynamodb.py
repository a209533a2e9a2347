"""The DynamoDB session store (issue 2, item 4; DESIGN.md §4).

Every write is a single conditional request, so concurrent servers and the CLI cannot lose updates:
`touch` is one `UpdateItem` (ADD request_count), `revoke`/`expire` are conditional on status =
active, `update` is conditional on the stored `updated_at` (optimistic lock). Every attribute name
goes through `ExpressionAttributeNames` (`user`, `status`, `ttl` are DynamoDB reserved words), and
keys are checked before sending, so requests are valid for the real service, not only for moto.

The lists read global secondary indexes, which are eventually consistent in DynamoDB: a session
written a moment ago may be missing from a list, or listed with its previous values. `get` is a
strongly consistent read.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, AsyncExitStack
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aioboto3

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.sessions.dynamodb_table import (
    BACKEND_ERRORS,
    GSI_PROFILE,
    GSI_SERVER_INSTANCE,
    GSI_STATUS,
    GSI_USER,
    INDEXES,
    KEY_ATTRIBUTE,
    KEY_ATTRIBUTE_TYPES,
    MAX_ITEM_BYTES,
    ConditionFailed,
    Expression,
    client_config,
    create_session_table,
    from_item,
    item_size,
    key_value_problem,
    table_name_of,
    to_item,
    translate_error,
    translated,
)
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
    Retention,
    ServerSession,
    SessionStatus,
    format_timestamp,
)
from sentinel.sessions.store import MAX_LIST_LIMIT, clamp_limit

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import AttributeValueTypeDef

__all__ = ["DEFAULT_PAGE_SIZE", "DynamoDBSessionStore", "create_session_table"]

DEFAULT_PAGE_SIZE = 100

_UNLIMITED = 1 << 62  # a sweep reads every page; each page is still bounded by page_size
_ONE_TICK = timedelta(microseconds=1)  # the resolution of stored timestamps
_ACTIVE = SessionStatus.ACTIVE.value

# `revoked_by` and `revoked_reason` are free text; bounded so a revocation never pushes the item
# over DynamoDB's 400 KB limit (the rest of a session item is a few KB at most).
_MAX_REVOCATION_TEXT_BYTES = 64 * 1024


class DynamoDBSessionStore:
    """`SessionStore` on one DynamoDB table (layout: `create_session_table`). Open with `open()`."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        retention: Retention,
        clock: Clock,
        page_size: int,
        exit_stack: AsyncExitStack,
    ) -> None:
        self._client = client
        self._table = table
        self._retention = retention
        self._clock = clock
        self._page_size = page_size
        self._exit_stack = exit_stack
        self._name = table_name_of(table)
        self._closed = False

    @classmethod
    async def open(
        cls,
        table: str,
        *,
        region: str | None = None,
        retention: Retention = DEFAULT_RETENTION,
        clock: Clock = SYSTEM_CLOCK,
        session: aioboto3.Session | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> DynamoDBSessionStore:
        """A store on `table`. Makes no request: a missing table or an unreachable endpoint shows up
        as `StoreUnavailable` from the first operation.

        The endpoint comes from the standard variables (`AWS_ENDPOINT_URL_DYNAMODB`,
        `AWS_ENDPOINT_URL`), which botocore reads itself. `page_size` caps each list query page."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        store = table_name_of(table)
        session = session or aioboto3.Session()
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                session.client("dynamodb", region_name=region, config=client_config())
            )
        except BACKEND_ERRORS as exc:
            await stack.aclose()
            raise translate_error(exc, store, "open", table) from exc
        return cls(client, table, retention=retention, clock=clock, page_size=page_size, exit_stack=stack)

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        """Close the client and its connections; safe to call twice. Later calls raise
        `StoreUnavailable`."""
        self._closed = True
        await self._exit_stack.aclose()

    async def __aenter__(self) -> DynamoDBSessionStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- single items ------------------------------------------------------------------------------

    async def create(self, session: ServerSession) -> None:
        """Store a new session; `SessionExists` if the id is taken (conditional put)."""
        item = self._checked_item("create", session)
        expr = Expression()
        try:
            with self._translated("create"):
                await self._client.put_item(
                    TableName=self._table,
                    Item=item,
                    ConditionExpression=f"attribute_not_exists({expr.name(KEY_ATTRIBUTE)})",
                    **expr.params(),
                )
        except ConditionFailed:
            raise SessionExists(self._name, "create", session.id) from None

    async def get(self, session_id: str) -> ServerSession:
        """The session (strongly consistent read); `SessionNotFound` if absent."""
        if key_value_problem(KEY_ATTRIBUTE, session_id):
            raise SessionNotFound(self._name, "get", session_id)
        with self._translated("get"):
            response = await self._client.get_item(
                TableName=self._table, Key=self._key(session_id), ConsistentRead=True
            )
        item = response.get("Item")
        if not item:
            raise SessionNotFound(self._name, "get", session_id)
        return self._parse("get", item)

    async def update(self, session: ServerSession) -> ServerSession:
        """Replace the record if its stored `updated_at` still equals `session.updated_at`, else
        `ConcurrentModification`. The stored `updated_at` is strictly newer than the old one even if
        the clock is behind it, so a second update from the same read loses the lock. A status change
        must be legal (`InvalidTransition`); keeping a terminal status is allowed."""
        stamp = max(self._clock.now(), session.updated_at + _ONE_TICK)
        item = self._checked_item("update", session.with_changes(updated_at=stamp))
        stored = ServerSession.from_record(from_item(item))  # as `get` returns it: UTC timestamps
        expr = Expression()
        status = expr.name("status")
        # The new status must be reachable from the stored one: unchanged, or active -> terminal.
        allowed = (
            f"{status} = {expr.value('active', _ACTIVE)}"
            if stored.status is SessionStatus.ACTIVE
            else f"{status} IN ({expr.value('active', _ACTIVE)}, {expr.value('wanted', stored.status.value)})"
        )
        expected = format_timestamp(session.updated_at)
        condition = (
            f"attribute_exists({expr.name(KEY_ATTRIBUTE)}) AND "
            f"{expr.name('updated_at')} = {expr.value('expected', expected)} AND {allowed}"
        )
        try:
            with self._translated("update"):
                await self._client.put_item(
                    TableName=self._table,
                    Item=item,
                    ConditionExpression=condition,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **expr.params(),
                )
        except ConditionFailed as failed:
            if not failed.old:
                raise SessionNotFound(self._name, "update", session.id) from None
            old = self._parse("update", failed.old)
            if format_timestamp(old.updated_at) != expected:
                raise ConcurrentModification(self._name, "update", session.id) from None
            raise InvalidTransition(self._name, "update", session.id, old.status, stored.status) from None
        return stored

    async def delete(self, session_id: str) -> None:
        """Remove the record; deleting an absent record is not an error."""
        if key_value_problem(KEY_ATTRIBUTE, session_id):
            return  # no such key can exist in the table
        with self._translated("delete"):
            await self._client.delete_item(TableName=self._table, Key=self._key(session_id))

    # --- conditional updates of an active session ---------------------------------------------------

    async def touch(
        self,
        session_id: str,
        count: int,
        last_access_at: datetime,
        *,
        seq: int | None = None,
        known_status: SessionStatus = SessionStatus.ACTIVE,
    ) -> SessionStatus:
        """One `UpdateItem` in the steady state: ADD `count` to request_count, SET last_access_at,
        updated_at (and flush_seq), conditional on the status the caller believes and, with
        `seq`, on `flush_seq < seq` (issue 12). An active record also gets expires_at, ttl and
        lease_until moved (issue 10).

        A failed condition's ALL_OLD says why, with no extra read: `flush_seq >= seq` means the
        batch was applied before (its answer lost), so nothing more is sent; another status means
        the belief was wrong, and the form for the status read is sent once."""
        if key_value_problem(KEY_ATTRIBUTE, session_id):
            raise SessionNotFound(self._name, "touch", session_id)
        believed = known_status
        for _ in range(3):  # a status changes at most once (active -> terminal), so 2 suffice
            try:
                await self._touch_as(session_id, count, last_access_at, seq, believed)
            except ConditionFailed as failed:
                if not failed.old:
                    raise SessionNotFound(self._name, "touch", session_id) from None
                old = self._parse("touch", failed.old)
                if seq is not None and old.flush_seq >= seq:
                    return old.status
                if (old.status is SessionStatus.ACTIVE) is (believed is SessionStatus.ACTIVE):
                    # cannot happen: the condition holds for that status and sequence
                    raise SessionStoreError(self._name, "touch", "condition failed unexpectedly") from None
                believed = old.status
                continue
            return believed
        raise SessionStoreError(self._name, "touch", "status kept changing")

    async def _touch_as(
        self, session_id: str, count: int, last_access_at: datetime, seq: int | None, status: SessionStatus
    ) -> None:
        now = self._clock.now()
        expr = Expression()
        sets: dict[str, str | int] = {
            "last_access_at": format_timestamp(last_access_at),
            "updated_at": format_timestamp(now),
        }
        state = f"{expr.name('status')} = {expr.value('active', _ACTIVE)}"
        if status is SessionStatus.ACTIVE:
            sets["expires_at"] = format_timestamp(self._retention.expires_at(last_access_at))
            sets["ttl"] = self._retention.ttl(last_access_at)
            sets["lease_until"] = format_timestamp(self._retention.lease_until(now))
        else:
            # Any terminal status: a touch never moves the lifetime of an ended session.
            state = f"{expr.name('status')} <> {expr.value('active', _ACTIVE)}"
        if seq is not None:
            sets["flush_seq"] = seq
        update = "SET " + ", ".join(f"{expr.name(k)} = {expr.value(k, v)}" for k, v in sets.items())
        update += f" ADD {expr.name('request_count')} {expr.value('request_count', count)}"
        condition = f"attribute_exists({expr.name(KEY_ATTRIBUTE)}) AND {state}"
        if seq is not None:
            # `:flush_seq` is the value SET above; the same placeholder serves the condition.
            condition += (
                f" AND (attribute_not_exists({expr.name('flush_seq')})"
                f" OR {expr.name('flush_seq')} < {expr.value('flush_seq', seq)})"
            )
        with self._translated("touch"):
            await self._client.update_item(
                TableName=self._table,
                Key=self._key(session_id),
                UpdateExpression=update,
                ConditionExpression=condition,
                ReturnValues="NONE",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **expr.params(),
            )

    async def renew(self, session_id: str) -> SessionStatus:
        """Push an active record's lease forward in one conditional `UpdateItem` (issue 10);
        a terminal record is left alone and its status returned (from ALL_OLD)."""
        lease = format_timestamp(self._retention.lease_until(self._clock.now()))
        result = await self._update_active(
            "renew", session_id, sets={"lease_until": lease}, add={}, return_new=False
        )
        return result if isinstance(result, SessionStatus) else SessionStatus.ACTIVE

    async def find_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        """Active sessions whose lease lapsed before `now`, newest first. Reads gsi-status (or
        gsi-server-instance) to the end, so it is eventually consistent like the lists."""
        if server_instance_id is None:
            active = await self._query("find_stale", GSI_STATUS, _ACTIVE, _UNLIMITED)
        else:
            active = await self._query(
                "find_stale", GSI_SERVER_INSTANCE, server_instance_id, _UNLIMITED, range_value=_ACTIVE
            )
        stale = [session for session in active if self._retention.is_stale(session, now)]
        return sorted(stale, key=lambda s: s.created_at, reverse=True)

    async def expire_stale(self, now: datetime, server_instance_id: str | None = None) -> list[ServerSession]:
        """`find_stale`, then one `UpdateItem` per session, conditional on the lease still having
        lapsed (the index may be behind; a renewal racing the sweep wins)."""
        expired = []
        cutoff = format_timestamp(now - self._retention.lease)
        for stale in await self.find_stale(now, server_instance_id):
            expr = Expression()
            lease = expr.name("lease_until")
            condition = (
                f"attribute_exists({expr.name(KEY_ATTRIBUTE)}) AND "
                f"{expr.name('status')} = {expr.value('active', _ACTIVE)} AND "
                f"({lease} < {expr.value('now', format_timestamp(now))} OR "
                f"(attribute_not_exists({lease}) AND "
                f"{expr.name('updated_at')} < {expr.value('cutoff', cutoff)}))"
            )
            update = (
                f"SET {expr.name('status')} = {expr.value('expired', SessionStatus.EXPIRED.value)}, "
                f"{expr.name('updated_at')} = {expr.value('stamp', format_timestamp(self._clock.now()))}"
            )
            try:
                with self._translated("expire_stale"):
                    response = await self._client.update_item(
                        TableName=self._table,
                        Key=self._key(stale.id),
                        UpdateExpression=update,
                        ConditionExpression=condition,
                        ReturnValues="ALL_NEW",
                        **expr.params(),
                    )
            except ConditionFailed:
                continue  # renewed, ended or removed meanwhile: not ours to expire
            expired.append(self._parse("expire_stale", response.get("Attributes", {})))
        return expired

    async def revoke(self, session_id: str, by: str, reason: str) -> ServerSession:
        """Conditional active -> revoked in one `UpdateItem`; `InvalidTransition` if already
        terminal. Returns the revoked record."""
        if len(by.encode()) + len(reason.encode()) > _MAX_REVOCATION_TEXT_BYTES:
            raise SessionStoreError(
                self._name,
                "revoke",
                f"revoked_by and revoked_reason exceed {_MAX_REVOCATION_TEXT_BYTES} bytes",
            )
        sets: dict[str, str | int] = {
            "status": SessionStatus.REVOKED.value,
            "revoked_by": by,
            "revoked_reason": reason,
        }
        return await self._transition("revoke", session_id, SessionStatus.REVOKED, sets)

    async def expire(self, session_id: str) -> ServerSession:
        """Conditional active -> expired in one `UpdateItem`; `InvalidTransition` if already
        terminal. Returns the expired record."""
        sets: dict[str, str | int] = {"status": SessionStatus.EXPIRED.value}
        return await self._transition("expire", session_id, SessionStatus.EXPIRED, sets)

    async def _transition(
        self, operation: str, session_id: str, wanted: SessionStatus, sets: dict[str, str | int]
    ) -> ServerSession:
        result = await self._update_active(operation, session_id, sets=sets, add={}, return_new=True)
        if isinstance(result, SessionStatus):
            raise InvalidTransition(self._name, operation, session_id, result, wanted)
        return self._parse(operation, result)

    async def _update_active(
        self,
        operation: str,
        session_id: str,
        *,
        sets: dict[str, str | int],
        add: dict[str, int],
        return_new: bool,
    ) -> dict[str, AttributeValueTypeDef] | SessionStatus:
        """One conditional `UpdateItem`: SET `sets` and updated_at, ADD `add`, only while the
        session exists and is active.

        Returns the new item when applied (empty unless `return_new`), the terminal status when
        the session is not active: ALL_OLD on the failed condition carries it, so no extra read."""
        if key_value_problem(KEY_ATTRIBUTE, session_id):
            raise SessionNotFound(self._name, operation, session_id)
        expr = Expression()
        sets = {**sets, "updated_at": format_timestamp(self._clock.now())}
        update = "SET " + ", ".join(f"{expr.name(k)} = {expr.value(k, v)}" for k, v in sets.items())
        if add:
            update += " ADD " + ", ".join(f"{expr.name(k)} {expr.value(k, v)}" for k, v in add.items())
        condition = (
            f"attribute_exists({expr.name(KEY_ATTRIBUTE)}) AND "
            f"{expr.name('status')} = {expr.value('active', _ACTIVE)}"
        )
        try:
            with self._translated(operation):
                response = await self._client.update_item(
                    TableName=self._table,
                    Key=self._key(session_id),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ReturnValues="ALL_NEW" if return_new else "NONE",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **expr.params(),
                )
        except ConditionFailed as failed:
            if not failed.old:
                raise SessionNotFound(self._name, operation, session_id) from None
            status = self._parse(operation, failed.old).status
            if not status.is_terminal:  # cannot happen: the condition holds for an active item
                raise SessionStoreError(
                    self._name, operation, "condition failed on an active session"
                ) from None
            return status
        return response.get("Attributes", {})

    # --- lists ------------------------------------------------------------------------------------

    async def list_by_user(self, user: str, limit: int | None = None) -> list[ServerSession]:
        """Newest first by created_at (gsi-user; eventually consistent); default 100, max 1000."""
        return await self._query("list_by_user", GSI_USER, user, clamp_limit(limit))

    async def list_by_status(self, status: SessionStatus, limit: int | None = None) -> list[ServerSession]:
        """Newest first by created_at (gsi-status; eventually consistent); default 100, max 1000."""
        return await self._query(
            "list_by_status", GSI_STATUS, SessionStatus(status).value, clamp_limit(limit)
        )

    async def list_by_profile(self, profile: str, limit: int | None = None) -> list[ServerSession]:
        """Newest first by created_at (gsi-profile; eventually consistent); default 100, max 1000."""
        return await self._query("list_by_profile", GSI_PROFILE, profile, clamp_limit(limit))

    async def find_active_by_server_instance(self, server_instance_id: str) -> list[ServerSession]:
        """Active sessions of one server instance, newest first (gsi-server-instance; eventually
        consistent, so a session created or expired a moment ago may be missed). At most 1000."""
        sessions = await self._query(
            "find_active_by_server_instance",
            GSI_SERVER_INSTANCE,
            server_instance_id,
            MAX_LIST_LIMIT,
            range_value=_ACTIVE,
        )
        return sorted(sessions, key=lambda s: s.created_at, reverse=True)

    async def _query(
        self, operation: str, index: str, hash_value: str, limit: int, *, range_value: str | None = None
    ) -> list[ServerSession]:
        """Query `index` newest first, following LastEvaluatedKey until `limit` rows are read.

        Each page asks for no more than the rows still wanted, so nothing is over-read."""
        hash_key, range_key = INDEXES[index]
        if key_value_problem(hash_key, hash_value):
            return []  # no item can carry such a key, and DynamoDB would reject the query
        sessions: list[ServerSession] = []
        start: dict[str, AttributeValueTypeDef] | None = None
        while len(sessions) < limit:
            expr = Expression()
            condition = f"{expr.name(hash_key)} = {expr.value('hash', hash_value)}"
            if range_value is not None:
                condition += f" AND {expr.name(range_key)} = {expr.value('range', range_value)}"
            params: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": index,
                "KeyConditionExpression": condition,
                "ScanIndexForward": False,
                "Limit": min(limit - len(sessions), self._page_size),
                **expr.params(),
            }
            if start is not None:
                params["ExclusiveStartKey"] = start
            with self._translated(operation):
                response = await self._client.query(**params)
            sessions.extend(self._parse(operation, item) for item in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if not start:
                break
        return sessions[:limit]

    # --- helpers ------------------------------------------------------------------------------------

    def _translated(self, operation: str) -> AbstractContextManager[None]:
        if self._closed:  # a closed aiobotocore client fails with a bare RuntimeError
            raise StoreUnavailable(self._name, operation, "the store is closed")
        return translated(self._name, operation, self._table)

    def _key(self, session_id: str) -> dict[str, AttributeValueTypeDef]:
        return {KEY_ATTRIBUTE: {"S": session_id}}

    def _checked_item(self, operation: str, session: ServerSession) -> dict[str, AttributeValueTypeDef]:
        """The session as an item, refused here if DynamoDB would refuse it (empty or oversized
        key values, an item over 400 KB) so the store never sends an invalid request."""
        record = session.to_record()
        for attribute in KEY_ATTRIBUTE_TYPES:
            problem = key_value_problem(attribute, str(record[attribute]))
            if problem:
                raise SessionStoreError(self._name, operation, f"session {session.id[:32]!r}: {problem}")
        item = to_item(record)
        if item_size(item) > MAX_ITEM_BYTES:
            raise SessionStoreError(
                self._name, operation, f"session {session.id}: record exceeds {MAX_ITEM_BYTES} bytes"
            )
        return item

    def _parse(self, operation: str, item: dict[str, AttributeValueTypeDef]) -> ServerSession:
        try:
            return ServerSession.from_record(from_item(item))
        except (KeyError, ValueError, TypeError) as exc:
            shown = str(item.get(KEY_ATTRIBUTE, {}).get("S", "?"))[:32]
            raise SessionStoreError(
                self._name, operation, f"malformed record for session {shown!r} ({type(exc).__name__})"
            ) from exc
