"""The tracker's pending buffer (DESIGN.md §4): per-session counts drained from the touch queue and
not yet written. Keyed by session id, so one tracker serves any number of sessions."""

from __future__ import annotations


class Pending:
    """Requests for one session: how many, and the `Clock.monotonic()` reading of the latest.

    Mutable on purpose: the drain loop updates it once per event."""

    __slots__ = ("count", "last")

    def __init__(self, count: int, last: float) -> None:
        self.count = count
        self.last = last


class PendingBuffer:
    """Coalesces touch events: N events for a session become one (count, latest access) entry,
    which a flush turns into one store write (issue 4 item 2)."""

    __slots__ = ("_entries", "coalesced", "events")

    def __init__(self) -> None:
        self._entries: dict[str, Pending] = {}
        self.events = 0  # total count over all entries
        self.coalesced = 0  # events that joined an existing entry (lifetime counter)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    def add(self, session_id: str, at: float, count: int = 1) -> None:
        """`count` new events for `session_id`, the latest at monotonic time `at`."""
        entry = self._entries.get(session_id)
        if entry is None:
            self._entries[session_id] = Pending(count, at)
            self.coalesced += count - 1
        else:
            entry.count += count
            entry.last = max(entry.last, at)
            self.coalesced += count
        self.events += count

    def merge(self, session_id: str, count: int, last: float) -> None:
        """Put back counts a flush did not write, joining whatever arrived meanwhile."""
        if count <= 0:
            return
        entry = self._entries.get(session_id)
        if entry is None:
            self._entries[session_id] = Pending(count, last)
        else:
            entry.count += count
            entry.last = max(entry.last, last)
        self.events += count

    def take(self) -> dict[str, Pending]:
        """Hand every entry to a flush and start empty."""
        entries, self._entries = self._entries, {}
        self.events = 0
        return entries

    def pop(self, session_id: str) -> Pending:
        """Remove one session's entry (it must be present) and return it."""
        entry = self._entries.pop(session_id)
        self.events -= entry.count
        return entry

    def discard(self, session_id: str) -> int:
        """Remove one session's entry; returns its count."""
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return 0
        self.events -= entry.count
        return entry.count
