"""The harness side of a server under test: start `bench.target` pinned to the server CPU, read
its ready line, ask it for counters, stop it. nginx is wrapped to look the same (no counters)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from bench.nginx import Nginx
from bench.proc import Usage, usage

_READY_TIMEOUT = 60.0
_REPLY_TIMEOUT = 30.0


class Target(Protocol):
    """Anything wrk can load: a URL, an optional token, a pid to read CPU and memory from."""

    url: str
    token: str | None

    @property
    def pid(self) -> int: ...

    def counters(self) -> dict[str, Any] | None: ...

    def stop(self) -> dict[str, Any] | None: ...


class SentinelTarget:
    """A `python -m bench.target` process; `args` are its scenario switches."""

    def __init__(
        self, args: list[str], prefix: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.command = [*prefix, sys.executable, "-m", "bench.target", *args]
        self._log = log
        self._stderr = log.open("wb")
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        self.url = ""
        self.token: str | None = None
        self.port = 0
        self._quit_sent = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait_ready(self) -> None:
        ready = self._read(_READY_TIMEOUT)
        self.port = int(ready["port"])
        self.url = f"http://127.0.0.1:{self.port}/"
        self.token = str(ready["token"])

    def counters(self) -> dict[str, Any]:
        self._send("stats")
        return self._read(_REPLY_TIMEOUT)

    def fetch(self) -> bytes:
        """One credential request, checked: the body nginx will serve in scenario a."""
        # The URL is our own target's loopback http URL, built in wait_ready.
        request = urllib.request.Request(self.url, headers={"Authorization": self.token or ""})  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body: bytes = response.read()
        if not all(key in json.loads(body) for key in ("AccessKeyId", "SecretAccessKey", "Token")):
            raise RuntimeError(f"unexpected credential response from {self.url}")
        return body

    def kill(self) -> None:
        """For a server that never became ready: no graceful shutdown to wait for."""
        self._proc.kill()
        self._proc.wait()
        self._stderr.close()

    def request_stop(self) -> None:
        """Start a graceful shutdown without waiting for it (several servers stop side by side)."""
        if self._proc.poll() is None and not self._quit_sent:
            self._quit_sent = True
            with contextlib.suppress(OSError):  # it is exiting already; stop() collects what there is
                self._send("quit")

    def stop(self) -> dict[str, Any] | None:
        """Graceful shutdown; returns the final counters (None if the process was already gone)."""
        self.request_stop()
        try:
            final: dict[str, Any] | None = self._read(_REPLY_TIMEOUT)  # the "stopped" line
        except (RuntimeError, OSError, ValueError):
            final = None
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()
        return final

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None  # noqa: S101 - created with stdin=PIPE
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout = self._proc.stdout
        assert stdout is not None  # noqa: S101 - created with stdout=PIPE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], 0.2)
            if ready:
                line = stdout.readline()
                if line:
                    message: dict[str, Any] = json.loads(line)
                    return message
            if self._proc.poll() is not None:
                break
        tail = self._log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"target {' '.join(self.command[-6:])} did not answer; its log ends:\n{tail}")


class NginxTarget:
    """Scenario a's nginx behind the same interface; it has no counters to report."""

    token: str | None = None

    def __init__(self, nginx: Nginx) -> None:
        self._nginx = nginx
        self.url = nginx.url

    @property
    def pid(self) -> int:
        return self._nginx.pid

    def counters(self) -> None:
        return None

    def stop(self) -> None:
        self._nginx.stop()


def snapshot(target: Target) -> tuple[Usage, dict[str, Any] | None]:
    """CPU, memory and counters of `target` now (counters first: asking costs the target a little)."""
    counters = target.counters()
    return usage(target.pid), counters
