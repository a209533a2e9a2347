"""Which local user is on the other end of a loopback TCP connection (`--allow-user`, issue 11).

TCP carries no credentials (no SO_PEERCRED), but the kernel knows who owns every socket. We ask
it for exactly one: the client's socket, whose local address is our peername and whose remote
address is our sockname, with one `SOCK_DIAG_BY_FAMILY` request over a `NETLINK_SOCK_DIAG`
socket (linux/inet_diag.h). The answer's `idiag_uid` is the owner's uid.

Why our own query rather than pyroute2 or /proc/net/tcp: the exact-match request is one
`send`/`recv` pair of ~70-byte messages, a few µs, whatever the number of sockets on the box,
and needs nothing beyond `socket` and `struct`; /proc/net/tcp is a text dump of every socket,
so a lookup there grows with the connection count (bench/peer_lookup.py measures both).

The kernel answers a request synchronously while sending it, so `uid_of` never waits: it is
called once per accepted connection, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sentinel.errors import ConfigError
from sentinel.server.service import Caller

_log = logging.getLogger("sentinel.server")

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h (not all exported by `socket`).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF

# nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, inet_diag_sockid). Ports go
# in network order, hence `htons`; addresses are 16 bytes (IPv4 in the first 4).
_REQUEST = struct.Struct("=IHHII BBBBI HH16s16sIII")
# nlmsghdr, then inet_diag_msg: family, state, timer, retrans, inet_diag_sockid, expires, rqueue,
# wqueue, uid, inode.
_HEADER = struct.Struct("=IHHII")
_ERROR = struct.Struct("=i")
_MESSAGE = struct.Struct("=BBBB HH16s16sIII IIIII")
_RECV_BUFFER = 8192
# uid_t is 32 bits and (uid_t)-1 means "no uid" to the kernel's interfaces.
_MAX_UID = 0xFFFFFFFE

Address = tuple[Any, ...]  # what `transport.get_extra_info("peername" | "sockname")` returns


class PeerLookupError(ConfigError):
    """The users of loopback connections cannot be looked up here: `--allow-user` cannot work."""


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    lookups: int
    # Lookups that found no live socket owned by a process (peer gone, or an error): refused.
    unresolved: int


class PeerCredentials:
    """One netlink socket that answers "which uid owns the client end of this connection?".

    Open it once at startup with `open()` (a context manager). Not thread-safe: one per event
    loop, like the connections that call it.
    """

    __slots__ = ("_lookups", "_seq", "_sock", "_unresolved")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0
        self._lookups = 0
        self._unresolved = 0

    @classmethod
    def open(cls) -> PeerCredentials:
        """Open the netlink socket and prove it works on a loopback connection of our own.

        Raises `PeerLookupError` (one line) when the lookup is impossible here (no netlink,
        no inet_diag, a sandbox that filters it): `--allow-user` must then refuse to start,
        never allow everyone.
        """
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        except (OSError, AttributeError) as exc:
            raise PeerLookupError(
                f"cannot look up the users of connections: netlink sock_diag: {_why(exc)}"
            ) from None
        peers = cls(sock)
        try:
            peers._check_own_connection()
        except BaseException:
            peers.close()
            raise
        return peers

    def _check_own_connection(self) -> None:
        try:
            self._sock.connect((0, 0))  # the kernel
            with _loopback_pair() as (server_side, _client):
                uid = self._query(server_side.getsockname(), server_side.getpeername())
        except (OSError, struct.error) as exc:
            raise PeerLookupError(
                f"cannot look up the users of connections: self-test: {_why(exc)}"
            ) from None
        if uid != os.geteuid():
            raise PeerLookupError(
                "cannot look up the users of connections: netlink sock_diag did not report "
                f"this process's own loopback connection (got {uid})"
            )

    def uid_of(self, sockname: Address, peername: Address) -> int | None:
        """The uid owning the client socket of the connection we accepted as (sockname, peername).

        None when there is no such socket any more, or it is no longer held by any process (the
        peer closed or exited: its socket lingers in FIN_WAIT/TIME_WAIT without an owner), or the
        lookup failed. Never raises.
        """
        self._lookups += 1
        try:
            uid = self._query(sockname, peername)
        except (OSError, ValueError, OverflowError, struct.error):
            uid = None
        if uid is None:
            self._unresolved += 1
        return uid

    def _query(self, sockname: Address, peername: Address) -> int | None:
        family, client_address = _packed(peername[0])
        server_family, server_address = _packed(sockname[0])
        if server_family != family:
            return None
        client_port, server_port = int(peername[1]), int(sockname[1])
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        sock = self._sock
        sock.send(
            _REQUEST.pack(
                _REQUEST.size,
                SOCK_DIAG_BY_FAMILY,
                _NLM_F_REQUEST,
                seq,
                0,
                family,
                socket.IPPROTO_TCP,
                0,
                0,
                _ALL_STATES,
                socket.htons(client_port),
                socket.htons(server_port),
                client_address,
                server_address,
                0,
                _INET_DIAG_NOCOOKIE,
                _INET_DIAG_NOCOOKIE,
            )
        )
        while True:
            # The answer is queued before `send` returns; anything older is a stale answer.
            data = sock.recv(_RECV_BUFFER, socket.MSG_DONTWAIT)
            length, kind, _flags, answer_seq, _pid = _HEADER.unpack_from(data)
            if answer_seq != seq:
                continue
            if kind == _NLMSG_ERROR:
                (error,) = _ERROR.unpack_from(data, _HEADER.size)
                if -error == errno.ENOENT:
                    return None
                raise OSError(-error, os.strerror(-error))
            if kind != SOCK_DIAG_BY_FAMILY or length < _HEADER.size + _MESSAGE.size:
                return None
            (
                _family,
                _state,
                _timer,
                _retrans,
                sport,
                dport,
                _src,
                _dst,
                _if,
                _c0,
                _c1,
                _expires,
                _rq,
                _wq,
                uid,
                inode,
            ) = _MESSAGE.unpack_from(data, _HEADER.size)
            # An exact lookup falls back to a socket listening on the client's port when there
            # is no such connection (its remote port is then 0): only the client's own socket
            # counts. Inode 0: no process holds the socket any more (FIN_WAIT, TIME_WAIT).
            if (socket.ntohs(sport), socket.ntohs(dport)) != (client_port, server_port):
                return None
            return int(uid) if inode else None

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(lookups=self._lookups, unresolved=self._unresolved)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> PeerCredentials:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _packed(host: str) -> tuple[int, bytes]:
    """(family, 16-byte address) for an IPv4 or IPv6 literal; IPv4-mapped IPv6 is IPv4 (the
    kernel keeps such a connection's client socket as an IPv4 one when it is AF_INET)."""
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        if raw[:12] != b"\0" * 10 + b"\xff\xff":
            return socket.AF_INET6, raw
        raw = raw[12:]
    else:
        raw = socket.inet_pton(socket.AF_INET, host)
    return socket.AF_INET, raw + b"\0" * 12


@contextlib.contextmanager
def _loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """An accepted loopback TCP connection: (our accepted end, our client end)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                yield accepted, client


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


# -- who may connect ---------------------------------------------------------------------------


def resolve_user(value: str) -> int:
    """`--allow-user NAME|UID` to a uid. A number is taken as a uid (it need not have a passwd
    entry, as in containers); a name must exist. Raises `ConfigError` (one line)."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        uid = int(text)
        if uid > _MAX_UID:
            raise ConfigError(f"--allow-user {value}: not a valid uid")
        return uid
    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):
        raise ConfigError(f"--allow-user {value}: no such user") from None


@dataclass(frozen=True, slots=True)
class AllowedUsers:
    """The uids `--allow-user` lets in, with their names resolved once, at startup, for the log."""

    names: Mapping[int, str]

    @classmethod
    def resolve(cls, values: Iterable[str]) -> AllowedUsers:
        """Resolve every value (see `resolve_user`); an empty list is a `ConfigError`."""
        names: dict[int, str] = {}
        for value in values:
            uid = resolve_user(value)
            names[uid] = _name_of(uid)
        if not names:
            raise ConfigError("--allow-user: at least one user is needed")
        return cls(names)

    def allows(self, uid: int | None) -> bool:
        """True for a listed uid; an unknown peer (None) is never allowed."""
        return uid is not None and uid in self.names

    def name_of(self, uid: int) -> str | None:
        """The user name of an allowed uid (its number when it has no passwd entry), else None."""
        return self.names.get(uid)


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True, slots=True)
class UserGate:
    """`--allow-user` at accept time: who is connecting, and may they have credentials?"""

    peers: PeerCredentials
    allowed: AllowedUsers

    def admit(self, transport: asyncio.BaseTransport) -> int | None:
        """The uid of the connection's client if it is allowed, else None (refuse and close).

        Call once per connection, in `connection_made`: the cost is one netlink round trip.
        """
        uid = self.uid_of(transport)
        return uid if self.allowed.allows(uid) else None

    def uid_of(self, transport: asyncio.BaseTransport) -> int | None:
        """The uid owning the connection's client socket, allowed or not (None: unknown)."""
        return self.peers.uid_of(transport.get_extra_info("sockname"), transport.get_extra_info("peername"))

    def caller(self, uid: int | None) -> Caller | None:
        """The decision log's view of an allowed uid; None when `uid` may not get credentials."""
        if uid is None:
            return None
        name = self.allowed.name_of(uid)
        return None if name is None else Caller(uid, name)


@contextlib.contextmanager
def open_user_gate(values: Sequence[str]) -> Iterator[UserGate | None]:
    """The `--allow-user` gate for the listener, or None (and no lookup cost) without the option.

    Resolves the users and opens the netlink socket before anything listens: an unknown user or
    a system where the lookup is impossible is a one-line `ConfigError`, never "allow everyone".
    """
    if not values:
        yield None
        return
    allowed = AllowedUsers.resolve(values)
    with PeerCredentials.open() as peers:
        _log.info(
            "only connections of %s get credentials",
            ", ".join(f"{name} (uid {uid})" for uid, name in sorted(allowed.names.items())),
        )
        yield UserGate(peers, allowed)
