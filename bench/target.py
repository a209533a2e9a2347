"""The server under test: Sentinel's real parts, wired as `sentinel/daemon.py` wires them, with the
scenario switches of issue 6 (run as `python -m bench.target ...`, pinned by the harness).

It runs in-process rather than as `sentinel serve` so the store can be wrapped (counted at the
store, optionally slowed) and the baseline service put in front. Control is line-based: it prints
one JSON `ready` line on stdout, then answers `stats` with one JSON line, and `quit` (or EOF) with
a graceful shutdown followed by a final `stats` line. CPU and memory are read by the harness from
/proc, the same way as for nginx.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import orjson
from anyio.abc import TaskGroup

from bench.baseline import InlineTouchService
from bench.stores import MeteredStore
from sentinel import logs
from sentinel.audit import DecisionLog, open_decision_log
from sentinel.clock import SYSTEM_CLOCK
from sentinel.credentials import (
    CredentialCache,
    StsRoleAssumer,
    open_aws,
    resolve_user,
    role_session_name,
    source_identity,
)
from sentinel.metrics import Registry
from sentinel.pipeline import Identity, Pipeline
from sentinel.policy import FilePolicySource, Mode, PolicyWatcher
from sentinel.server import Server, start_server
from sentinel.server.service import CredentialService
from sentinel.sessions.factory import open_store
from sentinel.sessions.model import ServerSession, new_session_id
from sentinel.sessions.tracker import NullTracker, SessionTracker, Tracker

_SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Parts:
    server: Server
    pipeline: Pipeline
    tracker: Tracker
    audit: DecisionLog
    cache: CredentialCache
    store: MeteredStore | None
    token: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.target", description=__doc__)
    parser.add_argument("--policy-file", type=Path, required=True)
    parser.add_argument("--role-arn", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--store", choices=("none", "sqlite", "dynamodb"), default="none")
    parser.add_argument("--session-db", type=Path, help="SQLite file (--store sqlite)")
    parser.add_argument("--session-table", help="DynamoDB table (--store dynamodb)")
    parser.add_argument("--store-delay", type=float, default=0.0, help="seconds added to every store call")
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--decision-log", help="decision log file")
    parser.add_argument(
        "--inline-touch",
        action="store_true",
        help="scenario g: each request awaits store.touch + store.get (needs --store)",
    )
    options = parser.parse_args(argv)
    if options.inline_touch and options.store == "none":
        parser.error("--inline-touch needs a store")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # Warnings only: the store-down scenarios log (rate-limited) warnings, which go to the log file
    # the harness keeps for each target.
    logs.configure("text", logging.WARNING)
    anyio.run(_serve, options, backend_options={"use_uvloop": True})
    return 0


async def _serve(options: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg, AsyncExitStack() as stack:
        parts = await _start(options, stack, tg)
        _emit({"event": "ready", "pid": os.getpid(), "port": parts.server.port, "token": parts.token})
        while (await anyio.to_thread.run_sync(sys.stdin.readline)).strip() == "stats":
            _emit(_stats(parts))
        # Shutdown in the daemon's order (DESIGN.md §5): HTTP, then tracking, then the log.
        with anyio.CancelScope(shield=True):
            await parts.server.shutdown(grace=_SHUTDOWN_TIMEOUT * 0.3)
            summary = await parts.tracker.shutdown(_SHUTDOWN_TIMEOUT * 0.6)
            await parts.audit.aclose(timeout=_SHUTDOWN_TIMEOUT * 0.1)
        _emit({**_stats(parts), "event": "stopped", "shutdown": summary})
        tg.cancel_scope.cancel()


async def _start(options: argparse.Namespace, stack: AsyncExitStack, tg: TaskGroup) -> Parts:
    """`daemon._started`, minus config parsing and systemd, plus the scenario switches."""
    registry = Registry()
    watcher = PolicyWatcher(FilePolicySource(options.policy_file))
    await watcher.load_initial()
    aws = await open_aws(None, options.region, options.role_arn)
    sts = await stack.enter_async_context(aws.sts_client())
    caller = await resolve_user(sts)
    profile = aws.plan.profile or "default"
    session_id = new_session_id()
    identity = Identity(
        user=caller.user,
        profile=profile,
        role_arn=aws.role_arn,
        session_id=session_id,
        source_identity=source_identity(caller.user, session_id),
        mode=Mode.SERVER,
    )
    assumer = StsRoleAssumer(
        sts, role_session_name=role_session_name(caller.user), source_identity=identity.source_identity
    )
    cache = await stack.enter_async_context(CredentialCache(assumer, registry=registry))
    template = ServerSession.start(
        session_id=session_id,
        user=caller.user,
        profile=profile,
        server_instance_id=f"bench-{secrets.token_hex(4)}",
        source_identity=identity.source_identity,
    )
    store = await _open_store(options, stack)
    tracker: Tracker = NullTracker()
    if store is not None and not options.inline_touch:
        tracker = SessionTracker(
            store,
            template,
            registry=registry,
            queue_size=options.queue_size,
            flush_interval=options.flush_interval,
        )
    audit = open_decision_log(options.decision_log, registry=registry)
    pipeline = Pipeline(
        identity=identity,
        policy=watcher,
        cache=cache,
        tracker=tracker,
        audit=audit,
        registry=registry,
        clock=SYSTEM_CLOCK,
        server_duration=timedelta(minutes=15),
    )
    await pipeline.prefetch()
    service: CredentialService = pipeline
    if options.inline_touch and store is not None:
        await store.create(template)  # the old design created its record up front, synchronously
        service = InlineTouchService(pipeline, store, session_id)
    token = secrets.token_urlsafe(32)
    server = await start_server(service, token=token, metrics=registry)
    await tg.start(tracker.run)
    await tg.start(watcher.run)
    await tg.start(audit.run)
    with anyio.move_on_after(_SHUTDOWN_TIMEOUT):
        await tracker.start_session()
    return Parts(server, pipeline, tracker, audit, cache, store, token)


async def _open_store(options: argparse.Namespace, stack: AsyncExitStack) -> MeteredStore | None:
    if options.store == "none":
        return None
    inner = await open_store(
        session_table=options.session_table if options.store == "dynamodb" else None,
        session_db=options.session_db if options.store == "sqlite" else None,
        region=options.region,
    )
    stack.push_async_callback(inner.aclose)
    return MeteredStore(inner, delay=options.store_delay)


def _stats(parts: Parts) -> dict[str, object]:
    return {
        "event": "stats",
        "store": parts.store.counts() if parts.store is not None else None,
        "tracker": parts.tracker.statistics(),
        "audit": parts.audit.statistics(),
        "cache": parts.cache.statistics(),
        "server": parts.server.statistics(),
    }


def _emit(message: dict[str, object]) -> None:
    # The harness reads one JSON object per line; orjson serializes the frozen stats dataclasses.
    sys.stdout.write(orjson.dumps(message, default=str).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
