"""The listener: bind loopback, run the timeout sweep, and shut down in order.

Shutdown follows the house lifecycle (uvicorn's phases, driven by events instead of polling):
stop accepting -> idle connections close at once, busy ones after their current response ->
at the deadline, abort whatever is left and cancel its awaited work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType

from sentinel.metrics import Registry
from sentinel.server.connection import HttpConnection
from sentinel.server.guard import GuardedService
from sentinel.server.limits import ServerConfigError, ServerLimits, loopback_bind_address, validate_token
from sentinel.server.peer import UserGate
from sentinel.server.service import CredentialService, Endpoint
from sentinel.server.state import ServerState, ServerStatistics, Target

_log = logging.getLogger("sentinel.server")

# After an abort, connection_lost callbacks are already scheduled; this only guards against a
# transport that never reports back.
_ABORT_GRACE = 1.0
# Used by `async with server:`; the daemon passes `--shutdown-timeout` to `shutdown()` instead.
DEFAULT_SHUTDOWN_GRACE = 10.0


class Server:
    """A running endpoint. Create it with `start_server`; stop it with `shutdown`."""

    def __init__(self, listener: asyncio.Server, state: ServerState, host: str, port: int) -> None:
        self._listener = listener
        self._state = state
        self.host = host
        self.port = port
        self._sweep: asyncio.TimerHandle | None = None
        self._schedule_sweep()

    @property
    def url(self) -> str:
        """The credentials URI, as given to SDKs in `AWS_CONTAINER_CREDENTIALS_FULL_URI`."""
        return self.url_for("/")

    def url_for(self, path: str) -> str:
        """The URI of `path` on this listener (a profile's credential path, issue 14)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters (also publishes pending request counts to the registry)."""
        return self._state.statistics()

    def close_listener(self) -> None:
        """Stop accepting connections; open ones are untouched. Idempotent."""
        if self._state.accepting:
            self._state.accepting = False
            self._listener.close()

    async def wait_connections_closed(self) -> None:
        """Wait until no connection is open (returns at once if none is)."""
        await self._state.wait_no_connections()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight responses finish for up to `grace` s, then abort the rest.

        `grace` is not a timeout on this call (which always completes the abort): it is how long
        busy connections get before they are dropped.

        Idle keep-alive connections (and ones still sending a request) close immediately; one
        whose response is being produced closes after that response (and any already-read
        requests pipelined behind it) is written.
        """
        state = self._state
        self.close_listener()
        for connection in list(state.connections):
            connection.close_when_done()
        try:
            async with asyncio.timeout(grace):
                await state.wait_no_connections()
        except TimeoutError:
            stuck = list(state.connections)
            tasks = [c.task for c in stuck if c.task is not None]
            state.logger.info("shutdown deadline passed: aborting %d connection(s)", len(stuck))
            for connection in stuck:
                connection.abort()
            try:
                async with asyncio.timeout(_ABORT_GRACE):
                    await state.wait_no_connections()
                    if tasks:
                        await asyncio.wait(tasks)
            except TimeoutError:
                state.logger.warning("connections did not close after abort")
        finally:
            self._stop_sweep()
            state.flush_counts()
        await self._listener.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.shutdown(DEFAULT_SHUTDOWN_GRACE)

    # -- timeout sweep ----------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        self._sweep = self._state.loop.call_later(self._state.limits.sweep_interval, self._tick)

    def _stop_sweep(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _tick(self) -> None:
        """Time out connections past their deadline; one timer for all connections.

        A timer per request (call_later + cancel) would cost an allocation on every request; a
        sweep costs nothing per request and a loop over open connections once per interval.
        """
        state = self._state
        now = state.loop.time()
        for connection in list(state.connections):
            deadline = connection.deadline
            if 0.0 < deadline < now:
                connection.time_out()
        state.refresh_deadlines()
        state.flush_counts()
        self._schedule_sweep()


async def start_server(
    service: CredentialService,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
    metrics: Registry | None = None,
    logger: logging.Logger | None = None,
    users: UserGate | None = None,
    endpoints: Sequence[Endpoint] = (),
) -> Server:
    """Bind a loopback listener serving `service` and return it running.

    `service` answers `/healthz`, `/metrics` and, with `token`, `GET /`; each of `endpoints` adds
    (or replaces) a credential path with its own service and token (several profiles, issue 14).

    `host` must be a loopback literal or "localhost" (which binds 127.0.0.1); anything else, an
    unusable token or bad limits raise `ServerConfigError` before a socket exists, as does a port
    that cannot be bound. `port=0` picks a free port (see `Server.port`). Works on uvloop and on
    the default event loop. `users` (`--allow-user`) refuses clients of other local users.
    """
    address = loopback_bind_address(host)
    guarded = GuardedService(service, logger or _log)
    targets = {b"/": Target(guarded, validate_token(token))}
    for endpoint in endpoints:
        targets[endpoint.path.encode()] = Target(
            GuardedService(endpoint.service, logger or _log), validate_token(endpoint.token)
        )
    limits = limits if limits is not None else ServerLimits()
    loop = asyncio.get_running_loop()
    logger = logger or _log
    state = ServerState(guarded, targets, limits, loop, logger, metrics, users)
    try:
        listener = await loop.create_server(
            lambda: HttpConnection(state),
            host=address,
            port=port,
            reuse_address=True,
            # A whole listener's worth of connection attempts (the kernel caps it at somaxconn):
            # with asyncio's default of 100, a burst overflows the queue, the kernel drops the
            # handshakes and they arrive a second later, out of order (issue 11).
            backlog=max(100, limits.max_connections),
        )
    except OSError as exc:
        raise ServerConfigError(f"cannot listen on {address} port {port}: {exc.strerror}") from exc
    bound_port: int = listener.sockets[0].getsockname()[1]
    state.logger.info("listening on %s port %d", address, bound_port)
    return Server(listener, state, address, bound_port)
