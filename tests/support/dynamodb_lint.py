"""A validator for outgoing DynamoDB requests: what the real service rejects but moto accepts.

moto is lenient (DESIGN.md §7): it takes reserved words in key conditions, unused expression
placeholders, 26-item batches and wrongly typed index keys, all of which the real DynamoDB refuses
with a ValidationException. `DynamoDBLint` hooks a client's `before-parameter-build.dynamodb` event,
so every request a store makes in a test is checked against the real service's rules before moto
sees it. A violation raises `DynamoDBRequestInvalid`, an `AssertionError` (so no store's error
translation can swallow it), and is also recorded for `assert_clean()` at teardown.

Usage: `lint = DynamoDBLint(); store = await DynamoDBSessionStore.open(table, session=lint.session())`
and `lint.assert_clean()` at the end; in a fixture, `session=linted_session(request)` does both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import pytest

# The reserved words of DynamoDB expressions, verbatim from the developer guide's "Reserved words in
# DynamoDB" page (573 words). An attribute with one of these names must go through a `#name`
# placeholder; DynamoDB matches them case-insensitively.
RESERVED_WORDS: frozenset[str] = frozenset(
    # A pasted word list reads better than a 573-item literal.
    """
ABORT ABSOLUTE ACTION ADD AFTER AGENT AGGREGATE ALL ALLOCATE ALTER ANALYZE AND ANY ARCHIVE ARE ARRAY
AS ASC ASCII ASENSITIVE ASSERTION ASYMMETRIC AT ATOMIC ATTACH ATTRIBUTE AUTH AUTHORIZATION AUTHORIZE
AUTO AVG BACK BACKUP BASE BATCH BEFORE BEGIN BETWEEN BIGINT BINARY BIT BLOB BLOCK BOOLEAN BOTH
BREADTH BUCKET BULK BY BYTE CALL CALLED CALLING CAPACITY CASCADE CASCADED CASE CAST CATALOG CHAR
CHARACTER CHECK CLASS CLOB CLOSE CLUSTER CLUSTERED CLUSTERING CLUSTERS COALESCE COLLATE COLLATION
COLLECTION COLUMN COLUMNS COMBINE COMMENT COMMIT COMPACT COMPILE COMPRESS CONDITION CONFLICT CONNECT
CONNECTION CONSISTENCY CONSISTENT CONSTRAINT CONSTRAINTS CONSTRUCTOR CONSUMED CONTINUE CONVERT COPY
CORRESPONDING COUNT COUNTER CREATE CROSS CUBE CURRENT CURSOR CYCLE DATA DATABASE DATE DATETIME DAY
DEALLOCATE DEC DECIMAL DECLARE DEFAULT DEFERRABLE DEFERRED DEFINE DEFINED DEFINITION DELETE
DELIMITED DEPTH DEREF DESC DESCRIBE DESCRIPTOR DETACH DETERMINISTIC DIAGNOSTICS DIRECTORIES DISABLE
DISCONNECT DISTINCT DISTRIBUTE DO DOMAIN DOUBLE DROP DUMP DURATION DYNAMIC EACH ELEMENT ELSE ELSEIF
EMPTY ENABLE END EQUAL EQUALS ERROR ESCAPE ESCAPED EVAL EVALUATE EXCEEDED EXCEPT EXCEPTION
EXCEPTIONS EXCLUSIVE EXEC EXECUTE EXISTS EXIT EXPLAIN EXPLODE EXPORT EXPRESSION EXTENDED EXTERNAL
EXTRACT FAIL FALSE FAMILY FETCH FIELDS FILE FILTER FILTERING FINAL FINISH FIRST FIXED FLATTERN FLOAT
FOR FORCE FOREIGN FORMAT FORWARD FOUND FREE FROM FULL FUNCTION FUNCTIONS GENERAL GENERATE GET GLOB
GLOBAL GO GOTO GRANT GREATER GROUP GROUPING HANDLER HASH HAVE HAVING HEAP HIDDEN HOLD HOUR
IDENTIFIED IDENTITY IF IGNORE IMMEDIATE IMPORT IN INCLUDING INCLUSIVE INCREMENT INCREMENTAL INDEX
INDEXED INDEXES INDICATOR INFINITE INITIALLY INLINE INNER INNTER INOUT INPUT INSENSITIVE INSERT
INSTEAD INT INTEGER INTERSECT INTERVAL INTO INVALIDATE IS ISOLATION ITEM ITEMS ITERATE JOIN KEY KEYS
LAG LANGUAGE LARGE LAST LATERAL LEAD LEADING LEAVE LEFT LENGTH LESS LEVEL LIKE LIMIT LIMITED LINES
LIST LOAD LOCAL LOCALTIME LOCALTIMESTAMP LOCATION LOCATOR LOCK LOCKS LOG LOGED LONG LOOP LOWER MAP
MATCH MATERIALIZED MAX MAXLEN MEMBER MERGE METHOD METRICS MIN MINUS MINUTE MISSING MOD MODE MODIFIES
MODIFY MODULE MONTH MULTI MULTISET NAME NAMES NATIONAL NATURAL NCHAR NCLOB NEW NEXT NO NONE NOT NULL
NULLIF NUMBER NUMERIC OBJECT OF OFFLINE OFFSET OLD ON ONLINE ONLY OPAQUE OPEN OPERATOR OPTION OR
ORDER ORDINALITY OTHER OTHERS OUT OUTER OUTPUT OVER OVERLAPS OVERRIDE OWNER PAD PARALLEL PARAMETER
PARAMETERS PARTIAL PARTITION PARTITIONED PARTITIONS PATH PERCENT PERCENTILE PERMISSION PERMISSIONS
PIPE PIPELINED PLAN POOL POSITION PRECISION PREPARE PRESERVE PRIMARY PRIOR PRIVATE PRIVILEGES
PROCEDURE PROCESSED PROJECT PROJECTION PROPERTY PROVISIONING PUBLIC PUT QUERY QUIT QUORUM RAISE
RANDOM RANGE RANK RAW READ READS REAL REBUILD RECORD RECURSIVE REDUCE REF REFERENCE REFERENCES
REFERENCING REGEXP REGION REINDEX RELATIVE RELEASE REMAINDER RENAME REPEAT REPLACE REQUEST RESET
RESIGNAL RESOURCE RESPONSE RESTORE RESTRICT RESULT RETURN RETURNING RETURNS REVERSE REVOKE RIGHT
ROLE ROLES ROLLBACK ROLLUP ROUTINE ROW ROWS RULE RULES SAMPLE SATISFIES SAVE SAVEPOINT SCAN SCHEMA
SCOPE SCROLL SEARCH SECOND SECTION SEGMENT SEGMENTS SELECT SELF SEMI SENSITIVE SEPARATE SEQUENCE
SERIALIZABLE SESSION SET SETS SHARD SHARE SHARED SHORT SHOW SIGNAL SIMILAR SIZE SKEWED SMALLINT
SNAPSHOT SOME SOURCE SPACE SPACES SPARSE SPECIFIC SPECIFICTYPE SPLIT SQL SQLCODE SQLERROR
SQLEXCEPTION SQLSTATE SQLWARNING START STATE STATIC STATUS STORAGE STORE STORED STREAM STRING STRUCT
STYLE SUB SUBMULTISET SUBPARTITION SUBSTRING SUBTYPE SUM SUPER SYMMETRIC SYNONYM SYSTEM TABLE
TABLESAMPLE TEMP TEMPORARY TERMINATED TEXT THAN THEN THROUGHPUT TIME TIMESTAMP TIMEZONE TINYINT TO
TOKEN TOTAL TOUCH TRAILING TRANSACTION TRANSFORM TRANSLATE TRANSLATION TREAT TRIGGER TRIM TRUE
TRUNCATE TTL TUPLE TYPE UNDER UNDO UNION UNIQUE UNIT UNKNOWN UNLOGGED UNNEST UNPROCESSED UNSIGNED
UNTIL UPDATE UPPER URL USAGE USE USER USERS USING UUID VACUUM VALUE VALUED VALUES VARCHAR VARIABLE
VARIANCE VARINT VARYING VIEW VIEWS VIRTUAL VOID WAIT WHEN WHENEVER WHERE WHILE WINDOW WITH WITHIN
WITHOUT WORK WRAPPED WRITE YEAR ZONE
""".split()  # noqa: SIM905
)

# Service limits (DynamoDB developer guide, "Service, account, and table quotas").
MAX_BATCH_WRITE_ITEMS = 25
MAX_BATCH_GET_KEYS = 100
MAX_TRANSACT_ITEMS = 100
MAX_EXPRESSION_BYTES = 4096
MAX_ITEM_BYTES = 400 * 1024
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024

_EXPRESSION_PARAMS = (
    "KeyConditionExpression",
    "UpdateExpression",
    "ConditionExpression",
    "FilterExpression",
    "ProjectionExpression",
)
# The pre-expression parameters cannot be mixed with expressions; a store has no reason to use them.
_LEGACY_PARAMS = (
    "AttributesToGet",
    "KeyConditions",
    "QueryFilter",
    "ScanFilter",
    "Expected",
    "AttributeUpdates",
    "ConditionalOperator",
)
_CONDITION_WORDS = frozenset({"AND", "OR", "NOT", "BETWEEN", "IN"})
_CONDITION_FUNCTIONS = frozenset(
    {"attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains", "size"}
)
_UPDATE_ACTIONS = frozenset({"SET", "REMOVE", "ADD", "DELETE"})
# Per expression kind: grammar keywords, and functions (only when followed by "(").
_GRAMMAR: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "KeyConditionExpression": (frozenset({"AND", "BETWEEN"}), frozenset({"begins_with"})),
    "ConditionExpression": (_CONDITION_WORDS, _CONDITION_FUNCTIONS),
    "FilterExpression": (_CONDITION_WORDS, _CONDITION_FUNCTIONS),
    "UpdateExpression": (_UPDATE_ACTIONS, frozenset({"if_not_exists", "list_append"})),
    "ProjectionExpression": (frozenset(), frozenset()),
}
_TOKEN = re.compile(r"[#:][A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_]*|\d+|<>|<=|>=|\S")
_NAME_PLACEHOLDER = re.compile(r"#[A-Za-z0-9_]+")
_VALUE_PLACEHOLDER = re.compile(r":[A-Za-z0-9_]+")
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_TYPES = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})


class DynamoDBRequestInvalid(AssertionError):
    """A request the real DynamoDB would reject; an AssertionError so store code never catches it."""

    def __init__(self, operation: str, problems: list[str]) -> None:
        super().__init__(f"{operation} would be rejected by DynamoDB: " + "; ".join(problems))
        self.operation = operation
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TableLayout:
    """Key attributes of a table and its global secondary indexes, with their types (S, N, B)."""

    key: tuple[str, ...]
    indexes: Mapping[str, tuple[str, ...]]
    types: Mapping[str, str]

    @property
    def index_attributes(self) -> frozenset[str]:
        return frozenset(name for keys in self.indexes.values() for name in keys)

    @property
    def sort_keys(self) -> frozenset[str]:
        return frozenset(keys[1] for keys in (self.key, *self.indexes.values()) if len(keys) > 1)


# The session table as issue 2 specifies it, written out independently of the store's own constants
# so a drift in either shows up as a lint failure.
SESSION_TABLE = TableLayout(
    key=("id",),
    indexes={
        "gsi-user": ("user", "created_at"),
        "gsi-status": ("status", "created_at"),
        "gsi-profile": ("profile", "created_at"),
        "gsi-server-instance": ("server_instance_id", "status"),
    },
    types={name: "S" for name in ("id", "user", "created_at", "status", "profile", "server_instance_id")},
)


def check_request(
    operation: str,
    params: Mapping[str, Any],
    layout: TableLayout = SESSION_TABLE,
    *,
    require_aliases: bool = False,
) -> list[str]:
    """Every reason the real DynamoDB would reject this request (empty if none).

    With `require_aliases`, any raw attribute name in an expression is a problem too (house rule:
    alias every name, so a future reserved word cannot break a request)."""
    checker = _Checker(layout, require_aliases)
    checker.check(operation, params)
    return checker.problems


@dataclass(slots=True)
class _Checker:
    layout: TableLayout
    require_aliases: bool
    problems: list[str] = field(default_factory=list)

    def check(self, operation: str, params: Mapping[str, Any]) -> None:
        for legacy in _LEGACY_PARAMS:
            if legacy in params:
                self.problems.append(f"legacy parameter {legacy} (use expressions)")
        names = self._check_expressions(params)
        handler = {
            "GetItem": self._key_only,
            "DeleteItem": self._key_only,
            "ConditionCheck": self._key_only,
            "PutItem": self._put_item,
            "UpdateItem": self._update_item,
            "Query": self._query,
            "Scan": self._scan,
            "BatchWriteItem": self._batch_write_item,
            "BatchGetItem": self._batch_get_item,
            "TransactWriteItems": self._transact_write_items,
        }.get(operation)
        if handler is not None:
            handler(params, names)

    # --- expressions -------------------------------------------------------------------------------

    def _check_expressions(self, params: Mapping[str, Any]) -> Mapping[str, str]:
        names: Mapping[str, str] = params.get("ExpressionAttributeNames") or {}
        values: Mapping[str, Any] = params.get("ExpressionAttributeValues") or {}
        for param in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
            if param in params and not params[param]:
                self.problems.append(f"{param} must not be empty")
        used: set[str] = set()
        for param in _EXPRESSION_PARAMS:
            expression = params.get(param)
            if expression is None:
                continue
            if len(expression.encode()) > MAX_EXPRESSION_BYTES:
                self.problems.append(f"{param} is longer than {MAX_EXPRESSION_BYTES} bytes")
            used |= self._check_words(param, expression)
        for placeholder, attribute in names.items():
            if not _NAME_PLACEHOLDER.fullmatch(placeholder):
                self.problems.append(f"ExpressionAttributeNames key {placeholder!r} is not #[A-Za-z0-9_]+")
            if not isinstance(attribute, str) or not attribute:
                self.problems.append(f"ExpressionAttributeNames {placeholder} maps to an empty name")
        for placeholder, value in values.items():
            if not _VALUE_PLACEHOLDER.fullmatch(placeholder):
                self.problems.append(f"ExpressionAttributeValues key {placeholder!r} is not :[A-Za-z0-9_]+")
            problem = _value_problem(value)
            if problem:
                self.problems.append(f"ExpressionAttributeValues {placeholder}: {problem}")
        defined = set(names) | set(values)
        for placeholder in sorted(used - defined):
            self.problems.append(f"{placeholder} is used in an expression but not defined")
        for placeholder in sorted(defined - used):
            kind = "Names" if placeholder.startswith("#") else "Values"
            self.problems.append(f"ExpressionAttribute{kind} defines {placeholder}, which no expression uses")
        return names

    def _check_words(self, param: str, expression: str) -> set[str]:
        keywords, functions = _GRAMMAR[param]
        tokens = _TOKEN.findall(expression)
        used: set[str] = set()
        for i, token in enumerate(tokens):
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            if token in ("#", ":"):
                self.problems.append(f"{param}: malformed placeholder in {expression!r}")
            elif token[0] in "#:":
                used.add(token)
            elif token[0].isalpha() or token[0] == "_":
                if token.upper() in keywords or (token in functions and following == "("):
                    continue
                if token.upper() in RESERVED_WORDS:
                    self.problems.append(f"{param}: reserved word {token!r} used as a raw attribute name")
                elif self.require_aliases:
                    self.problems.append(f"{param}: raw attribute name {token!r} (alias every name)")
        return used

    # --- keys and items ----------------------------------------------------------------------------

    def _key_value(self, where: str, attribute: str, value: Any) -> None:
        want = self.layout.types.get(attribute)
        problem = _value_problem(value)
        if problem:
            self.problems.append(f"{where}: {attribute}: {problem}")
            return
        (actual,) = value
        if want is not None and actual != want:
            self.problems.append(f"{where}: key attribute {attribute!r} is {actual}, the schema says {want}")
        elif actual in ("S", "B"):
            size = len(value[actual].encode() if actual == "S" else value[actual])
            limit = MAX_SORT_KEY_BYTES if attribute in self.layout.sort_keys else MAX_PARTITION_KEY_BYTES
            if size == 0:
                self.problems.append(f"{where}: key attribute {attribute!r} is empty")
            elif size > limit:
                self.problems.append(f"{where}: key attribute {attribute!r} is longer than {limit} bytes")

    def _primary_key(self, where: str, key: Mapping[str, Any] | None, required: tuple[str, ...]) -> None:
        key = key or {}
        if set(required) - set(key):
            self.problems.append(f"{where}: missing key attributes {sorted(set(required) - set(key))}")
        for attribute, value in key.items():
            if attribute not in self.layout.types:
                self.problems.append(f"{where}: {attribute!r} is not a key attribute")
            else:
                self._key_value(where, attribute, value)

    def _item(self, where: str, item: Mapping[str, Any] | None) -> None:
        item = item or {}
        for attribute in self.layout.key:
            if attribute not in item:
                self.problems.append(f"{where}: item lacks key attribute {attribute!r}")
        size = 0
        for attribute, value in item.items():
            if not attribute:
                self.problems.append(f"{where}: empty attribute name")
            if attribute in self.layout.types:
                self._key_value(where, attribute, value)
            else:
                problem = _value_problem(value)
                if problem:
                    self.problems.append(f"{where}: {attribute}: {problem}")
            size += len(attribute.encode()) + _value_size(value)
        if size > MAX_ITEM_BYTES:
            self.problems.append(f"{where}: item is larger than {MAX_ITEM_BYTES} bytes")

    # --- operations --------------------------------------------------------------------------------

    def _key_only(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        self._primary_key("Key", params.get("Key"), self.layout.key)

    def _put_item(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        self._item("Item", params.get("Item"))

    def _update_item(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        self._primary_key("Key", params.get("Key"), self.layout.key)
        expression = params.get("UpdateExpression")
        if expression is None:
            self.problems.append("UpdateItem without an UpdateExpression")
            return
        values: Mapping[str, Any] = params.get("ExpressionAttributeValues") or {}
        targets: list[str] = []
        for action, path, operand in _update_actions(_TOKEN.findall(expression)):
            resolved = [names.get(t, t) if t.startswith("#") else t for t in path]
            if not resolved:
                self.problems.append(f"UpdateExpression: {action} without a target")
                continue
            attribute = resolved[0]
            targets.append("".join(resolved))
            value = values.get(operand[0]) if len(operand) == 1 else None
            if attribute in self.layout.key:
                self.problems.append(f"UpdateExpression: cannot {action} key attribute {attribute!r}")
            elif attribute in self.layout.index_attributes and len(resolved) == 1:
                if action in ("ADD", "DELETE"):
                    self.problems.append(f"UpdateExpression: {action} on index key attribute {attribute!r}")
                elif action == "SET" and value is not None:
                    self._key_value("UpdateExpression", attribute, value)
            if (
                action == "ADD"
                and value is not None
                and next(iter(value), None) not in ("N", "SS", "NS", "BS")
            ):
                self.problems.append(f"UpdateExpression: ADD {attribute!r} needs a number or a set operand")
        for i, first in enumerate(targets):
            for second in targets[i + 1 :]:
                if (
                    first == second
                    or second.startswith((first + ".", first + "["))
                    or first.startswith((second + ".", second + "["))
                ):
                    self.problems.append(f"UpdateExpression: document paths {first!r} and {second!r} overlap")

    def _query(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        index = params.get("IndexName")
        if index is not None and index not in self.layout.indexes:
            self.problems.append(f"IndexName {index!r} is not an index of the table")
            return
        keys = self.layout.key if index is None else self.layout.indexes[index]
        if index is not None and params.get("ConsistentRead"):
            self.problems.append("ConsistentRead is not supported on a global secondary index")
        if params.get("Limit") is not None and params["Limit"] < 1:
            self.problems.append("Limit must be at least 1")
        if "ExclusiveStartKey" in params:
            required = tuple(dict.fromkeys((*self.layout.key, *keys)))
            self._primary_key("ExclusiveStartKey", params["ExclusiveStartKey"], required)
        expression = params.get("KeyConditionExpression")
        if expression is None:
            self.problems.append("Query without a KeyConditionExpression")
            return
        values: Mapping[str, Any] = params.get("ExpressionAttributeValues") or {}
        seen: list[str] = []
        for path, operator, operands in _key_conditions(_TOKEN.findall(expression)):
            attribute = names.get(path, path)
            seen.append(attribute)
            if attribute not in keys:
                self.problems.append(
                    f"KeyConditionExpression: {attribute!r} is not a key of {index or 'the table'}"
                )
                continue
            if attribute == keys[0] and operator != "=":
                self.problems.append(f"KeyConditionExpression: partition key {attribute!r} needs '='")
            for operand in operands:
                if operand in values:
                    self._key_value("KeyConditionExpression", attribute, values[operand])
        if keys[0] not in seen:
            self.problems.append(f"KeyConditionExpression: no condition on partition key {keys[0]!r}")
        if len(seen) != len(set(seen)) or len(seen) > 2:
            self.problems.append("KeyConditionExpression: at most one condition per key attribute")

    def _scan(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        if params.get("IndexName") is not None and params.get("ConsistentRead"):
            self.problems.append("ConsistentRead is not supported on a global secondary index")

    def _batch_write_item(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        requests = [r for table in (params.get("RequestItems") or {}).values() for r in table]
        if not 1 <= len(requests) <= MAX_BATCH_WRITE_ITEMS:
            self.problems.append(
                f"BatchWriteItem carries {len(requests)} requests (1..{MAX_BATCH_WRITE_ITEMS})"
            )
        keys: list[tuple[str, ...]] = []
        for request in requests:
            if "PutRequest" in request:
                item = request["PutRequest"].get("Item") or {}
                self._item("PutRequest", item)
            else:
                item = request.get("DeleteRequest", {}).get("Key") or {}
                self._primary_key("DeleteRequest", item, self.layout.key)
            keys.append(tuple(repr(item.get(k)) for k in self.layout.key))
        if len(keys) != len(set(keys)):
            self.problems.append("BatchWriteItem has two requests for the same key")

    def _batch_get_item(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        tables = (params.get("RequestItems") or {}).values()
        keys = [key for table in tables for key in table.get("Keys", [])]
        if not 1 <= len(keys) <= MAX_BATCH_GET_KEYS:
            self.problems.append(f"BatchGetItem asks for {len(keys)} keys (1..{MAX_BATCH_GET_KEYS})")
        for key in keys:
            self._primary_key("Keys", key, self.layout.key)
        if len({repr(sorted(k.items())) for k in keys}) != len(keys):
            self.problems.append("BatchGetItem asks for the same key twice")

    def _transact_write_items(self, params: Mapping[str, Any], names: Mapping[str, str]) -> None:
        items = params.get("TransactItems") or []
        if not 1 <= len(items) <= MAX_TRANSACT_ITEMS:
            self.problems.append(f"TransactWriteItems carries {len(items)} actions (1..{MAX_TRANSACT_ITEMS})")
        inner = {
            "Put": "PutItem",
            "Update": "UpdateItem",
            "Delete": "DeleteItem",
            "ConditionCheck": "ConditionCheck",
        }
        for item in items:
            for kind, operation in inner.items():
                if kind in item:
                    self.check(operation, item[kind])


def _update_actions(tokens: list[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """(action, target path tokens, operand tokens) for each action of an UpdateExpression."""
    action = ""
    current: list[str] = []
    depth = 0

    def split(action: str, tokens: list[str]) -> tuple[str, list[str], list[str]]:
        if action == "SET" and "=" in tokens:
            at = tokens.index("=")
            return action, tokens[:at], tokens[at + 1 :]
        if action in ("ADD", "DELETE") and tokens:
            return action, tokens[:-1], tokens[-1:]
        return action, tokens, []

    for token in tokens:
        if depth == 0 and token.upper() in _UPDATE_ACTIONS:
            if current:
                yield split(action, current)
            action, current = token.upper(), []
        elif depth == 0 and token == ",":
            yield split(action, current)
            current = []
        else:
            depth += (token == "(") - (token == ")")
            current.append(token)
    if current:
        yield split(action, current)


def _key_conditions(tokens: list[str]) -> Iterator[tuple[str, str, list[str]]]:
    """(attribute path, operator, operand placeholders) for each condition of a key condition."""
    tokens = [t for t in tokens if t not in ("(", ")", ",")]
    i = 0
    while i < len(tokens):
        if tokens[i] == "begins_with" and i + 2 < len(tokens):
            yield tokens[i + 1], "begins_with", [tokens[i + 2]]
            i += 3
        elif i + 1 < len(tokens) and tokens[i + 1].upper() == "BETWEEN" and i + 4 < len(tokens):
            yield tokens[i], "BETWEEN", [tokens[i + 2], tokens[i + 4]]
            i += 5
        elif i + 2 < len(tokens):
            yield tokens[i], tokens[i + 1], [tokens[i + 2]]
            i += 3
        else:
            i += 1
        if i < len(tokens) and tokens[i].upper() == "AND":
            i += 1


def _value_size(value: Any) -> int:
    """Bytes an AttributeValue counts towards the item limit: UTF-8 strings and binary exactly;
    numbers and nested values by their text, which over-counts (the safe side)."""
    ((kind, data),) = value.items() if isinstance(value, Mapping) and len(value) == 1 else (("?", value),)
    if kind == "S" and isinstance(data, str):
        return len(data.encode())
    if kind == "B" and isinstance(data, bytes | bytearray):
        return len(data)
    return len(repr(data).encode())


def _value_problem(value: Any) -> str | None:
    """Why `value` is not a valid DynamoDB AttributeValue, or None."""
    if not isinstance(value, Mapping) or len(value) != 1:
        return "an AttributeValue has exactly one type key"
    ((kind, data),) = value.items()
    if kind not in _TYPES:
        return f"unknown AttributeValue type {kind!r}"
    if kind == "N" and not (isinstance(data, str) and _NUMBER.fullmatch(data)):
        return f"{data!r} is not a number string"
    if kind == "S" and not isinstance(data, str):
        return "S value is not a string"
    if kind in ("SS", "NS", "BS") and (not data or len(set(data)) != len(data)):
        return f"{kind} must be non-empty without duplicates"
    if kind == "NULL" and data is not True:
        return "NULL must be true"
    return None


class DynamoDBLint:
    """Checks every request of the clients it is attached to; see the module docstring."""

    def __init__(self, layout: TableLayout = SESSION_TABLE, *, require_aliases: bool = True) -> None:
        self.layout = layout
        self.require_aliases = require_aliases
        self.checked: list[str] = []
        self.violations: list[str] = []

    def attach(self, events: Any) -> None:
        """Register on an event emitter (a session's `events`, or a client's `meta.events`)."""
        events.register("before-parameter-build.dynamodb", self._on_request)

    def session(self) -> aioboto3.Session:
        """A fresh aioboto3 session whose clients are all checked."""
        session = aioboto3.Session()
        self.attach(session.events)
        return session

    def assert_clean(self) -> None:
        assert not self.violations, "invalid DynamoDB requests:\n" + "\n".join(self.violations)

    def _on_request(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        operation: str = model.name
        self.checked.append(operation)
        problems = check_request(operation, params, self.layout, require_aliases=self.require_aliases)
        if problems:
            self.violations.extend(f"{operation}: {problem}" for problem in problems)
            raise DynamoDBRequestInvalid(operation, problems)


def linted_session(request: pytest.FixtureRequest) -> aioboto3.Session:
    """For a fixture: an aioboto3 session whose every DynamoDB request is checked, and which fails
    the test at teardown if any request was invalid (even if something caught the error).

    Pass it to `DynamoDBSessionStore.open(..., session=...)` or `create_session_table`."""
    lint = DynamoDBLint()
    request.addfinalizer(lint.assert_clean)
    return lint.session()
