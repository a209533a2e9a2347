"""What `--allow-user` costs per connection, over real sockets (`python -m bench.admission`).

`bench/peer_lookup.py` times the uid lookup alone; this times what a client sees: a listener
(the real `start_server`, on uvloop, in its own process) serving one credential request per
connection, with and without the `UserGate`, while a client in this process opens connections
one after the other (connect, `GET /` with `Connection: close`, read to EOF). Rounds alternate
between the two so a noisy machine disturbs both alike. With two CPUs the server is pinned to one
and the client to the other.

Prints JSON: connections per second (medians over the rounds) and the server's CPU µs per
connection, for each mode, and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import uvloop

from bench.proc import cpu_times
from sentinel.server import Reply, start_server
from sentinel.server.peer import open_user_gate
from sentinel.server.service import Caller

_HEAD = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
_MODES = ("without", "with")


class _Fixed:
    """A cache hit every time: the connection, not the credentials, is what is measured."""

    reply = Reply(200, b'{"AccessKeyId":"ASIABENCH","SecretAccessKey":"x","Token":"y"}')

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        return self.reply

    async def issue(self, caller: Caller | None = None) -> Reply:
        return self.reply

    def health(self) -> Reply:
        return Reply(200, b'{"status":"ok"}')

    def metrics(self) -> Reply:
        return Reply(200, b"")


async def _serve(allow_user: bool, token: str) -> None:
    with open_user_gate([str(os.geteuid())] if allow_user else []) as users:
        server = await start_server(_Fixed(), token=token, users=users)
        print(server.port, flush=True)
        # Until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.shutdown(1.0)


def _pin(cpu: int) -> None:
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {cpu})


def _connect_and_ask(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"unexpected answer: {data[:60]!r}")


def _round(port: int, pid: int, connections: int, request: bytes) -> tuple[float, float]:
    """(connections per second, server CPU µs per connection) for one round."""
    cpu_before = sum(cpu_times(pid))
    started = time.perf_counter()
    for _ in range(connections):
        _connect_and_ask(port, request)
    elapsed = time.perf_counter() - started
    cpu = sum(cpu_times(pid)) - cpu_before
    return connections / elapsed, cpu / connections * 1e6


def measure(connections: int, rounds: int) -> dict[str, Any]:
    token = secrets.token_urlsafe(32)
    request = _HEAD.format(token=token).encode()
    servers: dict[str, subprocess.Popen[str]] = {}
    ports: dict[str, int] = {}
    try:
        for mode in _MODES:
            argv = [
                sys.executable,
                "-m",
                "bench.admission",
                "--serve",
                *(["--allow-user"] if mode == "with" else []),
            ]
            # The token goes to the server on stdin's first line, never in argv.
            server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            servers[mode] = server
            if server.stdin is None or server.stdout is None:
                raise SystemExit("no pipes to the server")
            server.stdin.write(token + "\n")
            server.stdin.flush()
            ports[mode] = int(server.stdout.readline())
        _pin(1)
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in _MODES}
        for mode in _MODES:  # warm-up
            _round(ports[mode], servers[mode].pid, connections // 10, request)
        for _ in range(rounds):
            for mode in _MODES:
                results[mode].append(_round(ports[mode], servers[mode].pid, connections, request))
    finally:
        for server in servers.values():
            server.communicate(timeout=10)
    summary: dict[str, Any] = {"connections_per_round": connections, "rounds": rounds}
    for mode in _MODES:
        summary[f"{mode}_allow_user"] = {
            "connections_per_second": round(statistics.median(rate for rate, _ in results[mode])),
            "server_cpu_us_per_connection": round(statistics.median(cpu for _, cpu in results[mode]), 1),
        }
    without, with_gate = summary["without_allow_user"], summary["with_allow_user"]
    summary["extra_server_cpu_us_per_connection"] = round(
        with_gate["server_cpu_us_per_connection"] - without["server_cpu_us_per_connection"], 1
    )
    summary["connections_per_second_ratio"] = round(
        with_gate["connections_per_second"] / without["connections_per_second"], 3
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000, help="connections per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allow-user", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _pin(0)
        uvloop.run(_serve(args.allow_user, sys.stdin.readline().strip()))
        return
    print(json.dumps(measure(args.connections, args.rounds), indent=2))


if __name__ == "__main__":
    main()
