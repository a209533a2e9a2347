"""Reading requests: httptools' llhttp parser callbacks, limits, and the checks (DESIGN.md §3, §7).

The parser is a library; this is the strict part around it: GET only, no bodies, a bounded head
(request line + headers) and header count, browser/proxy markers refused, Host must be loopback,
the token compared in constant time. Only the few headers that matter are kept.

Per-request CPU is the product (botocore re-fetches credentials on nearly every call), so a
keep-alive `GET /` that passes every check and hits the credential cache takes one straight path
in `on_message_complete`: checks -> `service.issue_nowait()` -> one `transport.write()`. Anything
else goes through `_dispatch`, which makes each decision explicitly.
"""

from __future__ import annotations

import asyncio
import hmac

import httptools

from sentinel.server.checks import HEADER_KINDS, HeaderKind, classify_header
from sentinel.server.connection import Connection
from sentinel.server.http import (
    BAD_HOST,
    BODY_NOT_ALLOWED,
    DUPLICATE_HEADER,
    FOREIGN_CLIENT,
    HEADERS_TOO_LARGE,
    MALFORMED,
    METHOD_NOT_ALLOWED,
    MISSING_HOST,
    NOT_FOUND,
    UNAUTHORIZED,
    Canned,
    Route,
    route_for,
)
from sentinel.server.state import ServerState

# Module-level aliases: the hot path compares identities without attribute lookups.
_CREDENTIALS = Route.CREDENTIALS
_HEALTHZ = Route.HEALTHZ
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


class _StopParsing(Exception):
    """Raised from a parser callback once a response that ends the connection has been chosen."""


class HttpConnection(Connection):
    """The protocol instance for one accepted connection."""

    __slots__ = (
        "_auth",
        "_began_here",
        "_bytes_left",
        "_flags",
        "_headers_left",
        "_host",
        "_parser",
        "_partial",
        "_url",
    )

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._parser = _DEAD_PARSER
        self._began_here = False
        self._partial = 0
        self._url = b""
        self._host: bytes | None = None
        self._auth: bytes | None = None
        self._flags = 0
        self._headers_left = 0
        self._bytes_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._admitted:
            self._parser = httptools.HttpRequestParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
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
            self._url == b"/"
            and (not flags or (flags == _KEEP_ALIVE and parser.get_http_version() == "1.1"))
            and self._host in srv.hosts.accepted
            and auth is not None
            and _compare_digest(auth, srv.token)
            and self._task is None
            and parser.should_keep_alive()
            and parser.get_method() == b"GET"
        ):
            # The hot path (DESIGN.md §3): a keep-alive GET / that passed every check.
            try:
                reply = srv.service.issue_nowait()
            except Exception as exc:  # the seam promises not to raise; a bug must not kill the server
                self._service_failed(exc, True, _CREDENTIALS)
                return
            renderer = srv.renderer
            if reply is not None and reply is renderer.reply:
                self._transport.write(renderer.keep_alive)
                srv.hot_hits += 1
                self.deadline = srv.idle_deadline
            elif reply is None:
                self._start_issue(True, _CREDENTIALS)
            else:
                self._send_reply(reply, True, _CREDENTIALS, cached=True)
            return
        self._dispatch()
        if self._closing:
            raise _StopParsing

    # -- the general path -------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Decide a request off the fast path; the checks in issue 3's order, then routing."""
        parser = self._parser
        srv = self._srv
        flags = self._flags
        keep_alive = parser.should_keep_alive()
        if keep_alive and flags & (_CONNECTION | _KEEP_ALIVE):
            # HTTP/1.0 always closes: honouring its keep-alive would need a `Connection:
            # keep-alive` response header for a case no SDK uses.
            keep_alive = parser.get_http_version() == "1.1"
        route = route_for(self._url)
        host = self._host
        auth = self._auth
        refusal: Canned | None = None
        if flags & _DUPLICATE:
            refusal = DUPLICATE_HEADER
        elif flags & _FOREIGN:
            refusal = FOREIGN_CLIENT
        elif host is None:
            refusal = MISSING_HOST
        elif not srv.hosts.allows(host.rstrip(_OWS)):
            refusal = BAD_HOST
        elif route is not _HEALTHZ:
            if auth is None or not _compare_digest(auth.rstrip(_OWS), srv.token):
                refusal = UNAUTHORIZED
            elif route is _OTHER:
                refusal = NOT_FOUND
        if refusal is None and parser.get_method() != b"GET":
            refusal = METHOD_NOT_ALLOWED
        if refusal is None:
            self._emit(route, keep_alive, route)
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
