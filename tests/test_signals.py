"""`ServeSignals` in-process: what a stop cancels, what it leaves alone, how SIGHUPs add up.

Signals are handed over with `handle()` as the anyio receiver would; STOPPING=1 goes to a real
AF_UNIX datagram socket. The subprocess side (real signals at each startup step) is `test_daemon.py`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from sentinel.signals import Request, ServeSignals
from sentinel.systemd import SystemdNotifier
from tests.support.notify_socket import NotifySocket


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


async def test_a_stop_cancels_the_interruptible_block_and_says_stopping_once(notify: NotifySocket) -> None:
    """1. A block waits forever inside `interruptible()`.
    2. SIGTERM, then SIGINT: the block is cancelled, the scope swallows it, STOPPING=1 is sent
       once, and the next request is STOP."""
    with SystemdNotifier(str(notify.path)) as notifier:
        signals = ServeSignals(notifier)
        reached = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def waits_forever() -> None:
                with signals.interruptible() as scope:
                    reached.set()
                    await anyio.sleep_forever()
                assert scope.cancelled_caught

            tg.start_soon(waits_forever)
            await reached.wait()
            signals.handle(signal.SIGTERM)
            signals.handle(signal.SIGINT)
        assert await signals.wait_request() is Request.STOP
    assert notify.receive(within=1) == "STOPPING=1"
    with pytest.raises(TimeoutError):
        notify.receive(within=0.05)


async def test_a_block_entered_after_the_stop_is_cancelled_at_once() -> None:
    signals = ServeSignals(SystemdNotifier(None))
    signals.stop()
    with signals.interruptible() as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught


async def test_a_detached_block_is_not_cancelled_by_a_later_stop() -> None:
    """Startup hands over to serving: after `detach()` a stop only wakes the loop."""
    signals = ServeSignals(SystemdNotifier(None))
    with signals.interruptible() as scope:
        signals.detach(scope)
        signals.handle(signal.SIGTERM)
        await anyio.lowlevel.checkpoint()
        assert await signals.wait_request() is Request.STOP
    assert not scope.cancelled_caught


async def test_sighups_coalesce_into_one_reload_and_none_after_a_stop() -> None:
    """Three SIGHUPs before the loop looks: one RELOAD. A SIGHUP after SIGTERM: STOP only."""
    signals = ServeSignals(SystemdNotifier(None))
    for _ in range(3):
        signals.handle(signal.SIGHUP)
    assert await signals.wait_request() is Request.RELOAD
    with anyio.move_on_after(0.05) as idle:
        await signals.wait_request()
    assert idle.cancelled_caught  # nothing else pending: the loop would sleep
    signals.handle(signal.SIGTERM)
    signals.handle(signal.SIGHUP)
    assert await signals.wait_request() is Request.STOP
    assert await signals.wait_request() is Request.STOP
