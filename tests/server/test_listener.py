"""The listener: loopback-only bind, connection limit, metrics, and ordered shutdown."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from sentinel.errors import ConfigError
from sentinel.metrics import Registry
from sentinel.server import Reply, ServerConfigError, ServerLimits, start_server
from sentinel.server.service import PROMETHEUS_TEXT
from tests.server.client import DEADLINE, TOKEN, Connect, Serve, eventually, fetch, request
from tests.server.services import BlockingService, BrokenService, FixedService


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_uvloop_is_the_loop_under_test() -> None:
    """Guards the conftest hook: the "uvloop" parametrization really runs on uvloop."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


# -- bind ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "169.254.170.2", "example.com", "", "::ffff:127.0.0.1"],
)
async def test_non_loopback_bind_is_refused_before_binding(host: str) -> None:
    with pytest.raises(ServerConfigError) as raised:
        await start_server(FixedService(), token=TOKEN, host=host)
    assert isinstance(raised.value, ConfigError)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost"])
async def test_loopback_bind(serve: Serve, host: str) -> None:
    server = await serve(host=host)
    assert server.host == ("127.0.0.1" if host == "localhost" else host)
    assert server.url == f"http://{server.host}:{server.port}/"
    assert (await fetch(server, request("/"))).status == 200


async def test_ipv6_loopback_bind(serve: Serve) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = await serve(host="::1")
    assert server.url == f"http://[::1]:{server.port}/"
    assert (await fetch(server, request("/", host=f"[::1]:{server.port}"))).status == 200


async def test_port_in_use_is_a_startup_error(serve: Serve) -> None:
    taken = await serve()
    with pytest.raises(ServerConfigError, match="cannot listen"):
        await start_server(FixedService(), token=TOKEN, port=taken.port)


@pytest.mark.parametrize("token", ["", " padded", "tab\there", "line\nbreak", "naïve"])
async def test_unusable_token_is_refused(token: str) -> None:
    with pytest.raises(ServerConfigError) as raised:
        await start_server(FixedService(), token=token)
    if token:
        assert token not in str(raised.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_header_bytes": 10},
        {"max_headers": 0},
        {"header_timeout": 0},
        {"idle_timeout": -1},
        {"max_connections": 0},
        {"write_high_water": 10, "write_low_water": 10},
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ServerConfigError):
        ServerLimits(**kwargs)  # type: ignore[arg-type]


# -- connection limit, metrics, service failures -------------------------------------------


async def test_connections_over_the_limit_get_503_without_being_read(serve: Serve, connect: Connect) -> None:
    """At max_connections, a new connection is answered 503 and closed; a freed slot is reusable."""
    registry = Registry()
    server = await serve(limits=ServerLimits(max_connections=2), metrics=registry)
    first, second = await connect(server), await connect(server)
    for client in (first, second):  # answered, hence accepted and counted
        assert (await client.exchange(request("/"))).status == 200
    third = await connect(server)
    refused = await third.response()
    assert (refused.status, refused.closes) == (503, True)
    assert await third.closed()
    assert server.statistics().connections_rejected == 1
    assert registry.get("connections_rejected_total").value() == 1  # type: ignore[union-attr]
    await first.close()
    await eventually(lambda: server.statistics().connections_open == 1)
    assert (await (await connect(server)).exchange(request("/"))).status == 200


class _RegistryService(FixedService):
    """Renders the registry on /metrics, as the daemon's service does."""

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    def metrics(self) -> Reply:
        return Reply(200, self.registry.render().encode(), PROMETHEUS_TEXT)


async def test_metrics_count_requests_by_route_and_status(serve: Serve, connect: Connect) -> None:
    """A scrape of /metrics sees every request answered before it, fast path included."""
    registry = Registry()
    server = await serve(_RegistryService(registry), metrics=registry)
    client = await connect(server)
    for data in (request("/"), request("/"), request("/", token="x"), request("/healthz"), request("/zz")):
        await client.exchange(data)
    scraped = (await client.exchange(request("/metrics"))).body.decode().splitlines()
    assert 'sentinel_requests_total{route="credentials",status="200"} 2' in scraped
    assert 'sentinel_requests_total{route="credentials",status="401"} 1' in scraped
    assert 'sentinel_requests_total{route="healthz",status="200"} 1' in scraped
    assert 'sentinel_requests_total{route="other",status="404"} 1' in scraped
    assert "sentinel_connections_open 1" in scraped
    assert server.statistics().requests == 6
    requests = registry.get("requests_total")
    assert requests is not None
    assert requests.value("metrics", "200") == 1


async def test_service_failures_become_500_with_a_fixed_message(serve: Serve, connect: Connect) -> None:
    """A service that raises (or returns an unsendable reply) costs one 500, not the connection."""
    server = await serve(BrokenService())
    client = await connect(server)
    for path in ("/", "/healthz"):
        response = await client.exchange(request(path))
        assert (response.status, response.json()) == (500, {"Message": "internal error"})
        assert b"upstream" not in response.body
    assert (await client.exchange(request("/metrics"))).status == 200


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_finishes_in_flight_request_and_closes_idle_ones(
    serve: Serve, connect: Connect
) -> None:
    """Graceful shutdown: idle closes at once, new connections are refused, in-flight finishes.

    1. One connection waits on a blocked `issue()`; another is idle after a request.
    2. Start shutdown: the idle one is closed, the listener refuses connections, shutdown waits.
    3. Release the service: the waiting client gets its 200 with `Connection: close`, then
       shutdown returns with no connection left.
    """
    service = BlockingService()
    server = await serve(service)
    busy, idle = await connect(server), await connect(server)
    await busy.send(request("/"))
    assert (await idle.exchange(request("/healthz"))).status == 200
    async with asyncio.timeout(DEADLINE):
        await service.started.wait()
    shutdown = asyncio.create_task(server.shutdown(grace=DEADLINE))
    assert await idle.closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(server.host, server.port)
    assert not shutdown.done()
    service.release.set()
    response = await busy.response()
    assert (response.status, response.closes) == (200, True)
    assert await busy.closed()
    async with asyncio.timeout(DEADLINE):
        await shutdown
    assert server.statistics().connections_open == 0
    assert service.cancelled == 0


async def test_shutdown_aborts_stuck_connections_at_the_deadline(serve: Serve, connect: Connect) -> None:
    """A response that never comes is cut off at the grace deadline and its work cancelled."""
    service = BlockingService()
    server = await serve(service)
    stuck = await connect(server)
    await stuck.send(request("/"))
    async with asyncio.timeout(DEADLINE):
        await service.started.wait()
    async with asyncio.timeout(DEADLINE):
        await server.shutdown(grace=0.2)
    assert await stuck.closed()
    assert service.cancelled == 1
    assert server.statistics() == server.statistics().__class__(
        connections_open=0,
        connections_accepted=1,
        connections_rejected=0,
        requests=0,
        requests_in_flight=0,
        reading_paused=0,
        write_pauses=0,
    )


async def test_shutdown_of_an_unused_server_is_prompt_and_repeatable(serve: Serve) -> None:
    server = await serve()
    async with asyncio.timeout(DEADLINE):
        await server.shutdown(grace=DEADLINE)
        await server.shutdown(grace=DEADLINE)


async def test_client_half_close_still_gets_the_pending_response(serve: Serve, connect: Connect) -> None:
    """EOF from the client while `issue()` is awaited: the response is still delivered, then close.

    Reading is paused while the response is awaited, so the server may only see the EOF after
    writing it: `Connection: close` is not guaranteed, the close is.
    """
    service = BlockingService()
    server = await serve(service)
    client = await connect(server)
    await client.send(request("/"))
    client.writer.write_eof()
    async with asyncio.timeout(DEADLINE):
        await service.started.wait()
    service.release.set()
    assert (await client.response()).status == 200
    assert await client.closed()


async def test_server_is_an_async_context_manager() -> None:
    async with await start_server(FixedService(), token=TOKEN) as server:
        assert (await fetch(server, request("/"))).status == 200
    assert server.statistics().connections_open == 0
