"""Running a helper as another local user (`nobody`), the way a local attacker or workload would.

Only root can switch users, so tests that need a second user skip (with the reason) elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass

import pytest

# The system interpreter, not the venv's: the helpers need only the standard library, and the
# venv may sit below directories `nobody` cannot traverse.
SYSTEM_PYTHON = "/usr/bin/python3"

# `python(ASK_OVER_HTTP, host, port)`: sends the request read from stdin (so no token sits in
# argv) on one connection, prints the response's status line and whether it said it closes.
ASK_OVER_HTTP = """
import socket, sys
request = sys.stdin.buffer.read()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as client:
    client.sendall(request)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
print(data.split(b"\\r\\n")[0].decode(), "close" if b"Connection: close" in data else "open", flush=True)
"""


@dataclass(frozen=True, slots=True)
class OtherUser:
    name: str
    uid: int
    gid: int

    def argv(self, *command: str) -> list[str]:
        """`command` run as this user, with its group and no supplementary groups."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            *command,
        ]

    def python(self, source: str, *args: str) -> list[str]:
        """argv running `source` with the system Python as this user."""
        return self.argv(SYSTEM_PYTHON, "-c", source, *args)


def other_user() -> OtherUser:
    """`nobody`, or skip the calling test with the reason it cannot run here."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to act as a second user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to act as a second user")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON} for the second user's helper")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs a 'nobody' user")
    return OtherUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
