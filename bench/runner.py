"""One benchmark run: warm every server up, then measure the scenarios in rounds, each round in a
fresh random order (interleaved, so drift on a shared box spreads over all scenarios alike)."""

from __future__ import annotations

import logging
import random
import shlex
import time
from datetime import UTC, datetime
from typing import Any

from bench import wrk
from bench.lab import Lab
from bench.proc import Usage, cpu_ticks
from bench.scenarios import DEFAULT_CONNECTIONS, SCENARIOS_BY_KEY, Mode, Scenario
from bench.targets import Target, snapshot

_log = logging.getLogger("bench")
_MB = 1024 * 1024
SESSIONS_PER_SERVER = 1  # every Sentinel server is one session (DESIGN.md §4)


def measure(lab: Lab, mode: Mode, keys: list[str], seed: int) -> list[dict[str, Any]]:
    """Warm up, then `mode.rounds` interleaved rounds over `keys`; one sample per scenario and round.

    Each run has the machine's server CPU to itself as far as the harness can arrange: the other
    servers are paused (`Lab.alone`)."""
    present = [key for key in keys if SCENARIOS_BY_KEY[key].server in lab.running]
    for server in dict.fromkeys(SCENARIOS_BY_KEY[key].server for key in present):
        with lab.alone(server, mode.settle) as target:
            wrk.run(lab.tools.wrk, _load(target, DEFAULT_CONNECTIONS, mode.warmup), lab.pinning.load_prefix())
    rng = random.Random(seed)
    samples = []
    for round_index in range(mode.rounds):
        order = present[:]
        rng.shuffle(order)
        for key in order:
            scenario = SCENARIOS_BY_KEY[key]
            with lab.alone(scenario.server, mode.settle) as target:
                sample = measure_once(lab, target, scenario, mode.seconds)
            sample["round"] = round_index
            samples.append(sample)
            _log.info(
                "round %d/%d  %-4s %9.0f req/s  p99 %8.0f µs  %6.1f µs CPU/req%s",
                round_index + 1,
                mode.rounds,
                key,
                sample["rps"],
                sample["p99_us"],
                sample["cpu_us_per_request"],
                f"  {sample['touch_dropped']} drops" if sample.get("touch_dropped") else "",
            )
    return samples


def measure_once(lab: Lab, target: Target, scenario: Scenario, seconds: float) -> dict[str, Any]:
    cpus = [lab.pinning.server_cpu, lab.pinning.load_cpu]
    before, counters_before = snapshot(target)
    ticks_before = [cpu_ticks(cpu) for cpu in cpus]
    window = time.monotonic()
    result = wrk.run(lab.tools.wrk, _load(target, scenario.connections, seconds), lab.pinning.load_prefix())
    ticks_after = [cpu_ticks(cpu) for cpu in cpus]
    after, counters_after = snapshot(target)
    window = time.monotonic() - window
    # How busy each CPU was, all processes together: on the server's CPU, anything above the
    # server's own share is other work on this shared machine; on the load CPU, wrk plus moto.
    server_busy, load_busy = (_busy(b, a) for b, a in zip(ticks_before, ticks_after, strict=True))
    return {
        "scenario": scenario.key,
        "connections": scenario.connections,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        **result.as_dict(),
        "server_cpu_all_busy": server_busy,
        "load_cpu_all_busy": load_busy,
        **costs(before, after, result),
        **counter_deltas(counters_before, counters_after, window),
    }


def wrk_command(lab: Lab, scenario: Scenario, seconds: float) -> str:
    """The exact wrk command of a scenario, token redacted, for the report."""
    target = lab.running[scenario.server].target
    load = _load(target, scenario.connections, seconds)
    return shlex.join(wrk.command(lab.tools.wrk, load, lab.pinning.load_prefix(), redact=True))


def _busy(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else None


def _load(target: Target, connections: int, seconds: float) -> wrk.Load:
    return wrk.Load(target.url, connections, seconds, target.token)


def costs(before: Usage, after: Usage, result: wrk.WrkResult) -> dict[str, float]:
    cpu = after.cpu_seconds - before.cpu_seconds
    system = after.system_seconds - before.system_seconds
    per_request = 1e6 / result.requests if result.requests else 0.0
    return {
        "cpu_seconds": cpu,
        "cpu_system_us_per_request": system * per_request,
        "cpu_user_us_per_request": (cpu - system) * per_request,
        # Near 1.0: the server used its whole CPU, so throughput is what one core of it can do.
        "server_cpu_share": cpu / result.seconds if result.seconds else 0.0,
        "cpu_us_per_request": cpu * per_request,
        "context_switches_per_1k_requests": (after.context_switches - before.context_switches)
        * per_request
        / 1000,
        "rss_before_mb": before.rss_bytes / _MB,
        "rss_after_mb": after.rss_bytes / _MB,
    }


def counter_deltas(
    before: dict[str, Any] | None, after: dict[str, Any] | None, seconds: float
) -> dict[str, Any]:
    """Store calls and tracker/log counters between the two snapshots, `seconds` apart (a flush
    that lands just outside wrk's own duration is still inside the window and its rate)."""
    if before is None or after is None:
        return {}

    def delta(*path: str) -> int:
        old, new = before, after
        for part in path:
            old, new = (old or {}).get(part), (new or {}).get(part)
        return int(new or 0) - int(old or 0)

    deltas: dict[str, Any] = {
        "touch_queued": delta("tracker", "queued"),
        "touch_dropped": delta("tracker", "dropped"),
        "audit_written": delta("audit", "written"),
        "audit_dropped": delta("audit", "dropped"),
    }
    if after.get("store") is not None:
        writes = delta("store", "writes")
        deltas |= {
            "store_writes": writes,
            "store_failed_writes": delta("store", "failed_writes"),
            "store_failed_calls": delta("store", "failed_calls"),
            "store_reads": delta("store", "reads"),
            "store_writes_per_s": writes / seconds if seconds else 0.0,
            "store_writes_per_session_per_s": writes / seconds / SESSIONS_PER_SERVER if seconds else 0.0,
        }
    return deltas
