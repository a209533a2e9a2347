"""The one loopback check (DESIGN.md §6: the listener binds loopback only); a leaf, no sentinel imports."""

from __future__ import annotations

import ipaddress


def loopback_address(host: str) -> str:
    """The literal address to bind for `host`; anything but loopback is a ValueError.

    The one loopback check (DESIGN.md §6: the listener binds loopback only), used to validate
    `--host` and again by the server before it binds. "localhost" means 127.0.0.1, not whatever
    a resolver says: a hosts file that maps it elsewhere must not move the listener off loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not a loopback address") from None
    if not address.is_loopback:
        raise ValueError(f"{host!r} is not a loopback address; Sentinel binds loopback only")
    return str(address)
