"""DynamoDB-specific tests of `sentinel.sessions.dynamodb`, beyond the shared contract suite.

Everything runs against a real moto server process over HTTP (`aws_endpoint`), with the request
lint (`tests/support/dynamodb_lint.py`) attached so each request is also checked against the rules
of the real DynamoDB, which moto does not enforce.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aioboto3
import anyio
import pytest
from botocore.exceptions import ClientError

from harness.aws_env import REGION
from harness.loopback import free_port
from sentinel.sessions.dynamodb import DynamoDBSessionStore, create_session_table
from sentinel.sessions.dynamodb_table import to_item, translate_error
from sentinel.sessions.errors import (
    ConcurrentModification,
    InvalidTransition,
    SessionNotFound,
    SessionStoreError,
    StoreUnavailable,
)
from sentinel.sessions.model import DEFAULT_RETENTION, ServerSession, SessionStatus
from tests.support.dynamodb_lint import DynamoDBLint, DynamoDBRequestInvalid, check_request

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def new_session(
    n: int = 0, *, user: str = "alice", profile: str = "dev", instance: str = "i-1"
) -> ServerSession:
    return ServerSession.start(
        user=user,
        profile=profile,
        server_instance_id=instance,
        source_identity=f"sentinel:{user}:{n}",
        now=T0 + timedelta(seconds=n),
    )


@pytest.fixture
def lint() -> Iterator[DynamoDBLint]:
    lint = DynamoDBLint()
    yield lint
    lint.assert_clean()


@pytest.fixture
async def table(aws_endpoint: str, lint: DynamoDBLint) -> str:
    name = f"sentinel-test-{uuid.uuid4().hex[:12]}"
    await create_session_table(name, region=REGION, session=lint.session())
    return name


@pytest.fixture
async def store(table: str, lint: DynamoDBLint) -> AsyncIterator[DynamoDBSessionStore]:
    async with await DynamoDBSessionStore.open(table, region=REGION, session=lint.session()) as opened:
        yield opened


async def describe(table: str) -> tuple[dict[str, Any], dict[str, Any]]:
    async with aioboto3.Session().client("dynamodb", region_name=REGION) as client:
        description = (await client.describe_table(TableName=table))["Table"]
        ttl = (await client.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
    return dict(description), dict(ttl)


# --- create_session_table ----------------------------------------------------------------------------


async def test_create_session_table_builds_the_layout(table: str) -> None:
    """Create the table; DescribeTable shows key `id`, the four GSIs with their keys, on-demand
    billing, and TTL enabled on `ttl`."""
    description, ttl = await describe(table)
    assert description["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {
        g["IndexName"]: ([(k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]], g["Projection"])
        for g in description["GlobalSecondaryIndexes"]
    }
    all_attributes = {"ProjectionType": "ALL"}
    assert indexes == {
        "gsi-user": ([("user", "HASH"), ("created_at", "RANGE")], all_attributes),
        "gsi-status": ([("status", "HASH"), ("created_at", "RANGE")], all_attributes),
        "gsi-profile": ([("profile", "HASH"), ("created_at", "RANGE")], all_attributes),
        "gsi-server-instance": ([("server_instance_id", "HASH"), ("status", "RANGE")], all_attributes),
    }
    assert {a["AttributeType"] for a in description["AttributeDefinitions"]} == {"S"}
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}


async def test_create_session_table_is_idempotent(table: str, lint: DynamoDBLint) -> None:
    """Create the table, create it again: no error, same layout."""
    before, _ = await describe(table)
    await create_session_table(table, region=REGION, session=lint.session())
    after, ttl = await describe(table)
    assert after["GlobalSecondaryIndexes"] == before["GlobalSecondaryIndexes"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"


async def test_create_session_table_refuses_a_foreign_table(aws_endpoint: str) -> None:
    """A table with another key schema, and one with our key but no indexes, exist under the
    name: create_session_table names the table and what is wrong instead of using it."""
    wrong_key, no_indexes = f"foreign-{uuid.uuid4().hex[:8]}", f"bare-{uuid.uuid4().hex[:8]}"
    async with aioboto3.Session().client("dynamodb", region_name=REGION) as client:
        for name, key in ((wrong_key, "pk"), (no_indexes, "id")):
            await client.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
    with pytest.raises(SessionStoreError) as wrong:
        await create_session_table(wrong_key, region=REGION)
    assert wrong_key in str(wrong.value)
    assert "key schema" in str(wrong.value)
    with pytest.raises(SessionStoreError) as bare:
        await create_session_table(no_indexes, region=REGION)
    assert "index gsi-user is missing" in str(bare.value)
    assert "\n" not in str(bare.value)


# --- failures become StoreUnavailable ----------------------------------------------------------------


@pytest.mark.slow
async def test_unreachable_endpoint_fails_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the endpoint at a loopback port nobody listens on; a read and table creation each
    fail with a one-line StoreUnavailable naming the table and operation, well within a generous
    15 s deadline (the bounded retries take a few seconds)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with anyio.fail_after(15):
        async with await DynamoDBSessionStore.open("nowhere", region=REGION) as store:
            with pytest.raises(StoreUnavailable) as read:
                await store.get("0123456789abcdef")
    assert str(read.value).startswith("dynamodb table nowhere: get: cannot reach DynamoDB")
    with anyio.fail_after(15), pytest.raises(StoreUnavailable, match="nowhere: create_session_table"):
        await create_session_table("nowhere", region=REGION)


async def test_missing_table_is_store_unavailable(aws_endpoint: str, lint: DynamoDBLint) -> None:
    """On a reachable endpoint without the table, every kind of call raises StoreUnavailable
    naming the table."""
    name = f"missing-{uuid.uuid4().hex[:8]}"
    async with await DynamoDBSessionStore.open(name, region=REGION, session=lint.session()) as store:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.create(new_session()),
            lambda: store.get("0123456789abcdef"),
            lambda: store.touch("0123456789abcdef", 1, T0),
            lambda: store.revoke("0123456789abcdef", "bob", "why"),
            lambda: store.list_by_user("alice"),
            lambda: store.find_active_by_server_instance("i-1"),
            lambda: store.delete("0123456789abcdef"),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable, match=f"table {name} does not exist"):
                await call()


@pytest.mark.parametrize(
    ("code", "status", "unavailable"),
    [
        ("ProvisionedThroughputExceededException", 400, True),
        ("ThrottlingException", 400, True),
        ("RequestLimitExceeded", 400, True),
        ("AccessDeniedException", 400, True),
        ("UnrecognizedClientException", 400, True),
        ("InternalServerError", 500, True),
        ("ValidationException", 400, False),
    ],
)
def test_client_errors_are_translated_without_upstream_text(
    code: str, status: int, unavailable: bool
) -> None:
    """A botocore ClientError (as the client raises it) becomes our error: StoreUnavailable for
    throttling, auth and server faults, a plain SessionStoreError for a rejected request; the
    message has the code but never the upstream message text."""
    response: Any = {
        "Error": {"Code": code, "Message": "secret upstream detail\nsecond line"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error = translate_error(ClientError(response, "GetItem"), "dynamodb table t", "get", "t")
    assert isinstance(error, StoreUnavailable) is unavailable
    assert str(error).startswith("dynamodb table t: get: ")
    assert code in str(error)
    assert "secret" not in str(error)


# --- the lint itself ---------------------------------------------------------------------------------


def test_lint_rejects_a_raw_reserved_word() -> None:
    """A key condition naming `user` raw (moto accepts it, DynamoDB does not) is flagged; the same
    query through a placeholder is clean."""
    raw = {
        "TableName": "t",
        "IndexName": "gsi-user",
        "KeyConditionExpression": "user = :u",
        "ExpressionAttributeValues": {":u": {"S": "alice"}},
    }
    assert any("reserved word 'user'" in p for p in check_request("Query", raw))
    aliased = {**raw, "KeyConditionExpression": "#u = :u", "ExpressionAttributeNames": {"#u": "user"}}
    assert check_request("Query", aliased, require_aliases=True) == []


def test_lint_rejects_unused_and_undefined_placeholders() -> None:
    """An ExpressionAttributeValues entry no expression uses, and a placeholder no map defines."""
    params = {
        "TableName": "t",
        "Key": {"id": {"S": "0123456789abcdef"}},
        "UpdateExpression": "SET #s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "revoked"}, ":unused": {"S": "x"}},
        "ConditionExpression": "#missing = :s",
    }
    problems = check_request("UpdateItem", params)
    assert any(":unused, which no expression uses" in p for p in problems)
    assert any("#missing is used in an expression but not defined" in p for p in problems)


def test_lint_rejects_a_26_item_batch() -> None:
    """BatchWriteItem with 25 puts is fine, with 26 it is flagged; 101 BatchGetItem keys too."""

    def put(i: int) -> dict[str, Any]:
        return {"PutRequest": {"Item": {"id": {"S": f"{i:016x}"}, "status": {"S": "active"}}}}

    assert check_request("BatchWriteItem", {"RequestItems": {"t": [put(i) for i in range(25)]}}) == []
    problems = check_request("BatchWriteItem", {"RequestItems": {"t": [put(i) for i in range(26)]}})
    assert problems == ["BatchWriteItem carries 26 requests (1..25)"]
    keys = [{"id": {"S": f"{i:016x}"}} for i in range(101)]
    assert check_request("BatchGetItem", {"RequestItems": {"t": {"Keys": keys}}}) == [
        "BatchGetItem asks for 101 keys (1..100)"
    ]


def test_lint_rejects_wrongly_typed_and_empty_keys() -> None:
    """A numeric `id`, a numeric index key in an item, an empty index key, a strongly consistent
    GSI query, and an update of the table key are all flagged."""
    assert check_request("GetItem", {"TableName": "t", "Key": {"id": {"N": "1"}}}) != []
    item = {"id": {"S": "0123456789abcdef"}, "user": {"N": "7"}, "profile": {"S": ""}}
    problems = check_request("PutItem", {"TableName": "t", "Item": item})
    assert any("'user' is N, the schema says S" in p for p in problems)
    assert any("'profile' is empty" in p for p in problems)
    query = {
        "TableName": "t",
        "IndexName": "gsi-status",
        "ConsistentRead": True,
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "active"}},
    }
    assert check_request("Query", query) == ["ConsistentRead is not supported on a global secondary index"]
    update = {
        "TableName": "t",
        "Key": {"id": {"S": "0123456789abcdef"}},
        "UpdateExpression": "SET #i = :i",
        "ExpressionAttributeNames": {"#i": "id"},
        "ExpressionAttributeValues": {":i": {"S": "fedcba9876543210"}},
    }
    assert check_request("UpdateItem", update) == ["UpdateExpression: cannot SET key attribute 'id'"]


async def test_lint_stops_an_invalid_request_before_it_is_sent(table: str) -> None:
    """A client from a linted session sends a raw-reserved-word query: the lint raises before the
    request reaches moto (which would have accepted it) and records the violation."""
    lint = DynamoDBLint()
    async with lint.session().client("dynamodb", region_name=REGION) as client:
        with pytest.raises(DynamoDBRequestInvalid, match="reserved word 'status'"):
            await client.query(
                TableName=table,
                IndexName="gsi-status",
                KeyConditionExpression="status = :s",
                ExpressionAttributeValues={":s": {"S": "active"}},
            )
    assert lint.checked == ["Query"]
    assert len(lint.violations) == 1


# --- the store under the lint ------------------------------------------------------------------------


async def test_full_scenario_is_valid_for_real_dynamodb(
    store: DynamoDBSessionStore, lint: DynamoDBLint
) -> None:
    """Create two sessions, touch, update, list three ways, find the active one, revoke, touch the
    revoked one, expire the other, try an illegal transition, delete: every request passes the
    lint (checked at teardown) and each call has the expected result."""
    first, second = new_session(1), new_session(2, user="carol", instance="i-2")
    await store.create(first)
    await store.create(second)
    assert await store.touch(first.id, 5, T0 + timedelta(minutes=1)) is SessionStatus.ACTIVE
    touched = await store.get(first.id)
    assert touched.request_count == 5
    assert touched.ttl == DEFAULT_RETENTION.ttl(T0 + timedelta(minutes=1))
    edited = await store.update(touched.with_changes(source_identity="sentinel:alice:edited"))
    assert edited.updated_at > touched.updated_at
    with pytest.raises(ConcurrentModification):
        await store.update(touched)
    assert [s.id for s in await store.list_by_user("alice")] == [first.id]
    assert [s.id for s in await store.list_by_profile("dev")] == [second.id, first.id]
    assert [s.id for s in await store.list_by_status(SessionStatus.ACTIVE)] == [second.id, first.id]
    assert [s.id for s in await store.find_active_by_server_instance("i-1")] == [first.id]

    revoked = await store.revoke(first.id, "bob", "left the team")
    assert (revoked.status, revoked.revoked_by, revoked.request_count) == (SessionStatus.REVOKED, "bob", 5)
    del lint.checked[:]
    assert await store.touch(first.id, 1, T0 + timedelta(minutes=2), seq=1) is SessionStatus.REVOKED
    # The terminal status came back with the failed condition; the terminal form then counted it.
    assert lint.checked == ["UpdateItem", "UpdateItem"]
    del lint.checked[:]
    later = T0 + timedelta(minutes=2)
    status = await store.touch(first.id, 1, later, seq=2, known_status=SessionStatus.REVOKED)
    assert status is SessionStatus.REVOKED
    assert lint.checked == ["UpdateItem"]  # issue 10: one request once the status is known
    assert (await store.get(first.id)).request_count == 7  # every served credential is on the record
    assert await store.find_active_by_server_instance("i-1") == []

    assert (await store.expire(second.id)).status is SessionStatus.EXPIRED
    with pytest.raises(InvalidTransition, match="already revoked"):
        await store.expire(first.id)
    with pytest.raises(InvalidTransition, match="already expired"):
        await store.update((await store.get(second.id)).with_changes(status=SessionStatus.ACTIVE))
    await store.delete(first.id)
    await store.delete(first.id)
    with pytest.raises(SessionNotFound):
        await store.touch(first.id, 1, T0)
    assert {"PutItem", "GetItem", "UpdateItem", "Query", "DeleteItem"} <= set(lint.checked)


async def test_values_dynamodb_cannot_key_are_refused_before_sending(
    store: DynamoDBSessionStore, lint: DynamoDBLint
) -> None:
    """An empty user (a GSI key) or a record over 400 KB would be a ValidationException from
    DynamoDB: the store refuses them itself, and a list for an empty user or an empty id lookup
    sends nothing at all."""
    del lint.checked[:]
    with pytest.raises(SessionStoreError, match="user must not be empty"):
        await store.create(new_session(user=""))
    huge = new_session().with_changes(source_identity="x" * 400 * 1024)
    with pytest.raises(SessionStoreError, match="record exceeds 409600 bytes"):
        await store.create(huge)
    assert any("larger than" in p for p in check_request("PutItem", {"Item": to_item(huge.to_record())}))
    assert await store.list_by_user("") == []
    with pytest.raises(SessionNotFound):
        await store.get("")
    assert lint.checked == []


async def test_lists_follow_pages_without_over_reading(table: str, lint: DynamoDBLint) -> None:
    """150 sessions of one user, an internal page size of 50: a list with limit 120 reads three
    pages (50 + 50 + 20, never more than it needs) and returns the 120 newest, newest first; the
    default limit returns 100; limit 1000 returns all 150."""
    async with await DynamoDBSessionStore.open(
        table, region=REGION, session=lint.session(), page_size=50
    ) as store:
        sessions = [new_session(n) for n in range(150)]
        # Seeded in linted batches of 25 (DynamoDB's maximum): six requests instead of 150 puts.
        async with lint.session().client("dynamodb", region_name=REGION) as client:
            for start in range(0, len(sessions), 25):
                batch: list[Any] = [
                    {"PutRequest": {"Item": to_item(s.to_record())}} for s in sessions[start : start + 25]
                ]
                response = await client.batch_write_item(RequestItems={table: batch})
                assert not response["UnprocessedItems"]
        newest_first = [s.id for s in reversed(sessions)]

        del lint.checked[:]
        listed = await store.list_by_user("alice", limit=120)
        assert [s.id for s in listed] == newest_first[:120]
        assert lint.checked == ["Query", "Query", "Query"]
        assert [s.id for s in await store.list_by_user("alice")] == newest_first[:100]
        assert [s.id for s in await store.list_by_profile("dev", limit=1000)] == newest_first
        assert len(await store.list_by_status(SessionStatus.ACTIVE, limit=5000)) == 150


async def test_a_closed_store_raises_store_unavailable(table: str, lint: DynamoDBLint) -> None:
    """Open a store, close it twice (idempotent); a later call is StoreUnavailable, not a raw
    client error."""
    store = await DynamoDBSessionStore.open(table, region=REGION, session=lint.session())
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreUnavailable, match="get: the store is closed"):
        await store.get("0123456789abcdef")


async def test_the_tracker_sends_one_update_item_per_flush(
    store: DynamoDBSessionStore, lint: DynamoDBLint
) -> None:
    """Issues 10 and 12, what a fleet pays for. 1. Start: one Query (the stale sweep) and one
    PutItem. 2. Each flush of an active session: one UpdateItem. 3. Revoked meanwhile: the next
    flush sends two (the active form fails, its ALL_OLD says revoked, the revoked form counts
    them); every flush after it one again. 4. The record holds all 12 issuances."""
    from sentinel.sessions.retry import Backoff
    from sentinel.sessions.tracker import SessionTracker

    template = new_session(1)
    tracker = SessionTracker(
        store,
        template,
        flush_interval=0.01,
        revocation_poll=3600,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(tracker.run)
        assert await tracker.start_session()
        assert lint.checked[-2:] == ["Query", "PutItem"]
        per_flush = []
        for step in range(4):
            if step == 2:
                await store.revoke(template.id, "admin", "incident")
            del lint.checked[:]
            for _ in range(3):
                tracker.touch_nowait()
            with anyio.fail_after(10):
                await tracker.flush()
            per_flush.append(list(lint.checked))
        with anyio.fail_after(10):
            summary = await tracker.shutdown(5.0)
        tg.cancel_scope.cancel()
    assert per_flush == [["UpdateItem"], ["UpdateItem"], ["UpdateItem", "UpdateItem"], ["UpdateItem"]]
    record = await store.get(template.id)
    assert (record.status, record.request_count, record.flush_seq) == (SessionStatus.REVOKED, 12, 4)
    assert summary.flushed == 12
