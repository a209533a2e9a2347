"""What the endpoint accepts: request limits, timeouts, and the loopback-only bind address.

The listener serves credentials to anything that can reach it, so where it binds is a security
boundary (issue 3): only loopback, checked before any socket exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.errors import ConfigError
from sentinel.loopback import loopback_address


class ServerConfigError(ConfigError):
    """The endpoint was asked for something it refuses (a non-loopback bind, a bad limit or token)."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds on what one connection and the whole listener may cost us.

    `max_header_bytes` covers the request line and all header lines. The timeouts are enforced by
    a coarse sweep (see `listener.py`), so a connection closes between `timeout` and
    `timeout + 2 * sweep_interval` after the event that started it.

    Connection admission (DESIGN.md §6, issue 11): a connection that has not yet presented the
    token must do so within `auth_timeout` of being accepted (or `header_timeout`, if shorter);
    under `--allow-user` one local user holds at most `max_unauthenticated_per_user` of them.
    """

    max_header_bytes: int = 8192
    max_headers: int = 64
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    auth_timeout: float = 2.0
    max_connections: int = 1024
    max_unauthenticated_per_user: int = 128
    write_high_water: int = 64 * 1024
    write_low_water: int = 16 * 1024

    def __post_init__(self) -> None:
        if self.max_header_bytes < 256:
            raise ServerConfigError("max_header_bytes must be at least 256")
        if self.max_headers < 1:
            raise ServerConfigError("max_headers must be at least 1")
        if not (self.header_timeout > 0 and self.idle_timeout > 0 and self.auth_timeout > 0):
            raise ServerConfigError("header_timeout, idle_timeout and auth_timeout must be positive")
        if self.max_connections < 1:
            raise ServerConfigError("max_connections must be at least 1")
        if self.max_unauthenticated_per_user < 1:
            raise ServerConfigError("max_unauthenticated_per_user must be at least 1")
        if not 0 <= self.write_low_water < self.write_high_water:
            raise ServerConfigError("write_low_water must be below write_high_water")

    @property
    def sweep_interval(self) -> float:
        """How often the deadlines are checked: a quarter of the shortest timeout, ≤ 1 s."""
        return min(1.0, max(0.01, min(self.header_timeout, self.idle_timeout, self.auth_timeout) / 4))


def loopback_bind_address(host: str) -> str:
    """Return the literal address to bind for `host`; anything but loopback is a `ServerConfigError`.

    The check itself is `sentinel.loopback.loopback_address`, so `--host` validation and binding
    can never disagree."""
    try:
        return loopback_address(host)
    except ValueError as exc:
        raise ServerConfigError(f"cannot listen: {exc}") from None


def validate_token(token: str) -> bytes:
    """Return the token as the bytes compared against `Authorization`; reject unusable tokens.

    The message never includes the token. Surrounding whitespace is refused because HTTP strips
    it from header values, so such a token could never match.
    """
    if not token:
        raise ServerConfigError("authorization token must not be empty")
    if not (token.isascii() and token.isprintable()) or token != token.strip():
        raise ServerConfigError("authorization token must be printable ASCII without surrounding whitespace")
    return token.encode("ascii")
