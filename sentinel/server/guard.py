"""The server's one guard on the `CredentialService` seam.

The seam promises never to raise; a service that breaks the promise must not kill a connection or
the server. `GuardedService` wraps the service once, when the listener starts: an exception
becomes `SERVICE_FAILED`, which the connection answers with its canned 500, and one error line
that names the exception's type only (its text may quote upstream errors or secrets).
"""

from __future__ import annotations

import logging

from sentinel.server.http import INTERNAL_ERROR, Route
from sentinel.server.service import Caller, CredentialService, Reply

# Stands for "the service raised": compared by identity, never rendered.
SERVICE_FAILED = Reply(INTERNAL_ERROR.status, b"")


class GuardedService:
    """A `CredentialService` that answers `SERVICE_FAILED` where `service` raised."""

    __slots__ = ("_logger", "_service")

    def __init__(self, service: CredentialService, logger: logging.Logger) -> None:
        self._service = service
        self._logger = logger

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        try:
            return self._service.issue_nowait(caller)
        except Exception as exc:
            return self._failed(exc, Route.CREDENTIALS)

    async def issue(self, caller: Caller | None = None) -> Reply:
        try:
            return await self._service.issue(caller)
        except Exception as exc:
            return self._failed(exc, Route.CREDENTIALS)

    def health(self) -> Reply:
        try:
            return self._service.health()
        except Exception as exc:
            return self._failed(exc, Route.HEALTHZ)

    def metrics(self) -> Reply:
        try:
            return self._service.metrics()
        except Exception as exc:
            return self._failed(exc, Route.METRICS)

    def _failed(self, exc: Exception, route: Route) -> Reply:
        self._logger.error("service raised %s answering %s; answered 500", type(exc).__name__, route.value)
        return SERVICE_FAILED
