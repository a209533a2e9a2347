"""Routes and response bytes: canned error responses built once, service replies rendered with a memo.

Every response carries `Content-Type`, `Content-Length` and `Cache-Control: no-store` (credentials
must never be cached by anything in between; the other routes lose nothing by it), plus
`Connection: close` when the server closes after it. Error bodies are fixed JSON
`{"Message": ...}` strings: never upstream text, never header values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus

import orjson

from sentinel.server.service import JSON, Reply


class Route(StrEnum):
    """The endpoint's routes, also the `route` label of `requests_total`."""

    CREDENTIALS = "credentials"
    HEALTHZ = "healthz"
    METRICS = "metrics"
    OTHER = "other"  # unknown paths and requests rejected before a path was known


# Exact paths only. A query string is ignored (`/?x` is `/`): SDKs call the configured URI verbatim
# and a query carries nothing we use.
ROUTES: dict[bytes, Route] = {
    b"/": Route.CREDENTIALS,
    b"/healthz": Route.HEALTHZ,
    b"/metrics": Route.METRICS,
}


def route_for(target: bytes) -> Route:
    """Map a request target to its route (`Route.OTHER` when unknown)."""
    route = ROUTES.get(target)
    if route is None:
        path, _, _ = target.partition(b"?")
        route = ROUTES.get(path, Route.OTHER)
    return route


@functools.lru_cache(maxsize=64)
def response_head(status: int, content_type: str, close: bool, extra: bytes = b"") -> bytes:
    """Status line and headers up to and including `Content-Length: ` (the length comes next).

    Raises ValueError for a status or content type that cannot be put on the wire.
    """
    if not 200 <= status <= 599:
        raise ValueError("status out of range")
    if not content_type.isprintable() or not content_type.isascii():
        raise ValueError("content type not printable ASCII")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii")),
            b"Content-Type: %s\r\n" % content_type.encode("ascii"),
            b"Cache-Control: no-store\r\n",
            extra,
            b"Connection: close\r\n" if close else b"",
            b"Content-Length: ",
        )
    )


def render(status: int, body: bytes, content_type: str, *, close: bool, extra: bytes = b"") -> bytes:
    """One complete response as bytes, ready for a single `transport.write()`."""
    return b"%s%d\r\n\r\n%s" % (response_head(status, content_type, close, extra), len(body), body)


@dataclass(frozen=True, slots=True)
class Canned:
    """A fixed error response, pre-rendered in its keep-alive and closing forms."""

    status: int
    message: str
    keep_alive: bytes
    close: bytes
    # Framing errors leave the connection in an unknown state: always close after them.
    always_close: bool

    @classmethod
    def build(cls, status: int, message: str, *, always_close: bool = False, extra: bytes = b"") -> Canned:
        body = orjson.dumps({"Message": message})
        return cls(
            status=status,
            message=message,
            keep_alive=render(status, body, JSON, close=always_close, extra=extra),
            close=render(status, body, JSON, close=True, extra=extra),
            always_close=always_close,
        )

    def bytes_for(self, keep_alive: bool) -> bytes:
        return self.keep_alive if keep_alive else self.close


MALFORMED = Canned.build(400, "malformed request", always_close=True)
BODY_NOT_ALLOWED = Canned.build(400, "request bodies are not accepted", always_close=True)
DUPLICATE_HEADER = Canned.build(400, "duplicate Host or Authorization header", always_close=True)
MISSING_HOST = Canned.build(400, "missing Host header", always_close=True)
HEADERS_TOO_LARGE = Canned.build(431, "request headers too large", always_close=True)
REQUEST_TIMEOUT = Canned.build(408, "request headers not received in time", always_close=True)
SERVER_BUSY = Canned.build(503, "too many connections", always_close=True)
# HTTP/0.9 and HTTP/2.0 request lines, which llhttp parses (see `checks.is_served_version`).
VERSION_NOT_SUPPORTED = Canned.build(505, "HTTP version not supported", always_close=True)
# `--allow-user`: the connection's uid (looked up on accept) is not allowed or unknown. It answers
# the first request: closing at accept with that request unread resets the connection, and the
# client may never see the 403.
USER_NOT_ALLOWED = Canned.build(403, "this local user may not get credentials", always_close=True)
# A browser, a proxy or DNS rebinding is talking, not the workload: close even an authenticated
# connection (issue 11).
FOREIGN_CLIENT = Canned.build(403, "browser and proxied requests are refused", always_close=True)
BAD_HOST = Canned.build(403, "Host must be a loopback address", always_close=True)
UNAUTHORIZED = Canned.build(401, "missing or invalid authorization token")
NOT_FOUND = Canned.build(404, "not found")
METHOD_NOT_ALLOWED = Canned.build(405, "method not allowed", extra=b"Allow: GET\r\n")
INTERNAL_ERROR = Canned.build(500, "internal error")


class ReplyRenderer:
    """Renders service replies, remembering the last one.

    A credential cache hands out the same `Reply` object for as long as the cached credentials
    live, so the cache-hit path costs one identity comparison instead of building bytes: the
    connection's fast path reads `reply` and `keep_alive` directly.
    """

    __slots__ = ("_close", "keep_alive", "reply")

    def __init__(self) -> None:
        self.reply: Reply | None = None
        self.keep_alive = b""
        self._close: bytes | None = None

    def render(self, reply: Reply, keep_alive: bool) -> bytes:
        """Raises ValueError if the reply cannot be put on the wire (see `response_head`)."""
        if reply is not self.reply:
            rendered = render(reply.status, reply.body, reply.content_type, close=False)
            self.reply, self.keep_alive, self._close = reply, rendered, None
        if keep_alive:
            return self.keep_alive
        if self._close is None:
            self._close = render(reply.status, reply.body, reply.content_type, close=True)
        return self._close
