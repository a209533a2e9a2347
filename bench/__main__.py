"""`python -m bench`: run the load benchmarks of issue 6 and write their report.

python -m bench            full run  -> bench/results/<ts>.json + .png, bench/RESULTS.md
python -m bench --quick    smoke run (<= 60 s) -> bench/results/tmp/<ts>/ only
python -m bench --soak     5-minute soak -> bench/results/soak-<ts>.json + .png, RESULTS.md
python -m bench --render   rewrite bench/RESULTS.md from the newest results
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import chart, render
from bench.lab import Lab, open_lab
from bench.micro import run_micro
from bench.profile import profile
from bench.runner import measure, wrk_command
from bench.scenarios import FULL, QUICK, SCENARIOS, SCENARIOS_BY_KEY, SOAK_SAMPLE_EVERY, SOAK_SECONDS, Mode
from bench.soak import soak
from bench.tools import MissingTool, Pinning, find_tools, machine_info

RESULTS = Path(__file__).with_name("results")
REPORT = Path(__file__).with_name("RESULTS.md")
_log = logging.getLogger("bench")
# The tracked hot path (d), the same without tracking (b), the decision log's cost (h), and the
# production configuration (p).
PROFILED = ("d", "b", "h", "p")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--quick", action="store_true", help="one short round of every scenario (<= 60 s)")
    kind.add_argument("--soak", action="store_true", help="sustained load, store unreachable, RSS sampled")
    kind.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md and the charts from saved results"
    )
    parser.add_argument("--rounds", type=int, help="measured rounds (default: 5 full, 1 quick)")
    parser.add_argument("--seconds", type=float, help="seconds per measured run (default: 10 full, 2 quick)")
    parser.add_argument("--scenarios", help="comma-separated scenario keys (default: all)")
    parser.add_argument(
        "--soak-seconds", type=float, default=SOAK_SECONDS, help="length of the soak (default: 300)"
    )
    parser.add_argument(
        "--profile-seconds", type=float, help="py-spy pass per profiled scenario (default: 15 full, 0 quick)"
    )
    parser.add_argument("--seed", type=int, help="seed of the interleaving order (default: random)")
    options = parser.parse_args(argv)
    # The quick run leaves out the nginx reference at 16 connections to stay within a minute.
    default = [s.key for s in SCENARIOS if not (options.quick and s.key == "a16")]
    options.keys = options.scenarios.split(",") if options.scenarios else default
    unknown = [key for key in options.keys if key not in SCENARIOS_BY_KEY]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS_BY_KEY)}")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # The harness's own progress at INFO; libraries (botocore, matplotlib) only when they warn.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    _log.setLevel(logging.INFO)
    if options.render:
        write_report(redraw=True)
        return 0
    try:
        tools = find_tools()
    except MissingTool as exc:
        _log.error("%s", exc)
        return 2
    pinning = Pinning.choose()
    pinning.pin_self_to_load_cpu()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = RESULTS / "tmp" / stamp
    info = machine_info(tools, pinning)
    if pinning.server_cpu is None:
        _log.warning("fewer than 2 CPUs (or no taskset): server and load generator are not pinned")
    started = time.monotonic()
    with open_lab(tools, pinning, work) as lab:
        run = _soak if options.soak else _benchmark
        result = run(lab, options, info, stamp)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    _save(result, options, work, stamp)
    _log.info("done in %.0f s; scratch files in %s", result["wall_seconds"], work)
    return 0


def _mode(options: argparse.Namespace) -> Mode:
    mode = QUICK if options.quick else FULL
    if options.profile_seconds is not None:
        mode = replace(mode, profile_seconds=options.profile_seconds)
    return replace(mode, rounds=options.rounds or mode.rounds, seconds=options.seconds or mode.seconds)


def _benchmark(lab: Lab, options: argparse.Namespace, info: dict[str, Any], stamp: str) -> dict[str, Any]:
    mode = _mode(options)
    seed = options.seed if options.seed is not None else random.randrange(1 << 30)
    lab.start(dict.fromkeys(SCENARIOS_BY_KEY[key].server for key in options.keys))
    samples = measure(lab, mode, options.keys, seed)
    profiles = []
    if mode.profile_seconds:
        for key in PROFILED:
            if key in options.keys and SCENARIOS_BY_KEY[key].server in lab.running:
                found = profile(lab, key, mode.profile_seconds, native=True)
                if found is not None:
                    profiles.append(found)
    lab.pause_all()  # the in-process timings get the server CPU to themselves too
    micro = run_micro(lab.pinning) if mode.micro else None
    present = [key for key in options.keys if SCENARIOS_BY_KEY[key].server in lab.running]
    commands = {key: wrk_command(lab, SCENARIOS_BY_KEY[key], mode.seconds) for key in present}
    lab.stop()
    return {
        "kind": mode.name,
        "stamp": stamp,
        "mode": {"rounds": mode.rounds, "seconds": mode.seconds, "warmup": mode.warmup, "seed": seed},
        "machine": info,
        "harness_command": "./scripts/bench " + " ".join(sys.argv[1:]),
        "scenarios": [
            {"key": s.key, "title": s.title, "server": s.server, "connections": s.connections}
            for s in SCENARIOS
            if s.key in present
        ],
        "servers": _servers(lab),
        "wrk_commands": commands,
        "samples": samples,
        "profiles": profiles,
        "micro": micro,
        "notes": lab.notes,
    }


def _soak(lab: Lab, options: argparse.Namespace, info: dict[str, Any], stamp: str) -> dict[str, Any]:
    every = min(SOAK_SAMPLE_EVERY, options.soak_seconds / 6)
    found = soak(lab, options.soak_seconds, every, warmup=5.0)
    lab.stop()
    return {
        "kind": "soak",
        "stamp": stamp,
        "machine": info,
        "harness_command": "./scripts/bench " + " ".join(sys.argv[1:]),
        "soak": found,
        "servers": _servers(lab),
    }


def _servers(lab: Lab) -> dict[str, Any]:
    return {
        key: {
            "command": running.command,
            "rss_ready_mb": running.rss_ready / 1024 / 1024,
            "final": running.final,
        }
        for key, running in lab.running.items()
    }


def _save(result: dict[str, Any], options: argparse.Namespace, work: Path, stamp: str) -> None:
    if result["kind"] == "quick":
        # A smoke run never replaces the committed report: it stays in the scratch directory.
        path = work / "result.json"
        _dump(path, result)
        report = render.report(result, None, chart.draw(result, work / "result.png"), raw=path, base=work)
        (work / "RESULTS.md").write_text(report)
        _log.info("quick results: %s and %s", path, work / "RESULTS.md")
        print(render.terminal(result))
        return
    prefix = "soak-" if result["kind"] == "soak" else ""
    path = RESULTS / f"{prefix}{stamp}.json"
    _dump(path, result)
    if result["kind"] == "soak":
        chart.draw_soak(result, path.with_suffix(".png"))
    else:
        chart.draw(result, path.with_suffix(".png"))
    write_report()
    if result["kind"] != "soak":
        print(render.terminal(result))


def write_report(redraw: bool = False) -> None:
    """RESULTS.md from the newest full run and the newest soak (`redraw`: their charts too)."""
    full = _newest("")
    if full is None:
        _log.error("no full-run results in %s yet: run ./scripts/bench first", RESULTS)
        return
    soak_result = _newest("soak-")
    image = RESULTS / f"{full['stamp']}.png"
    if redraw:
        chart.draw(full, image)
        if soak_result is not None:
            chart.draw_soak(soak_result, RESULTS / f"soak-{soak_result['stamp']}.png")
    REPORT.write_text(
        render.report(
            full,
            soak_result,
            image if image.exists() else None,
            raw=RESULTS / f"{full['stamp']}.json",
            base=REPORT.parent,
            analysis=_analysis(),
        )
    )
    _log.info("wrote %s", REPORT)


def _analysis() -> str | None:
    path = Path(__file__).with_name("ANALYSIS.md")
    return path.read_text() if path.exists() else None


def _newest(prefix: str) -> dict[str, Any] | None:
    names = sorted(p for p in RESULTS.glob(f"{prefix}*.json") if prefix or not p.name.startswith("soak-"))
    if not names:
        return None
    loaded: dict[str, Any] = json.loads(names[-1].read_text())
    return loaded


def _dump(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
