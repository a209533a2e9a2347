"""A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from harness.waiting import DEADLINE


class NotifySocket:
    """Receives what the daemon sends to NOTIFY_SOCKET; keeps every message in `messages`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, within: float = DEADLINE) -> str:
        self._sock.settimeout(within)
        data = self._sock.recv(65536).decode()
        self.messages.append(data)
        return data

    def wait_for(self, predicate: Callable[[str], bool], within: float = DEADLINE) -> str:
        """Receive datagrams until one satisfies `predicate`; return it."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching notification within {within}s: {self.messages}")
            try:
                message = self.receive(remaining)
            except TimeoutError:
                continue
            if predicate(message):
                return message

    def close(self) -> None:
        self._sock.close()
