"""PNG charts: throughput and p99 per scenario, and the soak's memory over time.

matplotlib is the optional `bench` extra; without it the charts are skipped and the report says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.scenarios import SLOW_STORE_DELAY
from bench.summary import per_scenario

_log = logging.getLogger("bench")
_LABELS = {
    "a": "nginx",
    "b": "off",
    "c": "SQLite",
    "d": "DynamoDB",
    "e": f"+{SLOW_STORE_DELAY * 1000:.0f}ms",
    "f": "down",
    "g": "inline",
    "h": "log",
    "j": "overflow",
    "p": "prod",
}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt
    except ImportError:
        _log.warning("matplotlib not installed: no chart (SENTINEL_EXTRAS=test,bench ./scripts/setup)")
        return None
    return plt


def draw(result: dict[str, Any], path: Path) -> Path | None:
    """Two panels over the scenarios: req/s and p99 (medians, with min-max as error bars)."""
    plt = _pyplot()
    if plt is None:
        return None
    table = per_scenario(result["samples"])
    keys = [s["key"] for s in result["scenarios"] if s["key"] in table]
    labels = [f"{key}\n{_short(key)}" for key in keys]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    for axis, metric, scale, title in (
        (top, "rps", 1e-3, "throughput (thousand req/s; median, bars: min\N{EN DASH}max)"),
        (bottom, "p99_us", 1e-3, "p99 latency (ms, log scale)"),
    ):
        spreads = [table[key][metric] for key in keys]
        middle = [s.median * scale for s in spreads]
        axis.margins(y=0.12)  # room for the labels above the tallest bar
        errors = [
            [(s.median - s.low) * scale for s in spreads],
            [(s.high - s.median) * scale for s in spreads],
        ]
        colours = ["#888888" if key[0] in "ag" else "#3a6ea5" for key in keys]
        axis.bar(range(len(keys)), middle, yerr=errors, capsize=3, color=colours)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        for index, spread in enumerate(spreads):
            # Above the error bar, not on it: the label is the median, the bar its spread.
            axis.annotate(
                f"{spread.median * scale:.3g}",
                (index, spread.high * scale),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    bottom.set_yscale("log")
    bottom.set_xticks(range(len(keys)), labels, fontsize=8)
    figure.suptitle(f"Sentinel benchmarks, {result['stamp']} ({result['machine']['cpu_model']})", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def draw_soak(result: dict[str, Any], path: Path) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    soak = result["soak"]
    points = soak["points"]
    figure, axis = plt.subplots(figsize=(9, 4))
    axis.plot([p["t"] for p in points], [p["rss_mb"] for p in points], marker="o", markersize=3)
    axis.set_xlabel("seconds under load (store unreachable)")
    axis.set_ylabel("RSS (MB)")
    axis.set_title(
        f"soak: {soak['rps']:.0f} req/s for {soak['seconds']:.0f} s, RSS growth {soak['growth_mb']:+.1f} MB",
        fontsize=10,
    )
    axis.grid(alpha=0.3)
    low = min(p["rss_mb"] for p in points)
    axis.set_ylim(max(0.0, low - 10), max(p["rss_mb"] for p in points) + 10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short(key: str) -> str:
    if key.startswith("i"):
        return f"d@{key[1:]}c"
    if key == "a16":
        return "nginx@16c"
    return _LABELS.get(key, key)
