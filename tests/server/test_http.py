"""Response bytes: framing, canned errors, the reply memo, routing of request targets."""

from __future__ import annotations

import httptools
import orjson
import pytest

from sentinel.server import Reply
from sentinel.server.http import (
    METHOD_NOT_ALLOWED,
    UNAUTHORIZED,
    USER_NOT_ALLOWED,
    VERSION_NOT_SUPPORTED,
    Canned,
    ReplyRenderer,
    Route,
    render,
    response_head,
    route_for,
)


class _Parsed:
    """Collects what an independent parser (llhttp, response mode) sees in our bytes."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def _parse(data: bytes) -> tuple[int, _Parsed]:
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(data)
    assert parsed.complete == 1
    return parser.get_status_code(), parsed


@pytest.mark.parametrize("close", [False, True])
def test_render_is_a_complete_framed_response(close: bool) -> None:
    status, parsed = _parse(render(200, b'{"a":1}', "application/json", close=close))
    assert status == 200
    assert parsed.body == b'{"a":1}'
    assert parsed.headers[b"content-length"] == b"7"
    assert parsed.headers[b"cache-control"] == b"no-store"
    assert (parsed.headers.get(b"connection") == b"close") is close


def test_canned_errors_are_json_messages() -> None:
    status, parsed = _parse(UNAUTHORIZED.keep_alive)
    assert status == 401
    assert orjson.loads(parsed.body) == {"Message": "missing or invalid authorization token"}
    assert b"connection" not in parsed.headers
    assert _parse(METHOD_NOT_ALLOWED.close)[1].headers[b"allow"] == b"GET"


@pytest.mark.parametrize(
    ("canned", "status", "message"),
    [
        (VERSION_NOT_SUPPORTED, 505, "HTTP version not supported"),
        (USER_NOT_ALLOWED, 403, "this local user may not get credentials"),
    ],
)
def test_issue_11_refusals_always_close(canned: Canned, status: int, message: str) -> None:
    """Neither refusal leaves a connection open, whatever the request asked for."""
    for data in (canned.bytes_for(True), canned.bytes_for(False)):
        parsed_status, parsed = _parse(data)
        assert (parsed_status, orjson.loads(parsed.body)) == (status, {"Message": message})
        assert parsed.headers[b"connection"] == b"close"


@pytest.mark.parametrize(("status", "content_type"), [(99, "a/b"), (600, "a/b"), (200, "a/b\r\nX: y")])
def test_unsendable_replies_are_refused(status: int, content_type: str) -> None:
    with pytest.raises(ValueError, match=r"out of range|printable"):
        response_head(status, content_type, False)


def test_reply_renderer_reuses_bytes_for_the_same_reply() -> None:
    renderer = ReplyRenderer()
    reply = Reply(200, b"{}")
    first = renderer.render(reply, True)
    assert renderer.render(reply, True) is first
    assert renderer.render(reply, False) is renderer.render(reply, False)
    assert renderer.render(Reply(200, b"{}"), True) is not first


@pytest.mark.parametrize(
    ("target", "route"),
    [
        (b"/", Route.CREDENTIALS),
        (b"/?a=b", Route.CREDENTIALS),
        (b"/healthz", Route.HEALTHZ),
        (b"/metrics?x", Route.METRICS),
        (b"/metrics/", Route.OTHER),
        (b"http://127.0.0.1/", Route.OTHER),
        (b"", Route.OTHER),
    ],
)
def test_route_for(target: bytes, route: Route) -> None:
    assert route_for(target) is route
