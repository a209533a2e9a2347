"""Keeps the current policy fresh in the background: every TTL and on SIGHUP (issue 3, DESIGN.md §5).

The hot path reads `watcher.current`, a plain attribute replaced whole on a successful reload; no
lock is needed because a `Policy` is immutable and attribute assignment is atomic. A bad new policy
never replaces a good one: the watcher logs one error line per failed reload and keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.errors import PolicyError
from sentinel.policy.model import Policy
from sentinel.policy.parse import parse_policy
from sentinel.policy.sources import PolicySource

DEFAULT_TTL = 30.0

_LOGGER = logging.getLogger("sentinel.policy")


@dataclass(frozen=True, slots=True)
class PolicyStatistics:
    """The watcher's state for `/healthz`; no policy content, no secrets.

    `loaded_at` is when the current policy was installed (`changes` counts installs, the first one
    included), `checked_at` the last successful fetch (unchanged content counts), `last_error` the
    message of the latest reload if it failed (cleared by the next success).
    """

    source: str
    content_hash: str | None
    rule_count: int
    loaded_at: datetime | None
    checked_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    reloads: int
    reload_failures: int
    changes: int


class PolicyWatcher:
    """Owns the current policy of one source; `load_initial()` must succeed before `current` is read."""

    current: Policy

    def __init__(
        self,
        source: PolicySource,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOGGER,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._source = source
        self._ttl = ttl
        self._clock = clock
        self._logger = logger
        self._lock = anyio.Lock()
        # Events are created lazily: anyio needs a running event loop to make one.
        self._wake: anyio.Event | None = None
        self._reload_requested = False
        self._reloaded: anyio.Event | None = None
        self._loaded_at: datetime | None = None
        self._checked_at: datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._reloads = 0
        self._failures = 0
        self._changes = 0

    async def load_initial(self) -> Policy:
        """Fetch and validate the policy at startup; raises `PolicyError` (startup fails) if invalid."""
        async with self._lock:
            self._install(await self._fetch())
        return self.current

    async def reload(self) -> bool:
        """Fetch and validate now; True if a valid policy is current, False if the last good one was kept.

        Unchanged content (same SHA-256) is not parsed again. Reloads are serialised, so a SIGHUP
        during a background refresh cannot install an older document over a newer one.
        """
        async with self._lock:
            self._reloads += 1
            try:
                policy = await self._fetch()
            except PolicyError as exc:
                self._failures += 1
                self._last_error = exc.message
                self._last_error_at = self._clock.now()
                # Exactly one line per failed reload; the message is already safe and one line.
                self._logger.error("%s; keeping the current policy", exc.message)
                ok = False
            else:
                self._install(policy)
                ok = True
        if self._reloaded is not None:
            self._reloaded.set()
            self._reloaded = None
        return ok

    def request_reload(self) -> None:
        """Ask `run()` to reload now. Sync and non-blocking: what a SIGHUP handler calls.

        Call it on the event loop's thread (a `loop.add_signal_handler` callback, an anyio signal
        receiver), never from a raw `signal.signal` handler.
        """
        self._reload_requested = True
        if self._wake is not None:
            self._wake.set()

    async def wait_reloaded(self) -> None:
        """Wait until the next reload attempt finishes, whether it succeeded or not."""
        if self._reloaded is None:
            self._reloaded = anyio.Event()
        await self._reloaded.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload every `ttl` seconds, or at once when `request_reload()` is called; runs until cancelled."""
        task_status.started()
        while True:
            # A request that arrived during the previous reload is served at once, not after a TTL.
            if not self._reload_requested:
                self._wake = anyio.Event()
                with anyio.move_on_after(self._ttl):
                    await self._wake.wait()
                self._wake = None
            self._reload_requested = False
            await self.reload()

    def statistics(self) -> PolicyStatistics:
        current: Policy | None = getattr(self, "current", None)
        return PolicyStatistics(
            source=self._source.description,
            content_hash=current.content_hash if current is not None else None,
            rule_count=len(current.rules) if current is not None else 0,
            loaded_at=self._loaded_at,
            checked_at=self._checked_at,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            reloads=self._reloads,
            reload_failures=self._failures,
            changes=self._changes,
        )

    async def _fetch(self) -> Policy:
        raw = await self._source.fetch()
        current: Policy | None = getattr(self, "current", None)
        if current is not None and hashlib.sha256(raw).hexdigest() == current.content_hash:
            return current
        # Composing YAML is pure Python work: keep it off the event loop that serves credentials.
        return await anyio.to_thread.run_sync(parse_policy, raw, self._source.description)

    def _install(self, policy: Policy) -> None:
        now = self._clock.now()
        self._checked_at = now
        self._last_error = None
        self._last_error_at = None
        if policy is getattr(self, "current", None):
            return
        self.current = policy
        self._loaded_at = now
        self._changes += 1
        self._logger.info(
            "policy loaded from %s: sha256 %s, rules %d",
            policy.source,
            policy.content_hash,
            len(policy.rules),
        )
