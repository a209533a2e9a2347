"""The seam between the HTTP endpoint and the rest of Sentinel (DESIGN.md §2).

The server knows nothing about policies, stores or AWS: after its own checks (token, Host, browser
headers, limits, routing) it asks a `CredentialService` for a `Reply` and writes it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response body: the server adds status line, headers and framing."""

    status: int
    body: bytes
    content_type: str = JSON


class CredentialService(Protocol):
    def issue_nowait(self) -> Reply | None:
        """Answer a credential request without awaiting, if possible (the cache-hit fast path).

        Returns None when the answer needs I/O (cold or expiring cache); the server then awaits
        `issue()`. Never raises."""
        ...

    async def issue(self) -> Reply:
        """Answer a credential request, awaiting whatever it needs. Never raises."""
        ...

    def health(self) -> Reply:
        """Liveness and component state for `/healthz`; no secrets. Served without the token."""
        ...

    def metrics(self) -> Reply:
        """Prometheus text for `/metrics`."""
        ...
