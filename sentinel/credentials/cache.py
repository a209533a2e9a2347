"""The credential cache: refresh-ahead, single-flight, and a safe floor (issue 3, DESIGN.md §3 and §7).

Why refresh early: botocore refreshes its own credentials when < 15 min remain and treats < 10 min
as mandatory (a failed fetch then fails the caller's API call). With the default 15-minute STS
credentials every botocore call is inside the advisory window and comes back to us, so we serve
the freshest credentials we have and refresh well before botocore would ever reach its mandatory
window. The defaults:

- `refresh_window` 12 min: a 15-minute credential is refreshed ~3 minutes after issue, so served
  credentials keep > 12 min (outside botocore's 10-minute mandatory window, with room for a slow
  STS call and its retries). Longer credentials are refreshed at half-life instead, so a 12-hour
  credential rides out hours, not minutes, of STS trouble.
- `safe_floor` 5 min: below this nothing is served from the cache (the JS and Go SDKs refresh at
  5 min; a client handed less would find them expiring mid-operation). Between the refresh point
  and the floor, a failing refresh keeps serving the cached credentials with one warning per
  failure; below the floor a request awaits a fresh AssumeRole and gets a CredentialError if it
  fails. Nothing expired or empty is ever returned.
- `retry_backoff` 15 s between background refresh attempts after a failure, so an STS outage
  costs one call per key per 15 s, not one per request.

All of it runs on the event loop thread; `get_nowait` may be called from a protocol callback.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

import anyio
from anyio.abc import TaskGroup

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.credentials.model import Credentials
from sentinel.errors import CredentialError
from sentinel.metrics import Counter, Registry

logger = logging.getLogger(__name__)


class CredentialSource(Protocol):
    """Where fresh credentials come from (STS AssumeRole in production)."""

    async def fetch(self, role_arn: str, duration_seconds: int) -> Credentials:
        """Fresh credentials for `role_arn`; raises CredentialError with a safe message."""
        ...


@dataclass(frozen=True, slots=True)
class CacheKey:
    """One cache line: the role and the effective duration (rules may cap durations differently).

    The hash is computed once: the generated one builds a tuple per lookup, which was the largest
    cost of a cache hit. Keep one key per (role, duration) and reuse it on the hot path.
    """

    role_arn: str
    duration_seconds: int
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.role_arn, self.duration_seconds)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh and how long cached credentials stay servable; see the module docstring."""

    refresh_window: timedelta = timedelta(minutes=12)
    safe_floor: timedelta = timedelta(minutes=5)
    retry_backoff: timedelta = timedelta(seconds=15)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.safe_floor < self.refresh_window:
            raise ValueError("need 0 < safe_floor < refresh_window")
        if self.retry_backoff <= timedelta(0):
            raise ValueError("retry_backoff must be positive")

    def window_for(self, lifetime: timedelta) -> timedelta:
        """How long before expiry to start refreshing credentials that live `lifetime`."""
        if lifetime <= self.refresh_window:
            # Not something STS issues (>= 15 min); refreshing at half-life avoids a refresh storm.
            return lifetime / 2
        return max(self.refresh_window, lifetime / 2)


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of the cache's counters; `hits` counts both `get_nowait` and `get` hits."""

    hits: int
    misses: int
    sts_calls: int
    sts_failures: int
    background_refreshes: int
    consecutive_failures: int
    entries: int
    in_flight: int
    last_refresh: datetime | None
    last_failure: datetime | None


@dataclass(frozen=True, slots=True)
class _Entry:
    credentials: Credentials
    refresh_at: datetime
    usable_until: datetime


class _Flight:
    """One AssumeRole in progress; every request for the same key waits on it."""

    __slots__ = ("credentials", "done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.credentials: Credentials | None = None
        self.error: CredentialError | None = None


class _Metrics:
    __slots__ = ("failures", "hits", "misses", "sts_calls")

    def __init__(self, registry: Registry) -> None:
        self.hits: Counter = registry.counter("credential_cache_hits_total", "Credential cache hits.")
        self.misses = registry.counter("credential_cache_misses_total", "Credential cache misses.")
        self.sts_calls = registry.counter("sts_assume_role_calls_total", "STS AssumeRole calls.")
        self.failures = registry.counter("sts_assume_role_failures_total", "Failed STS AssumeRole calls.")


class CredentialCache:
    """Cached role credentials per `CacheKey`, refreshed ahead of expiry, one STS call at a time.

    Use as `async with CredentialCache(source) as cache:` (or enter it in an AsyncExitStack) and
    close it from the task that opened it: fetches run in the cache's own task group, so a
    cancelled request never cancels the AssumeRole other requests are waiting for.
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        clock: Clock = SYSTEM_CLOCK,
        policy: RefreshPolicy | None = None,
        registry: Registry | None = None,
    ) -> None:
        self._source = source
        self._clock = clock
        self._policy = policy or RefreshPolicy()
        self._metrics = _Metrics(registry) if registry is not None else None
        self._entries: dict[CacheKey, _Entry] = {}
        self._flights: dict[CacheKey, _Flight] = {}
        self._retry_after: dict[CacheKey, float] = {}
        self._task_group: TaskGroup | None = None
        self._closed = False
        self._hits = self._misses = self._sts_calls = self._sts_failures = 0
        self._background_refreshes = self._consecutive_failures = 0
        self._last_refresh: datetime | None = None
        self._last_failure: datetime | None = None

    async def __aenter__(self) -> Self:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a CredentialCache can be opened once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._close(exc_type, exc, traceback)

    async def aclose(self) -> None:
        """Cancel in-flight fetches (their waiters get a CredentialError) and stop refreshing."""
        await self._close(None, None, None)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        self._closed = True
        # Nothing is served after close, and the secrets need not outlive the cache.
        self._entries.clear()
        if task_group is None:
            return None
        task_group.cancel_scope.cancel()
        return await task_group.__aexit__(exc_type, exc, traceback)

    def get_nowait(self, key: CacheKey) -> Credentials | None:
        """Cached credentials with more than the safe floor left, else None (then await `get`).

        Sync and O(1): the hot path. Inside the refresh window it also starts a background
        refresh (at most one per key, with a backoff after failures) and still answers at once.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock.now()
        if now >= entry.usable_until:
            return None
        if now >= entry.refresh_at:
            self._refresh_ahead(key)
        self._hits += 1
        if self._metrics is not None:
            self._metrics.hits.inc()
        return entry.credentials

    async def get(self, key: CacheKey) -> tuple[Credentials, bool]:
        """Credentials for `key` and whether they came from the cache without waiting.

        A cold or exhausted key joins the single AssumeRole in flight for it (or starts one);
        if that fails every waiter gets a CredentialError.
        """
        credentials = self.get_nowait(key)
        if credentials is not None:
            return credentials, True
        task_group = self._task_group
        if task_group is None:
            raise CredentialError("the credential cache is closed")
        self._misses += 1
        if self._metrics is not None:
            self._metrics.misses.inc()
        flight = self._flights.get(key) or self._start(task_group, key)
        await flight.done.wait()
        if flight.credentials is None:
            # A fresh exception per waiter: re-raising one shared instance would grow its traceback.
            message = flight.error.message if flight.error is not None else "credential fetch failed"
            raise CredentialError(message)
        return flight.credentials, False

    async def wait_idle(self) -> None:
        """Return once no fetch is in flight (for shutdown and for tests driving the clock)."""
        while self._flights:
            await next(iter(self._flights.values())).done.wait()

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            hits=self._hits,
            misses=self._misses,
            sts_calls=self._sts_calls,
            sts_failures=self._sts_failures,
            background_refreshes=self._background_refreshes,
            consecutive_failures=self._consecutive_failures,
            entries=len(self._entries),
            in_flight=len(self._flights),
            last_refresh=self._last_refresh,
            last_failure=self._last_failure,
        )

    def _refresh_ahead(self, key: CacheKey) -> None:
        task_group = self._task_group
        if key in self._flights or task_group is None:
            return
        if self._clock.monotonic() < self._retry_after.get(key, -math.inf):
            return
        self._background_refreshes += 1
        self._start(task_group, key)

    def _start(self, task_group: TaskGroup, key: CacheKey) -> _Flight:
        flight = _Flight()
        self._flights[key] = flight
        # The task group holds the task: nothing here is fire-and-forget.
        task_group.start_soon(self._fly, key, flight, name=f"assume-role {key.role_arn}")
        return flight

    async def _fly(self, key: CacheKey, flight: _Flight) -> None:
        self._sts_calls += 1
        if self._metrics is not None:
            self._metrics.sts_calls.inc()
        try:
            credentials = await self._source.fetch(key.role_arn, key.duration_seconds)
            now = self._clock.now()
            if credentials.remaining(now) <= 0:
                raise CredentialError("STS returned credentials that are already expired; check the clock")
        except CredentialError as exc:
            flight.error = exc
            self._failed(key, exc)
        except Exception as exc:
            # A broken source must not kill the task group (and with it the server) nor leave
            # waiters hanging; its text is not trusted to be free of secrets, so only the type.
            name = type(exc).__name__
            flight.error = CredentialError(f"credential fetch for {key.role_arn} failed: {name}")
            self._failed(key, flight.error)
        else:
            flight.credentials = credentials
            self._store(key, credentials, now)
        finally:
            if flight.credentials is None and flight.error is None:
                flight.error = CredentialError("the credential cache is closed")
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()

    def _store(self, key: CacheKey, credentials: Credentials, now: datetime) -> None:
        lifetime = credentials.expiration - now
        self._entries[key] = _Entry(
            credentials=credentials,
            refresh_at=credentials.expiration - self._policy.window_for(lifetime),
            usable_until=credentials.expiration - self._policy.safe_floor,
        )
        self._retry_after.pop(key, None)
        self._consecutive_failures = 0
        self._last_refresh = now

    def _failed(self, key: CacheKey, error: CredentialError) -> None:
        now = self._clock.now()
        self._sts_failures += 1
        self._consecutive_failures += 1
        self._last_failure = now
        if self._metrics is not None:
            self._metrics.failures.inc()
        self._retry_after[key] = self._clock.monotonic() + self._policy.retry_backoff.total_seconds()
        entry = self._entries.get(key)
        if entry is not None and now < entry.usable_until:
            logger.warning(
                "credential refresh failed (%s); serving cached credentials for %s, valid for %d s more",
                error,
                key.role_arn,
                entry.credentials.remaining(now),
            )
            return
        # Past the floor the entry can never be served again: drop it rather than keep a secret.
        self._entries.pop(key, None)
        logger.warning("credential fetch failed (%s); no servable credentials for %s", error, key.role_arn)
