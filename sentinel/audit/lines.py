"""What a decision log line says and how it is encoded: `DecisionEntry`, request ids, JSON bytes.

A line is one JSON object with the fields of `DecisionEntry`, in its order. Everything after
`time` and `request_id` is the same for every request with the same outcome (same policy,
decision, status, credentials), so the hot path encodes that *tail* once per outcome
(`encode_tail`), and per request only puts the time and request id in front (`LineFormatter`).
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

__all__ = ["DecisionEntry", "LineFormatter", "RequestIds", "encode_entry", "encode_tail"]

_DUMPS_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_APPEND_NEWLINE
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionEntry:
    """One decision as logged. Deliberately has no field for a key, secret or token.

    Times are UTC (`Z` in the log); an aware time in another zone is converted when written.
    `rule`/`rule_index` are None when no rule matched (the default deny); the credential fields are
    None when no credentials were issued.
    """

    time: datetime
    request_id: str
    user: str
    profile: str
    effect: str
    rule: str | None
    rule_index: int | None
    reason: str
    mode: str
    policy_source: str
    policy_hash: str
    status: int
    session_id: str | None = None
    source_identity: str | None = None
    role_arn: str | None = None
    expiration: datetime | None = None
    cache_hit: bool | None = None
    # The local user on the other end of the connection (`--allow-user`, issue 11); None without it.
    caller_uid: int | None = None
    caller_user: str | None = None


class RequestIds:
    """Request ids unique within the process and, with overwhelming odds, across restarts.

    A random 32-bit process prefix and a counter (`3f9a1c2e-1b`): no syscall, no lock
    (`itertools.count` is atomic under the GIL). The decision log takes numbers from `counter`
    on the hot path and formats them only when it writes.
    """

    __slots__ = ("counter", "prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = secrets.token_hex(4) if prefix is None else prefix
        self.counter = itertools.count(1)

    def new_request_id(self) -> str:
        return f"{self.prefix}-{next(self.counter):x}"


def encode_entry(entry: DecisionEntry) -> bytes:
    """The entry's line, newline included. Raises orjson.JSONEncodeError for a wrongly typed field."""
    # orjson serializes the slotted dataclass natively, in field order; the identity checks keep
    # the common case (times already in datetime.UTC) free of conversions.
    expiration = entry.expiration
    if entry.time.tzinfo is not UTC or (expiration is not None and expiration.tzinfo is not UTC):
        entry = dataclasses.replace(
            entry, time=_utc(entry.time), expiration=None if expiration is None else _utc(expiration)
        )
    return orjson.dumps(entry, option=_DUMPS_OPTIONS)


def _utc(moment: datetime) -> datetime:
    # Naive times are taken as UTC (OPT_NAIVE_UTC); aware ones are converted so the log says `Z`.
    return moment if moment.tzinfo is None else moment.astimezone(UTC)


# What every encoded line starts with when its time is the epoch and its request id empty.
_HEAD = b'{"time":"1970-01-01T00:00:00Z","request_id":"",'


def encode_tail(entry: DecisionEntry) -> bytes:
    """The entry's line after `time` and `request_id` (from `"user":` to the newline).

    `entry.time` and `entry.request_id` are ignored: the log fills them in per request."""
    line = encode_entry(dataclasses.replace(entry, time=_EPOCH, request_id=""))
    if not line.startswith(_HEAD):  # only if DecisionEntry's first two fields change
        raise AssertionError(f"decision line head changed: {line[:60]!r}")
    return line[len(_HEAD) :]


class LineFormatter:
    """Whole lines from (wall time in ns, request number, tail), exactly as `encode_entry` would.

    Called once per request: the `YYYY-MM-DDTHH:MM:SS` part is formatted once per second, the
    rest is one bytes `%` operation. Like orjson, a time on a whole second has no fraction.
    """

    __slots__ = ("_fraction", "_second", "_stamp", "_whole")

    def __init__(self, request_id_prefix: str) -> None:
        prefix = orjson.dumps(request_id_prefix)[1:-1].replace(b"%", b"%%")  # escaped, in case
        self._fraction = b'{"time":"%b.%06dZ","request_id":"' + prefix + b'-%x",%b'
        self._whole = b'{"time":"%bZ","request_id":"' + prefix + b'-%x",%b'
        self._second = 0  # the second being stamped, in µs since the epoch
        self._stamp = b""

    def line(self, nanoseconds: int, number: int, tail: bytes) -> bytes:
        # One subtraction and a chained compare per call; the stamp changes once a second.
        micros = nanoseconds // 1000 - self._second
        if not 0 <= micros < 1_000_000:
            second = nanoseconds // 1_000_000_000
            self._second = second * 1_000_000
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            micros = nanoseconds // 1000 - self._second
        if micros:
            return self._fraction % (self._stamp, micros, number, tail)
        return self._whole % (self._stamp, number, tail)
