"""The lifecycle (DESIGN.md §5): signals, systemd notifications, workload files, the exec child.

startup -> run -> shutdown, as a straight line. The parts are built and torn down by
`assembly.py`; no business logic lives here: the hot path is `pipeline.py`, session tracking
`sessions/tracker.py`, the HTTP layer `server/`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson

from sentinel import child, logs
from sentinel.assembly import Assembly, ProfileRun, assemble
from sentinel.config import ServerConfig
from sentinel.errors import ConfigError, SentinelError
from sentinel.files import (
    UnsafeFileError,
    ensure_env_file,
    ensure_secret_file,
    write_env_file,
    write_secret_file,
)
from sentinel.policy import Mode
from sentinel.signals import HANDLED, Request, ServeSignals
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
    """Exit 0 after SIGTERM/SIGINT, whether it came while serving or during startup."""
    # Handlers before anything slow (issue 10): the default action of all three is to kill the
    # process, which during startup left a created record active; systemd may also signal the
    # moment it hears READY=1.
    with anyio.open_signal_receiver(*HANDLED) as received:
        signals = ServeSignals(notifier)
        async with anyio.create_task_group() as handlers:
            await handlers.start(signals.run, received)
            try:
                await _serve_until_stopped(config, notifier, signals)
            finally:
                handlers.cancel_scope.cancel()
    return 0


async def _serve_until_stopped(
    config: ServerConfig, notifier: SystemdNotifier, signals: ServeSignals
) -> None:
    # A stop during startup cancels it: `assemble` closes what it built and, once the tracker
    # runs, shuts it down (a created record ends expired); the scope swallows the cancellation.
    with signals.interruptible() as startup:
        async with assemble(config, Mode.SERVER) as running:
            signals.detach(startup)  # serving: a stop ends the loop below, then the shutdown order
            try:
                _write_workload_files(running)
                # "session S; profile P" per profile, the default first (the unit's status line).
                sessions = "; ".join(
                    f"session {r.session.id}; profile {r.session.profile}" for r in running.profiles
                )
                notifier.status(f"serving on port {running.listener.port}; {sessions}")
                notifier.ready()
                running.background.start_soon(watchdog_loop, notifier)
                while await signals.wait_request() is Request.RELOAD:
                    await _reload(running, notifier, signals)
            finally:
                # Also when a step above failed: the session was created and must not stay active.
                signals.stop()
                await running.shutdown()


def _write_workload_files(running: Assembly) -> None:
    """Each profile's token file, and its env file if asked for; an unwritable path is a one-line
    error. Paths are absolute: the env file is read by other units, whose working directory is
    not ours."""
    for run, url in _profile_urls(running):
        token_file, env_file = run.profile.token_file, run.profile.env_file
        try:
            write_secret_file(token_file, run.token)
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot write ({exc.strerror or exc})") from None
        if env_file:
            try:
                write_env_file(env_file, url, token_file)
            except OSError as exc:
                raise ConfigError(f"--env-file {env_file}: cannot write ({exc.strerror or exc})") from None


def _profile_urls(running: Assembly) -> list[tuple[ProfileRun, str]]:
    """Each profile with the URI its workloads use (`/`, or `/profiles/NAME`, issue 14)."""
    return [(run, running.listener.url_for(run.profile.path)) for run in running.profiles]


async def _reload(running: Assembly, notifier: SystemdNotifier, signals: ServeSignals) -> None:
    """SIGHUP: re-read the policy now (a bad one keeps the old), put back deleted workload files,
    reopen the decision log. A stop cancels it (issue 11 item 3): shutdown never waits for it."""
    notifier.reloading()
    ok = False
    # reload() itself, not request_reload(): it waits for a background refresh in progress and
    # then reads the source again, so READY=1 means the file as it was at the signal is applied.
    with signals.interruptible(), anyio.move_on_after(30):
        ok = await running.watcher.reload()
    if signals.stopping:
        return  # STOPPING=1 is out; READY=1 now would tell systemd the opposite
    _restore_workload_files(running)
    running.audit.reopen()
    _log.info("reload on SIGHUP: %s", "policy current" if ok else "kept the previous policy")
    notifier.ready()


def _restore_workload_files(running: Assembly) -> None:
    """Rewrite every profile's token and env files if they are missing or altered (issue 11
    item 5). A refusal or a failed write is one error line: the server keeps serving, and
    workloads that already hold the token keep working."""
    files: list[tuple[str, Path, Callable[[], bool]]] = []
    for run, url in _profile_urls(running):
        token_file, env_file, token = run.profile.token_file, run.profile.env_file, run.token
        files.append(("--token-file", token_file, partial(ensure_secret_file, token_file, token)))
        if env_file:
            files.append(("--env-file", env_file, partial(ensure_env_file, env_file, url, token_file)))
    for option, path, ensure in files:
        try:
            if ensure():
                _log.warning("%s %s was missing or altered: rewritten", option, path)
        except UnsafeFileError as exc:
            _log.error("%s %s", option, exc)
        except OSError as exc:
            _log.error("%s %s: cannot write (%s)", option, path, exc.strerror or exc)


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
