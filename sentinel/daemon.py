"""The lifecycle (DESIGN.md §5): signals, systemd notifications, workload files, the exec child.

startup -> run -> shutdown, as a straight line. The parts are built and torn down by
`assembly.py`; no business logic lives here: the hot path is `pipeline.py`, session tracking
`sessions/tracker.py`, the HTTP layer `server/`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson

from sentinel import child, logs
from sentinel.assembly import Assembly, assemble
from sentinel.config import ServerConfig, default_token_file
from sentinel.errors import ConfigError, SentinelError
from sentinel.files import write_env_file, write_secret_file
from sentinel.policy import Mode
from sentinel.systemd import SystemdNotifier, watchdog_loop

_log = logging.getLogger("sentinel")


def serve(config: ServerConfig) -> int:
    """`sentinel serve`: run until SIGTERM/SIGINT; SIGHUP reloads the policy."""
    logs.configure(config.log_format)
    notifier = SystemdNotifier.from_environ()
    return _run(_serve(config, notifier))


def exec_command(config: ServerConfig, argv: list[str], *, server: bool) -> int:
    """`sentinel exec [--server] -- argv`: run the child; return its exit code."""
    child.refuse_nested()
    logs.configure(config.log_format, logging.WARNING)
    notifier = SystemdNotifier.from_environ()  # never let the child inherit NOTIFY_SOCKET
    if server:
        return _run(_exec_server(config, argv, notifier))
    return _run(_exec_cli(config, argv))


def _run(main: Coroutine[Any, Any, int]) -> int:
    async def runner() -> int:
        return await main

    try:
        return anyio.run(runner, backend_options={"use_uvloop": True})
    except BaseExceptionGroup as group:
        # Task groups wrap what their body raised; the user gets the one-line error inside.
        error = _first_sentinel_error(group)
        if error is None:
            raise
        raise error from None


def _first_sentinel_error(group: BaseExceptionGroup[BaseException]) -> SentinelError | None:
    for inner in group.exceptions:
        if isinstance(inner, SentinelError):
            return inner
        if isinstance(inner, BaseExceptionGroup):
            found = _first_sentinel_error(inner)
            if found is not None:
                return found
    return None


# -- shutdown -----------------------------------------------------------------------------------


async def _shutdown(assembly: Assembly, notifier: SystemdNotifier) -> None:
    """Tell systemd, then the assembly's one teardown order (DESIGN.md §4)."""
    notifier.stopping()
    await assembly.shutdown()


# -- serve --------------------------------------------------------------------------------------


async def _serve(config: ServerConfig, notifier: SystemdNotifier) -> int:
    # Absolute: the env file is read by other units, whose working directory is not ours.
    token_file = (config.token_file or default_token_file()).absolute()
    async with assemble(config, Mode.SERVER) as running:
        try:
            # Handlers first: systemd may send SIGHUP (reload) or SIGTERM the moment it hears
            # READY=1, and the default action of both is to kill the process.
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                _write_workload_files(config, running, token_file)
                notifier.status(
                    f"serving on port {running.listener.port}; session {running.session.id}; "
                    f"profile {running.session.profile}"
                )
                notifier.ready()
                running.background.start_soon(watchdog_loop, notifier)
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        _log.info("received %s: shutting down", signal.Signals(signum).name)
                        break
                    await _reload(running, notifier)
        finally:
            # Also when a step above failed: the session was created and must not stay active.
            await _shutdown(running, notifier)
    return 0


def _write_workload_files(config: ServerConfig, running: Assembly, token_file: Path) -> None:
    """The token file, and the env file if asked for; an unwritable path is a one-line error."""
    try:
        write_secret_file(token_file, running.token)
    except OSError as exc:
        raise ConfigError(f"--token-file {token_file}: cannot write ({exc.strerror or exc})") from None
    if config.env_file:
        try:
            write_env_file(config.env_file, running.listener.url, token_file)
        except OSError as exc:
            raise ConfigError(f"--env-file {config.env_file}: cannot write ({exc.strerror or exc})") from None


async def _reload(running: Assembly, notifier: SystemdNotifier) -> None:
    """SIGHUP: re-read the policy now (a bad one keeps the old) and reopen the decision log."""
    notifier.reloading()
    # reload() itself, not request_reload(): it waits for a background refresh in progress and
    # then reads the source again, so READY=1 means the file as it was at the signal is applied.
    ok = False
    with anyio.move_on_after(30):
        ok = await running.watcher.reload()
    running.audit.reopen()
    _log.info("reload on SIGHUP: %s", "policy current" if ok else "kept the previous policy")
    notifier.ready()


# -- exec ---------------------------------------------------------------------------------------


async def _exec_server(config: ServerConfig, argv: list[str], notifier: SystemdNotifier) -> int:
    async with assemble(config, Mode.SERVER) as running:
        env = child.child_environment(
            os.environ,
            marker=running.session.id,
            region=running.region or config.region,
            credentials={
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": running.listener.url,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": running.token,
            },
        )
        try:
            code = await child.run_child(argv, env)
        finally:
            await _shutdown(running, notifier)
    return code


async def _exec_cli(config: ServerConfig, argv: list[str]) -> int:
    """Without --server: evaluate the policy once (mode cli), pass credentials as variables."""
    # No listener and no server session in cli mode: one decision, one set of credentials.
    cli_config = replace(config, lazy=True, no_session_tracking=True)
    async with assemble(cli_config, Mode.CLI, listen=False) as running:
        reply = await running.pipeline.issue()
        credentials = running.pipeline.last_credentials
    if reply.status != 200 or credentials is None:
        raise SentinelError(f"exec: credentials refused: {_reply_message(reply.body)}")
    env = child.child_environment(
        os.environ,
        marker=running.session.id,
        region=running.region or config.region,
        credentials={
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "AWS_SESSION_TOKEN": credentials.session_token,
            "AWS_CREDENTIAL_EXPIRATION": credentials.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    return await child.run_child(argv, env)


def _reply_message(body: bytes) -> str:
    """The `Message` of an error reply (`{"Message": "..."}`), or the body as text."""
    try:
        message = orjson.loads(body).get("Message")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return message if isinstance(message, str) else body.decode(errors="replace")
