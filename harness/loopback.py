"""Talking to servers on 127.0.0.1: a free port to give one, a plain GET to ask one."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from harness.waiting import DEADLINE


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice; free until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, path: str = "/", token: str = "", within: float = DEADLINE) -> tuple[int, Any]:
    """One GET on a fresh connection: (status, parsed JSON if the reply says it is JSON, else text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=within)
    try:
        headers = {"Authorization": token} if token else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(body)
    return response.status, body.decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value}, comments skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
