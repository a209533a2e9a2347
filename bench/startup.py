"""`python -m bench.startup`: how long a quick `sentinel exec --server -- true` takes (issue 12),
and `sentinel exec --attach -- true` on a running `sentinel serve` (issue 14).

Whole processes timed from outside, against the local emulator (a moto server), in interleaved
rounds (a random order per round, so a drift in the machine's speed hits every command alike):

  floor     python -c "import sys"              the interpreter alone
  boto3     python -c "import boto3"            the yardstick: what any boto3 script pays
  exec      sentinel exec --server -- true      SQLite store, a policy file, a role profile
  exec-cli  sentinel exec -- true               no listener and no session (cli mode)
  attach    sentinel exec --attach -- true      on a `sentinel serve` started once, beforehand

Target: exec ÷ boto3 <= 1.8 in wall time, the ratio taken round by round, its median reported.
attach is reported against the interpreter alone (floor) and against exec, the same way; no target.
CPU (user + system of the process and its children, from wait4) is reported alongside: on a shared
machine it moves less than wall time. Every command runs with compiled bytecode (a private
PYTHONPYCACHEPREFIX, filled by the warm-up rounds), as an installed package would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.aws_env import isolated_aws_environment
from harness.moto import MotoServer
from harness.policies import ALLOW_POLICY
from harness.process import stop_process, wait_serving
from harness.sandbox import PROFILE, make_sandbox

TARGET = 1.8


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float


def commands(policy: Path, db: Path, env_file: Path) -> dict[str, list[str]]:
    python = sys.executable
    sentinel = [python, "-m", "sentinel", "exec", "--profile", PROFILE, "--policy-file", str(policy)]
    return {
        "floor": [python, "-c", "import sys"],
        "boto3": [python, "-c", "import boto3"],
        "exec": [*sentinel, "--server", "--session-db", str(db), "--", "true"],
        "exec-cli": [*sentinel, "--", "true"],
        "attach": [python, "-m", "sentinel", "exec", "--attach", "--env-file", str(env_file), "--", "true"],
    }


def start_daemon(work: Path, policy: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """The `sentinel serve` that `attach` runs on; ready once its env file exists. Its log goes
    to a file, so it cannot interleave with the figures, and is quoted if it fails to start."""
    env_file, log = work / "run" / "workload.env", work / "serve.log"
    argv = [sys.executable, "-m", "sentinel", "serve", "--profile", PROFILE, "--policy-file", str(policy)]
    files = ["--session-db", str(work / "serve.db"), "--token-file", str(work / "run" / "token")]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*argv, *files, "--env-file", str(env_file)], env=env, stdin=subprocess.DEVNULL, stderr=stderr
        )
    wait_serving(process, env_file.exists, "sentinel serve", 60, lambda: log.read_text()[-2000:])
    return process, env_file


def run_once(argv: Sequence[str], env: dict[str, str]) -> Sample:
    """One run: wall time around start and reap, CPU from the kernel's accounting of the child."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        # A failing command is fast and would look like a win: stop instead.
        raise SystemExit(f"bench.startup: {' '.join(argv)} exited {process.returncode}")
    return Sample(wall, usage.ru_utime + usage.ru_stime)


def measure(
    argvs: dict[str, list[str]], env: dict[str, str], rounds: int, warmup: int, seed: int
) -> dict[str, list[Sample]]:
    order = random.Random(seed)
    samples: dict[str, list[Sample]] = {name: [] for name in argvs}
    for round_number in range(warmup + rounds):
        names = list(argvs)
        order.shuffle(names)
        for name in names:
            sample = run_once(argvs[name], env)
            if round_number >= warmup:
                samples[name].append(sample)
    return samples


def summarise(samples: dict[str, list[Sample]]) -> dict[str, Any]:
    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    per_command = {
        name: {"wall": spread([s.wall for s in runs]), "cpu": spread([s.cpu for s in runs])}
        for name, runs in samples.items()
    }

    def ratio(a: str, b: str) -> dict[str, float]:
        pairs = list(zip(samples[a], samples[b], strict=True))
        return {
            "wall": statistics.median(x.wall / y.wall for x, y in pairs),
            "cpu": statistics.median(x.cpu / y.cpu for x, y in pairs),
        }

    exec_over_boto3 = ratio("exec", "boto3")
    return {
        "commands": per_command,
        "exec_over_boto3": exec_over_boto3,
        "attach_over_floor": ratio("attach", "floor"),
        "attach_over_exec": ratio("attach", "exec"),
        "target": {"exec_over_boto3_wall": TARGET, "met": exec_over_boto3["wall"] <= TARGET},
        "rounds": len(samples["exec"]),
    }


def render(summary: dict[str, Any]) -> str:
    lines = [f"{'command':<10} {'wall median (min-max) s':>26} {'cpu median (min-max) s':>26}"]
    for name, figures in summary["commands"].items():
        wall, cpu = figures["wall"], figures["cpu"]
        lines.append(
            f"{name:<10} {wall['median']:>9.3f} ({wall['min']:.3f}-{wall['max']:.3f})"
            f"   {cpu['median']:>9.3f} ({cpu['min']:.3f}-{cpu['max']:.3f})"
        )
    ratio = summary["exec_over_boto3"]
    verdict = "met" if ratio["wall"] <= TARGET else f"missed by {ratio['wall'] / TARGET - 1:.0%}"
    lines.append(
        f"exec ÷ boto3 (median of {summary['rounds']} rounds): wall {ratio['wall']:.2f} "
        f"(target <= {TARGET}: {verdict}), cpu {ratio['cpu']:.2f}"
    )
    for name, label in (("attach_over_floor", "attach ÷ floor"), ("attach_over_exec", "attach ÷ exec")):
        ratio = summary[name]
        lines.append(
            f"{label} (median of {summary['rounds']} rounds): "
            f"wall {ratio['wall']:.2f}, cpu {ratio['cpu']:.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the order within rounds")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    options = parser.parse_args(argv)
    if options.rounds < 1 or options.warmup < 1:
        parser.error("--rounds and --warmup must be at least 1 (the warm-up compiles the bytecode)")
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="sentinel-startup-") as tmp:
        work = Path(tmp)
        moto = MotoServer()
        moto.start()
        try:
            with isolated_aws_environment(work, AWS_ENDPOINT_URL=moto.url):
                sandbox = make_sandbox(work / "aws", moto)
                policy = work / "policy.yaml"
                policy.write_text(ALLOW_POLICY)
                env = sandbox.env(PYTHONPYCACHEPREFIX=str(work / "pycache"))
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                daemon, env_file = start_daemon(work, policy, env)
                try:
                    argvs = commands(policy, work / "sessions.db", env_file)
                    samples = measure(argvs, env, options.rounds, options.warmup, seed)
                finally:
                    stop_process(daemon)
        finally:
            moto.stop()
    summary = {**summarise(samples), "seed": seed}
    print(render(summary))
    if options.json:
        options.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
