"""The soak (issue 6 item 5): sustained load with the session store unreachable, memory sampled.

With the store down, every touch is coalesced into the pending buffer and every flush fails and
backs off: if anything on that path kept a reference per request or per failure, RSS would climb.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from typing import Any

from bench import wrk
from bench.lab import Lab
from bench.proc import rss_bytes
from bench.runner import costs, counter_deltas
from bench.scenarios import DEFAULT_CONNECTIONS
from bench.targets import snapshot

_log = logging.getLogger("bench")
_MB = 1024 * 1024
SERVER = "f"  # tracking on, store unreachable


def soak(lab: Lab, seconds: float, every: float, warmup: float) -> dict[str, Any]:
    lab.start([SERVER])
    target = lab.running[SERVER].target
    prefix = lab.pinning.load_prefix()
    wrk.run(lab.tools.wrk, wrk.Load(target.url, DEFAULT_CONNECTIONS, warmup, target.token), prefix)
    load = wrk.Load(target.url, DEFAULT_CONNECTIONS, seconds, target.token)
    before, counters_before = snapshot(target)
    started = time.monotonic()
    load_run = wrk.start(lab.tools.wrk, load, prefix)
    points = [{"t": 0.0, "rss_mb": before.rss_bytes / _MB}]
    next_at = started + every
    while True:
        try:
            # wrk prints a few lines, only at its end: waiting with its pipes unread is safe.
            load_run.process.wait(timeout=max(0.0, next_at - time.monotonic()))
            break
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - started
            points.append({"t": round(elapsed, 1), "rss_mb": rss_bytes(target.pid) / _MB})
            _log.info("soak %5.0f s  RSS %.1f MB", elapsed, points[-1]["rss_mb"])
            next_at += every
    result = wrk.finish(load_run)
    after, counters_after = snapshot(target)
    window = time.monotonic() - started
    points.append({"t": round(time.monotonic() - started, 1), "rss_mb": after.rss_bytes / _MB})
    first, last = points[0]["rss_mb"], points[-1]["rss_mb"]
    half = min(points, key=lambda p: abs(p["t"] - seconds / 2))["rss_mb"]
    return {
        "server": SERVER,
        "seconds": seconds,
        "sample_every": every,
        "wrk_command": shlex.join(wrk.command(lab.tools.wrk, load, prefix, redact=True)),
        "server_command": lab.running[SERVER].command,
        "rss_ready_mb": lab.running[SERVER].rss_ready / _MB,
        "points": points,
        "growth_mb": last - first,
        "growth_second_half_mb": last - half,
        "peak_mb": max(p["rss_mb"] for p in points),
        **result.as_dict(),
        **costs(before, after, result),
        **counter_deltas(counters_before, counters_after, window),
    }
