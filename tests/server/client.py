"""A raw HTTP/1.1 client over real loopback sockets, so tests control every byte on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.server import Server

# The shapes of the conftest fixtures `serve` and `connect`.
Serve = Callable[..., Awaitable[Server]]
Connect = Callable[..., Awaitable["Client"]]

TOKEN = "sentinel-test-token-3f9c2a7d41e8b605"
# Every wait in these tests is bounded by this, never used to synchronise.
DEADLINE = 10.0


def request(
    path: str = "/",
    *,
    method: str = "GET",
    host: str | None = "127.0.0.1",
    token: str | None = TOKEN,
    headers: Iterable[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    if token is not None:
        lines.append(f"Authorization: {token}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"duplicate response header {name}"
            headers[name.lower()] = value.strip()
    return int(status), headers


class Client:
    """One connection to the server under test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: Server, **kwargs: Any) -> Client:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection(server.host, server.port, **kwargs)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(DEADLINE):
            await self.writer.drain()

    async def response(self) -> Response:
        async with asyncio.timeout(DEADLINE):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head)
            body = await self.reader.readexactly(int(headers["content-length"]))
        return Response(status, headers, body)

    async def exchange(self, data: bytes) -> Response:
        await self.send(data)
        return await self.response()

    async def read_to_end(self) -> bytes:
        """Everything until the server closes (a reset counts as a close)."""
        chunks = []
        async with asyncio.timeout(DEADLINE):
            try:
                while chunk := await self.reader.read(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                pass
        return b"".join(chunks)

    async def closed(self) -> bool:
        """True once the server has closed the connection without sending anything more."""
        return await self.read_to_end() == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(DEADLINE):
                await self.writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass


async def fetch(server: Server, data: bytes) -> Response:
    """One request on a fresh connection."""
    client = await Client.connect(server)
    try:
        return await client.exchange(data)
    finally:
        await client.close()


async def eventually(predicate: Callable[[], bool], within: float = DEADLINE) -> None:
    """Wait for a condition the server exposes only as a statistic, under a bounded deadline."""
    async with asyncio.timeout(within):
        # Polling is the point: these conditions (reading paused, a slot freed) have no event.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
