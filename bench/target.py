"""The server under test: Sentinel's real parts, built by `sentinel/assembly.py` as for the daemon, with
the scenario switches of issue 6 (run as `python -m bench.target ...`, pinned by the harness).

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
from pathlib import Path

import anyio
import anyio.to_thread
import orjson

from bench.baseline import InlineTouchService
from bench.stores import MeteredStore
from sentinel import logs
from sentinel.assembly import Assembly, Hooks, assemble
from sentinel.config import ServerConfig
from sentinel.pipeline import Pipeline
from sentinel.policy import Mode
from sentinel.server.service import CredentialService
from sentinel.sessions.store import SessionStore


class Scenario:
    """The switches of issue 6 as assembly hooks: the store counted (and slowed) at the store,
    and for scenario g the old inline-touch design in front of the pipeline."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.store_delay: float = options.store_delay
        self.inline_touch: bool = options.inline_touch
        self.store: MeteredStore | None = None

    def hooks(self) -> Hooks:
        if self.inline_touch:
            return Hooks(wrap_store=self.meter, wrap_service=self.inline, track=False)
        return Hooks(wrap_store=self.meter)

    def meter(self, inner: SessionStore) -> SessionStore:
        self.store = MeteredStore(inner, delay=self.store_delay)
        return self.store

    def inline(self, pipeline: Pipeline) -> CredentialService:
        if self.store is None:
            raise RuntimeError("--inline-touch needs a store")
        return InlineTouchService(pipeline, self.store, pipeline.identity.session_id)


def server_config(options: argparse.Namespace) -> ServerConfig:
    """The daemon's configuration for this scenario (the store, its intervals, the decision log)."""
    return ServerConfig(
        role_arn=options.role_arn,
        region=options.region,
        policy_file=options.policy_file,
        server_instance_id=f"bench-{secrets.token_hex(4)}",
        decision_log=options.decision_log,
        flush_interval=options.flush_interval,
        queue_size=options.queue_size,
        session_table=options.session_table if options.store == "dynamodb" else None,
        session_db=options.session_db if options.store == "sqlite" else None,
        no_session_tracking=options.store == "none",
    )


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
    scenario = Scenario(options)
    async with assemble(server_config(options), Mode.SERVER, hooks=scenario.hooks()) as parts:
        if scenario.inline_touch and scenario.store is not None:
            # The old design created its record up front, synchronously.
            await scenario.store.create(parts.session)
        _emit({"event": "ready", "pid": os.getpid(), "port": parts.listener.port, "token": parts.token})
        while (await anyio.to_thread.run_sync(sys.stdin.readline)).strip() == "stats":
            _emit(_stats(parts, scenario))
        summary = await parts.shutdown()
        _emit({**_stats(parts, scenario), "event": "stopped", "shutdown": summary})


def _stats(parts: Assembly, scenario: Scenario) -> dict[str, object]:
    return {
        "event": "stats",
        "store": scenario.store.counts() if scenario.store is not None else None,
        "tracker": parts.tracker.statistics(),
        "audit": parts.audit.statistics(),
        "cache": parts.cache.statistics(),
        "server": parts.listener.statistics(),
    }


def _emit(message: dict[str, object]) -> None:
    # The harness reads one JSON object per line; orjson serializes the frozen stats dataclasses.
    sys.stdout.write(orjson.dumps(message, default=str).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
