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
from anyio.abc import TaskGroup

from sentinel import child, logs
from sentinel.audit import DecisionLog, open_decision_log
from sentinel.clock import SYSTEM_CLOCK
from sentinel.config import ServerConfig, default_token_file
from sentinel.credentials import (
    CredentialCache,
    StsRoleAssumer,
    open_aws,
    resolve_user,
    role_session_name,
    source_identity,
)
from sentinel.errors import ConfigError, CredentialError, SentinelError
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
    config: ServerConfig, stack: AsyncExitStack, template: ServerSession, registry: Registry
) -> Tracker:
    if config.no_session_tracking:
        return NullTracker()
    try:
        store = await open_store(
            session_table=config.session_table, session_db=config.session_db, region=config.region
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
async def _started(
    config: ServerConfig, mode: Mode, tg: TaskGroup, *, listen: bool = True
) -> AsyncIterator[Running]:
    """Startup (DESIGN.md §5) up to a bound, ready listener; the exit stack closes it all."""
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
        tracker = await _open_tracker(config, stack, template, registry)
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
        await tg.start(tracker.run)
        await tg.start(watcher.run)
        await tg.start(audit.run)
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
        yield Running(server, pipeline, tracker, watcher, audit, template, token)


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
    token_file = config.token_file or default_token_file()
    async with anyio.create_task_group() as tg, _started(config, Mode.SERVER, tg) as running:
        write_secret_file(token_file, running.token)
        if config.env_file:
            write_env_file(config.env_file, running.listener.url, token_file)
        notifier.status(
            f"serving on port {running.listener.port}; session {running.session.id}; "
            f"profile {running.session.profile}"
        )
        notifier.ready()
        tg.start_soon(watchdog_loop, notifier)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    _log.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                await _reload(running, notifier)
        await _shutdown(config, running, notifier)
        tg.cancel_scope.cancel()
    return 0


async def _reload(running: Running, notifier: SystemdNotifier) -> None:
    """SIGHUP: re-read the policy now (a bad one keeps the old) and reopen the decision log."""
    notifier.reloading()
    running.watcher.request_reload()
    with anyio.move_on_after(30):
        await running.watcher.wait_reloaded()
    running.audit.reopen()
    notifier.ready()


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` with mode 0600 and no trailing newline, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def write_env_file(path: Path, url: str, token_file: Path) -> None:
    """An `EnvironmentFile=` for workload units: where Sentinel is and where its token is."""
    text = f"AWS_CONTAINER_CREDENTIALS_FULL_URI={url}\nAWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={token_file}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.chmod(temporary, 0o644)  # no secret in it: the token stays in the 0600 token file
    os.replace(temporary, path)


# -- exec ---------------------------------------------------------------------------------------


async def _exec_server(config: ServerConfig, argv: list[str], notifier: SystemdNotifier) -> int:
    async with anyio.create_task_group() as tg, _started(config, Mode.SERVER, tg) as running:
        env = child.child_environment(
            os.environ,
            marker=running.session.id,
            region=config.region or os.environ.get("AWS_REGION"),
            credentials={
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": running.listener.url,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": running.token,
            },
        )
        try:
            code = await child.run_child(argv, env)
        finally:
            await _shutdown(config, running, notifier)
            tg.cancel_scope.cancel()
    return code


async def _exec_cli(config: ServerConfig, argv: list[str]) -> int:
    """Without --server: evaluate the policy once (mode cli), pass credentials as variables."""
    async with anyio.create_task_group() as tg:
        # No listener and no server session in cli mode: one decision, one set of credentials.
        cli_config = replace(config, lazy=True, no_session_tracking=True)
        async with _started(cli_config, Mode.CLI, tg, listen=False) as running:
            reply = await running.pipeline.issue()
            credentials = running.pipeline.last_credentials
            await _shutdown(config, running, SystemdNotifier())
            tg.cancel_scope.cancel()
    if reply.status != 200 or credentials is None:
        raise SentinelError(f"exec: credentials refused: {reply.body.decode(errors='replace')}")
    env = child.child_environment(
        os.environ,
        marker=running.session.id,
        region=config.region or os.environ.get("AWS_REGION"),
        credentials={
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "AWS_SESSION_TOKEN": credentials.session_token,
            "AWS_CREDENTIAL_EXPIRATION": credentials.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    return await child.run_child(argv, env)
