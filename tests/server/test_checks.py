"""The checks that run before routing: token, Host (DNS rebinding), browser/proxy markers, methods."""

from __future__ import annotations

import pytest

from sentinel.server import Server
from sentinel.server.checks import (
    HeaderKind,
    LoopbackHosts,
    classify_header,
    is_loopback_host,
    is_served_version,
)
from tests.server.client import TOKEN, Connect, fetch, request
from tests.server.services import ACCESS_KEY, FixedService


async def test_correct_token_gets_credentials(server: Server) -> None:
    """GET / with the token returns the service's credentials, uncacheable."""
    response = await fetch(server, request("/"))
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["AccessKeyId"] == ACCESS_KEY


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f"Bearer {TOKEN}", "x" * len(TOKEN)],
    ids=["missing", "empty", "wrong", "prefix", "longer", "case", "bearer", "same-length"],
)
async def test_missing_or_wrong_token_is_401(
    server: Server, token: str | None, service: FixedService
) -> None:
    """Any Authorization value but the exact token -> 401, JSON message, service never asked."""
    response = await fetch(server, request("/", token=token))
    assert response.status == 401
    assert response.json() == {"Message": "missing or invalid authorization token"}
    assert service.nowait_calls == 0


async def test_401_closes_the_connection(server: Server, connect: Connect) -> None:
    """A 401 says `Connection: close` and closes (issue 11: it used to keep the connection and
    re-arm its idle timer, so tokenless peers could hold every slot); the server forgets it."""
    client = await connect(server)
    response = await client.exchange(request("/", token="nope"))
    assert (response.status, response.closes) == (401, True)
    assert await client.closed()
    await server.wait_connections_closed()
    assert server.statistics().connections_open == 0


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "evil.com:80",
        "127.0.0.1.evil.com",
        "localhost.evil.com",
        "0.0.0.0",
        "0.0.0.0:8080",
        "10.0.0.1",
        "169.254.170.2",
        "[::ffff:127.0.0.1]",
        "[::]",
        "::1",
        "127.0.0.1:notaport",
        "127.0.0.1:",
        "127.0.0.1:99999",
        "127.1",
        "2130706433",
        "localhost.",
        "",
    ],
)
async def test_non_loopback_host_is_403(server: Server, host: str, service: FixedService) -> None:
    """DNS rebinding: a request naming any host but a loopback literal or localhost -> 403."""
    response = await fetch(server, request("/", host=host))
    assert response.status == 403
    assert response.json() == {"Message": "Host must be a loopback address"}
    assert service.nowait_calls == 0


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:{port}",
        "localhost",
        "LocalHost:{port}",
        "127.1.2.3:1",
        "[::1]:{port}",
        "[::1]",
    ],
)
async def test_loopback_host_is_accepted(server: Server, host: str) -> None:
    response = await fetch(server, request("/", host=host.format(port=server.port)))
    assert response.status == 200


async def test_missing_host_is_400_and_closes(server: Server, connect: Connect) -> None:
    client = await connect(server)
    response = await client.exchange(request("/", host=None))
    assert (response.status, response.closes) == (400, True)
    assert await client.closed()


@pytest.mark.parametrize("name", ["Host", "Authorization"])
async def test_duplicate_host_or_authorization_is_400(server: Server, connect: Connect, name: str) -> None:
    """A second Host or Authorization could smuggle a different value past one of the checks."""
    value = "127.0.0.1" if name == "Host" else TOKEN
    client = await connect(server)
    response = await client.exchange(request("/", headers=[(name, value)]))
    assert (response.status, response.closes) == (400, True)
    assert await client.closed()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Origin", "http://127.0.0.1"),
        ("origin", "null"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Mode", "no-cors"),
        ("SEC-FETCH-DEST", "empty"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1"),
        ("Via", "1.1 squid"),
        ("via", "1.0 proxy"),
        ("X-Real-IP", "127.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
        ("Referer", "http://127.0.0.1/"),
        ("REFERER", "http://evil.example/"),
    ],
)
@pytest.mark.parametrize("path", ["/", "/healthz", "/metrics"])
async def test_browser_or_proxy_request_is_403(server: Server, name: str, value: str, path: str) -> None:
    """Browser (Origin, Sec-Fetch-*, Referer) and proxy (X-Forwarded-For, Forwarded, Via,
    X-Real-IP) markers -> 403, token or not."""
    response = await fetch(server, request(path, headers=[(name, value)]))
    assert response.status == 403
    assert response.json() == {"Message": "browser and proxied requests are refused"}


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
@pytest.mark.parametrize("path", ["/", "/healthz"])
async def test_http_versions_other_than_1_x_are_505_and_close(
    server: Server, connect: Connect, service: FixedService, version: str, path: str
) -> None:
    """A request line llhttp parses but we do not speak (`GET / HTTP/2.0` with a valid token and
    Host): 505, the connection closes, and the service is never asked for credentials."""
    client = await connect(server)
    response = await client.exchange(request(path, version=version))
    assert (response.status, response.closes) == (505, True)
    assert response.json() == {"Message": "HTTP version not supported"}
    assert await client.closed()
    assert service.nowait_calls == 0


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
async def test_http_1_0_and_1_1_are_served(server: Server, version: str) -> None:
    assert (await fetch(server, request("/", version=version))).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("path", ["/", "/healthz", "/metrics"])
async def test_other_methods_are_405(server: Server, method: str, path: str) -> None:
    response = await fetch(server, request(path, method=method))
    assert response.status == 405
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize("path", ["/foo", "/credentials", "//", "/healthz/", "/metrics.txt", "/%2F", "*"])
async def test_unknown_path_is_404_with_token_and_401_without(server: Server, path: str) -> None:
    """Routing happens after the token check, so an unauthenticated caller learns no paths."""
    assert (await fetch(server, request(path))).status == 404
    assert (await fetch(server, request(path, token=None))).status == 401


async def test_healthz_needs_no_token_but_metrics_does(server: Server) -> None:
    health = await fetch(server, request("/healthz", token=None))
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert (await fetch(server, request("/metrics", token=None))).status == 401
    metrics = await fetch(server, request("/metrics"))
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"up 1" in metrics.body


async def test_query_string_is_ignored(server: Server) -> None:
    assert (await fetch(server, request("/?role=admin"))).status == 200
    assert (await fetch(server, request("/healthz?x=1", token=None))).status == 200


async def test_error_bodies_never_echo_request_values(server: Server) -> None:
    """Error messages are fixed text: no token, no Host, no path from the request."""
    for data in (
        request("/secret-path", token="wrong-token-value"),
        request("/", host="rebind.example", token=TOKEN),
        request("/", headers=[("Origin", "http://origin.example")]),
    ):
        response = await fetch(server, data)
        for value in (
            b"wrong-token-value",
            TOKEN.encode(),
            b"rebind.example",
            b"origin.example",
            b"secret-path",
        ):
            assert value not in response.body


# -- the pure checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"127.0.0.1", True),
        (b"127.255.255.254:65535", True),
        (b"localhost:0", True),
        (b"LOCALHOST", True),
        (b"[::1]:8080", True),
        (b"[0:0:0:0:0:0:0:1]", True),
        (b"[::1%lo]", False),
        (b"[::1", False),
        (b"127.0.0.1:8080:1", False),
        (b"127.000.000.001", False),
        (b"127.0.0.1 ", False),
        (b"\xff", False),
        (b"[127.0.0.1]", False),
    ],
)
def test_is_loopback_host(value: bytes, expected: bool) -> None:
    assert is_loopback_host(value) is expected


def test_loopback_hosts_remembers_only_a_bounded_set_of_accepted_values() -> None:
    hosts = LoopbackHosts()
    assert all(hosts.allows(b"127.0.0.1:%d" % port) for port in range(1, 500))
    assert not hosts.allows(b"evil.com")
    assert len(hosts.accepted) <= LoopbackHosts.MAX_REMEMBERED


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (b"Host", HeaderKind.HOST),
        (b"hOsT", HeaderKind.HOST),
        (b"AUTHORIZATION", HeaderKind.AUTHORIZATION),
        (b"sec-fetch-site", HeaderKind.FOREIGN),
        (b"X-FORWARDED-FOR", HeaderKind.FOREIGN),
        (b"Via", HeaderKind.FOREIGN),
        (b"VIA", HeaderKind.FOREIGN),
        (b"X-Real-Ip", HeaderKind.FOREIGN),
        (b"Referer", HeaderKind.FOREIGN),
        (b"referer", HeaderKind.FOREIGN),
        (b"Referrer", HeaderKind.OTHER),
        (b"Vias", HeaderKind.OTHER),
        (b"content-LENGTH", HeaderKind.CONTENT_LENGTH),
        (b"Transfer-encoding", HeaderKind.TRANSFER_ENCODING),
        (b"User-Agent", HeaderKind.OTHER),
        (b"X-Hosts", HeaderKind.OTHER),
    ],
)
def test_classify_header(name: bytes, kind: HeaderKind) -> None:
    assert classify_header(name) is kind


@pytest.mark.parametrize(
    ("version", "served"),
    [("1.1", True), ("1.0", True), ("2.0", False), ("0.9", False), ("", False), ("1.1 ", False)],
)
def test_is_served_version(version: str, served: bool) -> None:
    assert is_served_version(version) is served
