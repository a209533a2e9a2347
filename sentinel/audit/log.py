"""The decision log's buffer and writer: the hot path appends bytes, the loop writes small batches.

Per request, `log_encoded_nowait(tail)` puts the time and a request id in front of `tail`, the
pre-encoded rest of the line (`encode_tail`, once per outcome), with one bytes `%`, and appends
the line to a bounded deque: no entry object, no serialisation, no syscall (issue 12: the old
design built and serialised an object graph per request and cost more than the rest of the
pipeline). `flush_interval` after the first line the `run()` task joins what has gathered (up to
`MAX_BATCH` lines, one C-level join) and writes it with one write(2).

Small batches, written on the event loop (issue 12, DESIGN.md §7): the kernel's copy of a batch
costs about a quarter of the time the batch took to gather, and whoever makes it holds the one
CPU the loop needs for that long. 50 ms batches handed to a worker thread put 5-7 ms on the p99 of
every request (the thread's write, and the GIL hand-offs around it, on the loop's CPU); 2 ms
batches written by the loop itself put about 0.5 ms. The thread stays for what may block: a file
that is not a regular file (a FIFO), a reopen (it fsyncs), a backlog larger than
`SYNC_MAX_LINES` (after a stall), and for good once a write on the loop took longer than
`SLOW_WRITE` (a slow disk holds the loop for that one write, then only a thread and the buffer).

Durability: lines reach the kernel within `flush_interval` (2 ms by default) of the request, so
a SIGKILL or a crash loses at most that much; the file is fsync'ed when the log is closed and
before a rotated file is let go (SIGHUP reopen), not per batch (a power loss can cost what the
kernel had not written back yet). A full buffer drops the new line and counts it (metrics and a
rate-limited warning); a failing disk counts and warns; neither reaches the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson
from anyio.abc import TaskStatus

from sentinel.audit.lines import DecisionEntry, LineFormatter, RequestIds, encode_entry
from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.errors import ConfigError
from sentinel.metrics import Registry
from sentinel.ratelimit import Throttle

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_FLUSH_INTERVAL",
    "MAX_BATCH",
    "DecisionLog",
    "DecisionLogStatistics",
    "DecisionLogger",
    "NullDecisionLogger",
    "open_decision_log",
]

logger = logging.getLogger("sentinel.audit")

# About 1 s of lines at 130k requests/s (some 60 MB at most, only while the disk stalls; writes
# to a busy disk were seen to block for 0.2-0.5 s): a longer stall drops lines.
DEFAULT_CAPACITY = 131_072
# How long lines gather before a write: short, because a batch's write holds the loop's CPU for
# about a quarter of this (see above; bench scenarios h and p).
DEFAULT_FLUSH_INTERVAL = 0.002
# Lines per write(2) (about 7 MB); the cap keeps one write short when shutdown is waiting for it.
MAX_BATCH = 16_384
# Larger batches (a backlog after a stall) go to a worker thread: about 0.7 MB, 1-2 ms of copying.
SYNC_MAX_LINES = 1024
# A write on the loop slower than this moves writing to the thread for good (a slow disk).
SLOW_WRITE = 0.02
WARNING_INTERVAL = 60.0
_FULL = "decision log buffer is full or closed; dropping entries"


@dataclass(frozen=True, slots=True)
class DecisionLogStatistics:
    """Counts since start. Every logged entry is eventually exactly one of written or dropped.

    `dropped` covers both a full (or closed) buffer and entries lost to a failed write;
    `write_errors` counts the failed operations (writes, reopens, fsyncs) themselves.
    """

    written: int
    dropped: int
    pending: int
    write_errors: int


class DecisionLog(Protocol):
    """What the server and the daemon use; `DecisionLogger` or the no-op `NullDecisionLogger`."""

    @property
    def enabled(self) -> bool: ...

    def new_request_id(self) -> str: ...

    def log_encoded_nowait(self, tail: bytes) -> None: ...

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


def _open(path: str) -> int:
    # O_APPEND: each write lands at the end even if logrotate (copytruncate) or another writer moved
    # it. 0o600 applies only when the file is created; an existing file keeps its mode.
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _durable(fd: int) -> bool:
    # fsync means something for a regular file only (stderr, a pipe or /dev/full reject it).
    return stat.S_ISREG(os.fstat(fd).st_mode)


class DecisionLogger:
    """Writes decision lines as JSON to a file (appending) or to stderr (`-`).

    Use from the event loop thread: `log_encoded_nowait` (or `log_nowait`) on the hot path, `run()`
    in a task group, and `aclose(timeout)` at shutdown (or `async with`). The file is opened by
    the constructor, so a bad path is a startup `ConfigError`, not a stream of warnings.
    """

    def __init__(
        self,
        destination: str,
        *,
        capacity: int = DEFAULT_CAPACITY,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        registry: Registry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        request_ids: RequestIds | None = None,
        slow_write: float = SLOW_WRITE,
    ) -> None:
        """`destination` is a file path or `-` for stderr; `capacity` bounds the lines held;
        `slow_write`: seconds a write on the loop may take before writing moves to a thread."""
        if capacity < 1:
            raise ConfigError(f"decision log capacity must be at least 1, not {capacity}")
        self._path = None if destination == "-" else destination
        try:
            self._fd: int | None = 2 if self._path is None else _open(self._path)
            self._fsync = self._path is not None and _durable(self._fd)
            # A regular file takes page-cache copies on the loop; anything else may block (a FIFO
            # whose reader stalls) and is written from a thread. stderr is always written here.
            self._on_loop = self._path is None or _durable(self._fd)
        except OSError as error:
            raise ConfigError(f"--decision-log {destination}: {error.strerror or error}") from None
        self._capacity = capacity
        self._flush_interval = flush_interval
        self._slow_write = slow_write
        self._buffer: deque[bytes] = deque()
        self._ids = request_ids or RequestIds()
        self._numbers = self._ids.counter
        self._line = LineFormatter(self._ids.prefix).line
        # anyio's Event and Lock may be created outside the event loop; they bind to it on first use.
        self._wakeup = anyio.Event()
        self._lock = anyio.Lock()
        self._closing = False
        self._reopen_requested = False
        self._torn = False  # only touched by the one write in progress
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
            registry.gauge(
                "decision_log_pending", "Decision log entries waiting to be written."
            ).set_function(lambda: self.statistics().pending)

    @property
    def enabled(self) -> bool:
        return True

    def new_request_id(self) -> str:
        return self._ids.new_request_id()

    def log_encoded_nowait(self, tail: bytes) -> None:
        """Queue a line with this `tail` (`encode_tail`), stamped now with a new request id.

        The hot path: O(1), never awaits, never raises; drops and counts when the buffer is full."""
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            self._drop(1, _FULL)
            return
        buffer.append(self._line(time.time_ns(), next(self._numbers), tail))
        if len(buffer) == 1:
            # Only the empty -> non-empty edge needs a wake-up: a writer that is busy re-checks
            # the buffer before it waits again.
            self._wakeup.set()

    def log_nowait(self, entry: DecisionEntry) -> None:
        """Queue a whole entry, encoded now (for callers off the hot path); never raises."""
        if len(self._buffer) >= self._capacity:
            self._drop(1, _FULL)
            return
        try:
            line = encode_entry(entry)
        except orjson.JSONEncodeError as error:
            # A value of the wrong type (a caller's bug) loses that entry, nothing else.
            self._account(1, 0, [f"unserializable entry: {error}"])
            return
        self._buffer.append(line)
        if len(self._buffer) == 1:
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
        """The background writer: waits for lines, lets a batch gather, writes it, until `aclose()`.

        Sleeps `flush_interval` before every batch, also when lines are waiting: under load that
        is what makes one write per interval instead of one per line."""
        task_status.started()
        while self._fd is not None:  # None once closed
            if not self._buffer and not self._reopen_requested:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
            await anyio.sleep(self._flush_interval)
            await self._write_batch()

    async def flush(self) -> None:
        """Write everything pending, including what arrives meanwhile; returns when the buffer is empty."""
        while (self._buffer or self._reopen_requested) and self._fd is not None:
            await self._write_batch()

    async def _write_batch(self) -> None:
        # One batch per lock hold: batches are taken in order and written one at a time, and
        # `aclose` can get in between batches when its deadline has passed.
        async with self._lock:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if self._fd is None or not (self._buffer or self._reopen_requested):
                return  # closed, or another writer took the lines meanwhile
            count, data = self._take_batch()
            reopen, self._reopen_requested = self._reopen_requested, False
            try:
                if self._path is None:
                    # stderr is shared with the process's own log lines, which are written on
                    # this thread: writing here too keeps each line whole.
                    written, errors = self._write(data, count, reopen)
                elif self._on_loop and not reopen and count <= SYNC_MAX_LINES:
                    started = time.perf_counter()
                    written, errors = self._write(data, count, reopen)
                    took = time.perf_counter() - started
                    if took > self._slow_write:
                        self._on_loop = False
                        logger.warning(
                            "decision log: a write took %.0f ms; writing from a thread from now on",
                            took * 1000,
                        )
                else:
                    # Not abandoned on cancellation: the thread owns the fd until it returns.
                    written, errors = await anyio.to_thread.run_sync(self._write, data, count, reopen)
            finally:
                self._in_flight = 0
            self._account(count, written, errors)

    def _take_batch(self) -> tuple[int, bytes]:
        """Up to MAX_BATCH lines from the buffer, joined; counted as in flight until written."""
        buffer = self._buffer
        if len(buffer) <= MAX_BATCH:
            # The common case: take the whole deque and start a new one, in O(1).
            self._buffer = deque()
            batch: deque[bytes] | list[bytes] = buffer
        else:
            batch = [buffer.popleft() for _ in range(MAX_BATCH)]
        self._in_flight = len(batch)
        return len(batch), b"".join(batch)

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (see DecisionLog)
        """Stop accepting lines, write what is pending for up to `timeout` seconds, fsync, close.

        What is still pending at the deadline is counted as dropped. A batch already being written
        is waited for (a thread cannot be interrupted), so the deadline can be overrun by one batch.
        """
        if self._closing:
            return
        self._closing = True
        self._capacity = 0  # the log_*_nowait calls now drop, with no extra branch on the hot path
        with anyio.move_on_after(timeout, shield=True):
            await self.flush()
            if self._fsync:
                # Abandoned at the deadline: a hung disk must not hang shutdown.
                self._account(0, 0, await anyio.to_thread.run_sync(self._sync, abandon_on_cancel=True))
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

    def _sync(self) -> list[str]:
        """Worker thread: fsync the file; returns error descriptions."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as error:
                return [f"fsync {self._path}: {error.strerror or error}"]
        return []

    def _write(self, data: bytes, count: int, reopen: bool) -> tuple[int, list[str]]:
        """(Re)open, then write `data` (`count` lines). Returns lines written and error descriptions."""
        errors: list[str] = []
        if reopen and self._path is not None and self._fd is not None:
            try:
                fd = _open(self._path)
            except OSError as error:
                # Keep writing to the old file: late lines in a rotated file beat lost lines.
                errors.append(f"reopen {self._path}: {error.strerror or error}")
            else:
                old, self._fd = self._fd, fd
                with contextlib.suppress(OSError):  # the old file's last writes already succeeded
                    if self._fsync:
                        os.fsync(old)  # the rotated file is complete on disk before we let it go
                    os.close(old)
                self._fsync = _durable(fd)
                if not self._fsync:
                    self._on_loop = False  # the new one is a FIFO or a device: it may block
                self._torn = False
        if not data or self._fd is None:
            return 0, errors
        # After a partial write the file ends mid-line; start on a fresh line so the next entry
        # stays parseable.
        prefix = b"\n" if self._torn else b""
        data = prefix + data
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
        return count, errors

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

    def log_encoded_nowait(self, tail: bytes) -> None:
        pass

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
