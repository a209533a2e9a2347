"""Small `CredentialService` implementations for the endpoint tests: the seam, not a mock of the server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson

from sentinel.server import Reply
from sentinel.server.service import PROMETHEUS_TEXT, Caller

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-sentinel-test"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN-sentinel-test-0123456789"


def expiration(hours: float = 1.0) -> str:
    """An Expiration value the way Sentinel writes it: UTC, seconds, `Z` suffix."""
    moment = datetime.now(UTC) + timedelta(hours=hours)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def credentials_body(**extra: object) -> bytes:
    return orjson.dumps(
        {
            "AccessKeyId": ACCESS_KEY,
            "SecretAccessKey": SECRET_KEY,
            "Token": SESSION_TOKEN,
            "Expiration": expiration(),
            **extra,
        }
    )


class FixedService:
    """Always a cache hit: one `Reply` object, as a credential cache hands out."""

    def __init__(self) -> None:
        self.reply = Reply(200, credentials_body())
        self.nowait_calls = 0
        self.issue_calls = 0

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        self.nowait_calls += 1
        return self.reply

    async def issue(self, caller: Caller | None = None) -> Reply:
        self.issue_calls += 1
        return self.reply

    def health(self) -> Reply:
        return Reply(200, b'{"status":"ok"}')

    def metrics(self) -> Reply:
        return Reply(200, b"# HELP up test\n# TYPE up gauge\nup 1\n", PROMETHEUS_TEXT)


class NumberedService(FixedService):
    """Each credential reply carries a sequence number, so tests can check response order.

    With `async_every=2`, every other request misses the fast path and is answered by an awaited
    `issue()` that yields to the loop a few times first (a cold cache).
    """

    def __init__(self, async_every: int = 0) -> None:
        super().__init__()
        self.async_every = async_every
        self.served = 0

    def _next(self) -> Reply:
        self.served += 1
        return Reply(200, credentials_body(n=self.served))

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        self.nowait_calls += 1
        if self.async_every and self.nowait_calls % self.async_every == 0:
            return None
        return self._next()

    async def issue(self, caller: Caller | None = None) -> Reply:
        self.issue_calls += 1
        for _ in range(3):
            await asyncio.sleep(0)
        return self._next()


class BlockingService(FixedService):
    """Every credential request needs `issue()`, which waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = 0

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        self.nowait_calls += 1
        return None

    async def issue(self, caller: Caller | None = None) -> Reply:
        self.issue_calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.reply


class BrokenService(FixedService):
    """Breaks the seam's promise: raises, with secrets in the exception text."""

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        raise RuntimeError(f"upstream said {SECRET_KEY} {SESSION_TOKEN}")

    async def issue(self, caller: Caller | None = None) -> Reply:
        raise RuntimeError(f"upstream said {SECRET_KEY}")

    def health(self) -> Reply:
        return Reply(200, b"{}", "bad\r\ninjected: header")
