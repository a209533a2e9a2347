"""Test parts for the credentials package: a driven clock, a wrapper around the real STS source,
and a recording HTTP proxy in front of moto's STS. Wrappers around real things, never mocks."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from botocore.config import Config

from sentinel.credentials import Credentials, CredentialSource

# One attempt, short connect timeout: the failure tests want the error, not the retries.
NO_RETRY = Config(connect_timeout=1, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 1})


class ManualClock:
    """A `Clock` that moves only when told to; starts at the real time because moto stamps
    expirations with the real time."""

    def __init__(self) -> None:
        self._now = datetime.now(UTC)
        self._monotonic = 1000.0
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, delta: timedelta) -> None:
        self._now += delta
        self._monotonic += delta.total_seconds()
        self.offset += delta


class ControlledSource:
    """Wraps a real `CredentialSource`: counts calls, can hold a call at a gate, and (given a
    clock) moves moto's real-time expirations onto the test clock's timeline."""

    def __init__(self, inner: CredentialSource, clock: ManualClock | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.calls = 0
        self.cancelled = 0
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()

    async def fetch(self, role_arn: str, duration_seconds: int) -> Credentials:
        self.calls += 1
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            credentials = await self.inner.fetch(role_arn, duration_seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        if self.clock is not None:
            credentials = replace(credentials, expiration=credentials.expiration + self.clock.offset)
        return credentials


class StsProxy:
    """A real HTTP endpoint in front of moto's STS: records each call's form parameters, and on
    demand answers with an STS error (status, code, message) instead of forwarding."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[dict[str, str]] = []
        self.error: tuple[int, str, str] | None = None
        # Which calls get `error` (all of them when None): e.g. one role's AssumeRole only.
        self.error_when: Callable[[dict[str, str]], bool] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def actions(self, action: str) -> list[dict[str, str]]:
        with self._lock:
            return [call for call in self.calls if call.get("Action") == action]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                with proxy._lock:
                    proxy.calls.append(params)
                    error = proxy.error
                    if proxy.error_when is not None and not proxy.error_when(params):
                        error = None
                if error is not None:
                    self._reply(error[0], "text/xml", _error_xml(error[1], error[2]))
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}
                }
                url = proxy.upstream + self.path
                request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310 - loopback moto
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback moto
                        self._reply(response.status, response.headers["Content-Type"], response.read())
                except urllib.error.HTTPError as exc:
                    self._reply(exc.code, exc.headers["Content-Type"], exc.read())

            def _reply(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    ).encode()


def moto_assumed_roles(moto_url: str, role_arn: str) -> int:
    """How many AssumeRole calls moto itself recorded for `role_arn` (its model inventory)."""
    with urllib.request.urlopen(f"{moto_url}/moto-api/data.json", timeout=10) as response:  # noqa: S310
        data = json.load(response)
    return sum(1 for role in data.get("sts", {}).get("AssumedRole", []) if role.get("role_arn") == role_arn)


def write_aws_files(directory: Path, config: str, credentials: str = "") -> tuple[Path, Path]:
    """Shared config and credentials files; point AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE at them."""
    config_file = directory / "config"
    credentials_file = directory / "credentials"
    config_file.write_text(config)
    credentials_file.write_text(credentials)
    return config_file, credentials_file
