"""Connection handling: keep-alive, pipelining order, limits, bodies, malformed input, flow control."""

from __future__ import annotations

import asyncio
import gc
import random
import socket
import tracemalloc

import pytest

from sentinel.server import Server, ServerLimits
from tests.server.client import TOKEN, Client, Connect, Serve, eventually, request
from tests.server.services import FixedService, NumberedService

# -- keep-alive and pipelining ---------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(server: Server, connect: Connect) -> None:
    client = await connect(server)
    for path in ["/", "/healthz", "/", "/metrics", "/nope", "/"]:
        response = await client.exchange(request(path))
        assert not response.closes
    assert server.statistics().connections_accepted == 1
    assert server.statistics().requests == 6


async def test_connection_close_request_closes_after_response(server: Server, connect: Connect) -> None:
    client = await connect(server)
    response = await client.exchange(request("/", headers=[("Connection", "close")]))
    assert (response.status, response.closes) == (200, True)
    assert await client.closed()


@pytest.mark.parametrize("value", ["keep-alive", "Keep-Alive", "KEEP-ALIVE"])
async def test_http_1_1_explicit_keep_alive_stays_open(server: Server, connect: Connect, value: str) -> None:
    """The JS and Java SDKs send `Connection: keep-alive` on HTTP/1.1; the connection stays usable."""
    client = await connect(server)
    for _ in range(3):
        response = await client.exchange(request("/", headers=[("Connection", value)]))
        assert (response.status, response.closes) == (200, False)


async def test_http_1_0_closes_even_when_asking_for_keep_alive(server: Server, connect: Connect) -> None:
    client = await connect(server)
    response = await client.exchange(request("/", version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
    assert (response.status, response.closes) == (200, True)
    assert await client.closed()


ROUTE_MIX = ["/", "/healthz", "/", "/nope", "/", "/metrics", "/"]
EXPECTED_STATUS = {"/": 200, "/healthz": 200, "/nope": 404, "/metrics": 200}


@pytest.mark.parametrize("async_every", [0, 2, 1], ids=["all-cached", "every-other-awaited", "all-awaited"])
async def test_pipelined_requests_are_answered_in_order(
    serve: Serve, connect: Connect, async_every: int
) -> None:
    """N requests in one write -> N responses in request order, even when some need `await issue()`.

    1. Pipeline a mix of routes, 4 rounds, in a single write.
    2. Read the responses: statuses follow the request order, and the credential responses carry
       increasing sequence numbers (the service was asked in order).
    """
    service = NumberedService(async_every=async_every)
    server = await serve(service)
    paths = ROUTE_MIX * 4
    client = await connect(server)
    await client.send(b"".join(request(path) for path in paths))
    numbers = []
    for path in paths:
        response = await client.response()
        assert response.status == EXPECTED_STATUS[path], path
        if path == "/":
            numbers.append(response.json()["n"])
    assert numbers == list(range(1, len(numbers) + 1))
    if async_every:
        assert service.issue_calls > 0
    assert server.statistics().requests == len(paths)


async def test_pipelined_close_stops_reading_the_rest(serve: Serve, connect: Connect) -> None:
    """Requests after one asking to close (or one refused with close) are not answered."""
    service = NumberedService(async_every=2)
    server = await serve(service)
    client = await connect(server)
    await client.send(
        request("/") + request("/") + request("/", headers=[("Connection", "close")]) + request("/")
    )
    tail = await client.read_to_end()
    assert tail.count(b"HTTP/1.1 200 OK") == 3
    assert tail.count(b"Connection: close") == 1
    assert service.served == 3


async def test_malformed_request_behind_awaited_one_is_answered_after_it(
    serve: Serve, connect: Connect
) -> None:
    """A 400 for a later pipelined request must not overtake the pending response before it."""
    server = await serve(NumberedService(async_every=1))
    client = await connect(server)
    await client.send(request("/") + b"BROKEN\r\n\r\n")
    assert (await client.response()).status == 200
    response = await client.response()
    assert (response.status, response.closes) == (400, True)
    assert await client.closed()


# -- limits and bodies -----------------------------------------------------------------------


async def _expect_refusal(client: Client, data: bytes, status: int) -> None:
    await client.send(data)
    response = await client.response()
    assert (response.status, response.closes) == (status, True)
    assert response.json()["Message"]
    assert await client.closed()


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "a" * 9000)],
        [(f"X-H{i}", "b" * 200) for i in range(45)],
        [(f"X-H{i}", "c") for i in range(63)],
    ],
    ids=["one-huge-header", "over-8KiB-total", "65-headers"],
)
async def test_oversized_head_is_431(
    server: Server, connect: Connect, headers: list[tuple[str, str]]
) -> None:
    await _expect_refusal(await connect(server), request("/", headers=headers), 431)


async def test_oversized_target_is_431(server: Server, connect: Connect) -> None:
    await _expect_refusal(await connect(server), request("/" + "a" * 9000), 431)


async def test_head_at_the_limits_is_accepted(server: Server, connect: Connect) -> None:
    """64 headers (Host and Authorization included) and just under 8 KiB are fine."""
    client = await connect(server)
    assert (await client.exchange(request("/", headers=[(f"X-H{i}", "c") for i in range(62)]))).status == 200
    assert (await client.exchange(request("/", headers=[("X-Big", "d" * 7900)]))).status == 200


async def test_unterminated_oversized_head_is_refused_without_waiting(serve: Serve, connect: Connect) -> None:
    """A header line that never ends is refused once it passes the limit, not at the header timeout."""
    server = await serve(limits=ServerLimits(header_timeout=60))
    client = await connect(server)
    await client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
    for _ in range(10):
        client.writer.write(b"e" * 1000)
    await _expect_refusal(client, b"", 431)


async def test_big_pipelined_read_ending_mid_request_is_not_mistaken_for_a_big_head(
    server: Server, connect: Connect
) -> None:
    """Only the unfinished request at the end of a read counts toward the head limit.

    1. Send 200 pipelined requests (~17 KiB) but stop halfway through the last one.
    2. Once the 199 complete ones are answered, send the rest of the last one.
    3. All 200 are answered 200.
    """
    one = request("/", headers=[("User-Agent", "pipeline-test")])
    data = one * 200
    cut = len(data) - len(one) // 2
    client = await connect(server)
    await client.send(data[:cut])
    await eventually(lambda: server.statistics().requests == 199)
    await client.send(data[cut:])
    for _ in range(200):
        assert (await client.response()).status == 200


@pytest.mark.parametrize(
    "data",
    [
        request("/", headers=[("Content-Length", "5")]) + b"hello",
        request("/", headers=[("Content-Length", "1")]),
        request("/", headers=[("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n0\r\n\r\n",
        request("/", headers=[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]) + b"hello",
        request("/", headers=[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]) + b"hello",
        request("/", method="POST", headers=[("Content-Length", "2")]) + b"{}",
    ],
    ids=["body", "content-length-1", "chunked", "te-then-cl", "cl-then-te", "post-body"],
)
async def test_any_body_is_400_and_closes(server: Server, connect: Connect, data: bytes) -> None:
    await _expect_refusal(await connect(server), data, 400)


async def test_content_length_zero_is_fine(server: Server, connect: Connect) -> None:
    client = await connect(server)
    assert (await client.exchange(request("/", headers=[("Content-Length", "0")]))).status == 200


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: 127.0.0.1\n\n",
        b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n folded\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
    ids=["garbage", "extra-token", "bare-lf", "version", "nul", "no-colon", "empty-name", "obs-fold", "tls"],
)
async def test_malformed_request_is_400_and_closes(server: Server, connect: Connect, data: bytes) -> None:
    await _expect_refusal(await connect(server), data, 400)


def _malformed(rng: random.Random, index: int) -> bytes:
    valid = request("/")
    match index % 4:
        case 0:  # random bytes
            return rng.randbytes(rng.randrange(1, 300))
        case 1:  # a valid request cut short
            return valid[: rng.randrange(1, len(valid) - 1)]
        case 2:  # a valid request with one byte replaced by a control character
            position = rng.randrange(len(valid) - 4)
            return valid[:position] + bytes([rng.choice([0, 1, 8, 11, 127])]) + valid[position + 1 :]
        case _:  # an invalid request line
            method = rng.choice([b"GET", b"G\xc3\xa9T", b"", b"get", b"CONNECTX"])
            target = rng.choice([b"/", b"", b" /", b"/\x7f", b"/" + rng.randbytes(8)])
            version = rng.choice([b"HTTP/1.1", b"HTTP/1.", b"HTTP/1.1x", b"HTTP/11", b""])
            return method + b" " + target + b" " + version + b"\r\nHost: 127.0.0.1\r\n\r\n"


async def _send_and_read(server: Server, data: bytes) -> bytes:
    client = await Client.connect(server)
    try:
        client.writer.write(data)
        client.writer.write_eof()
        return await client.read_to_end()
    finally:
        await client.close()


async def test_thousand_malformed_requests_leave_server_healthy(
    server: Server, service: FixedService
) -> None:
    """1,000 malformed requests, each on a new connection: no crash, no leak, still correct after.

    1. Warm up with 100 malformed requests, then take a tracemalloc measurement.
    2. Send 1,000 more (random bytes, truncated, corrupted, invalid request lines), 20 at a time,
       each followed by EOF; every answer is nothing or a complete HTTP/1.1 response.
    3. All connections are gone, Python memory has not grown, and a valid request still works.
    """
    rng = random.Random(3)

    async def batch(count: int) -> None:
        for start in range(0, count, 20):
            answers = await asyncio.gather(
                *(_send_and_read(server, _malformed(rng, i)) for i in range(start, start + 20))
            )
            for answer in answers:
                assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:40]

    tracemalloc.start()
    try:
        await batch(100)
        await server.wait_connections_closed()
        gc.collect()
        before = tracemalloc.take_snapshot()
        await batch(1000)
        await server.wait_connections_closed()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 256 * 1024, f"Python heap grew by {growth} bytes"
    assert server.statistics().connections_open == 0
    assert server.statistics().connections_accepted == 1100
    response = await _send_and_read(server, request("/"))
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert service.reply.body in response


# -- flow control ----------------------------------------------------------------------------


async def test_client_that_does_not_read_pauses_reading_until_it_does(serve: Serve) -> None:
    """Write backpressure pauses reading, so an unread pipeline cannot grow the server's buffers.

    1. Connect with a tiny receive buffer and pipeline 30,000 requests without reading.
    2. The server stops reading once its write buffer passes the high-water mark: reading is
       paused and fewer than all requests have been answered.
    3. The client reads everything: all responses arrive, reading resumed, all answered.
    """
    service = FixedService()
    server = await serve(service, ServerLimits(write_high_water=16 * 1024, write_low_water=4 * 1024))
    count = 30_000
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (server.host, server.port))
    # The stream's own buffer is kept small too, so the client really stops consuming.
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    client = Client(reader, writer)
    try:
        one = request("/")
        writer.write(one * count)
        await eventually(lambda: server.statistics().reading_paused == 1)
        paused = server.statistics()
        assert paused.write_pauses >= 1
        assert paused.requests < count
        single = (await client.response()).body
        rest = await asyncio.wait_for(reader.readexactly((count - 1) * (len(_response_bytes(single)))), 10)
        assert rest == _response_bytes(single) * (count - 1)
        await eventually(lambda: server.statistics().reading_paused == 0)
        assert server.statistics().requests == count
    finally:
        await client.close()


def _response_bytes(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


# -- timeouts --------------------------------------------------------------------------------


async def test_slowloris_is_cut_off_at_the_header_timeout(serve: Serve, connect: Connect) -> None:
    """Headers trickling in never complete: the header timeout closes the connection with 408.

    The trickle keeps sending, so activity alone does not extend the deadline.
    """
    server = await serve(limits=ServerLimits(header_timeout=0.5))
    client = await connect(server)
    await client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> None:
        for i in range(200):
            client.writer.write(b"X-Slow-%d: 1\r\n" % i)
            await asyncio.sleep(0.05)  # the attack itself is slow; nothing waits on this

    task = asyncio.create_task(trickle())
    try:
        response = await client.response()
        assert (response.status, response.closes) == (408, True)
        assert await client.closed()
    finally:
        task.cancel()
    assert loop.time() - started >= 0.25


async def test_silent_connection_is_closed_at_the_header_timeout(serve: Serve, connect: Connect) -> None:
    server = await serve(limits=ServerLimits(header_timeout=0.3))
    client = await connect(server)
    assert await client.closed()
    await server.wait_connections_closed()


async def test_idle_keep_alive_connection_is_closed(serve: Serve, connect: Connect) -> None:
    server = await serve(limits=ServerLimits(idle_timeout=0.4))
    client = await connect(server)
    assert (await client.exchange(request("/"))).status == 200
    started = asyncio.get_running_loop().time()
    assert await client.closed()
    assert asyncio.get_running_loop().time() - started >= 0.2


async def test_token_is_never_compared_unless_complete(server: Server, connect: Connect) -> None:
    """A request cut off mid-token gets no answer at all (nothing to learn byte by byte)."""
    client = await connect(server)
    client.writer.write(request("/")[: -len(TOKEN) // 2])
    client.writer.write_eof()
    assert await client.closed()
