"""`python -m sentinel ARGS` as a real subprocess, watched from the outside.

Output is read line by line in the background, so a test waits for a line (under a bounded
deadline) instead of sleeping.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.waiting import DEADLINE


@dataclass
class _Stream:
    lines: list[str] = field(default_factory=list)
    closed: bool = False


class SentinelProcess:
    """`python -m sentinel ARGS` with stdout and stderr read line by line in the background."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = list(args)
        self._condition = threading.Condition()
        self._streams = {"stdout": _Stream(), "stderr": _Stream()}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentinel", *self.args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, name: str, stream: Any) -> None:
        with stream:
            for line in stream:
                with self._condition:
                    self._streams[name].lines.append(line.rstrip("\n"))
                    self._condition.notify_all()
        with self._condition:
            self._streams[name].closed = True
            self._condition.notify_all()

    @property
    def stdout_lines(self) -> list[str]:
        with self._condition:
            return list(self._streams["stdout"].lines)

    @property
    def stderr_lines(self) -> list[str]:
        with self._condition:
            return list(self._streams["stderr"].lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def wait_for_line(self, pattern: str, stream: str = "stderr", within: float = DEADLINE) -> re.Match[str]:
        """The first line of `stream` (seen so far or later) that `pattern` searches successfully."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        with self._condition:
            while True:
                for line in self._streams[stream].lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._streams[stream].closed or remaining <= 0:
                    raise AssertionError(
                        f"no {stream} line matching {pattern!r}; stderr so far:\n{self._describe()}"
                    )
                self._condition.wait(remaining)

    def _describe(self) -> str:
        return "\n".join(self._streams["stderr"].lines[-40:])

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, within: float = DEADLINE) -> int:
        """Wait for the exit (and for both streams to be read to the end); return the code."""
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sentinel {self.args[0]} still running after {within}s") from None
        for reader in self._readers:
            reader.join(within)
        return code

    def stop(self, signum: int = signal.SIGTERM, within: float = DEADLINE) -> int:
        self.send_signal(signum)
        return self.wait(within)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)


def imported_modules(args: Sequence[str], env: dict[str, str]) -> set[str]:
    """Run a `sentinel` command to a successful end under Python's own import log
    (PYTHONPROFILEIMPORTTIME); the name of every module it imported."""
    result = run_sentinel(args, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def run_sentinel(
    args: Sequence[str], env: dict[str, str], within: float = DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run a short `sentinel` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )
