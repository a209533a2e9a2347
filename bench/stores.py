"""A `SessionStore` wrapper for the benchmarks: counts every call at the store, and can add latency.

Counting here, not in the tracker, is the point: "store writes" in the report are requests the
store actually received, whichever code path (flusher, recorder, baseline) sent them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from harness.store_wrapper import DelegatingStore
from sentinel.sessions.store import SessionStore

T = TypeVar("T")

WRITES = frozenset({"create", "update", "delete", "touch", "renew", "revoke", "expire", "expire_stale"})


class MeteredStore(DelegatingStore):
    """Forwards to `inner` after sleeping `delay` seconds (0: no sleep), counting calls and failures."""

    def __init__(self, inner: SessionStore, *, delay: float = 0.0) -> None:
        super().__init__(inner)
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def counts(self) -> dict[str, object]:
        writes = sum(n for op, n in self.calls.items() if op in WRITES)
        failed_writes = sum(n for op, n in self.failures.items() if op in WRITES)
        return {
            "writes": writes,
            "failed_writes": failed_writes,
            "failed_calls": sum(self.failures.values()),
            "reads": sum(self.calls.values()) - writes,
            "calls": dict(self.calls),
            "failures": dict(self.failures),
        }

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.delay:
            await anyio.sleep(self.delay)
        self.calls[operation] += 1
        try:
            return await call()
        except Exception:
            # Counted, then re-raised unchanged: the caller's own error handling is what is measured.
            self.failures[operation] += 1
            raise
