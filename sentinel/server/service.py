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


@dataclass(frozen=True, slots=True)
class Caller:
    """The local user on the other end of a connection, known only under `--allow-user`.

    The server looks it up once per connection and hands it to every credential request on that
    connection, for the decision log (issue 11)."""

    uid: int
    user: str


class CredentialService(Protocol):
    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        """Answer a credential request without awaiting, if possible (the cache-hit fast path).

        Returns None when the answer needs I/O (cold or expiring cache); the server then awaits
        `issue()`. `caller` is None unless `--allow-user` identified the client. Never raises."""
        ...

    async def issue(self, caller: Caller | None = None) -> Reply:
        """Answer a credential request, awaiting whatever it needs. Never raises."""
        ...

    def health(self) -> Reply:
        """Liveness and component state for `/healthz`; no secrets. Served without the token."""
        ...

    def metrics(self) -> Reply:
        """Prometheus text for `/metrics`."""
        ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A credential path and who answers it: one per profile of a server (issue 14).

    `path` is `/` (the default profile) or `/profiles/NAME`; `token` is that profile's alone."""

    path: str
    service: CredentialService
    token: str
