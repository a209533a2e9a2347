"""The child of `sentinel exec`: its environment, its process, and its exit code.

The child's SDK must be able to use Sentinel and nothing else, so every other credential source is
removed from its environment (as the Go original does): static keys, profiles, web identity, and
the shared config and credentials files (pointed at /dev/null).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sentinel.errors import SentinelError

if TYPE_CHECKING:
    import asyncio

MARKER = "AWS_SENTINEL"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_REMOVED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)


class NestedExec(SentinelError):
    """`sentinel exec` run from inside a `sentinel exec` child."""


class CommandNotFound(SentinelError):
    """The child's command does not exist (exit 127, as shells report it)."""


class CommandNotExecutable(SentinelError):
    """The child's command exists but cannot be run (exit 126, as shells report it)."""


def refuse_nested(environ: Mapping[str, str] = os.environ) -> None:
    if environ.get(MARKER):
        raise NestedExec(
            f"refusing to run sentinel exec inside another sentinel exec ({MARKER} is set); "
            "the outer one already provides credentials"
        )


def child_environment(
    environ: Mapping[str, str], marker: str, region: str | None, credentials: Mapping[str, str]
) -> dict[str, str]:
    """A copy of `environ` whose only AWS credential source is `credentials`."""
    env = {key: value for key, value in environ.items() if key not in _REMOVED}
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if region and not env.get("AWS_REGION") and not env.get("AWS_DEFAULT_REGION"):
        # The config file that named the region is hidden from the child now.
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    env[MARKER] = marker
    env.update(credentials)
    return env


def command_error(command: str, error: OSError) -> SentinelError:
    """What a command that could not be started becomes: 127 if it does not exist, else 126."""
    if isinstance(error, FileNotFoundError):
        return CommandNotFound(f"exec: command not found: {command}")
    if isinstance(error, PermissionError):
        return CommandNotExecutable(f"exec: permission denied: {command}")
    return CommandNotExecutable(f"exec: cannot run {command}: {error.strerror or error}")


def exit_code(returncode: int) -> int:
    """The child's exit code; 128 + N when signal N killed it (as shells report it)."""
    return 128 - returncode if returncode < 0 else returncode


async def run_child(argv: list[str], env: dict[str, str]) -> int:
    """Run the child to completion, forwarding SIGINT, SIGTERM and SIGHUP to it."""
    import asyncio  # here: `exec --attach` imports this module and never runs an event loop

    loop = asyncio.get_running_loop()
    process: asyncio.subprocess.Process | None = None
    early: list[int] = []

    def forward(signum: int) -> None:
        if process is None:
            early.append(signum)  # arrived while the child was being started
        elif process.returncode is None:
            process.send_signal(signum)

    # Installed before the child exists: a signal in between must not kill us and orphan it.
    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, forward, signum)
    try:
        try:
            process = await asyncio.create_subprocess_exec(*argv, env=env)
        except OSError as exc:
            raise command_error(argv[0], exc) from None
        for queued in early:
            forward(queued)
        return exit_code(await process.wait())
    finally:
        for signum in FORWARDED_SIGNALS:
            loop.remove_signal_handler(signum)
