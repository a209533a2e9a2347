"""Connection admission (issue 11, DESIGN.md §6): a peer without the token cannot hold a slot.

Real listeners and real loopback sockets. What is checked: every answer to a connection that has
not presented the token closes it; such a connection is closed at the short auth deadline, an
authenticated one is not; a full listener evicts the oldest unauthenticated connection, never an
authenticated one; under `--allow-user` a user over its share evicts only its own, a refused user
is answered 403 and closed, and the allowed user is served with its uid passed to the service.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from sentinel.server import Server, ServerLimits
from sentinel.server.peer import AllowedUsers, PeerCredentials, UserGate
from sentinel.server.service import Caller, Reply
from tests.server.client import DEADLINE, Client, Connect, Serve, eventually, fetch, request
from tests.server.services import FixedService
from tests.support.other_user import ASK_OVER_HTTP, other_user

# Deadlines far beyond these tests, so a slow machine cannot close a silent connection mid-test.
_PATIENT = {"auth_timeout": 60.0, "header_timeout": 60.0}


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request("/", token=None), 401),
        (request("/", token="wrong"), 401),
        (request("/metrics", token=None), 401),
        (request("/nope", token=None), 401),
        (request("/", host="evil.example"), 403),
        (request("/", headers=[("Origin", "http://evil.example")]), 403),
        (request("/healthz", token=None, method="POST"), 405),
        (request("/", version="HTTP/2.0"), 505),
        (request("/healthz", token=None), 200),
    ],
    ids=["no-token", "wrong-token", "metrics", "unknown-path", "host", "origin", "405", "505", "healthz"],
)
async def test_every_answer_to_an_unauthenticated_connection_closes_it(
    server: Server, connect: Connect, service: FixedService, data: bytes, status: int
) -> None:
    """Keep-alive is a privilege of authenticated connections: a request without the token (or
    refused before the token counts) is answered with `Connection: close`, then the connection
    closes, even a tokenless `/healthz`, and nothing after it on the connection is read."""
    client = await connect(server)
    response = await client.exchange(data + request("/"))
    assert (response.status, response.closes) == (status, True)
    assert await client.closed()
    assert service.nowait_calls == 0


async def test_an_unauthenticated_idle_socket_is_closed_at_the_auth_deadline(
    server: Server, connect: Connect
) -> None:
    """With the default limits: a socket that says nothing is closed after `auth_timeout` (2 s;
    the sweep may add up to two ticks of 0.5 s), well before the header (10 s) and idle (60 s)
    timeouts that applied to it before issue 11."""
    limits = ServerLimits()
    assert (limits.auth_timeout, limits.header_timeout, limits.idle_timeout) == (2.0, 10.0, 60.0)
    loop = asyncio.get_running_loop()
    client = await connect(server)
    started = loop.time()
    assert await client.closed()
    elapsed = loop.time() - started
    assert limits.auth_timeout <= elapsed < limits.auth_timeout + 2 * limits.sweep_interval + 0.5
    assert server.statistics().connections_evicted == 0


async def test_an_authenticated_connection_outlives_the_auth_deadline(serve: Serve, connect: Connect) -> None:
    """1. Two connections: A sends a request with the token (200), B sends nothing.
    2. B is closed at the auth deadline; A, accepted at the same time, still gets 200 afterwards
       on the same connection: it lives under the idle timeout now."""
    server = await serve(limits=ServerLimits(auth_timeout=0.2))
    authenticated, silent = await connect(server), await connect(server)
    assert (await authenticated.exchange(request("/"))).status == 200
    assert await silent.closed()
    response = await authenticated.exchange(request("/"))
    assert (response.status, response.closes) == (200, False)
    assert server.statistics().connections_accepted == 2


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request("/", version="HTTP/2.0"), 505),
        (request("/", version="HTTP/2.0", headers=[("Connection", "keep-alive")]), 505),
        (request("/", host="evil.example"), 403),
        (request("/", headers=[("Via", "1.1 proxy")]), 403),
    ],
    ids=["http-2.0", "http-2.0-keep-alive", "host", "via"],
)
async def test_an_authenticated_connection_is_closed_by_version_host_and_marker_refusals(
    server: Server, connect: Connect, data: bytes, status: int
) -> None:
    """After a 200 the connection takes the fast path; a request line it does not speak or a
    browser/proxy/rebinding marker still gets its refusal, and the connection closes."""
    client = await connect(server)
    assert (await client.exchange(request("/"))).status == 200
    response = await client.exchange(data)
    assert (response.status, response.closes) == (status, True)
    assert await client.closed()


async def test_a_full_listener_evicts_the_oldest_unauthenticated_connection(
    serve: Serve, connect: Connect
) -> None:
    """1. max_connections=4 and four silent connections, opened one after the other.
    2. A fifth connection (the workload) is admitted and served 200.
    3. The oldest silent one, and only it, was answered 503 and closed; nothing was rejected."""
    server = await serve(limits=ServerLimits(**_PATIENT, max_connections=4))
    # The kernel's accept queue is FIFO: the server accepts them in the order they connected.
    silent = [await connect(server) for _ in range(4)]
    await eventually(lambda: server.statistics().connections_accepted == 4)
    workload = await connect(server)
    assert (await workload.exchange(request("/"))).status == 200
    evicted = await silent[0].response()
    assert (evicted.status, evicted.closes) == (503, True)
    assert await silent[0].closed()
    statistics = server.statistics()
    assert (statistics.connections_evicted, statistics.connections_rejected) == (1, 0)
    assert statistics.connections_open == 4
    for client in silent[1:]:  # still open: each gets its own answer
        assert (await client.exchange(request("/", token=None))).status == 401


async def test_authenticated_connections_are_never_evicted(serve: Serve, connect: Connect) -> None:
    """A listener full of authenticated connections refuses the new one (503, as before), and
    every authenticated connection keeps being served."""
    server = await serve(limits=ServerLimits(max_connections=3))
    clients = [await connect(server) for _ in range(3)]
    for client in clients:
        assert (await client.exchange(request("/"))).status == 200
    refused = await connect(server)
    assert (await refused.response()).status == 503
    assert await refused.closed()
    for client in clients:
        assert (await client.exchange(request("/"))).status == 200
    statistics = server.statistics()
    assert (statistics.connections_evicted, statistics.connections_rejected) == (0, 1)


# -- --allow-user -------------------------------------------------------------------------------

# A second user's flood: opens N silent connections, says so, holds them until stdin closes.
_HOLD = """
import socket, sys
address = (sys.argv[1], int(sys.argv[2]))
held = [socket.create_connection(address, timeout=10) for _ in range(int(sys.argv[3]))]
print("open", flush=True)
sys.stdin.read()
"""


class _CallerService(FixedService):
    """Remembers the caller of every credential request."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[Caller | None] = []

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        self.callers.append(caller)
        return super().issue_nowait(caller)


def _gate(*users: str) -> tuple[PeerCredentials, UserGate]:
    peers = PeerCredentials.open()
    return peers, UserGate(peers, AllowedUsers.resolve(users))


async def test_allow_user_refuses_nobody_and_serves_the_allowed_user(serve: Serve) -> None:
    """1. A listener allowing only this process's uid.
    2. `nobody` (setpriv) asks with the right token: 403, closed; the service is never asked.
    3. We ask: 200, and the service got our uid and user name as the caller."""
    user = other_user()
    service = _CallerService()
    peers, gate = _gate(str(os.geteuid()))
    with peers:
        server = await serve(service, users=gate)
        helper = await asyncio.create_subprocess_exec(
            *user.python(ASK_OVER_HTTP, "127.0.0.1", str(server.port)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(DEADLINE):
            out, _ = await helper.communicate(request("/"))
        assert out.decode().strip() == "HTTP/1.1 403 Forbidden close"
        assert service.callers == []
        assert (await fetch(server, request("/"))).status == 200
        name = gate.allowed.name_of(os.geteuid())
        assert name is not None
        assert service.callers == [Caller(os.geteuid(), name)]
        assert peers.statistics().lookups == 2


async def test_a_user_over_its_share_evicts_only_its_own_connections(serve: Serve) -> None:
    """1. Under --allow-user with 3 unauthenticated connections per user, we open one silent
       connection (the workload about to ask).
    2. `nobody` opens 8 silent connections: each one over its share evicts nobody's oldest.
    3. Exactly 5 evictions, all of nobody's; our connection is still open and is served 200."""
    user = other_user()
    peers, gate = _gate(str(os.geteuid()))
    with peers:
        server = await serve(limits=ServerLimits(**_PATIENT, max_unauthenticated_per_user=3), users=gate)
        workload = await Client.connect(server)
        try:
            await eventually(lambda: server.statistics().connections_accepted == 1)
            flood = await asyncio.create_subprocess_exec(
                *user.python(_HOLD, "127.0.0.1", str(server.port), "8"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert flood.stdout is not None
            assert flood.stdin is not None
            async with asyncio.timeout(DEADLINE):
                assert await flood.stdout.readline() == b"open\n"
            await eventually(lambda: server.statistics().connections_accepted == 9)
            statistics = server.statistics()
            assert (statistics.connections_evicted, statistics.connections_open) == (5, 4)
            response = await workload.exchange(request("/"))
            assert (response.status, response.closes) == (200, False)
            flood.stdin.close()
            async with asyncio.timeout(DEADLINE):
                assert await flood.wait() == 0
        finally:
            await workload.close()
