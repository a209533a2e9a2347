"""From raw samples to what the report shows: medians with min-max, same-round ratios, targets.

Ratios are taken round by round (both scenarios measured minutes apart at most, under the same
background load), then summarised like any other figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

METRICS = (
    "rps",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "max_us",
    "cpu_us_per_request",
    "capacity_rps",
    "cpu_user_us_per_request",
    "cpu_system_us_per_request",
    "server_cpu_share",
    "server_cpu_all_busy",
    "load_cpu_all_busy",
    "context_switches_per_1k_requests",
    "load_cpu_share",
    "rss_before_mb",
    "rss_after_mb",
    "store_writes",
    "store_writes_per_s",
    "store_writes_per_session_per_s",
    "store_failed_writes",
    "store_failed_calls",
    "touch_queued",
    "touch_dropped",
    "audit_written",
    "audit_dropped",
    "errors",
)

# (numerator, denominator, metric): issue 6 item 3, plus the pairs the targets need.
RATIOS: tuple[tuple[str, str, str], ...] = (
    *((key, "a", "rps") for key in "bcdefghj"),
    *((key, "b", metric) for key in "cdefhj" for metric in ("rps", "p99_us")),
    ("d", "g", "rps"),
    # Issue 12: the production configuration against nginx, and the decision log on / off with
    # tracking (p / c) and without it (h / b, above).
    ("p", "a", "rps"),
    ("p", "a", "p99_us"),
    ("p", "c", "rps"),
    ("p", "c", "p99_us"),
    ("e", "d", "rps"),
    ("e", "d", "p99_us"),
    # The same comparisons by CPU cost, which time-sharing with other work on the box does not
    # distort the way it distorts throughput (see `_value`).
    *(
        (top, bottom, "capacity_rps")
        for top, bottom in ("da", "ba", "cb", "db", "eb", "fb", "hb", "ed", "dg", "pa", "pc")
    ),
)


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread | None:
        data = list(values)
        if not data:
            return None
        return cls(statistics.median(data), min(data), max(data), len(data))


def _value(sample: dict[str, Any], metric: str) -> float | None:
    if metric == "capacity_rps":
        # Requests per second one whole CPU would serve at this run's CPU cost per request: what
        # the throughput would be if the server were CPU-bound and had its CPU to itself.
        cpu = sample.get("cpu_us_per_request")
        return 1e6 / cpu if cpu else None
    if metric == "errors":
        return float(sum(sample.get("errors", {}).values()))
    value = sample.get(metric)
    return None if value is None else float(value)


def per_scenario(samples: list[dict[str, Any]]) -> dict[str, dict[str, Spread]]:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by_key.setdefault(sample["scenario"], []).append(sample)
    table: dict[str, dict[str, Spread]] = {}
    for key, group in by_key.items():
        row = {}
        for metric in METRICS:
            spread = Spread.of(v for v in (_value(s, metric) for s in group) if v is not None)
            if spread is not None:
                row[metric] = spread
        table[key] = row
    return table


def ratio(samples: list[dict[str, Any]], top: str, bottom: str, metric: str) -> Spread | None:
    """`top ÷ bottom` for `metric`, computed within each round, summarised over rounds."""
    rounds: dict[int, dict[str, float]] = {}
    for sample in samples:
        value = _value(sample, metric)
        if sample["scenario"] in (top, bottom) and value is not None:
            rounds.setdefault(sample["round"], {})[sample["scenario"]] = value
    values = [r[top] / r[bottom] for r in rounds.values() if top in r and bottom in r and r[bottom]]
    return Spread.of(values)


def ratios(samples: list[dict[str, Any]]) -> dict[str, Spread]:
    found = {}
    for top, bottom, metric in RATIOS:
        spread = ratio(samples, top, bottom, metric)
        if spread is not None:
            found[f"{top}/{bottom} {metric}"] = spread
    return found


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float | None
    op: Literal[">=", "<="]
    threshold: float
    unit: str = ""
    by_cpu: float | None = None  # a throughput ratio recomputed from CPU µs per request

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.threshold if self.op == ">=" else self.measured <= self.threshold

    @property
    def margin(self) -> str:
        """Headroom when met; when missed, how far off, as the measured share of the threshold."""
        if self.measured is None or not self.threshold:
            return "not measured"
        share = self.measured / self.threshold
        if self.met:
            headroom = share - 1 if self.op == ">=" else 1 - share
            return f"{headroom:.0%} headroom"
        return f"at {share:.0%} of the target" if self.op == ">=" else f"{share:.2f}x the limit"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met, "margin": self.margin}


def targets(
    scenario_table: dict[str, dict[str, Spread]],
    ratio_table: dict[str, Spread],
    soak_growth_mb: float | None = None,
) -> list[Target]:
    """Issue 6's targets, evaluated on medians."""

    def r(name: str) -> float | None:
        spread = ratio_table.get(name)
        return spread.median if spread else None

    def m(key: str, metric: str) -> float | None:
        spread = scenario_table.get(key, {}).get(metric)
        return spread.median if spread else None

    sweep = [m(key, "store_writes_per_session_per_s") for key in ("i1", "i16", "d", "i256")]
    worst_writes = max((v for v in sweep if v is not None), default=None)
    p99_16 = m("i16", "p99_us")

    def throughput(top: str, bottom: str, threshold: float) -> Target:
        pair = f"{top}/{bottom}"
        return Target(
            f"({top})/({bottom}) throughput",
            r(f"{pair} rps"),
            ">=",
            threshold,
            by_cpu=r(f"{pair} capacity_rps"),
        )

    return [
        throughput("d", "a", 0.70),
        throughput("c", "b", 0.95),
        Target("(c)/(b) p99", r("c/b p99_us"), "<=", 1.10),
        throughput("d", "b", 0.95),
        Target("(d)/(b) p99", r("d/b p99_us"), "<=", 1.10),
        throughput("e", "d", 0.95),
        throughput("d", "g", 100),
        throughput("p", "a", 0.60),
        Target("(p)/(a) p99", r("p/a p99_us"), "<=", 2.0),
        throughput("h", "b", 0.90),
        throughput("p", "c", 0.90),
        Target("store writes per session per second, worst sweep point", worst_writes, "<=", 1.1),
        Target("p99 of (d) at 16 connections", None if p99_16 is None else p99_16 / 1000, "<=", 1.0, "ms"),
        Target("soak RSS growth", soak_growth_mb, "<=", 10.0, "MB"),
    ]
