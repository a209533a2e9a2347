"""Connection admission and `--allow-user` through a real `sentinel serve` (issue 11).

The daemon runs against the shared moto server; the attackers are real loopback sockets opened
by this process (with RLIMIT_NOFILE raised for it and the server it starts) or real processes
running as `nobody` through setpriv. The in-process counterparts, with small limits, are in
`tests/server/test_admission.py`.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.loopback import http_get
from tests.support.other_user import ASK_OVER_HTTP, other_user
from tests.support.serve import serving

ATTACKERS = 1024  # the listener's whole connection limit
# Ours, the server's (listener, store, AWS clients, log) and the workload's, with room to spare.
_FILES_NEEDED = 2 * ATTACKERS + 256


@pytest.fixture
def many_files() -> Iterator[None]:
    """Raise this process's open-file limit; the `sentinel serve` it starts inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _FILES_NEEDED:
        pytest.skip(f"needs {_FILES_NEEDED} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, _FILES_NEEDED), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _first_lines_until_closed(sockets: list[socket.socket], within: float) -> list[bytes]:
    """Read each socket until the server closes it; each one's first line (b"" if it got no
    answer). Fails if any is still open after `within` seconds."""
    data = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + within
        while selector.get_map():
            left = deadline - time.monotonic()
            assert left > 0, f"{len(selector.get_map())} connections still open after {within} s"
            for key, _ in selector.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    data[sock] += chunk
                else:
                    selector.unregister(sock)
    return [data[sock].split(b"\r\n", 1)[0] for sock in sockets]


@pytest.mark.parametrize("attack", ["tokenless-request", "silent"])
def test_1024_tokenless_sockets_do_not_stop_the_workload(
    env: dict[str, str], tmp_path: Path, policy: Path, many_files: None, attack: str
) -> None:
    """Issue 11 item 1, which used to give the workload 503 for as long as the attacker liked.

    1. serve; 1,024 loopback connections without the token (the whole connection limit), each
       either sending one tokenless keep-alive request or nothing at all, none reading.
    2. The workload asks for credentials on a new connection: 200 within a second.
    3. Every attacker connection is closed by the server within the auth deadline (2 s, plus
       sweep ticks): after a 401 (request), at the deadline (silent), or after a 503 when it was
       the oldest unauthenticated one and the listener needed its slot. The server's counters
       agree with what the attackers saw, and no connection was ever refused.
    """
    with serving(env, tmp_path / "run", "--policy-file", str(policy), "--no-session-tracking") as served:
        attackers = []
        try:
            for _ in range(ATTACKERS):
                sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
                attackers.append(sock)
                if attack == "tokenless-request":
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            started = time.monotonic()
            status, body = http_get(served.port, "/", served.token, within=5)
            elapsed = time.monotonic() - started
            assert status == 200, body
            assert elapsed < 1.0
            answers = Counter(_first_lines_until_closed(attackers, within=10))
        finally:
            for sock in attackers:
                sock.close()
        metrics = served.metrics()
    evicted = answers.pop(b"HTTP/1.1 503 Service Unavailable", 0)
    assert metrics["sentinel_connections_evicted_total"] == evicted
    assert metrics["sentinel_connections_rejected_total"] == 0
    if attack == "tokenless-request":
        assert answers == {b"HTTP/1.1 401 Unauthorized": ATTACKERS - evicted}
        unauthorized = metrics['sentinel_requests_total{route="credentials",status="401"}']
        assert unauthorized == ATTACKERS - evicted
    else:
        # The workload arrived behind all 1,024 in the accept queue: the listener was full.
        assert evicted >= 1
        assert answers == {b"": ATTACKERS - evicted}


def _callers(decisions: Path) -> list[tuple[int, int | None, str | None]]:
    """(status, caller_uid, caller_user) of every decision logged."""
    entries = [json.loads(line) for line in decisions.read_text().splitlines()]
    return [(entry["status"], entry["caller_uid"], entry["caller_user"]) for entry in entries]


@pytest.mark.parametrize("allow_user", [True, False], ids=["allow-user-root", "no-allow-user"])
def test_allow_user_refuses_nobody_and_serves_the_allowed_user_through_serve(
    env: dict[str, str], tmp_path: Path, policy: Path, allow_user: bool
) -> None:
    """1. serve with a decision log, with `--allow-user root` (by name) or without the option.
    2. `nobody` asks with the right token: with the option, 403 with `Connection: close` and no
       decision logged for it (refused before the policy); without, it is served like anyone.
    3. We (root) ask: 200; the decision names uid 0 and user root, or null for both without the
       option (nothing is looked up then).
    """
    user = other_user()
    decisions = tmp_path / "decisions.jsonl"
    args = ["--policy-file", str(policy), "--no-session-tracking", "--decision-log", str(decisions)]
    with serving(env, tmp_path / "run", *args, *(["--allow-user", "root"] if allow_user else [])) as served:
        asked = subprocess.run(
            user.python(ASK_OVER_HTTP, "127.0.0.1", str(served.port)),
            input=f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {served.token}\r\n"
            "Connection: close\r\n\r\n".encode(),
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert served.credentials()[0] == 200
        assert served.process.stop() == 0
    if allow_user:
        assert asked.stdout.decode().strip() == "HTTP/1.1 403 Forbidden close"
        assert _callers(decisions) == [(200, 0, "root")]
        assert "only connections of root (uid 0) get credentials" in served.process.stderr
    else:
        assert asked.stdout.decode().strip() == "HTTP/1.1 200 OK close"
        assert _callers(decisions) == [(200, None, None), (200, None, None)]
        assert "only connections of" not in served.process.stderr
