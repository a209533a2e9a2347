"""The composition root (DESIGN.md §5): opens resources, wires the parts, runs the lifecycle.

startup -> run -> shutdown, as a straight line. No business logic lives here: the hot path is
`pipeline.py`, session tracking `sessions/tracker.py`, the HTTP layer `server/`.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup

from sentinel import child, logs
from sentinel.audit import DecisionLog, open_decision_log
from sentinel.clock import SYSTEM_CLOCK
from sentinel.config import ServerConfig, default_token_file
from sentinel.credentials import (
    AwsContext,
    CredentialCache,
    StsRoleAssumer,
    open_aws,
    resolve_user,
    role_session_name,
    source_identity,
)
from sentinel.errors import ConfigError, CredentialError, SentinelError
from sentinel.files import write_env_file, write_secret_file
from sentinel.metrics import Registry
from sentinel.pipeline import Identity, Pipeline
from sentinel.policy import FilePolicySource, Mode, PolicySource, PolicyWatcher, SsmPolicySource
from sentinel.server.listener import Server, start_server
from sentinel.sessions.errors import SessionStoreError
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession, new_session_id
from sentinel.sessions.tracker import NullTracker, SessionTracker, Tracker
from sentinel.systemd import SystemdNotifier, watchdog_loop

_log = logging.getLogger("sentinel")

# Shares of --shutdown-timeout: in-flight HTTP requests first, then the tracker's drain, final
# flush and expire; what is left closes clients. Each step has its own deadline (issue 4 item 4).
_HTTP_SHARE = 0.3
_TRACKER_SHARE = 0.6


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


# -- startup pieces -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Running:
    """A started server and the parts the lifecycle needs to stop it."""

    server: Server | None
    pipeline: Pipeline
    tracker: Tracker
    watcher: PolicyWatcher
    audit: DecisionLog
    session: ServerSession
    token: str
    region: str | None  # the profile's (or --region's): the child cannot read the config file
    background: TaskGroup  # the tracker, watcher, decision log (and watchdog) tasks

    @property
    def listener(self) -> Server:
        if self.server is None:
            raise RuntimeError("started without a listener")
        return self.server


async def _open_policy(config: ServerConfig, stack: AsyncExitStack) -> PolicyWatcher:
    source: PolicySource
    if config.policy_parameter:
        source = await stack.enter_async_context(
            SsmPolicySource(config.policy_parameter, region=config.region)
        )
    elif config.policy_file:
        source = FilePolicySource(config.policy_file)
    else:
        raise ConfigError("no policy: give --policy-file PATH or --policy-parameter NAME")
    watcher = PolicyWatcher(source, ttl=config.policy_refresh)
    await watcher.load_initial()
    return watcher


async def _open_tracker(
    config: ServerConfig,
    stack: AsyncExitStack,
    template: ServerSession,
    registry: Registry,
    aws: AwsContext,
) -> Tracker:
    if config.no_session_tracking:
        return NullTracker()
    try:
        store = await open_store(
            session_table=config.session_table,
            session_db=config.session_db,
            region=aws.plan.region,
            aws=aws,
        )
    except SessionStoreError as exc:
        # Best-effort tracking: a store we cannot even open must not stop credential serving.
        _log.warning("session tracking disabled: %s", exc)
        return NullTracker()
    stack.push_async_callback(_shielded, store.aclose)
    return SessionTracker(
        store,
        template,
        registry=registry,
        queue_size=config.queue_size,
        flush_interval=config.flush_interval,
        revocation_poll=config.revocation_poll,
    )


async def _shielded(close: object) -> None:
    with anyio.move_on_after(2, shield=True):
        await close()  # type: ignore[operator]


@asynccontextmanager
async def _started(config: ServerConfig, mode: Mode, *, listen: bool = True) -> AsyncIterator[Running]:
    """Startup (DESIGN.md §5) up to a bound, ready listener; the exit stack closes it all.

    The background tasks live in a task group inside the exit stack: they are cancelled when the
    caller's block ends (after its `_shutdown`), and only then are clients and the store closed.
    A task group around this block instead, cancelled from inside it, made every checkpoint of
    the closing raise Cancelled, which cut it short and replaced any exception in flight."""
    registry = Registry()
    async with AsyncExitStack() as stack:
        watcher = await _open_policy(config, stack)
        aws = await open_aws(config.profile, config.region, config.role_arn)
        sts = await stack.enter_async_context(aws.sts_client())
        caller = await resolve_user(sts)
        profile = config.profile or aws.plan.profile or "default"
        session_id = new_session_id()
        identity = Identity(
            user=caller.user,
            profile=profile,
            role_arn=aws.role_arn,
            session_id=session_id,
            source_identity=source_identity(caller.user, session_id),
            mode=mode,
        )
        assumer = StsRoleAssumer(
            sts,
            role_session_name=role_session_name(caller.user),
            source_identity=identity.source_identity,
            external_id=aws.plan.external_id,
        )
        cache = await stack.enter_async_context(CredentialCache(assumer, registry=registry))
        template = ServerSession.start(
            session_id=session_id,
            user=caller.user,
            profile=profile,
            server_instance_id=config.server_instance_id or f"{socket.gethostname()}-{secrets.token_hex(4)}",
            source_identity=identity.source_identity,
        )
        tracker = await _open_tracker(config, stack, template, registry, aws)
        audit = open_decision_log(config.decision_log, registry=registry)
        pipeline = Pipeline(
            identity=identity,
            policy=watcher,
            cache=cache,
            tracker=tracker,
            audit=audit,
            registry=registry,
            clock=SYSTEM_CLOCK,
            server_duration=config.server_duration,
        )
        if not config.lazy:
            await _prefetch(pipeline)
        token = secrets.token_urlsafe(32)
        server = None
        if listen:
            server = await start_server(
                pipeline, token=token, host=config.host, port=config.port, metrics=registry
            )
        async with anyio.create_task_group() as background:
            await background.start(tracker.run)
            await background.start(watcher.run)
            await background.start(audit.run)
            # Best-effort and bounded: the tracker keeps retrying in the background if this fails.
            with anyio.move_on_after(max(config.shutdown_timeout, 1)):
                await tracker.start_session()
            _log.info(
                "session %s for %s (profile %s, role %s) on %s",
                session_id,
                caller.user,
                profile,
                aws.role_arn,
                server.url if server else "no listener",
            )
            try:
                yield Running(
                    server, pipeline, tracker, watcher, audit, template, token, aws.plan.region, background
                )
            finally:
                background.cancel_scope.cancel()


async def _prefetch(pipeline: Pipeline) -> None:
    """Fetch credentials once at startup so a broken role fails the start, not the first request."""
    try:
        allowed = await pipeline.prefetch()
    except CredentialError as exc:
        raise CredentialError(f"startup: {exc} (use --lazy to start anyway)") from None
    if not allowed:
        _log.warning("the policy denies this session right now; serving anyway (it is evaluated per request)")


async def _shutdown(config: ServerConfig, running: Running, notifier: SystemdNotifier) -> None:
    """stop accepting -> finish in-flight -> drain + flush + expire -> close (DESIGN.md §4)."""
    notifier.stopping()
    budget = config.shutdown_timeout
    with anyio.CancelScope(shield=True):
        if running.server is not None:
            await running.server.shutdown(grace=budget * _HTTP_SHARE)
        summary = await running.tracker.shutdown(budget * _TRACKER_SHARE)
        await running.audit.aclose(timeout=max(budget * (1 - _HTTP_SHARE - _TRACKER_SHARE), 0.1))
    _log.info("stopped: session %s (%s)", running.session.id, summary)


# -- serve --------------------------------------------------------------------------------------


async def _serve(config: ServerConfig, notifier: SystemdNotifier) -> int:
    # Absolute: the env file is read by other units, whose working directory is not ours.
    token_file = (config.token_file or default_token_file()).absolute()
    async with _started(config, Mode.SERVER) as running:
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
            await _shutdown(config, running, notifier)
    return 0


def _write_workload_files(config: ServerConfig, running: Running, token_file: Path) -> None:
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


async def _reload(running: Running, notifier: SystemdNotifier) -> None:
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
    async with _started(config, Mode.SERVER) as running:
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
            await _shutdown(config, running, notifier)
    return code


async def _exec_cli(config: ServerConfig, argv: list[str]) -> int:
    """Without --server: evaluate the policy once (mode cli), pass credentials as variables."""
    # No listener and no server session in cli mode: one decision, one set of credentials.
    cli_config = replace(config, lazy=True, no_session_tracking=True)
    async with _started(cli_config, Mode.CLI, listen=False) as running:
        reply = await running.pipeline.issue()
        credentials = running.pipeline.last_credentials
        await _shutdown(config, running, SystemdNotifier())
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
