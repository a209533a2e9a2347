"""Scenarios a-j of issue 6 (p: issue 12), the server processes they run against, and the run modes.

A *server* is one process (nginx or a `bench.target`) started once and kept for the whole run; a
*scenario* is a load on one server at one concurrency. The sweep (i) is scenario d's server at
other concurrencies, so its 64-connection point is d itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench import aws

DEFAULT_CONNECTIONS = 64
SWEEP = (1, 16, 64, 256)
# Scenario j: a queue this small overflows whenever more requests are answered in one event-loop
# pass than it holds (up to one per busy connection), and the store behind it is slow.
OVERFLOW_QUEUE = 16
OVERFLOW_DELAY = 1.0
SLOW_STORE_DELAY = 0.2


@dataclass(frozen=True, slots=True)
class Server:
    key: str
    # Switches for `python -m bench.target`; None means nginx.
    args: tuple[str, ...] | None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str  # "a".."j"; sweep points are "i1", "i16", "i256"; "a16" is nginx at 16 connections
    title: str
    server: str  # Server.key
    connections: int = DEFAULT_CONNECTIONS


@dataclass(frozen=True, slots=True)
class Context:
    """What the servers' switches depend on: files, the role and the store endpoints."""

    work: Path
    policy: Path
    role_arn: str
    unreachable_endpoint: str


def servers(ctx: Context) -> dict[str, Server]:
    base = ("--policy-file", str(ctx.policy), "--role-arn", ctx.role_arn)
    dynamodb = (*base, "--store", "dynamodb", "--session-table", aws.TABLE)
    sqlite = (*base, "--store", "sqlite")
    delay = f"{SLOW_STORE_DELAY:g}"
    all_servers = [
        Server("a", None),
        Server("b", base),
        Server("c", (*sqlite, "--session-db", str(ctx.work / "c.db"))),
        Server("d", dynamodb),
        Server("e", (*dynamodb, "--store-delay", delay)),
        # The standard variable moves only DynamoDB; STS (credentials) still reaches moto.
        Server("f", dynamodb, {"AWS_ENDPOINT_URL_DYNAMODB": ctx.unreachable_endpoint}),
        Server("g", (*dynamodb, "--inline-touch")),
        Server("h", (*base, "--decision-log", str(ctx.work / "decisions.jsonl"))),
        # Issue 12: the production configuration, tracking and the audit trail together.
        Server(
            "p",
            (
                *sqlite,
                "--session-db",
                str(ctx.work / "p.db"),
                "--decision-log",
                str(ctx.work / "p-decisions.jsonl"),
            ),
        ),
        Server(
            "j",
            (
                *sqlite,
                "--session-db",
                str(ctx.work / "j.db"),
                "--queue-size",
                str(OVERFLOW_QUEUE),
                "--store-delay",
                f"{OVERFLOW_DELAY:g}",
            ),
        ),
    ]
    return {server.key: server for server in all_servers}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("a", "nginx, static 200 with the same JSON", "a"),
    # Not in the issue's list: the box's own latency floor at the sweep point with a p99 target.
    Scenario("a16", "reference: nginx at 16 connections", "a", 16),
    Scenario("b", "Sentinel, tracking off", "b"),
    Scenario("c", "tracking on, SQLite", "c"),
    Scenario("d", "tracking on, DynamoDB (moto)", "d"),
    Scenario("e", f"tracking on, store +{SLOW_STORE_DELAY * 1000:.0f} ms per call", "e"),
    Scenario("f", "tracking on, store unreachable", "f"),
    Scenario("g", "baseline: inline touch + revocation read", "g"),
    Scenario("h", "tracking off, decision log to a file", "h"),
    Scenario("p", "production: tracking on (SQLite) + decision log to a file", "p"),
    *(Scenario(f"i{c}", f"sweep: d at {c} connections", "d", c) for c in SWEEP if c != DEFAULT_CONNECTIONS),
    Scenario(
        "j",
        f"overflow: queue {OVERFLOW_QUEUE}, store +{OVERFLOW_DELAY:g} s per call (SQLite)",
        "j",
    ),
)
SCENARIOS_BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    rounds: int
    seconds: float  # per measured wrk run
    warmup: float  # per server, once, before the first round
    profile_seconds: float  # py-spy pass after the rounds (0: none)
    micro: bool  # time the hot path's pieces in-process (bench/micro.py) after the rounds
    settle: float  # seconds between resuming a paused server and measuring it


QUICK = Mode("quick", rounds=1, seconds=2.0, warmup=1.0, profile_seconds=0.0, micro=False, settle=0.2)
FULL = Mode("full", rounds=5, seconds=10.0, warmup=3.0, profile_seconds=15.0, micro=True, settle=1.0)
SOAK_SECONDS = 300.0
SOAK_SAMPLE_EVERY = 10.0
