"""The DynamoDB session table: its layout, client settings, item codec, error translation, and
`create_session_table` (issue 2, item 4).

The store itself lives in `sentinel.sessions.dynamodb`; this module holds what both the store and
table creation need, so neither grows into a god module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import aioboto3
import aiohttp
import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from sentinel.sessions.errors import SessionStoreError, StoreUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import AttributeValueTypeDef, TableDescriptionTypeDef

# --- layout (DESIGN.md §4) -------------------------------------------------------------------------

KEY_ATTRIBUTE = "id"
TTL_ATTRIBUTE = "ttl"
GSI_USER = "gsi-user"
GSI_STATUS = "gsi-status"
GSI_PROFILE = "gsi-profile"
GSI_SERVER_INSTANCE = "gsi-server-instance"

# Index name -> (partition key, sort key). Every key attribute is a string: timestamps are stored as
# fixed-width RFC 3339 strings, so the created_at sort keys order by time.
INDEXES: Mapping[str, tuple[str, str]] = {
    GSI_USER: ("user", "created_at"),
    GSI_STATUS: ("status", "created_at"),
    GSI_PROFILE: ("profile", "created_at"),
    GSI_SERVER_INSTANCE: ("server_instance_id", "status"),
}

# Attributes that are a key of the table or of an index, with their DynamoDB type. DynamoDB rejects
# an item whose index key attribute has another type or is an empty string.
KEY_ATTRIBUTE_TYPES: Mapping[str, str] = {
    KEY_ATTRIBUTE: "S",
    **{name: "S" for keys in INDEXES.values() for name in keys},
}

# Service limits the store checks before sending, so it never makes a request DynamoDB rejects.
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
MAX_ITEM_BYTES = 400 * 1024

# --- client settings ---------------------------------------------------------------------------------


def client_config() -> AioConfig:
    """Bounded timeouts and retries: an unreachable endpoint fails in seconds, not minutes.

    botocore's defaults (60 s read timeout, legacy retries) would hold a flush or a shutdown for
    minutes; three attempts in standard mode cost at most a few seconds of backoff."""
    return AioConfig(
        connect_timeout=2,
        read_timeout=5,
        retries={"mode": "standard", "total_max_attempts": 3},
    )


# --- item codec --------------------------------------------------------------------------------------


def to_item(record: Mapping[str, str | int]) -> dict[str, AttributeValueTypeDef]:
    """A flat record (`ServerSession.to_record`) as a DynamoDB item: str -> S, int -> N."""
    item: dict[str, AttributeValueTypeDef] = {}
    for name, value in record.items():
        # bool is an int subclass; no session field is a bool, so one would be a bug upstream.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"attribute {name!r} has unsupported type {type(value).__name__}")
        item[name] = {"S": value} if isinstance(value, str) else {"N": str(value)}
    return item


def from_item(item: Mapping[str, AttributeValueTypeDef]) -> dict[str, object]:
    """Inverse of `to_item`; raises `ValueError` on an attribute type the session table never holds."""
    record: dict[str, object] = {}
    for name, value in item.items():
        if "S" in value:
            record[name] = value["S"]
        elif "N" in value:
            # Every number in a session item is an integer (request_count, ttl).
            record[name] = int(value["N"])
        elif value.get("NULL"):
            record[name] = None
        else:
            raise ValueError(f"attribute {name!r} has an unsupported DynamoDB type")
    return record


def item_size(item: Mapping[str, AttributeValueTypeDef]) -> int:
    """Bytes DynamoDB counts against the 400 KB item limit (names plus values, UTF-8); numbers are
    counted generously at their decimal length plus one."""
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        if "S" in value:
            size += len(value["S"].encode())
        elif "N" in value:
            size += len(value["N"]) + 1
        else:
            size += 1
    return size


_SORT_KEYS = frozenset(range_key for _, range_key in INDEXES.values())


def key_value_problem(attribute: str, value: str) -> str | None:
    """Why DynamoDB would reject `value` for the key `attribute` of the table or an index, or None."""
    if value == "":
        return f"{attribute} must not be empty"
    limit = MAX_SORT_KEY_BYTES if attribute in _SORT_KEYS else MAX_PARTITION_KEY_BYTES
    if len(value.encode()) > limit:
        return f"{attribute} is longer than {limit} bytes"
    return None


class Expression:
    """Placeholders for one request: every attribute name becomes `#name` and every value `:key`.

    Only placeholders handed out are defined, so the request never carries an unused one (the real
    DynamoDB rejects those; moto does not)."""

    __slots__ = ("names", "values")

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, AttributeValueTypeDef] = {}

    def name(self, attribute: str) -> str:
        placeholder = f"#{attribute}"
        self.names[placeholder] = attribute
        return placeholder

    def value(self, key: str, value: str | int) -> str:
        placeholder = f":{key}"
        self.values[placeholder] = to_item({key: value})[key]
        return placeholder

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"ExpressionAttributeNames": self.names}
        if self.values:
            params["ExpressionAttributeValues"] = self.values
        return params


# --- error translation -------------------------------------------------------------------------------

CONDITION_FAILED = "ConditionalCheckFailedException"

# Error codes meaning "the table cannot be used right now" rather than "the request is wrong".
_UNAVAILABLE_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
        "ResourceInUseException",
    }
)

# Everything a botocore call can raise that is not our own doing. CancelledError and our own errors
# are deliberately absent: they must pass through untouched.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, ClientError, aiohttp.ClientError, OSError)


class ConditionFailed(Exception):
    """A conditional write did not apply; `old` is the item as it was (ALL_OLD), None if absent."""

    def __init__(self, old: dict[str, AttributeValueTypeDef] | None) -> None:
        super().__init__("condition failed")
        self.old = old


def error_code(exc: ClientError) -> str:
    code = exc.response.get("Error", {}).get("Code")
    return code if isinstance(code, str) and code else "UnknownError"


def translate_error(exc: BaseException, store: str, operation: str, table: str) -> SessionStoreError:
    """Our typed error for a backend failure. The message carries at most the upstream error code or
    exception class, never upstream text (it can echo request data and is not one line)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            return StoreUnavailable(store, operation, f"table {table} does not exist (or is not ACTIVE)")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return StoreUnavailable(store, operation, f"DynamoDB refused the request ({code})")
        return SessionStoreError(store, operation, f"DynamoDB rejected the request ({code})")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreUnavailable(store, operation, "no usable AWS credentials")
    if isinstance(exc, NoRegionError):
        return StoreUnavailable(store, operation, "no AWS region configured")
    if isinstance(exc, BotoConnectionError | aiohttp.ClientError | OSError):
        return StoreUnavailable(store, operation, f"cannot reach DynamoDB ({type(exc).__name__})")
    return SessionStoreError(store, operation, f"DynamoDB client error ({type(exc).__name__})")


@contextmanager
def translated(store: str, operation: str, table: str) -> Iterator[None]:
    """Turn backend exceptions raised inside the block into our errors; a failed condition becomes
    `ConditionFailed` carrying the old item, for the caller to interpret."""
    try:
        yield
    except ClientError as exc:
        if error_code(exc) == CONDITION_FAILED:
            old: Any = exc.response.get("Item")
            raise ConditionFailed(old if isinstance(old, dict) else None) from None
        raise translate_error(exc, store, operation, table) from exc
    except BACKEND_ERRORS as exc:
        raise translate_error(exc, store, operation, table) from exc


# --- table creation ----------------------------------------------------------------------------------


def table_name_of(table: str) -> str:
    """The store name used in messages, e.g. `dynamodb table sentinel-sessions`."""
    return f"dynamodb table {table}"


def _table_definition(table: str) -> dict[str, Any]:
    attributes = sorted(KEY_ATTRIBUTE_TYPES)
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": KEY_ATTRIBUTE_TYPES[name]} for name in attributes
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": hash_key, "KeyType": "HASH"},
                    {"AttributeName": range_key, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, (hash_key, range_key) in INDEXES.items()
        ],
    }


def layout_problems(description: TableDescriptionTypeDef) -> list[str]:
    """What is wrong with an existing table's keys and indexes, compared to the session layout."""
    problems: list[str] = []
    types = {a["AttributeName"]: a["AttributeType"] for a in description.get("AttributeDefinitions", [])}
    keys = [(k["AttributeName"], k["KeyType"]) for k in description.get("KeySchema", [])]
    if keys != [(KEY_ATTRIBUTE, "HASH")] or types.get(KEY_ATTRIBUTE) != "S":
        problems.append(f"key schema is not a string partition key {KEY_ATTRIBUTE!r}")
    present = {g["IndexName"]: g for g in description.get("GlobalSecondaryIndexes", [])}
    for index, (hash_key, range_key) in INDEXES.items():
        gsi = present.get(index)
        want = [(hash_key, "HASH"), (range_key, "RANGE")]
        if gsi is None:
            problems.append(f"index {index} is missing")
        elif [(k["AttributeName"], k["KeyType"]) for k in gsi["KeySchema"]] != want or any(
            types.get(name) != "S" for name in (hash_key, range_key)
        ):
            problems.append(f"index {index} does not have string keys ({hash_key}, {range_key})")
        elif gsi.get("Projection", {}).get("ProjectionType") != "ALL":
            problems.append(f"index {index} does not project all attributes")
    return problems


def _is_active(description: TableDescriptionTypeDef) -> bool:
    return description.get("TableStatus") == "ACTIVE" and all(
        g.get("IndexStatus", "ACTIVE") == "ACTIVE" for g in description.get("GlobalSecondaryIndexes", [])
    )


async def create_session_table(
    table: str,
    *,
    region: str | None = None,
    session: aioboto3.Session | None = None,
    max_wait: float = 300.0,
    poll_interval: float = 2.0,
) -> None:
    """Create the session table (GSIs, PAY_PER_REQUEST, TTL on `ttl`) and wait until it is ACTIVE.

    An existing table with the session layout is fine (the call is idempotent); one with another key
    schema or missing indexes raises `SessionStoreError` naming the table and what is wrong. Waiting
    is bounded by `max_wait` seconds (`StoreUnavailable` after that)."""
    store = table_name_of(table)
    session = session or aioboto3.Session()
    # The outer block covers creating and closing the client (no region, no credentials).
    with translated(store, "create_session_table", table):
        async with session.client("dynamodb", region_name=region, config=client_config()) as client:
            try:
                await client.create_table(**_table_definition(table))
            except ClientError as exc:
                # The table already exists: accept it only if its layout is ours.
                if error_code(exc) != "ResourceInUseException":
                    raise
            await _wait_active(client, store, table, max_wait, poll_interval)
            await _enable_ttl(client, store, table)


async def _wait_active(
    client: DynamoDBClient, store: str, table: str, max_wait: float, poll_interval: float
) -> None:
    # botocore's `table_exists` waiter ignores index status; a GSI that is still CREATING cannot be
    # queried, so poll DescribeTable until the table and every index are ACTIVE.
    with anyio.move_on_after(max_wait) as scope:
        while True:
            description = (await client.describe_table(TableName=table))["Table"]
            problems = layout_problems(description)
            if problems:
                raise SessionStoreError(
                    store,
                    "create_session_table",
                    f"existing table has the wrong layout: {'; '.join(problems)}",
                )
            if _is_active(description):
                return
            await anyio.sleep(poll_interval)
    if scope.cancelled_caught:
        raise StoreUnavailable(store, "create_session_table", f"table {table} not ACTIVE after {max_wait:g}s")


async def _enable_ttl(client: DynamoDBClient, store: str, table: str) -> None:
    current = (await client.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
    status = current.get("TimeToLiveStatus", "DISABLED")
    attribute = current.get("AttributeName")
    if status in ("ENABLED", "ENABLING") and attribute == TTL_ATTRIBUTE:
        return
    if status in ("ENABLED", "ENABLING", "DISABLING"):
        raise SessionStoreError(
            store,
            "create_session_table",
            f"TTL is {status.lower()} on attribute {attribute!r}, not {TTL_ATTRIBUTE!r}",
        )
    try:
        await client.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
    except ClientError as exc:
        # A concurrent creator may have enabled it between our describe and update; DynamoDB
        # answers that with a ValidationException. Accept it if TTL is now on our attribute.
        if error_code(exc) != "ValidationException":
            raise
        again = (await client.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
        if again.get("AttributeName") != TTL_ATTRIBUTE:
            raise
