"""What a process costs, read from /proc: CPU seconds and resident memory.

Read from outside the process so nginx and the Sentinel target are measured the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    user_seconds: float  # all threads
    system_seconds: float  # kernel time on the process's behalf: for a server, mostly socket I/O
    rss_bytes: int
    # Context switches of the threads alive now (a thread that exited takes its count with it):
    # many per request means threads hand the GIL and the CPU back and forth.
    context_switches: int

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


def usage(pid: int) -> Usage:
    user, system = cpu_times(pid)
    return Usage(user, system, rss_bytes(pid), context_switches(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every thread of `pid`."""
    # The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def context_switches(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue  # the thread exited between listing and reading
        for line in lines:
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def cpu_ticks(cpu: int | None) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU since boot, all processes (from /proc/stat); (0, 0)
    for None (not pinned)."""
    if cpu is None:
        return 0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            return sum(values) - idle, sum(values)
    return 0, 0
