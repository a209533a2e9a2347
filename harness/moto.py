"""A real moto server process on a free loopback port, reached over HTTP (DESIGN.md §7).

It is a subprocess, not an in-process mock, so tests can stop it (store unreachable) and start it
again on the same port (store back, empty) like a real outage. The benchmarks use it as their AWS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

from harness.loopback import free_port
from harness.process import stop_process, wait_serving

# moto's backends take no locks: two concurrent UpdateItem ADDs on one item can lose one (the
# contract suite saw 199 of 200 touches). Real DynamoDB applies each item write atomically;
# serializing requests gives moto that property. Connections are still served by threads.
_SERIALIZED_MOTO = """
import sys, threading
import moto.server as server
run_simple, lock = server.run_simple, threading.Lock()
def serialized(app):
    def call(environ, start_response):
        with lock:
            return list(app(environ, start_response))
    return call
server.run_simple = lambda host, port, app, **kw: run_simple(host, port, serialized(app), **kw)
server.main(sys.argv[1:])
"""


def _moto_command(port: int) -> list[str]:
    return [sys.executable, "-c", _SERIALIZED_MOTO, "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """Start, stop and restart a `moto_server` subprocess; `url` stays the same across restarts."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            _moto_command(self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        try:
            wait_serving(self._proc, self._answers, f"moto_server on {self.url}", timeout)
        except RuntimeError:
            self._proc = None
            raise

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):  # noqa: S310 - loopback
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        self._proc = None

    def reset(self) -> None:
        """Drop all moto state (tables, roles, parameters) without restarting."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback
            pass

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped inside the block and started again (empty) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server is SIGSTOPped inside the block: the kernel still accepts connections and
        takes requests, nobody answers them (a hung endpoint, not a refused one). SIGCONT after."""
        if self._proc is None:
            raise RuntimeError("moto_server is not running")
        proc = self._proc
        proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGCONT)
