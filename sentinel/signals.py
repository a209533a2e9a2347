"""What SIGTERM, SIGINT and SIGHUP ask of `serve`, from the first moment of startup (issues 10, 11).

The handler only records: a stop, or a pending reload. A stop also cancels what is interruptible
at that moment (the startup, a reload in progress), so shutdown never waits behind a hung policy
source, STS or session store. Serving itself is never cancelled: the daemon's loop wakes up and
shuts down in the fixed order (DESIGN.md §5), so in-flight writes land instead of being cut off.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from enum import StrEnum

import anyio
from anyio.abc import TaskStatus

from sentinel.systemd import SystemdNotifier

_log = logging.getLogger("sentinel")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Request(StrEnum):
    STOP = "stop"
    RELOAD = "reload"


class ServeSignals:
    """Stop and reload requests for one `serve` process; everything runs on the event loop."""

    def __init__(self, notifier: SystemdNotifier) -> None:
        self._notifier = notifier
        self._stopping = False
        self._reload_pending = False
        self._wake = anyio.Event()
        self._interruptible: set[anyio.CancelScope] = set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(
        self, received: AsyncIterator[int], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Handle each signal from `received` (an anyio signal receiver) until cancelled."""
        task_status.started()
        async for signum in received:
            self.handle(signum)

    def handle(self, signum: int) -> None:
        """SIGHUP: reload when serving (one pending reload, however many arrive; one that arrives
        during startup runs right after READY). SIGTERM/SIGINT: `stop()`."""
        if signum != signal.SIGHUP:
            self.stop(f"received {signal.Signals(signum).name}")
        elif not self._stopping:
            _log.info("received SIGHUP: reload requested")
            self._reload_pending = True
            self._wake.set()

    def stop(self, reason: str | None = None) -> None:
        """Begin shutdown, once: STOPPING=1, cancel what is interruptible, wake the loop."""
        if self._stopping:
            return
        self._stopping = True
        if reason is not None:
            _log.info("%s: shutting down", reason)
        self._notifier.stopping()
        for scope in self._interruptible:
            scope.cancel()
        self._wake.set()

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A block that a stop cancels (cancelled at once if the stop came first).

        `detach()` the yielded scope where the block turns into work a stop must not cut off."""
        with anyio.CancelScope() as scope:
            if self._stopping:
                scope.cancel()
            self._interruptible.add(scope)
            try:
                yield scope
            finally:
                self._interruptible.discard(scope)

    def detach(self, scope: anyio.CancelScope) -> None:
        """From here on a stop no longer cancels `scope` (one already delivered stays)."""
        self._interruptible.discard(scope)

    async def wait_request(self) -> Request:
        """The next thing to do: STOP once stopping, else RELOAD for a pending SIGHUP."""
        while True:
            if self._stopping:
                return Request.STOP
            if self._reload_pending:
                self._reload_pending = False
                return Request.RELOAD
            await self._wake.wait()
            self._wake = anyio.Event()
