"""The cost of finding a connection's uid (`--allow-user`), in-process (`python -m bench.peer_lookup`).

Times `PeerCredentials.uid_of` (one netlink sock_diag exact-match request) against the
alternative, reading /proc/net/tcp and finding the client's line, with a few and with many
loopback connections open: the netlink cost should not grow with them, the /proc one does.
Prints JSON: µs per lookup for each method and connection count.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import ExitStack

from bench.micro import per_call_us
from sentinel.server.peer import PeerCredentials

_LOOKUPS = 10_000
_PROC_LOOKUPS = 200  # a /proc scan is slow enough that fewer give a stable figure


def proc_net_tcp_uid(sockname: tuple[str, int], peername: tuple[str, int]) -> int | None:
    """The client socket's uid from /proc/net/tcp (IPv4 only: enough to compare the costs)."""
    local = f"{_proc_address(peername[0])}:{peername[1]:04X}"
    remote = f"{_proc_address(sockname[0])}:{sockname[1]:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[7]) if fields[9] != "0" else None
    return None


def _proc_address(host: str) -> str:
    return socket.inet_aton(host)[::-1].hex().upper()


def measure(open_connections: int) -> dict[str, float]:
    with ExitStack() as stack, PeerCredentials.open() as peers:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        accepted = []
        for _ in range(open_connections):
            stack.enter_context(socket.create_connection(listener.getsockname()))
            accepted.append(stack.enter_context(listener.accept()[0]))
        target = accepted[len(accepted) // 2]
        sockname, peername = target.getsockname(), target.getpeername()
        if not peers.uid_of(sockname, peername) == proc_net_tcp_uid(sockname, peername) == os.geteuid():
            raise SystemExit("the two lookups disagree on our own connection")
        return {
            "sock_diag_us": per_call_us(lambda: peers.uid_of(sockname, peername), _LOOKUPS),
            "proc_net_tcp_us": per_call_us(lambda: proc_net_tcp_uid(sockname, peername), _PROC_LOOKUPS),
        }


def main() -> None:
    counts = [int(arg) for arg in sys.argv[1:]] or [10, 1000]
    print(json.dumps({str(count): measure(count) for count in counts}, indent=2))


if __name__ == "__main__":
    main()
