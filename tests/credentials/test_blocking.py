"""Blocking botocore calls off the event loop: outcomes pass through, cancellation never waits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from sentinel.credentials.blocking import run_blocking

REPO = Path(__file__).resolve().parents[2]


async def test_the_result_and_the_exception_are_the_functions() -> None:
    """1. A function returning a value: awaited, the value. 2. One raising: the same exception."""
    assert await run_blocking(lambda: threading.current_thread().name, name="probe") == "probe"
    error = LookupError("from the thread")

    def fail() -> None:
        raise error

    with pytest.raises(LookupError) as caught:
        await run_blocking(fail, name="failing")
    assert caught.value is error


async def test_cancelling_the_caller_returns_at_once_and_abandons_the_thread() -> None:
    """1. A call blocks in its thread. 2. Its caller is cancelled: it returns within the bound,
    while the thread is still blocked. 3. Released, the thread ends and its outcome goes nowhere."""
    release = threading.Event()
    started = threading.Event()
    threads: list[threading.Thread] = []

    def block() -> str:
        threads.append(threading.current_thread())
        started.set()
        release.wait(30)
        return "late"

    with anyio.move_on_after(5) as outer:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await run_blocking(block, name="blocked")

                tg.start_soon(call)
                await anyio.to_thread.run_sync(started.wait, 5)
                scope.cancel()
    assert not outer.cancelled_caught
    [thread] = threads
    assert thread.daemon
    assert thread.is_alive()
    release.set()
    # Joined from a thread: the ending thread hands its (discarded) outcome to the event loop.
    await anyio.to_thread.run_sync(thread.join, 5)
    assert not thread.is_alive()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_an_sts_call_in_flight_does_not_hold_the_process_at_exit(black_hole: str, tmp_path: Path) -> None:
    """1. A process starts AssumeRole against an endpoint that never answers (botocore would wait
    10 s per attempt). 2. It cancels the call after 0.2 s and returns from `main`. 3. The process
    has exited well before botocore's first read timeout."""
    script = textwrap.dedent(
        """
        import anyio
        from sentinel.credentials import StsRoleAssumer, open_aws

        async def main():
            aws = await open_aws(None, "us-east-1", "arn:aws:iam::123456789012:role/r")
            async with aws.sts_client() as sts:
                identity = "sentinel.x.0123456789abcdef"
                assumer = StsRoleAssumer(sts, role_session_name="sentinel-x", source_identity=identity)
                with anyio.move_on_after(0.2):
                    await assumer.fetch("arn:aws:iam::123456789012:role/r", 900)
            print("returned", flush=True)

        anyio.run(main)
        """
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": black_hole,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=30
    )
    elapsed = time.monotonic() - start
    assert (result.returncode, result.stdout) == (0, "returned\n"), result.stderr
    assert elapsed < 8, f"the process took {elapsed:.1f}s to exit"
