"""A TCP proxy that loses answers: it forwards HTTP/1.1 requests to an upstream server, lets the
upstream apply them, and for chosen requests drops the response (closes the client's connection
instead of answering), as a network failure after the write would (issue 12).

Small on purpose: it understands requests and responses framed by Content-Length (what botocore
sends and moto answers) and refuses anything else loudly, so a test cannot pass by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

Chooser = Callable[[bytes, bytes], bool]  # (request head, request body) -> drop the answer?


class LossyProxy:
    """Listens on 127.0.0.1; `url` is what clients use. `lose(n, chooser)` drops the answers of
    the next `n` requests `chooser` picks; `forwarded` and `dropped` count what happened."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._chooser: Chooser | None = None
        self._to_lose = 0
        self.forwarded = 0
        self.dropped = 0
        self.changed = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def lose(self, times: int, chooser: Chooser) -> None:
        self._to_lose, self._chooser = times, chooser

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LossyProxy]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        try:
            while True:
                request = await _read_message(client_reader)
                if request is None:
                    return
                head, body = request
                upstream_writer.write(head + body)
                await upstream_writer.drain()
                response = await _read_message(upstream_reader)
                if response is None:
                    return
                self.forwarded += 1
                if self._to_lose > 0 and self._chooser is not None and self._chooser(head, body):
                    self._to_lose -= 1
                    self.dropped += 1
                    self.changed.set()
                    return  # applied upstream; the client only sees its connection close
                client_writer.write(response[0] + response[1])
                await client_writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def wait_dropped(self, count: int) -> None:
        while self.dropped < count:
            self.changed.clear()
            await self.changed.wait()


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message (head, body), or None at a clean end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            raise AssertionError("LossyProxy only handles Content-Length framing")
    return head, await reader.readexactly(length) if length else b""
