"""Drive load with wrk: keep-alive connections, one thread, the token header, exact percentiles."""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_SCRIPT = Path(__file__).with_name("report.lua")
_MARKER = "BENCH_JSON "


@dataclass(frozen=True, slots=True)
class Load:
    url: str
    connections: int
    seconds: float
    token: str | None = None
    threads: int = 1


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    errors: dict[str, int]  # connect/read/write/timeout socket errors, status = non-2xx/3xx replies
    load_cpu_share: float  # wrk's CPU seconds per second of the run (1.0: wrk saturated its CPU)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def command(wrk: str, load: Load, prefix: list[str], *, redact: bool = False) -> list[str]:
    """The wrk command line; `redact` replaces the token for the report."""
    args = [*prefix, wrk, "-t", str(load.threads), "-c", str(load.connections)]
    # wrk takes whole seconds only.
    seconds = max(1, round(load.seconds))
    args += ["-d", f"{seconds}s", "--timeout", "10s", "--latency", "-s", str(_SCRIPT)]
    if load.token is not None:
        args += ["-H", f"Authorization: {'<token>' if redact else load.token}"]
    return [*args, load.url]


def run(wrk: str, load: Load, prefix: list[str]) -> WrkResult:
    return finish(start(wrk, load, prefix))


@dataclass(frozen=True, slots=True)
class Running:
    process: subprocess.Popen[str]
    load: Load
    children_cpu: float  # CPU time of this process's reaped children when wrk started


def start(wrk: str, load: Load, prefix: list[str]) -> Running:
    """Start wrk in the background (the soak samples memory while it runs); `finish` collects it."""
    children_cpu = _children_cpu()
    process = subprocess.Popen(
        command(wrk, load, prefix), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return Running(process, load, children_cpu)


def finish(running: Running) -> WrkResult:
    process = running.process
    try:
        stdout, stderr = process.communicate(timeout=running.load.seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    # wrk is the only child reaped in between (taskset execs it in place), so the difference is
    # wrk's own CPU time: near one CPU-second per second means the load generator was the limit.
    load_cpu = _children_cpu() - running.children_cpu
    for line in stdout.splitlines():
        if line.startswith(_MARKER):
            return _parse(json.loads(line[len(_MARKER) :]), load_cpu)
    raise RuntimeError(f"wrk failed (exit {process.returncode}): {stderr.strip() or stdout.strip()}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _parse(data: dict[str, Any], load_cpu: float) -> WrkResult:
    latency: dict[str, float] = data["latency_us"]
    errors: dict[str, int] = data["errors"]
    requests = int(data["requests"])
    seconds = int(data["duration_us"]) / 1e6
    return WrkResult(
        requests=requests,
        seconds=seconds,
        rps=requests / seconds if seconds else 0.0,
        p50_us=float(latency["p50"]),
        p90_us=float(latency["p90"]),
        p99_us=float(latency["p99"]),
        p999_us=float(latency["p999"]),
        max_us=float(latency["max"]),
        errors={str(k): int(v) for k, v in errors.items()},
        load_cpu_share=load_cpu / seconds if seconds else 0.0,
    )
