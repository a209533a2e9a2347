"""Retry pacing for the session tracker (issue 4): jittered exponential backoff and a log throttle.

Both are driven by numbers the caller passes in (attempt counts, `Clock.monotonic()` readings), never
by a task or a timer of their own, so tests drive them with a fake clock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sentinel.ratelimit import Throttle


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number `attempt` (0-based): `initial * multiplier**attempt`, capped at
    `maximum`, then jittered down by up to half ("equal jitter").

    The jitter keeps many servers that lost the same store at the same moment from retrying in
    lockstep; keeping half of the delay keeps a flapping store from being hammered."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be at least 1")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay for `attempt`, capped at `maximum`."""
        # Cap the exponent as well: a store down for days must not overflow a float.
        return min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))

    def delay(self, attempt: int, uniform: Callable[[], float] = random.random) -> float:
        """A delay in `[ceiling / 2, ceiling]`; `uniform` returns a float in `[0, 1)`."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + uniform() * ceiling / 2


class RetryState:
    """Whether a store is failing, and when the next call may go out (issue 4: failed flushes
    retry with jittered, capped exponential backoff).

    Logs one warning when the store starts failing, then at most one per `warn_every` seconds of
    `monotonic` while it keeps failing (not one per attempt), and one line when it answers again."""

    __slots__ = (
        "_attempt",
        "_backoff",
        "_log",
        "_monotonic",
        "_warning",
        "degraded",
        "reason",
        "retry_at",
        "store",
    )

    def __init__(
        self,
        backoff: Backoff,
        *,
        store: str,
        logger: logging.Logger,
        monotonic: Callable[[], float],
        warn_every: float = 60.0,
    ) -> None:
        self._backoff = backoff
        self.store = store  # the name in log lines; set again once an opener has opened the store
        self._log = logger
        self._monotonic = monotonic
        self._warning = Throttle(warn_every)
        self._attempt = 0
        self.degraded = False
        self.reason: str | None = None  # the last failure's one-line detail while degraded
        self.retry_at = float("-inf")  # on the caller's scheduling clock

    def failed(self, now: float, detail: str, pending: int) -> None:
        """A call failed at `now` (scheduling clock); `pending` is what waits to be written."""
        self.retry_at = now + self._backoff.delay(self._attempt)
        self._attempt += 1
        self.reason = detail
        if not self.degraded:
            self.degraded = True
            self._warning.reset()  # a state change is always worth one line
        if self._warning.allow(self._monotonic()):
            self._log.warning(
                "session store %s failing (%s); tracking degraded, %d events pending, retrying",
                self.store,
                detail,
                pending,
            )

    def succeeded(self) -> None:
        self._attempt = 0
        self.retry_at = float("-inf")
        self.reason = None
        if self.degraded:
            self.degraded = False
            self._log.info("session store %s reachable again", self.store)
