"""`Throttle`: let an action (usually a warning) through at most once per interval.

A leaf module so every part can use the one implementation (DESIGN.md §2 leaf modules).
"""

from __future__ import annotations


class Throttle:
    """Lets an action through at most once per `interval` seconds of a monotonic clock.

    Used for warnings that could otherwise fire on every request, touch or retry (issue 4: the
    drop warning at most once per 10 s, store failures at most once per minute)."""

    __slots__ = ("_interval", "_next")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = float("-inf")

    def allow(self, now: float) -> bool:
        """True (and the window restarts) if the last allowed call is at least `interval` ago."""
        if now < self._next:
            return False
        self._next = now + self._interval
        return True

    def reset(self) -> None:
        """Let the next call through regardless of the window (a state change is always news)."""
        self._next = float("-inf")
