"""The connection half that is not parsing: admission, ordered answers, flow control, timeouts, close.

Ordering: a request answered synchronously (a cache hit, an error) is written at once. One that
needs `await service.issue()` runs as a task; reading pauses until it finishes, and requests
already parsed behind it wait in `_backlog` (at most one read's worth) and are answered, in
order, when it completes. Responses leave in request order without a queue on the fast path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TypeAlias, cast

from sentinel.server.http import INTERNAL_ERROR, REQUEST_TIMEOUT, SERVER_BUSY, Canned, Route, render
from sentinel.server.service import Reply
from sentinel.server.state import ServerState

_CREDENTIALS = Route.CREDENTIALS
_HEALTHZ = Route.HEALTHZ
_METRICS = Route.METRICS
_OTHER = Route.OTHER

Item: TypeAlias = Canned | Route
Pending: TypeAlias = tuple[Item, bool, Route]


class Connection(asyncio.Protocol):
    """Everything about one accepted connection except reading requests (see `protocol.py`)."""

    __slots__ = (
        "_admitted",
        "_backlog",
        "_closing",
        "_in_head",
        "_read_paused",
        "_srv",
        "_task",
        "_transport",
        "_write_paused",
        "deadline",
    )

    def __init__(self, state: ServerState) -> None:
        self._srv = state
        self._admitted = False
        self._task: asyncio.Task[None] | None = None
        self._backlog: deque[Pending] = deque()
        # True once no further request will be read; the connection closes when its last
        # response is out.
        self._closing = False
        self._write_paused = False
        self._read_paused = False
        # True while a request head has started arriving but is not complete.
        self._in_head = False
        # Loop time after which the listener's sweep calls `time_out()`; 0 = no deadline.
        self.deadline = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        srv = self._srv
        if not srv.admit(self):
            # Over the limit: answer without reading a byte, so a flood costs no parsing.
            self._closing = True
            self._transport.write(SERVER_BUSY.close)
            self._transport.close()
            srv.logger.debug("refused a connection: server full or closing")
            return
        self._admitted = True
        limits = srv.limits
        self._transport.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)
        self.deadline = srv.header_deadline

    def eof_received(self) -> bool:
        self._closing = True
        # Keep our write side open only while a response is still being produced.
        return self._task is not None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._srv.write_pauses += 1
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        srv = self._srv
        srv.forget(self)
        self._closing = True
        if self._read_paused:
            self._read_paused = False
            srv.reading_paused -= 1
        if self._task is not None:
            self._task.cancel()
        self._backlog.clear()

    # -- answering --------------------------------------------------------------------------

    def _emit(self, item: Item, keep_alive: bool, route: Route) -> None:
        """Answer now, or queue behind the response still being produced."""
        if not keep_alive:
            self._closing = True
        if self._task is not None:
            self._backlog.append((item, keep_alive, route))
        else:
            self._answer(item, keep_alive, route)

    def _answer(self, item: Item, keep_alive: bool, route: Route) -> None:
        service = self._srv.service
        if item is _CREDENTIALS:
            try:
                reply = service.issue_nowait()
            except Exception as exc:  # the seam promises not to raise; a bug must not kill the server
                self._service_failed(exc, keep_alive, route)
                return
            if reply is None:
                self._start_issue(keep_alive, route)
            else:
                self._send_reply(reply, keep_alive, route, cached=True)
        elif item is _HEALTHZ or item is _METRICS:
            try:
                if item is _HEALTHZ:
                    reply = service.health()
                else:
                    self._srv.flush_counts()  # so the scrape sees every request before it
                    reply = service.metrics()
            except Exception as exc:
                self._service_failed(exc, keep_alive, route)
                return
            self._send_reply(reply, keep_alive, route, cached=False)
        else:
            canned = cast(Canned, item)
            self._send(canned.bytes_for(keep_alive), keep_alive, route, canned.status)

    def _send_reply(self, reply: Reply, keep_alive: bool, route: Route, *, cached: bool) -> None:
        try:
            if cached:
                data = self._srv.render_cached(reply, keep_alive)
            else:
                data = render(reply.status, reply.body, reply.content_type, close=not keep_alive)
        except ValueError:
            self._srv.logger.error("service reply for %s cannot be sent; answered 500", route.value)
            self._send(INTERNAL_ERROR.bytes_for(keep_alive), keep_alive, route, 500)
            return
        self._send(data, keep_alive, route, reply.status)

    def _send(self, data: bytes, keep_alive: bool, route: Route, status: int) -> None:
        transport = self._transport
        transport.write(data)
        self._srv.count(route, status)
        if keep_alive:
            self.deadline = self._srv.idle_deadline
        else:
            transport.close()

    def _service_failed(self, exc: Exception, keep_alive: bool, route: Route) -> None:
        # The type only: an exception's text may quote upstream errors or secrets.
        self._srv.logger.error(
            "service raised %s answering %s; answered 500", type(exc).__name__, route.value
        )
        self._send(INTERNAL_ERROR.bytes_for(keep_alive), keep_alive, route, 500)

    def _start_issue(self, keep_alive: bool, route: Route) -> None:
        srv = self._srv
        srv.requests_in_flight += 1
        self.deadline = 0.0  # the service bounds its own work; shutdown bounds ours
        self._task = srv.loop.create_task(self._issue(keep_alive, route))
        self._update_reading()

    async def _issue(self, keep_alive: bool, route: Route) -> None:
        srv = self._srv
        reply: Reply | None = None
        failure: Exception | None = None
        try:
            reply = await srv.service.issue()
        except Exception as exc:
            failure = exc
        finally:
            srv.requests_in_flight -= 1
            self._task = None
        if self._transport.is_closing():
            return
        # The last response before a requested close (shutdown, client EOF) says so.
        keep_alive = keep_alive and not (self._closing and not self._backlog)
        if reply is not None:
            self._send_reply(reply, keep_alive, route, cached=True)
        else:
            self._service_failed(cast(Exception, failure), keep_alive, route)
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        while self._task is None and backlog:
            if self._transport.is_closing():
                backlog.clear()
                return
            item, keep_alive, route = backlog.popleft()
            self._answer(item, keep_alive and not (self._closing and not backlog), route)
        if self._task is not None:
            return
        if self._closing:
            self._transport.close()
            return
        if self._in_head:
            self.deadline = self._srv.header_deadline
        self._update_reading()

    def _refuse(self, canned: Canned, keep_alive: bool, route: Route) -> None:
        # Fixed text only: never a header value (the token travels in one). Debug, not info: under
        # a flood, info would turn every bad request into a log line.
        self._srv.logger.debug("refused a request: %d %s", canned.status, canned.message)
        self._emit(canned, keep_alive and not canned.always_close, route)

    # -- flow control and lifecycle ---------------------------------------------------------

    def _update_reading(self) -> None:
        """Read only while the peer keeps up with our writes and no response is being awaited."""
        transport = self._transport
        if transport.is_closing():
            return
        paused = self._write_paused or self._task is not None
        if paused is self._read_paused:
            return
        self._read_paused = paused
        if paused:
            transport.pause_reading()
            self._srv.reading_paused += 1
        else:
            transport.resume_reading()
            self._srv.reading_paused -= 1

    def time_out(self) -> None:
        """Called by the listener's sweep once `deadline` has passed."""
        if self._task is not None:
            self.deadline = 0.0
            return
        transport = self._transport
        if transport.is_closing():
            return
        self._closing = True
        logger = self._srv.logger
        if transport.get_write_buffer_size() > 0:
            # The peer is not reading what we wrote; a graceful close would wait on it forever.
            logger.debug("closing a connection whose peer stopped reading")
            transport.abort()
        elif self._in_head:
            logger.debug("closing a connection: request headers not received in time")
            self._send(REQUEST_TIMEOUT.close, False, _OTHER, REQUEST_TIMEOUT.status)
        else:
            transport.close()

    def close_when_done(self) -> None:
        """Stop reading requests; close now if idle, else after the response being produced."""
        self._closing = True
        if self._task is None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding unsent data and cancelling awaited work."""
        self._transport.abort()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The awaited `service.issue()` of this connection, if any."""
        return self._task
