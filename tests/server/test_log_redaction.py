"""No log line ever carries the token or a served secret, whatever the requests and failures."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sentinel.server import ServerLimits
from tests.server.client import DEADLINE, TOKEN, Connect, Serve, fetch, request
from tests.server.services import SECRET_KEY, SESSION_TOKEN, BlockingService, BrokenService, FixedService

SECRETS = (TOKEN, SECRET_KEY, SESSION_TOKEN)


async def test_a_session_of_requests_logs_no_secret(
    serve: Serve, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """Capture every logger at DEBUG through good and bad requests, failures and shutdown.

    1. Good requests (token in every one), refusals of each kind, malformed and oversized heads
       carrying the token, a header timeout with the token already sent.
    2. A service that raises with the secret key and session token in the exception text.
    3. A shutdown that has to abort a stuck request.
    4. The captured output holds none of the token, secret key or session token, and the server
       did log (so the check is not vacuous).
    """
    caplog.set_level(logging.DEBUG)
    asyncio.get_running_loop().set_debug(True)
    server = await serve(FixedService(), ServerLimits(header_timeout=0.3))
    for data in (
        request("/"),
        request("/metrics"),
        request("/healthz"),
        request("/", token=TOKEN + "x"),
        request("/", host="evil.com"),
        request("/", headers=[("Origin", "http://evil.com")]),
        request("/nope"),
        request("/", method="POST"),
        request("/", headers=[("Authorization", TOKEN)]),
        request("/", headers=[("Content-Length", "3")]) + b"abc",
        request("/", headers=[("X-Pad", "p" * 9000)]),
        request("/" + TOKEN * 300),
        b"GET / HTTP/1.1\r\nAuthorization: " + TOKEN.encode() + b"\r\nBad Header\r\n\r\n",
    ):
        await fetch(server, data)
    slow = await connect(server)
    await slow.send(b"GET / HTTP/1.1\r\nAuthorization: " + TOKEN.encode() + b"\r\n")
    assert (await slow.response()).status == 408

    broken = await serve(BrokenService())
    for path in ("/", "/healthz"):
        assert (await fetch(broken, request(path))).status == 500

    blocking = BlockingService()
    stuck_server = await serve(blocking)
    stuck = await connect(stuck_server)
    await stuck.send(request("/"))
    async with asyncio.timeout(DEADLINE):
        await blocking.started.wait()
        await stuck_server.shutdown(grace=0.1)

    assert any(record.name.startswith("sentinel.server") for record in caplog.records)
    assert any(record.levelno >= logging.ERROR for record in caplog.records)
    for secret in SECRETS:
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in record.getMessage()
            assert secret not in (record.exc_text or "")
