"""Waiting for a condition another process brings about, under a bounded deadline.

A file appearing, a port answering, a store row changing: such conditions exist only outside
this process, so polling is the only way to observe them. The short pause between polls is a
poll interval, never a synchronisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Bounds every single wait. Generous on purpose: they catch hangs, they do not measure speed.
DEADLINE = 30.0
_POLL_INTERVAL = 0.02


def poll(predicate: Callable[[], bool], within: float) -> bool:
    """Call `predicate` until it is true (True) or `within` seconds have passed (False)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def wait_until(predicate: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    """Poll `predicate` until true; fail (AssertionError, as a test expects) naming `what` after
    `within` seconds."""
    if not poll(predicate, within):
        raise AssertionError(f"timed out after {within}s waiting for {what}")
