"""The external tools the harness drives, the machine it runs on, and CPU pinning.

wrk is required, nginx optional (scenario a is skipped without it); both are Debian packages, so a
missing one is reported with the command that installs it rather than as a traceback.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install wrk nginx"
# nginx lives in /usr/sbin, which is not on every user's PATH.
_SBIN = "/usr/sbin:/usr/local/sbin"


class MissingTool(RuntimeError):
    """A required tool is absent; the message says how to install it."""


@dataclass(frozen=True, slots=True)
class Tools:
    wrk: str
    nginx: str | None
    taskset: str | None
    py_spy: str | None


def find_tools() -> Tools:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise MissingTool(f"wrk not found: install it with `{INSTALL_HINT}` (Debian/Ubuntu)")
    path = f"{os.environ.get('PATH', '')}:{_SBIN}"
    return Tools(
        wrk=wrk,
        nginx=shutil.which("nginx", path=path),
        taskset=shutil.which("taskset"),
        # py-spy installs into the venv beside this interpreter.
        py_spy=shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{path}"),
    )


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU the server under test gets and which the load generator (and the rest) get.

    Two CPUs or more: server on the first allowed CPU, everything else on the second. One CPU:
    no pinning (the numbers then measure wrk and the server sharing a core)."""

    server_cpu: int | None
    load_cpu: int | None

    @classmethod
    def choose(cls) -> Pinning:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(allowed[0], allowed[1])

    def pin_self_to_load_cpu(self) -> None:
        # Children inherit affinity: moto, wrk and py-spy started by the harness stay off the
        # server's CPU without each needing a taskset prefix.
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})

    def server_prefix(self) -> list[str]:
        return [] if self.server_cpu is None else ["taskset", "-c", str(self.server_cpu)]

    def load_prefix(self) -> list[str]:
        return [] if self.load_cpu is None else ["taskset", "-c", str(self.load_cpu)]


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unavailable"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _virtualised() -> bool:
    # The CPU's `hypervisor` flag: a VM's vCPUs can lose time to the host, which no counter here sees.
    try:
        return " hypervisor" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _git(*args: str) -> str:
    # Read-only queries: which commit was measured and whether the tree had local changes.
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def machine_info(tools: Tools, pinning: Pinning) -> dict[str, object]:
    """Everything a reader needs to judge the numbers: box, load, versions, commit."""
    wrk_version = _first_line([tools.wrk, "-v"]).split(" [")[0]
    nginx_version = _first_line([tools.nginx, "-v"]).removeprefix("nginx version: ") if tools.nginx else None
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "virtualised": _virtualised(),
        "load_average_at_start": list(os.getloadavg()),
        "server_cpu": pinning.server_cpu,
        "load_cpu": pinning.load_cpu,
        "versions": {
            "python": platform.python_version(),
            "uvloop": _package_version("uvloop"),
            "httptools": _package_version("httptools"),
            "moto": _package_version("moto"),
            "wrk": wrk_version,
            "nginx": nginx_version,
            "sentinel_commit": f"{commit}{' (uncommitted changes)' if dirty else ''}",
        },
    }
