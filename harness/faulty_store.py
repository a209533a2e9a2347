"""A fault-injecting wrapper around a real `SessionStore` (issue 4 item 6).

Every call goes to the wrapped store unless a fault is switched on: `slow()` adds latency before
the call, `fail()` raises `StoreUnavailable` instead of calling, `block()` holds calls until
`heal()`, `lose()` makes the call and then raises as if its answer had been lost (issue 12).
It also counts calls started and finished per operation, and lets a test wait for a count instead
of sleeping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

import anyio

from harness.store_wrapper import DelegatingStore
from sentinel.broadcast import Broadcast
from sentinel.sessions.errors import StoreUnavailable
from sentinel.sessions.store import SessionStore

T = TypeVar("T")
FaultKind = Literal["slow", "fail", "block", "lose"]


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    operations: frozenset[str] | None  # None: every operation
    seconds: float = 0.0

    def applies_to(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations


class FaultyStore(DelegatingStore):
    """`SessionStore` that forwards to `inner`, with faults switched on and off by the test."""

    def __init__(self, inner: SessionStore) -> None:
        super().__init__(inner)
        self.started: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()  # returned or raised, injected faults included
        self.failed: Counter[str] = Counter()  # raised (injected or from the real store)
        self._fault: Fault | None = None
        self._losses = 0
        self._release = anyio.Event()
        self._changed = Broadcast()

    # -- switching faults ------------------------------------------------------------------------

    def slow(self, seconds: float, *operations: str) -> None:
        """Sleep `seconds` before each call (of `operations`, or all)."""
        self._fault = Fault("slow", _ops(operations), seconds)

    def fail(self, *operations: str) -> None:
        """Raise `StoreUnavailable` instead of calling the store."""
        self._fault = Fault("fail", _ops(operations))

    def lose(self, times: int, *operations: str) -> None:
        """The next `times` calls (of `operations`, or all) reach the store and are applied, then
        raise `StoreUnavailable` as a timed-out reply would."""
        self._losses = times
        self._fault = Fault("lose", _ops(operations))

    def block(self, *operations: str) -> None:
        """Hold calls until `heal()` (a store that accepts connections and never answers)."""
        self._release = anyio.Event()
        self._fault = Fault("block", _ops(operations))

    def heal(self) -> None:
        """No more faults; blocked calls go through. A call already sleeping finishes its sleep."""
        self._fault = None
        self._release.set()

    # -- observing -------------------------------------------------------------------------------

    async def wait_started(self, operation: str, count: int) -> None:
        await self._changed.wait_until(lambda: self.started[operation] >= count)

    async def wait_finished(self, operation: str, count: int) -> None:
        await self._changed.wait_until(lambda: self.finished[operation] >= count)

    async def wait_failed(self, operation: str, count: int) -> None:
        await self._changed.wait_until(lambda: self.failed[operation] >= count)

    @property
    def name(self) -> str:
        return f"faulty {self.inner.name}"

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        self.started[operation] += 1
        self._changed.notify()
        try:
            fault = self._fault
            if fault is not None and fault.applies_to(operation):
                if fault.kind == "slow":
                    await anyio.sleep(fault.seconds)
                elif fault.kind == "block":
                    await self._release.wait()
                elif fault.kind == "lose":
                    await call()  # applied by the store; the caller never hears of it
                    self._losses -= 1
                    if self._losses <= 0:
                        self._fault = None
                    raise StoreUnavailable(self.name, operation, "injected fault: the answer was lost")
                else:
                    raise StoreUnavailable(self.name, operation, "injected fault: store unavailable")
            return await call()
        except Exception:
            self.failed[operation] += 1
            raise
        finally:
            self.finished[operation] += 1
            self._changed.notify()


def _ops(operations: Iterable[str]) -> frozenset[str] | None:
    chosen = frozenset(operations)
    return chosen or None
