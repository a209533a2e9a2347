"""`Broadcast`: wake every waiter when something changed (a generic primitive, no sentinel imports)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel


class Broadcast:
    """Wakes every waiter when something changed; each waiter re-checks its own condition.

    The event is only allocated while someone waits, so `notify()` on the drain path is a
    single attribute check when nobody does."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true; always a checkpoint, so a loop of waits yields."""
        await anyio.lowlevel.checkpoint()
        while not predicate():
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
