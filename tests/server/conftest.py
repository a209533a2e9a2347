"""Endpoint tests run on uvloop (production) and on the default asyncio loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import uvloop

from sentinel.server import Server, ServerLimits, start_server
from sentinel.server.service import CredentialService
from tests.server.client import TOKEN, Client, Connect, Serve
from tests.server.services import FixedService


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Parametrize every async test here over both loops (pytest-asyncio's hook)."""
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture
def service() -> FixedService:
    return FixedService()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start servers on ephemeral loopback ports; each is shut down after the test."""
    servers: list[Server] = []

    async def _serve(
        service: CredentialService | None = None, limits: ServerLimits | None = None, **kwargs: Any
    ) -> Server:
        server = await start_server(
            service if service is not None else FixedService(), token=TOKEN, limits=limits, **kwargs
        )
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        await server.shutdown(grace=5.0)


@pytest.fixture
async def server(serve: Serve, service: FixedService) -> Server:
    return await serve(service)


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open raw client connections; each is closed after the test."""
    clients: list[Client] = []

    async def _connect(server: Server, **kwargs: Any) -> Client:
        client = await Client.connect(server, **kwargs)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()
