"""`harness.process.wait_serving` against real subprocesses: one that serves, one that dies, one
that never answers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.process import stop_process, wait_serving


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end are stopped."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            stop_process(process)


def python(started: list[subprocess.Popen[bytes]], code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", code])
    started.append(process)
    return process


def test_returns_once_the_process_serves(started: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """1. A process creates a file (its "port"), then stays up. 2. wait_serving returns. 3. The
    process is still running: waiting did not disturb it."""
    marker = tmp_path / "up"
    process = python(started, f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)")
    wait_serving(process, marker.exists, "the marker process", timeout=30)
    assert process.poll() is None


def test_a_process_that_exits_first_is_reported_with_its_code_and_detail(
    started: list[subprocess.Popen[bytes]],
) -> None:
    """1. A process exits with 3 before it serves. 2. The error names it, its code and the detail."""
    process = python(started, "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"^the doomed process exited with 3: it said no$"):
        wait_serving(process, lambda: False, "the doomed process", 30, exit_detail=lambda: "it said no")


def test_a_process_that_never_serves_is_stopped(started: list[subprocess.Popen[bytes]]) -> None:
    """1. A process stays up but never serves. 2. After the timeout: an error, and the process is
    gone (reaped), so a failed start leaves nothing behind."""
    process = python(started, "import time; time.sleep(60)")
    with pytest.raises(RuntimeError, match=r"^the mute process did not come up within 0\.3s$"):
        wait_serving(process, lambda: False, "the mute process", timeout=0.3)
    assert process.returncode is not None
