"""Helper subprocesses (moto server, nginx): waiting until one serves, stopping it for sure."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from harness.waiting import poll


def wait_serving(
    process: subprocess.Popen[bytes],
    serving: Callable[[], bool],
    what: str,
    timeout: float,
    exit_detail: Callable[[], str] = lambda: "",
) -> None:
    """Poll `serving` until it is true; RuntimeError if `process` exits first (with `exit_detail()`)
    or `timeout` passes (the process is stopped then, so it cannot outlive the failure)."""
    exited = False

    def settled() -> bool:
        nonlocal exited
        exited = process.poll() is not None
        return exited or serving()

    came_up = poll(settled, timeout)
    if exited:
        detail = exit_detail()
        raise RuntimeError(f"{what} exited with {process.returncode}{': ' + detail if detail else ''}")
    if not came_up:
        stop_process(process)
        raise RuntimeError(f"{what} did not come up within {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout` s, then SIGKILL; always reaps the process."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
