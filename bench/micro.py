"""The hot path's pieces timed in-process, without sockets (`python -m bench.micro`, prints JSON).

The load runs say what a request costs in total; this says which step it goes to. The pipeline is
the real one (policy, cache, tracker, decision log); only the STS call behind the cache is replaced
by a `CredentialSource` returning fixed credentials, since a cache hit never reaches it anyway.
Requests are issued in bursts of 64 (one per connection of a c64 run) with an event-loop pass
between bursts, so the tracker's drain task and the decision log's writer do their share; with the
decision log on, the timing ends when the log has written every line (its whole cost per request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import aws
from bench.tools import Pinning
from sentinel.assembly import Assembly, GivenCredentials, Hooks, assemble
from sentinel.audit import DecisionEntry, DecisionLogger, LineFormatter, encode_tail
from sentinel.config import ServerConfig
from sentinel.credentials import Credentials
from sentinel.pipeline import Identity, Pipeline
from sentinel.policy import Mode, PolicyRequest, PolicyWatcher, evaluate
from sentinel.sessions.tracker import SessionTracker

_log = logging.getLogger("bench")
_ROLE_ARN = "arn:aws:iam::123456789012:role/sentinel-bench"
_BURST = 64
_REPEAT = 5


class FixedSource:
    """Fresh credentials without STS: the cache calls it once, at prefetch."""

    async def fetch(self, role_arn: str, duration_seconds: int) -> Credentials:
        expiration = datetime.now(UTC) + timedelta(seconds=duration_seconds)
        return Credentials("ASIABENCHEXAMPLE0001", "s" * 40, "t" * 400, expiration)


def per_call_us(call: Callable[[], object], number: int = 100_000) -> float:
    """Best of a few repeats: the least disturbed measurement of a pure CPU cost."""
    return min(timeit.repeat(call, number=number, repeat=_REPEAT)) / number * 1e6


async def per_request_us(
    pipeline: Pipeline, bursts: int = 2000, finish: Callable[[], Awaitable[None]] | None = None
) -> float:
    """issue_nowait() in bursts of 64 with a loop pass between them, per request, best of a few.

    `finish` (the decision log's flush) is awaited inside the timing: what is left to write is
    part of the cost."""
    best = float("inf")
    issue = pipeline.issue_nowait
    for _ in range(_REPEAT):
        started = time.perf_counter()
        for _ in range(bursts):
            for _ in range(_BURST):
                issue()
            await asyncio.sleep(0)  # the drain task and the log writer get their turn
        if finish is not None:
            await finish()
        best = min(best, (time.perf_counter() - started) / (bursts * _BURST) * 1e6)
    return best


async def measure(work: Path) -> dict[str, float]:
    policy = work / "policy.yaml"
    policy.write_text(aws.POLICY)
    # No listener and no STS: the assembly's pipeline, over fixed credentials.
    base = ServerConfig(
        policy_file=policy,
        server_instance_id="bench-micro",
        session_db=work / "sessions.db",
        no_session_tracking=True,
    )
    hooks = Hooks(credentials=GivenCredentials(FixedSource(), user="bench", role_arn=_ROLE_ARN))

    def assembled(**changes: Any) -> AbstractAsyncContextManager[Assembly]:
        return assemble(replace(base, **changes), Mode.SERVER, listen=False, hooks=hooks)

    results: dict[str, float] = {}
    decisions = str(work / "decisions.jsonl")
    async with assembled() as parts:
        results["issue_nowait: tracking off, no decision log (b)"] = await per_request_us(parts.pipeline)
    async with assembled(no_session_tracking=False) as parts:
        results["issue_nowait: tracking on, touch + drain (c, d)"] = await per_request_us(parts.pipeline)
        if parts.store is None:
            raise RuntimeError(f"no session store at {base.session_db}")
        # A second tracker, never started, with room for every timed touch (no drop path), and a
        # decision log, never run, with room for every timed line.
        spare = SessionTracker(parts.store, parts.session, queue_size=1_000_000)
        sink = DecisionLogger(str(work / "appended.jsonl"), capacity=_REPEAT * 100_000)
        results |= pieces(parts.pipeline.identity, parts.watcher, spare, sink)
        await sink.aclose(timeout=0)
    # 500 bursts of 64 per repeat stay well inside the log's buffer: what is measured is the cost
    # of writing every line (the flush is inside the timing), not of dropping them.
    async with assembled(decision_log=decisions) as parts:
        results["issue_nowait: decision log on, lines written (h)"] = await per_request_us(
            parts.pipeline, bursts=500, finish=parts.audit.flush
        )
        dropped = parts.audit.statistics().dropped
    async with assembled(no_session_tracking=False, decision_log=decisions) as parts:
        results["issue_nowait: tracking on + decision log (p)"] = await per_request_us(
            parts.pipeline, bursts=500, finish=parts.audit.flush
        )
        dropped += parts.audit.statistics().dropped
    results["  of which: decision log lines dropped (should be 0)"] = float(dropped)
    return results


def pieces(
    identity: Identity, watcher: PolicyWatcher, tracker: SessionTracker, sink: DecisionLogger
) -> dict[str, float]:
    """Single steps of the hot path, each timed alone."""
    now = datetime.now(UTC)
    request = PolicyRequest(identity.user, identity.profile, identity.mode, now)
    current = watcher.current
    decision = evaluate(current, request)
    entry = DecisionEntry(
        time=now,
        request_id="3f9a1c2e-1b",
        user=identity.user,
        profile=identity.profile,
        effect=decision.effect.value,
        rule=decision.rule_name,
        rule_index=decision.rule_index,
        reason=decision.reason,
        mode=identity.mode.value,
        policy_source=current.source,
        policy_hash=current.content_hash,
        status=200,
        session_id=identity.session_id,
        source_identity=identity.source_identity,
        role_arn=identity.role_arn,
        expiration=now,
        cache_hit=True,
    )
    fields = {name: getattr(entry, name) for name in entry.__slots__}
    # The decision log's own serialisation options (sentinel/audit/lines.py).
    options = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_APPEND_NEWLINE
    tail = encode_tail(entry)
    line = LineFormatter("3f9a1c2e").line
    return {
        "datetime.now(UTC) (twice per request: policy, cache)": per_call_us(lambda: datetime.now(UTC)),
        "PolicyRequest(...) (frozen dataclass + __post_init__)": per_call_us(
            lambda: PolicyRequest(identity.user, identity.profile, identity.mode, now)
        ),
        "evaluate(policy, request) (2 rules)": per_call_us(lambda: evaluate(current, request)),
        "tracker.touch_nowait() alone (queue put)": per_call_us(tracker.touch_nowait),
        "DecisionEntry(...) (frozen dataclass, 17 fields; per request before issue 12)": per_call_us(
            lambda: DecisionEntry(**fields)
        ),
        "orjson.dumps(entry) (per line before issue 12)": per_call_us(
            lambda: orjson.dumps(entry, option=options)
        ),
        "audit.log_encoded_nowait(tail) (per request: format the line, append it)": per_call_us(
            lambda: sink.log_encoded_nowait(tail)
        ),
        "encode_tail(entry) (once per outcome)": per_call_us(lambda: encode_tail(entry), number=10_000),
        "  of which: LineFormatter.line (time + request id + tail)": per_call_us(
            lambda: line(time.time_ns(), 0x1B, tail)
        ),
        "decision.effect.value (Enum property)": per_call_us(lambda: decision.effect.value),
        "os.getpid() (a syscall: asyncio's running-loop check)": per_call_us(os.getpid),
    }


def run_micro(pinning: Pinning) -> dict[str, float] | None:
    """For the harness: this module in its own process on the server's CPU (the servers under
    test are paused meanwhile); None if it fails."""
    _log.info("timing the hot path's pieces in-process (bench/micro.py)")
    done = subprocess.run(
        [*pinning.server_prefix(), sys.executable, "-m", "bench.micro"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        _log.warning("bench.micro failed: %s", done.stderr.strip()[-500:])
        return None
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sentinel-micro-") as work:
        results = uvloop.run(measure(Path(work)))
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
