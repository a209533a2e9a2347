"""One accepted connection: reading requests with httptools' llhttp parser, the checks, and answering
them in order, with flow control, timeouts and close (DESIGN.md §3, §7).

The parser is a library; this is the strict part around it: GET only, no bodies, a bounded head
(request line + headers) and header count, browser/proxy markers refused, Host must be loopback,
the token compared in constant time. Only the few headers that matter are kept.

Per-request CPU is the product (botocore re-fetches credentials on nearly every call), so a
keep-alive `GET /` that passes every check and hits the credential cache takes one straight path
in `on_message_complete`: checks -> `_issue_now()` -> one `transport.write()`. Anything else goes
through `_dispatch`, which makes each decision explicitly.

Admission (DESIGN.md §6, issue 11): a connection is "unauthenticated" until a request on it
carries the token. Until then it has `auth_timeout` from its accept to do so, every answer on it
closes it (keep-alive is a privilege of authenticated connections), and it may be evicted to make
room for a newer one (`ServerState.admit`). Under `--allow-user` the client's uid is looked up
once, on accept; a refused user's first request is answered 403 and the connection closed.

Ordering: a request answered synchronously (a cache hit, an error) is written at once. One that
needs `await service.issue()` runs as a task; reading pauses until it finishes, and requests
already parsed behind it wait in `_backlog` (at most one read's worth) and are answered, in
order, when it completes. Responses leave in request order without a queue on the fast path.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from typing import TypeAlias, cast

import httptools

from sentinel.server.checks import HEADER_KINDS, HeaderKind, classify_header, is_served_version
from sentinel.server.guard import SERVICE_FAILED
from sentinel.server.http import (
    BAD_HOST,
    BODY_NOT_ALLOWED,
    DUPLICATE_HEADER,
    FOREIGN_CLIENT,
    HEADERS_TOO_LARGE,
    INTERNAL_ERROR,
    MALFORMED,
    METHOD_NOT_ALLOWED,
    MISSING_HOST,
    NOT_FOUND,
    REQUEST_TIMEOUT,
    SERVER_BUSY,
    UNAUTHORIZED,
    USER_NOT_ALLOWED,
    VERSION_NOT_SUPPORTED,
    Canned,
    Route,
    render,
    route_for,
)
from sentinel.server.service import Caller, Reply
from sentinel.server.state import ServerState, Target

# Module-level aliases: the hot path compares identities without attribute lookups.
_CREDENTIALS = Route.CREDENTIALS
_HEALTHZ = Route.HEALTHZ
_METRICS = Route.METRICS
_OTHER = Route.OTHER
_KIND_OTHER = HeaderKind.OTHER
_KIND_HOST = HeaderKind.HOST
_KIND_AUTHORIZATION = HeaderKind.AUTHORIZATION
_KIND_FOREIGN = HeaderKind.FOREIGN
_KIND_CONTENT_LENGTH = HeaderKind.CONTENT_LENGTH
_KIND_CONNECTION = HeaderKind.CONNECTION
_kind_of = HEADER_KINDS.get
_compare_digest = hmac.compare_digest

# Request flags; any of them sends the request off the fast path.
_DUPLICATE = 1  # a second Host or Authorization header
_FOREIGN = 2  # a browser or proxy marker (Origin, Sec-Fetch-*, X-Forwarded-For, Forwarded)
_CONNECTION = 4  # a Connection header other than plain keep-alive (`close`, `upgrade`, ...)
# `Connection: keep-alive` (sent by the JS and Java SDKs on HTTP/1.1) stays on the fast path, which
# then only has to rule out HTTP/1.0.
_KEEP_ALIVE = 8
_KEEP_ALIVE_VALUES = frozenset((b"keep-alive", b"Keep-Alive", b"keep-Alive", b"Keep-alive"))

_OWS = b" \t"

# A parser that is never fed, swapped in when a connection ends: it drops the live parser's
# reference back to the protocol, so the pair is freed by reference counting, not a GC pass.
_DEAD_PARSER = httptools.HttpRequestParser(object())


# A credential request is queued as its `Target` (which profile's service answers it).
Item: TypeAlias = Canned | Route | Target
Pending: TypeAlias = tuple[Item, bool, Route]


class _StopParsing(Exception):
    """Raised from a parser callback once a response that ends the connection has been chosen."""


class HttpConnection(asyncio.Protocol):
    """The protocol instance for one accepted connection."""

    __slots__ = (
        "_admitted",
        "_auth",
        "_authenticated",
        "_backlog",
        "_began_here",
        "_bytes_left",
        "_caller",
        "_closing",
        "_flags",
        "_headers_left",
        "_host",
        "_in_head",
        "_parser",
        "_partial",
        "_read_paused",
        "_srv",
        "_task",
        "_transport",
        "_url",
        "_user_refused",
        "_write_paused",
        "deadline",
    )

    def __init__(self, state: ServerState) -> None:
        self._srv = state
        self._admitted = False
        # True once a request carried the token (and, under `--allow-user`, from an allowed uid).
        self._authenticated = False
        # Under `--allow-user`: who the client is (for the decision log), or refused.
        self._caller: Caller | None = None
        self._user_refused = False
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
        self._parser = _DEAD_PARSER
        self._began_here = False
        self._partial = 0
        self._url = b""
        self._host: bytes | None = None
        self._auth: bytes | None = None
        self._flags = 0
        self._headers_left = 0
        self._bytes_left = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        srv = self._srv
        uid = None
        if srv.users is not None:
            # Once per connection, while the client's socket surely exists (issue 11). The
            # refusal answers its first request: closing now, with that request unread, would
            # reset the connection and the client might never see the 403.
            uid = srv.users.uid_of(transport)
            self._caller = srv.users.caller(uid)
            self._user_refused = self._caller is None
        if not srv.admit(self, uid):
            # Full of authenticated connections (or closing): answer without reading a byte, so
            # a flood costs no parsing.
            self._closing = True
            self._transport.write(SERVER_BUSY.close)
            self._transport.close()
            srv.logger.debug("refused a connection: server full or closing")
            return
        self._admitted = True
        limits = srv.limits
        self._transport.set_write_buffer_limits(high=limits.write_high_water, low=limits.write_low_water)
        # Not extended by requests until the token arrives (`_dispatch`).
        self.deadline = srv.auth_deadline
        self._parser = httptools.HttpRequestParser(self)

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
        self._parser = _DEAD_PARSER

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade request: it was answered like any other; what follows would be
            # another protocol, which we do not speak.
            self.close_when_done()
            return
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _StopParsing | None):
                self._srv.logger.error("request handling failed: %s", type(exc.__context__).__name__)
            if not self._closing:
                self._refuse(MALFORMED, False, _OTHER)
            return
        if self._in_head:
            self._bound_partial_head(data)

    # -- httptools callbacks ----------------------------------------------------------------
    # No on_message_begin/on_headers_complete: each callback costs a C->Python call per request.
    # A request "begins" at its first on_url (llhttp has parsed the method by then).

    def on_url(self, url: bytes) -> None:
        if self._in_head:  # the target arrives in pieces when it spans reads
            self._url += url
        else:
            limits = self._srv.limits
            self._in_head = True
            self._began_here = True
            self._url = url
            self._host = None
            self._auth = None
            self._flags = 0
            self._headers_left = limits.max_headers
            self._bytes_left = limits.max_header_bytes
            if self._authenticated:
                self.deadline = self._srv.header_deadline
        self._bytes_left -= len(url)
        if self._bytes_left < 0:
            self._refuse_and_stop(HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers_left = self._headers_left - 1
        bytes_left = self._bytes_left - len(name) - len(value) - 4  # ": " and CRLF
        self._headers_left = headers_left
        self._bytes_left = bytes_left
        if headers_left < 0 or bytes_left < 0:
            self._refuse_and_stop(HEADERS_TOO_LARGE)
        kind = _kind_of(name)
        if kind is None:
            kind = classify_header(name)
        if kind is _KIND_OTHER:
            return
        # Values are kept raw (llhttp leaves trailing whitespace): the fast path compares them
        # as sent, and `_dispatch` strips them before deciding.
        if kind is _KIND_HOST:
            if self._host is not None:
                self._flags |= _DUPLICATE
            self._host = value
        elif kind is _KIND_AUTHORIZATION:
            if self._auth is not None:
                self._flags |= _DUPLICATE
            self._auth = value
        elif kind is _KIND_CONNECTION:
            self._flags |= _KEEP_ALIVE if value in _KEEP_ALIVE_VALUES else _CONNECTION
        elif kind is _KIND_FOREIGN:
            self._flags |= _FOREIGN
        elif kind is _KIND_CONTENT_LENGTH:
            if value.strip(b"0 \t"):
                self._refuse_and_stop(BODY_NOT_ALLOWED)
        else:  # Transfer-Encoding: the framing of a body we would refuse anyway
            self._refuse_and_stop(BODY_NOT_ALLOWED)

    def on_message_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        srv = self._srv
        auth = self._auth
        flags = self._flags
        if (
            self._authenticated
            and (target := srv.targets.get(self._url)) is not None
            and (not flags or (flags == _KEEP_ALIVE and parser.get_http_version() == "1.1"))
            and self._host in srv.hosts.accepted
            and auth is not None
            and _compare_digest(auth, target.token)
            and self._task is None
            and parser.should_keep_alive()
            and parser.get_method() == b"GET"
        ):
            # The hot path (DESIGN.md §3): a keep-alive GET of a profile's path (`/`) that passed
            # every check, on a connection that already did (its first request went through
            # `_dispatch`).
            self._issue_now(True, target)
            return
        self._dispatch()
        if self._closing:
            raise _StopParsing

    # -- the general path -------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Decide a request off the fast path: the uid and version, then the checks in issue 3's
        order, then routing. The first request with the token authenticates the connection."""
        parser = self._parser
        srv = self._srv
        flags = self._flags
        keep_alive = parser.should_keep_alive()
        if keep_alive and flags & (_CONNECTION | _KEEP_ALIVE):
            # HTTP/1.0 always closes: honouring its keep-alive would need a `Connection:
            # keep-alive` response header for a case no SDK uses.
            keep_alive = parser.get_http_version() == "1.1"
        target = srv.target_for(self._url)
        route = _CREDENTIALS if target is not None else route_for(self._url)
        host = self._host
        auth = self._auth
        refusal: Canned | None = None
        if self._user_refused:
            refusal = USER_NOT_ALLOWED
        elif not is_served_version(parser.get_http_version()):
            refusal = VERSION_NOT_SUPPORTED
        elif flags & _DUPLICATE:
            refusal = DUPLICATE_HEADER
        elif flags & _FOREIGN:
            refusal = FOREIGN_CLIENT
        elif host is None:
            refusal = MISSING_HOST
        elif not srv.hosts.allows(host.rstrip(_OWS)):
            refusal = BAD_HOST
        elif auth is not None and srv.any_token(token := auth.rstrip(_OWS)):
            # The token of any profile authenticates the connection; a credential path takes only
            # its own profile's (issue 14): B's token on A's path is a 401.
            if not self._authenticated:
                self._authenticated = True
                srv.authenticated(self)
            if route is _OTHER:
                refusal = NOT_FOUND
            elif target is not None and not _compare_digest(token, target.token):
                refusal = UNAUTHORIZED
        elif route is not _HEALTHZ:
            refusal = UNAUTHORIZED
        if refusal is None and parser.get_method() != b"GET":
            refusal = METHOD_NOT_ALLOWED
        # Keep-alive is a privilege of authenticated connections: anything else is answered once,
        # then closed, so a peer without the token cannot hold a slot (issue 11).
        keep_alive = keep_alive and self._authenticated
        if refusal is None:
            self._emit(target if target is not None else route, keep_alive, route)
        else:
            self._refuse(refusal, keep_alive, route)

    def _refuse_and_stop(self, canned: Canned) -> None:
        self._refuse(canned, False, _OTHER)
        raise _StopParsing

    def _bound_partial_head(self, data: bytes) -> None:
        """Refuse a head that is still incomplete after this read but already too large.

        httptools buffers a header line until it ends, so without this a peer could grow that
        buffer without limit. Requests carry no body, so a head that began in this read starts
        right after the last blank line in `data`.
        """
        if self._began_here:
            end = data.rfind(b"\n\r\n")
            self._partial = len(data) - (end + 3 if end >= 0 else 0)
        else:
            self._partial += len(data)
        if self._partial > self._srv.limits.max_header_bytes:
            self._refuse(HEADERS_TOO_LARGE, False, _OTHER)

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
        if type(item) is Target:
            self._issue_now(keep_alive, item)
        elif item is _HEALTHZ:
            self._send_reply(self._srv.service.health(), keep_alive, route, cached=False)
        elif item is _METRICS:
            self._srv.flush_counts()  # so the scrape sees every request before it
            self._send_reply(self._srv.service.metrics(), keep_alive, route, cached=False)
        else:
            canned = cast(Canned, item)
            self._send(canned.bytes_for(keep_alive), keep_alive, route, canned.status)

    def _issue_now(self, keep_alive: bool, target: Target) -> None:
        """Answer a credential request from the cache, or start awaiting `service.issue()`.

        A keep-alive answer of the reply rendered last is one write and one integer add: the
        hot path's whole cost after the checks."""
        srv = self._srv
        reply = target.service.issue_nowait(self._caller)
        if reply is None:
            self._start_issue(keep_alive, target)
        elif keep_alive and reply is srv.renderer.reply:
            self._transport.write(srv.renderer.keep_alive)
            srv.hot_hits += 1
            self.deadline = srv.idle_deadline
        else:
            self._send_reply(reply, keep_alive, _CREDENTIALS, cached=True)

    def _send_reply(self, reply: Reply, keep_alive: bool, route: Route, *, cached: bool) -> None:
        if reply is SERVICE_FAILED:  # the guard logged it (server/guard.py)
            self._send(INTERNAL_ERROR.bytes_for(keep_alive), keep_alive, route, INTERNAL_ERROR.status)
            return
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

    def _start_issue(self, keep_alive: bool, target: Target) -> None:
        srv = self._srv
        srv.requests_in_flight += 1
        self.deadline = 0.0  # the service bounds its own work; shutdown bounds ours
        self._task = srv.loop.create_task(self._issue(keep_alive, target))
        self._update_reading()

    async def _issue(self, keep_alive: bool, target: Target) -> None:
        srv = self._srv
        try:
            reply = await target.service.issue(self._caller)
        finally:
            srv.requests_in_flight -= 1
            self._task = None
        if self._transport.is_closing():
            return
        # The last response before a requested close (shutdown, client EOF) says so.
        keep_alive = keep_alive and not (self._closing and not self._backlog)
        self._send_reply(reply, keep_alive, _CREDENTIALS, cached=True)
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

    def evict(self) -> None:
        """Make room for a newer connection (`ServerState.admit`): say so, and close."""
        self._closing = True
        transport = self._transport
        if transport.is_closing():
            return
        self._srv.logger.debug("evicted a connection that presented no token, to make room")
        if transport.get_write_buffer_size() > 0:
            transport.abort()
        else:
            transport.write(SERVER_BUSY.close)
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
