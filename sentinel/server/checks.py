"""Request checks that run before routing: header classification, loopback Host, token compare.

The parser hands us every header; we keep only the few that matter, so the header names we care
about are classified with one dict lookup (common spellings pre-listed, anything else lowercased
only when its length could match).
"""

from __future__ import annotations

import ipaddress
from enum import IntEnum


class HeaderKind(IntEnum):
    """What a request header means to the endpoint."""

    OTHER = 0
    HOST = 1
    AUTHORIZATION = 2
    # Sent by browsers (Origin, Sec-Fetch-*, Referer) or proxies (X-Forwarded-For, Forwarded, Via,
    # X-Real-IP): a workload on the box talks to us directly with an SDK, so any of these means
    # someone else is asking (issue 11).
    FOREIGN = 3
    CONTENT_LENGTH = 4
    TRANSFER_ENCODING = 5
    # Only to notice `close` or an HTTP/1.0 `keep-alive` off the fast path.
    CONNECTION = 6


_LOWER_KINDS: dict[bytes, HeaderKind] = {
    b"host": HeaderKind.HOST,
    b"authorization": HeaderKind.AUTHORIZATION,
    b"origin": HeaderKind.FOREIGN,
    b"sec-fetch-site": HeaderKind.FOREIGN,
    b"sec-fetch-mode": HeaderKind.FOREIGN,
    b"sec-fetch-dest": HeaderKind.FOREIGN,
    b"sec-fetch-user": HeaderKind.FOREIGN,
    b"x-forwarded-for": HeaderKind.FOREIGN,
    b"forwarded": HeaderKind.FOREIGN,
    b"via": HeaderKind.FOREIGN,
    b"x-real-ip": HeaderKind.FOREIGN,
    b"referer": HeaderKind.FOREIGN,
    b"content-length": HeaderKind.CONTENT_LENGTH,
    b"transfer-encoding": HeaderKind.TRANSFER_ENCODING,
    b"connection": HeaderKind.CONNECTION,
}

# Spellings real clients send (botocore, urllib3, curl, wrk), so the common case skips `lower()`.
# The irrelevant ones map to OTHER for the same reason.
_COMMON_SPELLINGS = (
    b"Host",
    b"Authorization",
    b"Origin",
    b"Sec-Fetch-Site",
    b"Sec-Fetch-Mode",
    b"Sec-Fetch-Dest",
    b"Sec-Fetch-User",
    b"X-Forwarded-For",
    b"Forwarded",
    b"Via",
    b"X-Real-IP",
    b"Referer",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
)
_IRRELEVANT = (
    b"User-Agent",
    b"user-agent",
    b"Accept",
    b"accept",
    b"Accept-Encoding",
    b"accept-encoding",
    b"Content-Type",
    b"content-type",
)

HEADER_KINDS: dict[bytes, HeaderKind] = {
    **_LOWER_KINDS,
    **{name: _LOWER_KINDS[name.lower()] for name in _COMMON_SPELLINGS},
    **dict.fromkeys(_IRRELEVANT, HeaderKind.OTHER),
}
# Only names of these lengths can be interesting; others skip the lowercase lookup entirely.
INTERESTING_LENGTHS = frozenset(len(name) for name in _LOWER_KINDS)


def classify_header(name: bytes) -> HeaderKind:
    """Classify one header name, case-insensitively."""
    kind = HEADER_KINDS.get(name)
    if kind is None:
        if len(name) not in INTERESTING_LENGTHS:
            return HeaderKind.OTHER
        kind = _LOWER_KINDS.get(name.lower(), HeaderKind.OTHER)
    return kind


def is_loopback_host(value: bytes) -> bool:
    """True if a `Host` value names loopback: 127.0.0.0/8, [::1] or localhost, with any valid port.

    This is the DNS-rebinding defence: a browser tricked into calling us via `evil.com` (resolving
    to 127.0.0.1) still sends `Host: evil.com`. Names that merely start like loopback
    (`127.0.0.1.evil.com`, `localhost.evil.com`) are not loopback.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return False
        name, rest = text[1:end], text[end + 1 :]
        if "%" in name:  # zone ids have no place in a Host header
            return False
    else:
        name, colon, port = text.partition(":")
        rest = colon + port
    if rest and not _valid_port_suffix(rest):
        return False
    if name.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if text.startswith("[") != (address.version == 6):
        return False  # IPv6 must be bracketed, IPv4 must not be
    return address.is_loopback


def _valid_port_suffix(rest: str) -> bool:
    port = rest[1:]
    return rest[0] == ":" and 0 < len(port) <= 5 and port.isdigit() and port.isascii() and int(port) <= 65535


class LoopbackHosts:
    """`is_loopback_host` with a small memo of accepted values (a server sees very few distinct ones).

    The fast path tests membership in `accepted` directly and calls `allows` only on a miss.
    """

    __slots__ = ("accepted",)

    MAX_REMEMBERED = 64

    def __init__(self) -> None:
        self.accepted: set[bytes] = set()

    def allows(self, value: bytes) -> bool:
        if value in self.accepted:
            return True
        if not is_loopback_host(value):
            return False
        # Only accepted values are remembered, and only a few: an attacker cycling ports cannot
        # grow this set without bound.
        if len(self.accepted) < self.MAX_REMEMBERED:
            self.accepted.add(value)
        return True


# llhttp parses `HTTP/0.9` and `HTTP/2.0` request lines as if they were HTTP/1.x (and rejects every
# other version itself). We speak HTTP/1.x framing only and SDKs send 1.1, so anything else is
# refused rather than answered as if it were 1.0 (issue 11).
SERVED_VERSIONS = frozenset(("1.0", "1.1"))


def is_served_version(version: str) -> bool:
    """True for the HTTP versions the endpoint serves, as `parser.get_http_version()` spells them."""
    return version in SERVED_VERSIONS
