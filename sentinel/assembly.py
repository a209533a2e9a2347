"""The one assembly of a running server (DESIGN.md §5): its parts built in one place, torn down in one.

Policy watcher, AWS context, credential cache, session store and tracker, decision log, pipeline
and listener are wired here and nowhere else; the daemon (`daemon.py`), the benchmarks
(`bench/target.py`, `bench/micro.py`) and the in-process tests (`tests/test_pipeline.py`) all
call `assemble()`. What they change is passed in as `Hooks`, so a benchmark cannot drift from
what `sentinel serve` runs. No business logic lives here: the hot path is `pipeline.py`, session
tracking `sessions/tracker.py`, the HTTP layer `server/`; the lifecycle (signals, systemd, the
child) stays in `daemon.py`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup

from sentinel.audit import DecisionLog, open_decision_log
from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.config import ServerConfig, default_server_instance_id, served_profiles
from sentinel.credentials import (
    AwsContext,
    CredentialCache,
    CredentialSource,
    StsRoleAssumer,
    effective_duration,
    open_aws,
    resolve_user,
    role_session_name,
    source_identity,
)
from sentinel.errors import ConfigError, CredentialError
from sentinel.metrics import Registry
from sentinel.pipeline import Identity, Pipeline
from sentinel.policy import FilePolicySource, Mode, PolicySource, PolicyWatcher, SsmPolicySource
from sentinel.profile_set import ProfileSet
from sentinel.profiles import ServedProfile
from sentinel.server.listener import Server, start_server
from sentinel.server.peer import open_user_gate
from sentinel.server.service import CredentialService, Endpoint
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession, new_session_id
from sentinel.sessions.null_tracker import NullTracker
from sentinel.sessions.statistics import ShutdownSummary
from sentinel.sessions.store import SessionStore
from sentinel.sessions.tracker import SessionTracker, Tracker

_log = logging.getLogger("sentinel")

# Shares of --shutdown-timeout: in-flight HTTP requests first, then the tracker's drain, final
# flush and expire; what is left closes the decision log. Each step has its own deadline (issue 4
# item 4); clients and the store are closed after them, each under its own shielded deadline.
HTTP_SHARE = 0.3
TRACKER_SHARE = 0.6
_CLOSE_DEADLINE = 2.0

_T = TypeVar("_T")


def _unchanged(part: _T) -> _T:
    return part


def _step(text: str) -> None:
    # Before each step that may wait on the network or a lock: the journal then says where a
    # slow or hung startup is (and the lifecycle tests wait for these lines).
    _log.info("startup: %s", text)


@dataclass(frozen=True, slots=True)
class GivenCredentials:
    """Serve credentials from `source` as `user`, instead of assuming a role through STS.

    For measuring the hot path in-process (`bench/micro.py`): no AWS client is opened."""

    source: CredentialSource
    user: str
    role_arn: str


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the benchmarks and tests change about an assembly; the daemon uses the defaults."""

    # The pipeline's clock: policy time windows and decision times (tests move it). Tracking and
    # the policy refresh keep the system clock: they schedule on it.
    clock: Clock = SYSTEM_CLOCK
    # Wraps the opened session store before anything uses it (count it, slow it, break it).
    wrap_store: Callable[[SessionStore], SessionStore] = _unchanged
    # Puts something in front of the pipeline on the listener (bench scenario g).
    wrap_service: Callable[[Pipeline], CredentialService] = _unchanged
    # False: the store is opened (for `wrap_service`) but no tracker counts into it.
    track: bool = True
    credentials: GivenCredentials | None = None


DEFAULT_HOOKS = Hooks()


@dataclass(eq=False, slots=True)
class ProfileRun:
    """One served profile of a started server: its own session, token, pipeline, cache, tracker."""

    profile: ServedProfile
    pipeline: Pipeline
    cache: CredentialCache
    tracker: Tracker
    session: ServerSession
    token: str
    region: str | None  # the profile's (or --region's): a child cannot read the config file


@dataclass(eq=False, slots=True)
class Assembly:
    """A started server's parts, and `shutdown()`, the one teardown order for all of them."""

    config: ServerConfig
    server: Server | None
    profiles: tuple[ProfileRun, ...]  # the default profile first (issue 14)
    slot: StoreSlot  # the session store once open, as wrapped by `Hooks.wrap_store`
    watcher: PolicyWatcher
    audit: DecisionLog
    registry: Registry
    background: TaskGroup  # tracker, watcher and decision log tasks (and the daemon's watchdog)
    _summary: ShutdownSummary | None = field(default=None, init=False)

    # The default profile's parts: all there is on a single-profile server.
    @property
    def pipeline(self) -> Pipeline:
        return self.profiles[0].pipeline

    @property
    def cache(self) -> CredentialCache:
        return self.profiles[0].cache

    @property
    def tracker(self) -> Tracker:
        return self.profiles[0].tracker

    @property
    def session(self) -> ServerSession:
        return self.profiles[0].session

    @property
    def token(self) -> str:
        return self.profiles[0].token

    @property
    def region(self) -> str | None:
        return self.profiles[0].region

    @property
    def listener(self) -> Server:
        if self.server is None:
            raise RuntimeError("started without a listener")
        return self.server

    @property
    def store(self) -> SessionStore | None:
        """The session store (as wrapped by `Hooks.wrap_store`), once it has been opened."""
        return self.slot.store

    async def shutdown(self) -> ShutdownSummary:
        """stop listening -> finish connections -> drain + flush + expire -> close the decision log.

        Shielded, each step under its share of `shutdown_timeout` (every profile's tracker at
        once); calling it again returns the first summary, the default profile's. Leaving
        `assemble()` calls it too, then closes clients and the store."""
        if self._summary is not None:
            return self._summary
        budget = self.config.shutdown_timeout
        summaries: list[ShutdownSummary | None] = [None] * len(self.profiles)

        async def stop(index: int) -> None:
            summaries[index] = await self.profiles[index].tracker.shutdown(budget * TRACKER_SHARE)

        with anyio.CancelScope(shield=True):
            if self.server is not None:
                await self.server.shutdown(grace=budget * HTTP_SHARE)
            async with anyio.create_task_group() as trackers:
                for index in range(len(self.profiles)):
                    trackers.start_soon(stop, index)
            await self.audit.aclose(timeout=max(budget * (1 - HTTP_SHARE - TRACKER_SHARE), 0.1))
        for run, summary in zip(self.profiles, summaries, strict=True):
            _log.info("stopped: session %s (%s)", run.session.id, summary)
        self._summary = summaries[0]
        assert self._summary is not None  # noqa: S101 - the task group ran every stop()
        return self._summary


@asynccontextmanager
async def assemble(
    config: ServerConfig, mode: Mode, *, listen: bool = True, hooks: Hooks = DEFAULT_HOOKS
) -> AsyncIterator[Assembly]:
    """Startup (DESIGN.md §5) up to a bound, ready listener; leaving the block tears it all down.

    Each slow step is logged (`startup: ...`) before it starts. Startup may be cancelled at any
    await (SIGTERM, issue 10): what was built is closed, and once the tracker runs `shutdown()`
    runs too, so a record created meanwhile ends expired.

    Several profiles (issue 14) share the listener, the policy, the decision log and the session
    store; each has its own AWS context, credential cache, session, tracker, pipeline and token.

    The background tasks live in a task group inside the exit stack: they are cancelled after
    `shutdown()`, and only then are clients and the store closed. A task group around this block
    instead, cancelled from inside it, made every checkpoint of the closing raise Cancelled, which
    cut it short and replaced any exception in flight."""
    served = served_profiles(config)
    several = len(served) > 1
    shared = Registry()
    async with AsyncExitStack() as stack:
        # First: a bad --allow-user fails the start before any AWS call (exit 78).
        users = stack.enter_context(open_user_gate(config.allow_user)) if listen else None
        bases: list[AwsContext | GivenCredentials] = []
        if config.policy_parameter:
            # The AWS context first (local: config files, base credentials): SSM is read with the
            # server's profile and region, like STS and DynamoDB (issue 11 item 4).
            bases.append(await _open_base(served[0], hooks))
            _step(f"loading the policy from ssm:{config.policy_parameter}")
            watcher = await _open_policy(config, stack, bases[0])
        else:
            # A policy file is read before AWS is touched: a typo or a missing file fails fast.
            watcher = await _open_policy(config, stack, None)
        for profile in served[len(bases) :]:
            bases.append(await _open_base(profile, hooks))
        audit = open_decision_log(config.decision_log, registry=shared)
        # The tracker opens the store itself, in the background when it cannot at once (issue 10);
        # with several profiles their trackers share one store, closed after all of them.
        slot = StoreSlot()
        if several:
            stack.push_async_callback(slot.aclose)
        runs: list[ProfileRun] = []
        registries: list[Registry] = []
        # One store for all: opened with the default profile's base credentials.
        store_upstream: _Upstream | None = None
        for profile, base in zip(served, bases, strict=True):
            registry = Registry() if several else shared
            _step(f"asking STS who the base credentials of {_named(profile)} belong to")
            upstream = await _open_upstream(profile, stack, base)
            store_upstream = store_upstream or upstream
            runs.append(
                await _open_profile(
                    config,
                    mode,
                    profile,
                    upstream,
                    stack,
                    hooks,
                    slot,
                    registry,
                    audit,
                    watcher,
                    store_upstream=store_upstream,
                    owns_store=not several,
                )
            )
            registries.append(registry)
        if not config.lazy:
            _step("fetching credentials from STS")
            await _prefetch(runs)
        server = None
        if listen:
            if several:
                front: CredentialService = ProfileSet(
                    [run.pipeline for run in runs], shared=shared, registries=registries
                )
                endpoints = [
                    Endpoint(path, hooks.wrap_service(run.pipeline), run.token)
                    for run in runs
                    for path in run.profile.paths
                ]
            else:
                front, endpoints = hooks.wrap_service(runs[0].pipeline), []
            server = await start_server(
                front,
                token=runs[0].token,
                host=config.host,
                port=config.port,
                metrics=shared,
                users=users,
                endpoints=endpoints,
            )
        async with anyio.create_task_group() as background:
            assembly = Assembly(
                config=config,
                server=server,
                profiles=tuple(runs),
                slot=slot,
                watcher=watcher,
                audit=audit,
                registry=shared,
                background=background,
            )
            try:
                for run in runs:
                    await background.start(run.tracker.run)
                await background.start(watcher.run)
                await background.start(audit.run)
                _step("creating the session record" + ("s" if several else ""))
                # Best-effort and bounded: the tracker keeps retrying in the background if this
                # fails. Inside the `try`: a startup cancelled here still expires the record.
                with anyio.move_on_after(max(config.shutdown_timeout, 1)):
                    async with anyio.create_task_group() as creating:
                        for run in runs:
                            creating.start_soon(run.tracker.start_session)
                for run in runs:
                    identity = run.pipeline.identity
                    _log.info(
                        "session %s for %s (profile %s, role %s) on %s",
                        identity.session_id,
                        identity.user,
                        identity.profile,
                        identity.role_arn,
                        server.url_for(run.profile.path) if server else "no listener",
                    )
                yield assembly
            finally:
                try:
                    await assembly.shutdown()
                finally:
                    background.cancel_scope.cancel()


def _named(profile: ServedProfile) -> str:
    return f"profile {profile.name}" if profile.name else "the default profile"


async def _open_base(profile: ServedProfile, hooks: Hooks) -> AwsContext | GivenCredentials:
    """The profile's base credentials (local: config files), or the benchmark's given ones."""
    if hooks.credentials is not None:
        return hooks.credentials
    return await open_aws(profile.name, profile.region, profile.role_arn)


async def _open_profile(
    config: ServerConfig,
    mode: Mode,
    profile: ServedProfile,
    upstream: _Upstream,
    stack: AsyncExitStack,
    hooks: Hooks,
    slot: StoreSlot,
    registry: Registry,
    audit: DecisionLog,
    watcher: PolicyWatcher,
    *,
    store_upstream: _Upstream,
    owns_store: bool,
) -> ProfileRun:
    """One profile's session, credential cache, tracker and pipeline."""
    session_id = new_session_id()
    identity = Identity(
        user=upstream.user,
        profile=upstream.profile,
        role_arn=upstream.role_arn,
        session_id=session_id,
        source_identity=source_identity(upstream.user, session_id),
        mode=mode,
    )
    cache = await stack.enter_async_context(
        CredentialCache(upstream.source(identity.source_identity), registry=registry)
    )
    template = ServerSession.start(
        session_id=session_id,
        user=identity.user,
        profile=identity.profile,
        server_instance_id=profile.server_instance_id or default_server_instance_id(identity.profile),
        source_identity=identity.source_identity,
        # What `server-revoke` needs to deny these credentials on AWS, and for how long: no
        # rule can raise a served lifetime above the server's own ceiling (issue 13).
        role_arn=identity.role_arn,
        credential_lifetime=int(effective_duration(profile.server_duration, None).total_seconds()),
    )
    tracker = await _tracker(
        config, stack, hooks, store_upstream, slot, template, registry, owns_store=owns_store
    )
    pipeline = Pipeline(
        identity=identity,
        policy=watcher,
        cache=cache,
        tracker=tracker,
        audit=audit,
        registry=registry,
        clock=hooks.clock,
        server_duration=profile.server_duration,
    )
    return ProfileRun(
        profile=profile,
        pipeline=pipeline,
        cache=cache,
        tracker=tracker,
        session=template,
        token=secrets.token_urlsafe(32),
        region=upstream.region,
    )


# -- the parts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Upstream:
    """Where credentials come from, and who asks for them."""

    user: str
    profile: str
    role_arn: str
    region: str | None
    source: Callable[[str], CredentialSource]  # source identity -> source
    aws: AwsContext | None  # the base context, for DynamoDB (None with given credentials)


async def _open_policy(
    config: ServerConfig, stack: AsyncExitStack, base: AwsContext | GivenCredentials | None
) -> PolicyWatcher:
    source: PolicySource
    if config.policy_parameter:
        # The server's base session and region; with given credentials (the benchmarks) there is
        # none, and the SDK's default chain and --region apply.
        if isinstance(base, AwsContext):
            ssm = SsmPolicySource(
                config.policy_parameter, session=base.aio_session(), region=base.plan.region
            )
        else:
            ssm = SsmPolicySource(config.policy_parameter, region=config.region)
        source = await stack.enter_async_context(ssm)
    elif config.policy_file:
        source = FilePolicySource(config.policy_file)
    else:
        raise ConfigError("no policy: give --policy-file PATH or --policy-parameter NAME")
    watcher = PolicyWatcher(source, ttl=config.policy_refresh)
    await watcher.load_initial()
    return watcher


async def _open_upstream(
    served: ServedProfile, stack: AsyncExitStack, base: AwsContext | GivenCredentials
) -> _Upstream:
    if isinstance(base, GivenCredentials):
        source = base.source
        profile = served.name or "default"
        return _Upstream(base.user, profile, base.role_arn, served.region, lambda _: source, None)
    aws = base
    sts = await stack.enter_async_context(aws.sts_client())
    caller = await resolve_user(sts)

    def assume(identity: str) -> CredentialSource:
        return StsRoleAssumer(
            sts,
            role_session_name=role_session_name(caller.user),
            source_identity=identity,
            external_id=aws.plan.external_id,
        )

    profile = served.name or aws.plan.profile or "default"
    return _Upstream(caller.user, profile, aws.role_arn, aws.plan.region, assume, aws)


class StoreSlot:
    """Where the session store lands once it is open: the tracker opens it in the background.

    With several profiles their trackers open it through `open()`, which opens it once for all;
    the assembly then closes it (`aclose()`) after every tracker has stopped."""

    __slots__ = ("_lock", "store")

    def __init__(self) -> None:
        self.store: SessionStore | None = None
        self._lock = anyio.Lock()

    async def open(self, opener: Callable[[], Awaitable[SessionStore]]) -> SessionStore:
        async with self._lock:
            if self.store is None:
                await opener()  # sets `store` (see `_tracker`)
            assert self.store is not None  # noqa: S101
            return self.store

    async def aclose(self) -> None:
        if self.store is not None:
            await _shielded(self.store.aclose)


async def _tracker(
    config: ServerConfig,
    stack: AsyncExitStack,
    hooks: Hooks,
    upstream: _Upstream,
    slot: StoreSlot,
    template: ServerSession,
    registry: Registry,
    *,
    owns_store: bool,
) -> Tracker:
    """The session tracker, which opens the store itself and retries while it cannot (issue 10):
    a store that is locked, corrupt or unreachable at startup degrades tracking, never disables
    it for the life of the process."""
    if config.no_session_tracking:
        return NullTracker()

    async def open_wrapped() -> SessionStore:
        store = hooks.wrap_store(
            await open_store(
                session_table=config.session_table,
                session_db=config.session_db,
                region=upstream.region,
                aws=upstream.aws,
            )
        )
        slot.store = store
        return store

    if not hooks.track:
        # Bench scenario g (the inline-touch baseline) wants the store and no tracker.
        store = await open_wrapped()
        stack.push_async_callback(_shielded, store.aclose)
        return NullTracker()

    async def open_shared() -> SessionStore:
        return await slot.open(open_wrapped)

    return SessionTracker(
        open_wrapped if owns_store else open_shared,
        template,
        owns_store=owns_store,
        registry=registry,
        queue_size=config.queue_size,
        flush_interval=config.flush_interval,
        revocation_poll=config.revocation_poll,
        staleness_limit=config.revocation_staleness_limit,
    )


async def _shielded(close: Callable[[], Awaitable[None]]) -> None:
    with anyio.move_on_after(_CLOSE_DEADLINE, shield=True):
        await close()


async def _prefetch(runs: list[ProfileRun]) -> None:
    """Fetch credentials once at startup, for every profile at once, so a broken role fails the
    start (naming its profile when there are several), not the first request."""
    problems: list[str] = []
    denied: list[str] = []

    async def fetch(run: ProfileRun) -> None:
        try:
            if not await run.pipeline.prefetch():
                denied.append(run.pipeline.identity.profile)
        except CredentialError as exc:
            problems.append(f"profile {run.pipeline.identity.profile}: {exc}" if len(runs) > 1 else str(exc))

    async with anyio.create_task_group() as fetching:
        for run in runs:
            fetching.start_soon(fetch, run)
    if problems:
        raise CredentialError(f"startup: {'; '.join(problems)} (use --lazy to start anyway)")
    for profile in denied:
        suffix = f" of profile {profile}" if len(runs) > 1 else ""
        _log.warning(
            "the policy denies this session%s right now; serving anyway (it is evaluated per request)", suffix
        )
