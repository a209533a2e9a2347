"""The decision log: one JSON line per policy decision, written off the event loop's critical path.

The hot path calls `log_nowait(entry)`, which only appends the entry object to a bounded buffer
(DESIGN.md §3: nothing waits on a log file). A background `run()` task drains the buffer in batches,
and a worker thread serializes each batch with orjson and writes it with as few syscalls as it can.
A full buffer drops the entry and counts it; a failing disk counts and warns; neither reaches the
caller. Entries can never carry a secret: `DecisionEntry` has no field that could hold one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import secrets
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import anyio
import orjson
from anyio.abc import TaskStatus

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.errors import ConfigError
from sentinel.metrics import Registry
from sentinel.ratelimit import Throttle

__all__ = [
    "DecisionEntry",
    "DecisionLog",
    "DecisionLogStatistics",
    "DecisionLogger",
    "NullDecisionLogger",
    "RequestIds",
    "open_decision_log",
]

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
# Lines per write(2). Big enough that a burst costs a few syscalls and thread hand-offs, small
# enough that one batch finishes quickly when shutdown is waiting for it.
MAX_BATCH = 1024
WARNING_INTERVAL = 60.0
_DUMPS_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_APPEND_NEWLINE


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


@dataclass(frozen=True, slots=True)
class DecisionLogStatistics:
    """Counts since start. Every logged entry is eventually exactly one of written or dropped.

    `dropped` covers both a full (or closed) buffer and entries lost to a failed write;
    `write_errors` counts the failed operations (writes, reopens) themselves.
    """

    written: int
    dropped: int
    pending: int
    write_errors: int


class RequestIds:
    """Request ids unique within the process and, with overwhelming odds, across restarts.

    A random 32-bit process prefix and a counter (`3f9a1c2e-1b`): one `next()` and a format per
    request, no syscall, no lock (`itertools.count` is atomic under the GIL).
    """

    __slots__ = ("_counter", "prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = secrets.token_hex(4) if prefix is None else prefix
        self._counter = itertools.count(1)

    def new_request_id(self) -> str:
        return f"{self.prefix}-{next(self._counter):x}"


class DecisionLog(Protocol):
    """What the server and the daemon use; `DecisionLogger` or the no-op `NullDecisionLogger`."""

    @property
    def enabled(self) -> bool: ...

    def new_request_id(self) -> str: ...

    def log_nowait(self, entry: DecisionEntry) -> None: ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    async def flush(self) -> None: ...

    # A parameter, not the caller's cancel scope: shutdown calls this from an already-cancelled
    # scope, so aclose shields itself and needs its own bound.
    async def aclose(self, timeout: float = ...) -> None: ...  # noqa: ASYNC109

    def reopen(self) -> None: ...

    def statistics(self) -> DecisionLogStatistics: ...

    async def __aenter__(self) -> DecisionLog: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class _Throttle:
    """Logs a warning at most once per interval and says how many it held back in between."""

    __slots__ = ("_clock", "_suppressed", "_window")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._window = Throttle(WARNING_INTERVAL)
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        if not self._window.allow(self._clock.monotonic()):
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        logger.warning(message, *args)


def _serialize(entry: DecisionEntry) -> bytes:
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


def _open(path: str) -> int:
    # O_APPEND: each write lands at the end even if logrotate (copytruncate) or another writer moved
    # it. 0o600 applies only when the file is created; an existing file keeps its mode.
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


class DecisionLogger:
    """Writes decision entries as JSON lines to a file (appending) or to stderr (`-`).

    Use from the event loop thread: `log_nowait` on the hot path, `run()` in a task group, and
    `aclose(timeout)` at shutdown (or `async with`). The file is opened by the constructor, so a
    bad path is a startup `ConfigError`, not a stream of warnings.
    """

    def __init__(
        self,
        destination: str,
        *,
        capacity: int = DEFAULT_CAPACITY,
        registry: Registry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        request_ids: RequestIds | None = None,
    ) -> None:
        """`destination` is a file path or `-` for stderr; `capacity` bounds the entries held."""
        if capacity < 1:
            raise ConfigError(f"decision log capacity must be at least 1, not {capacity}")
        self._path = None if destination == "-" else destination
        try:
            self._fd: int | None = 2 if self._path is None else _open(self._path)
        except OSError as error:
            raise ConfigError(f"--decision-log {destination}: {error.strerror or error}") from None
        self._capacity = capacity
        self._buffer: deque[DecisionEntry] = deque()
        self._ids = request_ids or RequestIds()
        # anyio's Event and Lock may be created outside the event loop; they bind to it on first use.
        self._wakeup = anyio.Event()
        self._lock = anyio.Lock()
        self._closing = False
        self._reopen_requested = False
        self._torn = False  # only touched by the (single) writer thread
        self._in_flight = 0
        # written, dropped, write_errors; only ever changed on the event loop thread.
        self._counts = [0, 0, 0]
        self._drop_warning = _Throttle(clock)
        self._error_warning = _Throttle(clock)
        self._metrics = None
        if registry is not None:
            self._metrics = (
                registry.counter("decision_log_written_total", "Decision log entries written."),
                registry.counter(
                    "decision_log_dropped_total", "Decision log entries dropped (buffer full or write error)."
                ),
                registry.counter("decision_log_write_errors_total", "Failed decision log writes."),
            )

    @property
    def enabled(self) -> bool:
        return True

    def new_request_id(self) -> str:
        return self._ids.new_request_id()

    def log_nowait(self, entry: DecisionEntry) -> None:
        """Queue `entry` for writing: O(1), never awaits, never raises; drops and counts when full."""
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            self._drop(1, "decision log buffer is full or closed; dropping entries")
            return
        buffer.append(entry)
        if len(buffer) == 1:
            # Only the empty -> non-empty edge needs a wake-up: a writer that is busy re-checks
            # the buffer before it waits again.
            self._wakeup.set()

    def reopen(self) -> None:
        """Reopen the file before the next write (for logrotate on SIGHUP); sync, returns at once."""
        if self._path is not None:
            self._reopen_requested = True
            self._wakeup.set()

    def statistics(self) -> DecisionLogStatistics:
        written, dropped, write_errors = self._counts
        return DecisionLogStatistics(written, dropped, len(self._buffer) + self._in_flight, write_errors)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The background writer: sleeps until entries arrive, writes them, until `aclose()`."""
        task_status.started()
        while self._fd is not None:  # None once closed
            if not self._buffer and not self._reopen_requested:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write everything pending, including what arrives meanwhile; returns when the buffer is empty."""
        while self._buffer or self._reopen_requested:
            # One batch per lock hold: batches are taken in order and written one at a time, and
            # `aclose` can get in between batches when its deadline has passed.
            async with self._lock:
                if self._fd is None:
                    return
                count = min(len(self._buffer), MAX_BATCH)
                batch = [self._buffer.popleft() for _ in range(count)]
                reopen, self._reopen_requested = self._reopen_requested, False
                self._in_flight = count
                try:
                    # Not abandoned on cancellation: the thread owns the fd until it returns.
                    written, errors = await anyio.to_thread.run_sync(self._write_batch, batch, reopen)
                finally:
                    self._in_flight = 0
                self._account(count, written, errors)

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (see DecisionLog)
        """Stop accepting entries, write what is pending for up to `timeout` seconds, close the file.

        What is still pending at the deadline is counted as dropped. A batch already being written
        is waited for (a thread cannot be interrupted), so the deadline can be overrun by one batch.
        """
        if self._closing:
            return
        self._closing = True
        self._capacity = 0  # log_nowait now drops, with no extra branch on the hot path
        with anyio.move_on_after(timeout, shield=True):
            await self.flush()
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._fd is not None and self._path is not None:
                    os.close(self._fd)
                self._fd = None
        if self._buffer:
            lost = len(self._buffer)
            self._buffer.clear()
            self._drop(lost, "decision log closed with %d entries unwritten", lost)
        self._wakeup.set()  # let run() see that it is closed

    async def __aenter__(self) -> DecisionLogger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _write_batch(self, batch: list[DecisionEntry], reopen: bool) -> tuple[int, list[str]]:
        """Worker thread: (re)open, serialize, write. Returns lines written and error descriptions."""
        errors: list[str] = []
        if reopen and self._path is not None and self._fd is not None:
            try:
                fd = _open(self._path)
            except OSError as error:
                # Keep writing to the old file: late lines in a rotated file beat lost lines.
                errors.append(f"reopen {self._path}: {error.strerror or error}")
            else:
                with contextlib.suppress(OSError):  # the old file's last writes already succeeded
                    os.close(self._fd)
                self._fd = fd
                self._torn = False
        lines: list[bytes] = []
        for entry in batch:
            try:
                lines.append(_serialize(entry))
            except orjson.JSONEncodeError as error:
                # A value of the wrong type (a caller's bug) loses that entry, not the batch.
                errors.append(f"unserializable entry: {error}")
        if not lines or self._fd is None:
            return 0, errors
        # After a partial write the file ends mid-line; start on a fresh line so the next entry
        # stays parseable.
        prefix = b"\n" if self._torn else b""
        data = prefix + b"".join(lines)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as error:
            errors.append(f"write {self._path or 'stderr'}: {error.strerror or error}")
            if done:  # nothing written leaves the file ending as it did
                self._torn = data[done - 1] != ord("\n")
            return data.count(b"\n", len(prefix), done), errors
        self._torn = False
        return len(lines), errors

    def _account(self, taken: int, written: int, errors: list[str]) -> None:
        counts = self._counts
        counts[0] += written
        counts[2] += len(errors)
        if self._metrics is not None:
            self._metrics[0].inc(amount=written)
            if errors:
                self._metrics[2].inc(amount=len(errors))
        if written < taken:
            self._drop(taken - written)  # the errors below are the warning
        for error in errors:
            self._error_warning.warning("decision log: %s", error)

    def _drop(self, count: int, message: str | None = None, *args: object) -> None:
        self._counts[1] += count
        if self._metrics is not None:
            self._metrics[1].inc(amount=count)
        if message is not None:
            self._drop_warning.warning(message, *args)


class NullDecisionLogger:
    """The decision log when none is configured: same interface, does nothing, costs nothing."""

    __slots__ = ("_ids",)

    def __init__(self, request_ids: RequestIds | None = None) -> None:
        self._ids = request_ids or RequestIds()

    @property
    def enabled(self) -> bool:
        return False

    def new_request_id(self) -> str:
        return self._ids.new_request_id()

    def log_nowait(self, entry: DecisionEntry) -> None:
        pass

    def reopen(self) -> None:
        pass

    def statistics(self) -> DecisionLogStatistics:
        return DecisionLogStatistics(0, 0, 0, 0)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def flush(self) -> None:
        pass

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (see DecisionLog)
        pass

    async def __aenter__(self) -> NullDecisionLogger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


def open_decision_log(
    destination: str | None,
    *,
    capacity: int = DEFAULT_CAPACITY,
    registry: Registry | None = None,
    clock: Clock = SYSTEM_CLOCK,
    request_ids: RequestIds | None = None,
) -> DecisionLog:
    """The logger for `--decision-log`: a path, `-` for stderr, or None for the no-op logger."""
    if destination is None:
        return NullDecisionLogger(request_ids)
    return DecisionLogger(
        destination, capacity=capacity, registry=registry, clock=clock, request_ids=request_ids
    )
