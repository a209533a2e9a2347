"""Blocking botocore calls, run off the event loop in a daemon thread that can be abandoned.

Why botocore in a thread rather than aiobotocore (issue 12, item 3): importing aiobotocore pulls in
aiohttp, which cost 0.17 s of the 0.42 s `sentinel exec` spent importing the SDK; botocore is what
`import boto3` costs anyway. STS is called once at startup and then every few minutes per cache
key, so a thread per call costs nothing that matters.

Why not `anyio.to_thread.run_sync`: its workers are not daemon threads. A call abandoned on
cancellation (shutdown while STS is black-holed) would then hold the process at exit for up to
botocore's whole retry budget (about 40 s with `CLIENT_CONFIG`). A daemon thread is simply dropped
at exit; the botocore call it was making has no effect worth waiting for.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")


async def run_blocking(function: Callable[[], T], *, name: str) -> T:
    """`function()` in a new daemon thread; its result or exception, as if called here.

    Cancelling the caller returns at once and abandons the thread (its outcome is discarded)."""
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            failure.append(exc)
        # If the event loop is gone, nobody is waiting for this outcome.
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=work, name=name, daemon=True).start()
    await done.wait()
    if failure:
        raise failure[0]
    return outcome[0]
