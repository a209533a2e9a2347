"""State one listener shares with all of its connections: service, token, limits, counters, registry.

Connections read deadlines from here instead of calling the clock: the listener's sweep refreshes
`auth_deadline`, `header_deadline` and `idle_deadline` on every tick, so starting a timeout costs
one attribute load.

Admission (DESIGN.md §6 "Connection admission", issue 11) lives here too: which connections have
not yet presented the token, in accept order, so that a full listener makes room by evicting the
oldest of them, never an authenticated one.

Request counts are kept in plain integers and published to the metrics registry by
`flush_counts()`: on every sweep tick, before `/metrics` is rendered, and by `statistics()`. A
cache hit therefore costs one integer add, not a labelled counter update; `requests_total` as
scraped from `/metrics` is always exact, other readers of the registry see it at most one sweep
interval late.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from hmac import compare_digest
from typing import Protocol

from sentinel.metrics import Counter, Registry
from sentinel.server.checks import LoopbackHosts
from sentinel.server.http import ReplyRenderer, Route
from sentinel.server.limits import ServerLimits
from sentinel.server.peer import UserGate
from sentinel.server.service import CredentialService, Reply


class Connection(Protocol):
    """What the listener does with an open connection (`HttpConnection` implements it): this
    module names the shape instead of importing the class, which imports this module."""

    deadline: float  # loop time after which the sweep calls `time_out()`; 0 = none

    @property
    def task(self) -> asyncio.Task[None] | None: ...

    def time_out(self) -> None: ...

    def close_when_done(self) -> None: ...

    def abort(self) -> None: ...

    def evict(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A credential path's profile (issue 14): the service that answers it and the token it takes."""

    service: CredentialService
    token: bytes


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of one listener's counters."""

    connections_open: int
    connections_accepted: int
    connections_rejected: int
    requests: int
    # Requests whose response is being produced by an awaited `service.issue()`.
    requests_in_flight: int
    # Connections whose reading is paused right now (write backpressure or an awaited response).
    reading_paused: int
    # How often a transport's write buffer went over the high-water mark.
    write_pauses: int
    # Connections without a valid token yet, closed to make room (listener full, or their user
    # over its share under `--allow-user`).
    connections_evicted: int = 0


class ServerState:
    """Everything connections share; owned by `Server`, mutated only on the event loop."""

    __slots__ = (
        "_evicted_counter",
        "_no_connections",
        "_pending",
        "_per_user",
        "_rejected_counter",
        "_requests_counter",
        "_unauthenticated",
        "accepting",
        "auth_deadline",
        "connections",
        "connections_accepted",
        "connections_evicted",
        "connections_rejected",
        "header_deadline",
        "hosts",
        "hot_hits",
        "idle_deadline",
        "limits",
        "logger",
        "loop",
        "reading_paused",
        "renderer",
        "requests",
        "requests_in_flight",
        "service",
        "targets",
        "tokens",
        "users",
        "write_pauses",
    )

    def __init__(
        self,
        service: CredentialService,
        targets: dict[bytes, Target],
        limits: ServerLimits,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        registry: Registry | None,
        users: UserGate | None = None,
    ) -> None:
        # `--allow-user`: asked once per connection in `connection_made`; None lets any uid in.
        self.users = users
        # `service` answers /healthz and /metrics; each credential path has its own `Target`.
        self.service = service
        self.targets = targets
        self.tokens = tuple({id(target.token): target.token for target in targets.values()}.values())
        self.limits = limits
        self.loop = loop
        self.logger = logger
        self.hosts = LoopbackHosts()
        self.renderer = ReplyRenderer()
        # Fast-path answers of `renderer.reply` not yet folded into the counts.
        self.hot_hits = 0
        self._pending: dict[tuple[Route, int], int] = {}
        self.connections: set[Connection] = set()
        # Connections that have not presented the token yet, oldest first, with their uid (None
        # without `--allow-user` or when unknown); and the same, per uid, under `--allow-user`.
        self._unauthenticated: OrderedDict[Connection, int | None] = OrderedDict()
        self._per_user: dict[int | None, OrderedDict[Connection, None]] = {}
        self.accepting = True
        self.auth_deadline = 0.0
        self.header_deadline = 0.0
        self.idle_deadline = 0.0
        self.connections_accepted = 0
        self.connections_rejected = 0
        self.connections_evicted = 0
        self.requests = 0
        self.requests_in_flight = 0
        self.reading_paused = 0
        self.write_pauses = 0
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._requests_counter: Counter | None = None
        self._rejected_counter: Counter | None = None
        self._evicted_counter: Counter | None = None
        if registry is not None:
            self._requests_counter = registry.counter(
                "requests_total", "HTTP requests answered, by route and status", ("route", "status")
            )
            self._rejected_counter = registry.counter(
                "connections_rejected_total", "Connections refused because the server was full"
            )
            self._evicted_counter = registry.counter(
                "connections_evicted_total", "Connections without a valid token closed to make room"
            )
            registry.gauge("connections_open", "Open HTTP connections").set_function(
                lambda: len(self.connections)
            )
        self.refresh_deadlines()

    def refresh_deadlines(self) -> None:
        """Recompute the deadlines handed to connections; called on every sweep tick.

        One extra sweep interval is added because `now` is only as fresh as the last tick: a
        deadline never comes earlier than its timeout.
        """
        limits = self.limits
        slack = limits.sweep_interval
        now = self.loop.time()
        self.auth_deadline = now + min(limits.auth_timeout, limits.header_timeout) + slack
        self.header_deadline = now + limits.header_timeout + slack
        self.idle_deadline = now + limits.idle_timeout + slack

    def target_for(self, url: bytes) -> Target | None:
        """The credential path `url` names (a query string is ignored), or None."""
        target = self.targets.get(url)
        if target is None and b"?" in url:
            target = self.targets.get(url.partition(b"?")[0])
        return target

    def any_token(self, token: bytes) -> bool:
        """True if `token` is any profile's; every token is compared, each in constant time."""
        found = False
        for candidate in self.tokens:
            found |= compare_digest(token, candidate)
        return found

    def count(self, route: Route, status: int) -> None:
        """Count one answered request off the fast path."""
        key = (route, status)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1

    def render_cached(self, reply: Reply, keep_alive: bool) -> bytes:
        """`renderer.render`, first folding the hits of the reply it is about to forget."""
        if reply is not self.renderer.reply:
            self._fold_hot_hits()
        return self.renderer.render(reply, keep_alive)

    def _fold_hot_hits(self) -> None:
        reply = self.renderer.reply
        if self.hot_hits and reply is not None:
            key = (Route.CREDENTIALS, reply.status)
            self._pending[key] = self._pending.get(key, 0) + self.hot_hits
        self.hot_hits = 0

    def flush_counts(self) -> None:
        """Publish counted requests to `requests` and the `requests_total` metric."""
        self._fold_hot_hits()
        counter = self._requests_counter
        for (route, status), amount in self._pending.items():
            self.requests += amount
            if counter is not None:
                counter.inc(route.value, str(status), amount=amount)
        self._pending.clear()

    def admit(self, connection: Connection, uid: int | None = None) -> bool:
        """Register a new (unauthenticated) connection, making room if needed; False when closing,
        or full of authenticated connections (counted as rejected).

        Room is made by evicting the oldest connection that has not presented the token: first
        among `uid`'s own when that user is over its share (only under `--allow-user`, where
        `uid` means something), then among all when the listener is full. An authenticated
        connection is never evicted for a new one."""
        if not self.accepting:
            self._reject()
            return False
        limits = self.limits
        if self.users is not None:
            mine = self._per_user.get(uid)
            if mine is not None and len(mine) >= limits.max_unauthenticated_per_user:
                self._evict(next(iter(mine)))
        if len(self.connections) >= limits.max_connections:
            if not self._unauthenticated:
                self._reject()
                return False
            self._evict(next(iter(self._unauthenticated)))
        self.connections.add(connection)
        self._unauthenticated[connection] = uid
        if self.users is not None:
            mine = self._per_user.get(uid)
            if mine is None:
                mine = self._per_user[uid] = OrderedDict()
            mine[connection] = None
        self.connections_accepted += 1
        self._no_connections.clear()
        return True

    def authenticated(self, connection: Connection) -> None:
        """`connection` presented the token: from now on it is never evicted."""
        uid = self._unauthenticated.pop(connection, None)
        mine = self._per_user.get(uid)
        if mine is not None:
            mine.pop(connection, None)
            if not mine:
                del self._per_user[uid]

    def _reject(self) -> None:
        self.connections_rejected += 1
        if self._rejected_counter is not None:
            self._rejected_counter.inc()

    def _evict(self, connection: Connection) -> None:
        # Forgotten at once, so the slot is free now; its connection_lost comes later.
        self.forget(connection)
        self.connections_evicted += 1
        if self._evicted_counter is not None:
            self._evicted_counter.inc()
        connection.evict()

    def forget(self, connection: Connection) -> None:
        self.authenticated(connection)
        self.connections.discard(connection)
        if not self.connections:
            self._no_connections.set()

    async def wait_no_connections(self) -> None:
        await self._no_connections.wait()

    def statistics(self) -> ServerStatistics:
        self.flush_counts()
        return ServerStatistics(
            connections_open=len(self.connections),
            connections_accepted=self.connections_accepted,
            connections_rejected=self.connections_rejected,
            requests=self.requests,
            requests_in_flight=self.requests_in_flight,
            reading_paused=self.reading_paused,
            write_pauses=self.write_pauses,
            connections_evicted=self.connections_evicted,
        )
