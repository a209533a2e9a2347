"""The uid behind a loopback TCP connection, from the kernel over netlink sock_diag (issue 11).

Real sockets throughout: connections made by this process, by a subprocess running as `nobody`,
and peers that have gone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sentinel.errors import ConfigError
from sentinel.server.peer import AllowedUsers, PeerCredentials, UserGate, resolve_user
from tests.support.other_user import other_user

HOSTS = ["127.0.0.1", "::1"]

# Run as the other user: connect, report the local port, hold the connection until told to exit.
_CONNECTOR = """
import socket, sys
client = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(client.getsockname()[1], flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def peers() -> Iterator[PeerCredentials]:
    with PeerCredentials.open() as opened:
        yield opened


@pytest.fixture(params=HOSTS)
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    host: str = request.param
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
    except OSError as exc:
        pytest.skip(f"no {host} here: {exc.strerror}")
    with sock:
        sock.listen(8)
        sock.settimeout(10)
        yield sock


def _connect(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(our client end, the accepted end) of a new loopback connection."""
    client = socket.create_connection(listener.getsockname()[:2], timeout=10)
    accepted, _ = listener.accept()
    return client, accepted


def test_own_connection_maps_to_our_uid(peers: PeerCredentials, listener: socket.socket) -> None:
    client, accepted = _connect(listener)
    with client, accepted:
        before = peers.statistics()
        assert peers.uid_of(accepted.getsockname(), accepted.getpeername()) == os.geteuid()
        after = peers.statistics()
    assert (after.lookups - before.lookups, after.unresolved - before.unresolved) == (1, 0)


def test_connection_made_as_nobody_maps_to_nobody(peers: PeerCredentials, listener: socket.socket) -> None:
    """A subprocess running as `nobody` connects: its uid, not ours; once it has exited, None."""
    user = other_user()
    host, port = listener.getsockname()[:2]
    helper = subprocess.Popen(
        user.python(_CONNECTOR, host, str(port)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert helper.stdout is not None
        client_port = int(helper.stdout.readline())
        accepted, peername = listener.accept()
        with accepted:
            assert peername[1] == client_port
            sockname = accepted.getsockname()
            assert peers.uid_of(sockname, peername) == user.uid
            helper.communicate("exit\n", timeout=10)
            assert helper.returncode == 0
            assert peers.uid_of(sockname, peername) is None
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_connection_whose_peer_has_gone_is_none(
    peers: PeerCredentials, listener: socket.socket, how: str
) -> None:
    """The client closes (its socket lingers in FIN_WAIT, held by no process) or resets (gone)."""
    client, accepted = _connect(listener)
    with accepted:
        sockname, peername = accepted.getsockname(), accepted.getpeername()
        if how == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        before = peers.statistics()
        assert peers.uid_of(sockname, peername) is None
        assert peers.statistics().unresolved == before.unresolved + 1
    assert peers.uid_of(sockname, peername) is None


def test_listening_socket_is_not_taken_for_a_client(peers: PeerCredentials, listener: socket.socket) -> None:
    """Asked for a client at a port where only a listener is, the kernel answers with the
    listener (e.g. once a client has gone and someone listens on its old port): not a client."""
    family_any = "::1" if listener.family == socket.AF_INET6 else "127.0.0.1"
    assert peers.uid_of((family_any, 9), listener.getsockname()) is None


@pytest.mark.parametrize(
    ("sockname", "peername"),
    [
        (("127.0.0.1", 9), ("127.0.0.1", 10)),  # no such connection
        (("::1", 9, 0, 0), ("127.0.0.1", 10)),  # mixed families
        (("not-an-address", 9), ("127.0.0.1", 10)),
        (("127.0.0.1", 9), ("127.0.0.1", 70000)),
    ],
)
def test_unknown_or_malformed_addresses_are_none(
    peers: PeerCredentials, sockname: tuple[object, ...], peername: tuple[object, ...]
) -> None:
    assert peers.uid_of(sockname, peername) is None


def test_ipv4_mapped_peer_is_looked_up_as_ipv4(peers: PeerCredentials) -> None:
    """A dual-stack listener sees an IPv4 client as ::ffff:127.0.0.1; its socket is an IPv4 one."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        try:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(("::", 0))
        except OSError as exc:
            pytest.skip(f"no dual-stack sockets here: {exc.strerror}")
        listener.listen(1)
        listener.settimeout(10)
        with socket.create_connection(("127.0.0.1", listener.getsockname()[1]), timeout=10) as client:
            accepted, peername = listener.accept()
            with client, accepted:
                assert peername[0] == "::ffff:127.0.0.1"
                assert peers.uid_of(accepted.getsockname(), peername) == os.geteuid()


def test_open_fails_with_one_line_when_no_socket_can_be_made() -> None:
    """Out of descriptors, so the netlink socket cannot be opened: `open()` raises
    PeerLookupError with one line (never a PeerCredentials that allows everyone)."""
    script = """
import os, resource, sys
from sentinel.server.peer import PeerCredentials, PeerLookupError
lowest = os.dup(0); os.close(lowest)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    PeerCredentials.open()
except PeerLookupError as exc:
    print(str(exc))
    sys.exit(78)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 78, done.stderr
    assert done.stdout == (
        "cannot look up the users of connections: netlink sock_diag: Too many open files\n"
    )
    assert done.stderr == ""


async def _admitted_uids(gate: UserGate, connect_argvs: list[list[str] | None]) -> list[int | None]:
    """What `gate.admit` says in `connection_made` of a real asyncio server, for one connection
    by each of: this process (None) or a helper command given the host and port."""
    results: asyncio.Queue[int | None] = asyncio.Queue()

    class Gated(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            results.put_nowait(gate.admit(transport))
            transport.close()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Gated, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    admitted = []

    async def next_result() -> int | None:
        async with asyncio.timeout(10):
            return await results.get()

    try:
        for argv in connect_argvs:
            if argv is None:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                admitted.append(await next_result())
                writer.close()
                continue
            helper = await asyncio.create_subprocess_exec(
                *argv, "127.0.0.1", str(port), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            try:
                admitted.append(await next_result())
            finally:
                async with asyncio.timeout(10):
                    await helper.communicate(b"exit\n")
    finally:
        server.close()
        await server.wait_closed()
    return admitted


async def test_user_gate_admits_only_allowed_uids(peers: PeerCredentials) -> None:
    """Through a real asyncio server: our own connection is admitted with our uid when we are
    allowed and refused (None) when only another uid is."""
    ours = os.geteuid()
    assert await _admitted_uids(UserGate(peers, AllowedUsers.resolve([str(ours)])), [None]) == [ours]
    assert await _admitted_uids(UserGate(peers, AllowedUsers.resolve([str(ours + 1)])), [None]) == [None]


async def test_user_gate_refuses_nobody_unless_allowed(peers: PeerCredentials) -> None:
    """`nobody` connecting: refused while only we are allowed, admitted once it is listed."""
    user = other_user()
    as_nobody = user.python(_CONNECTOR)
    only_us = UserGate(peers, AllowedUsers.resolve([str(os.geteuid())]))
    assert await _admitted_uids(only_us, [as_nobody, None]) == [None, os.geteuid()]
    both = UserGate(peers, AllowedUsers.resolve([str(os.geteuid()), user.name]))
    assert await _admitted_uids(both, [as_nobody]) == [user.uid]


# -- --allow-user values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "uid"), [("root", 0), ("0", 0), ("65534", 65534), ("4294967294", 4294967294)]
)
def test_resolve_user(value: str, uid: int) -> None:
    assert resolve_user(value) == uid


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no-such-user-for-sentinel", "--allow-user no-such-user-for-sentinel: no such user"),
        ("4294967295", "--allow-user 4294967295: not a valid uid"),
        ("-1", "--allow-user -1: no such user"),
        ("", "--allow-user : no such user"),
        ("bad\nname", "--allow-user bad name: no such user"),
    ],
)
def test_unknown_users_are_one_line_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_user(value)
    assert str(raised.value) == message


def test_allowed_users_know_names_and_never_allow_an_unknown_peer() -> None:
    allowed = AllowedUsers.resolve(["root", "4000000"])
    assert allowed.allows(0)
    assert allowed.allows(4_000_000)
    assert not allowed.allows(1)
    assert not allowed.allows(None)
    assert (allowed.name_of(0), allowed.name_of(4_000_000), allowed.name_of(1)) == ("root", "4000000", None)
    with pytest.raises(ConfigError, match="at least one user"):
        AllowedUsers.resolve([])
