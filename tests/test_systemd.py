"""sd_notify against a real AF_UNIX datagram socket bound by the test, standing in for systemd."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from sentinel.systemd import SystemdNotifier, watchdog_loop


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that reaches it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        # A datagram is queued on the receiver before sendto() returns; the timeout only bounds a bug.
        sock.settimeout(5)
        yield sock, str(path)


def test_each_message_has_the_exact_bytes(receiver: tuple[socket.socket, str]) -> None:
    """Send every kind of notification; each arrives as one datagram with exactly these bytes."""
    sock, address = receiver
    with SystemdNotifier(address) as notifier:
        assert notifier.enabled
        notifier.ready()
        notifier.stopping()
        notifier.watchdog_ping()
        notifier.status("serving on 127.0.0.1:8080, session 0123456789abcdef")
        notifier.status("two\nlines")
        notifier.extend_timeout(2.5)
        notifier.notify(READY=1, STATUS="reloaded")
        notifier.send(b"MAINPID=42")
        notifier.status("bad \udcff name")
    assert [sock.recv(4096) for _ in range(9)] == [
        b"READY=1",
        b"STOPPING=1",
        b"WATCHDOG=1",
        b"STATUS=serving on 127.0.0.1:8080, session 0123456789abcdef",
        b"STATUS=two lines",
        b"EXTEND_TIMEOUT_USEC=2500000",
        b"READY=1\nSTATUS=reloaded",
        b"MAINPID=42",
        b"STATUS=bad ? name",
    ]


def test_reloading_carries_the_monotonic_clock_in_the_same_datagram(
    receiver: tuple[socket.socket, str],
) -> None:
    """Read CLOCK_MONOTONIC, send RELOADING, read it again: the timestamp sent lies in between."""
    sock, address = receiver
    with SystemdNotifier(address) as notifier:
        before = time.monotonic_ns() // 1000
        notifier.reloading()
        after = time.monotonic_ns() // 1000
    first, second = sock.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket_address_reaches_the_abstract_namespace() -> None:
    """Bind an abstract socket, pass its name with '@' as systemd does, and receive READY=1."""
    name = f"sentinel-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        with SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@" + name}) as notifier:
            notifier.ready()
        assert sock.recv(4096) == b"READY=1"


def test_everything_is_a_no_op_without_notify_socket() -> None:
    """With no NOTIFY_SOCKET (even with a watchdog variable), nothing is enabled and nothing raises."""
    notifier = SystemdNotifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready()
    notifier.reloading()
    notifier.stopping()
    notifier.status("x")
    notifier.watchdog_ping()
    notifier.notify(READY=1)
    notifier.send(b"READY=1")
    notifier.close()


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_unusable_addresses_disable_the_notifier(value: str) -> None:
    assert not SystemdNotifier(value).enabled


def test_from_environ_removes_the_variables_from_the_given_environment() -> None:
    """from_environ pops the three systemd variables and leaves everything else alone."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "HOME": "/h"}
    assert SystemdNotifier.from_environ(env).enabled
    assert env == {"HOME": "/h"}


def test_from_environ_can_leave_the_environment_alone() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1"}
    SystemdNotifier.from_environ(env, unset=False)
    assert env == {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1"}


def test_children_never_inherit_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the notifier from os.environ, then start a child: it sees none of the variables."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier.from_environ()
    assert notifier.watchdog_interval == 15.0
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(k for k in os.environ if 'WATCHDOG' in k "
         "or k == 'NOTIFY_SOCKET'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("3000", None, 0.0015),
        ("0", None, None),
        ("soon", None, None),
        ("30000000", "nobody", None),
        (None, "self", None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process(
    usec: str | None, pid: str | None, interval: float | None
) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid is not None:
        env["WATCHDOG_PID"] = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
    assert SystemdNotifier.from_environ(env).watchdog_interval == interval


def test_dead_socket_path_does_not_raise_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Send twice to a path nobody listens on: no exception, one warning for the run of failures."""
    caplog.set_level(logging.WARNING, logger="sentinel.systemd")
    with SystemdNotifier(str(tmp_path / "gone")) as notifier:
        notifier.ready()
        notifier.watchdog_ping()
    assert len(caplog.records) == 1
    assert "systemd notification failed" in caplog.records[0].getMessage()


def test_a_failure_after_a_success_warns_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Listener up -> send ok; listener closed (socket file left behind) -> refused, warned; twice."""
    caplog.set_level(logging.WARNING, logger="sentinel.systemd")
    path = str(tmp_path / "notify")
    with SystemdNotifier(path) as notifier:
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(path)
                notifier.ready()
                assert sock.recv(4096) == b"READY=1"
            notifier.ready()
            os.unlink(path)
    assert len(caplog.records) == 2


def test_close_is_idempotent_and_a_later_send_reopens(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = SystemdNotifier(address)
    notifier.close()
    notifier.ready()
    notifier.close()
    notifier.close()
    notifier.stopping()
    notifier.close()
    assert [sock.recv(4096), sock.recv(4096)] == [b"READY=1", b"STOPPING=1"]


async def test_watchdog_loop_pings_repeatedly(receiver: tuple[socket.socket, str]) -> None:
    """Start the loop with a 2 ms watchdog (1 ms interval); three pings arrive; cancel it."""
    sock, address = receiver
    sock.setblocking(False)
    notifier = SystemdNotifier(address, watchdog_usec=2000)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(watchdog_loop, notifier)
            for _ in range(3):
                await anyio.wait_readable(sock)
                assert sock.recv(4096) == b"WATCHDOG=1"
            tg.cancel_scope.cancel()
    notifier.close()


async def test_watchdog_loop_returns_at_once_without_a_watchdog(
    receiver: tuple[socket.socket, str],
) -> None:
    """No WATCHDOG_USEC: the loop reports started and returns; nothing was sent."""
    sock, address = receiver
    notifier = SystemdNotifier(address)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(watchdog_loop, notifier)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
