"""sd_notify: tell systemd we are ready, reloading, stopping, alive; a no-op outside systemd.

The protocol is one datagram of newline-separated `KEY=VALUE` assignments sent to the AF_UNIX socket
named by `NOTIFY_SOCKET` (sd_notify(3)). No libsystemd: the socket is all there is to it. Shaped after
nobodd's `systemd.py` (HOUSE_STYLE.md), with the environment removal the daemon needs so that a child
started by `sentinel exec` can never talk to our service manager, or be taken for us by the watchdog.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import anyio
from anyio.abc import TaskStatus

__all__ = ["SystemdNotifier", "watchdog_loop"]

logger = logging.getLogger(__name__)

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(value: str | None) -> str | None:
    """The address to send to, or None when `NOTIFY_SOCKET` is unset or unusable."""
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: systemd writes it with '@', the kernel wants a leading NUL.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # sd_notify(3) also knows vsock: addresses (VMs); nothing we run under uses them.
    logger.warning("ignoring unsupported NOTIFY_SOCKET address %r", value)
    return None


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    """WATCHDOG_USEC as an int when it applies to this process, as sd_watchdog_enabled(3) decides."""
    if not usec:
        return None
    try:
        value = int(usec)
        # The variables are inherited by accident sometimes: WATCHDOG_PID says whom they are for.
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        logger.warning("ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec, pid)
        return None
    return value if value > 0 else None


class SystemdNotifier:
    """Sends sd_notify messages; every method is a silent no-op when there is no notify socket.

    Sending never raises: a failure logs one warning (again only after a send has succeeded in
    between) and is otherwise ignored, because a service manager that cannot hear us must not take
    the credential server down. The socket is opened on the first send and closed by `close()`.
    """

    __slots__ = ("_address", "_failing", "_socket", "_watchdog_usec")

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        """`address` is a `NOTIFY_SOCKET` value (a path, or `@name` for an abstract socket)."""
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec if self._address is not None else None
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> SystemdNotifier:
        """Build a notifier from `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` in `environ`.

        With `unset` (the default) the three variables are removed from `environ` (`os.environ` by
        default, which also unsets them in the process), so no child process ever inherits them.
        """
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        values: Mapping[str, str | None] = {name: env.get(name) for name in _ENVIRONMENT}
        if unset:
            for name in _ENVIRONMENT:
                env.pop(name, None)
        return cls(
            values["NOTIFY_SOCKET"],
            watchdog_usec=_watchdog_usec(values["WATCHDOG_USEC"], values["WATCHDOG_PID"]),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC, as systemd advises), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self) -> None:
        """Startup (or a reload) is complete: `READY=1`."""
        self.send("READY=1")

    def reloading(self) -> None:
        """A reload starts: `RELOADING=1` with `MONOTONIC_USEC`, in one datagram.

        `Type=notify-reload` requires the timestamp, so systemd can tell this reload from an older
        one; follow with `ready()` when the reload is done (whether or not it succeeded).
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown has begun: `STOPPING=1`."""
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        """A one-line human-readable status for `systemctl status`: `STATUS=text`."""
        self.notify(STATUS=text)

    def watchdog_ping(self) -> None:
        """Keep-alive for `WatchdogSec=`: `WATCHDOG=1`."""
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before a start or stop timeout fires: `EXTEND_TIMEOUT_USEC`."""
        self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def notify(self, **fields: str | int) -> None:
        """Send several assignments in one datagram, e.g. `notify(READY=1, STATUS="serving")`.

        A newline inside a value would start a new assignment, so it is replaced by a space.
        """
        if fields:
            self.send("\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()))

    def send(self, message: str | bytes) -> None:
        """Send one raw datagram; never raises."""
        if self._address is None:
            return
        # "replace": a stray surrogate (say, from a file name) must not make sending raise.
        data = message.encode(errors="replace") if isinstance(message, str) else message
        try:
            if self._socket is None:
                # Non-blocking: a wedged service manager must not stall the event loop; systemd
                # drains the socket promptly, so a full one means the message would not help.
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            # sendto, not connect: the address is resolved on every send, so a notify socket that
            # systemd re-created (daemon-reexec) is still reached.
            self._socket.sendto(data, self._address)
        except OSError as error:
            if not self._failing:
                self._failing = True
                logger.warning("systemd notification failed: %s", error.strerror or error)
            return
        self._failing = False

    def close(self) -> None:
        """Close the socket (idempotent); a later send opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def watchdog_loop(
    notifier: SystemdNotifier, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Ping the watchdog every `watchdog_interval` seconds until cancelled.

    Returns at once when no watchdog is configured. The first ping goes out immediately; the
    schedule is kept against absolute deadlines so slow iterations do not make the pings drift.
    """
    interval = notifier.watchdog_interval
    task_status.started()
    if interval is None:
        return
    deadline = anyio.current_time()
    while True:
        notifier.watchdog_ping()
        deadline = max(deadline + interval, anyio.current_time())
        await anyio.sleep_until(deadline)
