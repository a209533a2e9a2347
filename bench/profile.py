"""Where the server's CPU goes under load: py-spy samples a scenario's server while wrk drives it.

Run after the measured rounds, never during them (sampling stops the target briefly each time).
The raw (collapsed-stack) output is summarised into the costliest functions and files.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import wrk
from bench.lab import Lab
from bench.scenarios import SCENARIOS_BY_KEY
from bench.targets import Target

_log = logging.getLogger("bench")
_RATE = 250  # samples per second
_TOP = 15
_LINE_NUMBER = re.compile(r":\d+$")
# Prefixes trimmed from file names so a reader sees `sentinel/...`, `asyncio/...`, `anyio/...`.
_PREFIX = re.compile(
    rf"^.*?(?:site-packages/|/lib/python3\.\d+/|{re.escape(str(Path(__file__).resolve().parents[1]))}/)"
)


def profile(lab: Lab, key: str, seconds: float, native: bool) -> dict[str, Any] | None:
    """Sample scenario `key`'s server for `seconds` under its load; None without py-spy."""
    if lab.tools.py_spy is None:
        return None
    scenario = SCENARIOS_BY_KEY[key]
    with lab.alone(scenario.server, settle=1.0) as target:
        return _record(lab, target, key, seconds, native)


def _record(lab: Lab, target: Target, key: str, seconds: float, native: bool) -> dict[str, Any] | None:
    scenario = SCENARIOS_BY_KEY[key]
    output = lab.work / f"profile-{key}.txt"
    command = [lab.tools.py_spy, "record", "--pid", str(target.pid), "--rate", str(_RATE)]
    command += ["--duration", f"{seconds:.0f}", "--format", "raw", "--output", str(output)]
    # Only samples where a thread holds the GIL: the event loop's work (and the decision log's
    # serialising), not threads parked in a blocking read. Native frames show what the C parts
    # (uvloop, httptools, the socket syscalls) cost instead of charging it to the calling Python frame.
    command.append("--gil")
    if native:
        command.append("--native")
    # wrk starts first and outlasts the sampler, so every sample is taken under full load.
    load = wrk.Load(target.url, scenario.connections, seconds + 3, target.token)
    load_run = wrk.start(lab.tools.wrk, load, lab.pinning.load_prefix())
    time.sleep(1)
    spy = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    result = wrk.finish(load_run)
    if spy.returncode != 0 or not output.exists():
        _log.warning("py-spy failed (exit %d): %s", spy.returncode, spy.stderr.strip()[-500:])
        return None
    summary = summarise(output)
    _log.info("profiled %s: %d samples", key, summary["samples"])
    return {"scenario": key, "seconds": seconds, "native": native, "rps_while_sampled": result.rps, **summary}


def summarise(raw: Path) -> dict[str, Any]:
    """Self time per function (with and without libc, i.e. the syscalls), per file, and
    inclusive time of Sentinel's own functions, as shares of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_function(frame) for frame in stack.split(";") if frame]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        files[_file(frames[-1])] += count
        for frame in set(frames):
            if _file(frame).startswith("sentinel/"):
                inclusive[frame] += count
    libc = sum(n for name, n in files.items() if name.startswith("libc."))
    user_space = Counter({name: n for name, n in own.items() if not _file(name).startswith("libc.")})

    def top(counter: Counter[str], of: int) -> list[dict[str, Any]]:
        return [{"name": name, "share": n / of} for name, n in counter.most_common(_TOP)] if of else []

    return {
        "samples": total,
        "libc_share": libc / total if total else 0.0,
        "self": top(own, total),
        "self_outside_libc": top(user_space, total - libc),
        "files": top(files, total),
        "inclusive_sentinel": top(inclusive, total),
    }


def _function(frame: str) -> str:
    """`handle (/abs/sentinel/server/connection.py:120)` -> `handle (sentinel/server/connection.py)`: one
    entry per function, whichever of its lines was executing."""
    name, paren, location = frame.strip().rpartition(" (")
    if not paren:
        return frame.strip()
    location = _PREFIX.sub("", _LINE_NUMBER.sub("", location.rstrip(")")))
    return f"{name} ({location})"


def _file(function: str) -> str:
    return function.rpartition(" (")[2].rstrip(")")
