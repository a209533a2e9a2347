"""State one listener shares with all of its connections: service, token, limits, counters, registry.

Connections read deadlines from here instead of calling the clock: the listener's sweep refreshes
`header_deadline` and `idle_deadline` on every tick, so starting a timeout costs one attribute load.

Request counts are kept in plain integers and published to the metrics registry by
`flush_counts()`: on every sweep tick, before `/metrics` is rendered, and by `statistics()`. A
cache hit therefore costs one integer add, not a labelled counter update; `requests_total` as
scraped from `/metrics` is always exact, other readers of the registry see it at most one sweep
interval late.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from sentinel.metrics import Counter, Registry
from sentinel.server.checks import LoopbackHosts
from sentinel.server.http import ReplyRenderer, Route
from sentinel.server.limits import ServerLimits
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


class ServerState:
    """Everything connections share; owned by `Server`, mutated only on the event loop."""

    __slots__ = (
        "_no_connections",
        "_pending",
        "_rejected_counter",
        "_requests_counter",
        "accepting",
        "connections",
        "connections_accepted",
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
        "token",
        "write_pauses",
    )

    def __init__(
        self,
        service: CredentialService,
        token: bytes,
        limits: ServerLimits,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        registry: Registry | None,
    ) -> None:
        self.service = service
        self.token = token
        self.limits = limits
        self.loop = loop
        self.logger = logger
        self.hosts = LoopbackHosts()
        self.renderer = ReplyRenderer()
        # Fast-path answers of `renderer.reply` not yet folded into the counts.
        self.hot_hits = 0
        self._pending: dict[tuple[Route, int], int] = {}
        self.connections: set[Connection] = set()
        self.accepting = True
        self.header_deadline = 0.0
        self.idle_deadline = 0.0
        self.connections_accepted = 0
        self.connections_rejected = 0
        self.requests = 0
        self.requests_in_flight = 0
        self.reading_paused = 0
        self.write_pauses = 0
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._requests_counter: Counter | None = None
        self._rejected_counter: Counter | None = None
        if registry is not None:
            self._requests_counter = registry.counter(
                "requests_total", "HTTP requests answered, by route and status", ("route", "status")
            )
            self._rejected_counter = registry.counter(
                "connections_rejected_total", "Connections refused because the server was full"
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
        slack = self.limits.sweep_interval
        now = self.loop.time()
        self.header_deadline = now + self.limits.header_timeout + slack
        self.idle_deadline = now + self.limits.idle_timeout + slack

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

    def admit(self, connection: Connection) -> bool:
        """Register a new connection, or count it as rejected when closing or full."""
        if not self.accepting or len(self.connections) >= self.limits.max_connections:
            self.connections_rejected += 1
            if self._rejected_counter is not None:
                self._rejected_counter.inc()
            return False
        self.connections.add(connection)
        self.connections_accepted += 1
        self._no_connections.clear()
        return True

    def forget(self, connection: Connection) -> None:
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
        )
