"""PolicyWatcher: startup fails without a valid policy; reloads keep the last good one; SIGHUP path."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from sentinel.errors import PolicyError
from sentinel.policy import FilePolicySource, PolicyWatcher, SsmPolicySource

FIRST = b'version: "1"\nrules:\n  - {name: first, effect: allow}\n'
SECOND = b'version: "1"\nrules:\n  - {name: second, effect: deny}\n  - {name: third, effect: allow}\n'
BROKEN = b'version: "1"\nrules:\n  - {name: broken, effect: permit}\n'
LOGGER = "sentinel.policy"


class SteppedClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.current = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


class GatedSource:
    """An in-memory PolicySource whose fetches wait for the test to release them, one at a time."""

    description = "memory:gated"

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.fetches = 0
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def fetch(self) -> bytes:
        self.fetches += 1
        self.started.set()
        await self.release.wait()
        self.release = anyio.Event()
        return self.content


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_bytes(FIRST)
    return path


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]


async def test_load_initial_installs_the_policy_and_logs_it(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = SteppedClock()
    watcher = PolicyWatcher(FilePolicySource(policy_file), clock=clock)

    policy = await watcher.load_initial()

    assert watcher.current is policy
    assert [rule.name for rule in policy.rules] == ["first"]
    stats = watcher.statistics()
    assert (stats.source, stats.content_hash, stats.rule_count) == (
        f"file:{policy_file}",
        policy.content_hash,
        1,
    )
    assert (stats.loaded_at, stats.checked_at, stats.last_error) == (clock.current, clock.current, None)
    assert (stats.reloads, stats.reload_failures, stats.changes) == (0, 0, 1)
    assert infos(caplog) == [f"policy loaded from file:{policy_file}: sha256 {policy.content_hash}, rules 1"]


async def test_startup_with_a_missing_file_fails(tmp_path: Path) -> None:
    watcher = PolicyWatcher(FilePolicySource(tmp_path / "absent.yaml"))
    with pytest.raises(PolicyError, match="cannot read: No such file or directory"):
        await watcher.load_initial()
    assert watcher.statistics().content_hash is None


async def test_startup_with_an_invalid_file_fails_naming_rule_and_line(policy_file: Path) -> None:
    await anyio.Path(policy_file).write_bytes(BROKEN)
    with pytest.raises(PolicyError, match=r'rule "broken" \(line 3\): bad effect "permit"'):
        await PolicyWatcher(FilePolicySource(policy_file)).load_initial()


async def test_startup_with_a_missing_ssm_parameter_fails_naming_it(aws_endpoint: str) -> None:
    watcher = PolicyWatcher(SsmPolicySource("/sentinel/test/no-such-parameter", region="us-east-1"))
    with pytest.raises(
        PolicyError, match=r"^policy ssm:/sentinel/test/no-such-parameter: parameter not found$"
    ):
        await watcher.load_initial()


async def test_bad_reload_keeps_the_last_good_policy_and_logs_one_error_each_time(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. Load a good policy. 2. Break the file; reload twice. 3. Still the good policy; exactly one
    error line per failed reload. 4. Fix the file; reload swaps it in and clears the error."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = SteppedClock()
    watcher = PolicyWatcher(FilePolicySource(policy_file), clock=clock)
    good = await watcher.load_initial()
    caplog.clear()

    await anyio.Path(policy_file).write_bytes(BROKEN)
    clock.advance(30)
    assert await watcher.reload() is False
    assert await watcher.reload() is False

    assert watcher.current is good
    expected = f'policy file:{policy_file}: rule "broken" (line 3): bad effect "permit"'
    assert (
        errors(caplog)
        == [f"{expected}: expected one of allow, deny, require_server; keeping the current policy"] * 2
    )
    stats = watcher.statistics()
    assert stats.last_error is not None
    assert stats.last_error.startswith(expected)
    assert (stats.last_error_at, stats.loaded_at, stats.reloads, stats.reload_failures) == (
        clock.current,
        clock.current - timedelta(seconds=30),
        2,
        2,
    )

    caplog.clear()
    await anyio.Path(policy_file).write_bytes(SECOND)
    clock.advance(30)
    assert await watcher.reload() is True

    assert [rule.name for rule in watcher.current.rules] == ["second", "third"]
    assert errors(caplog) == []
    assert infos(caplog) == [
        f"policy loaded from file:{policy_file}: sha256 {watcher.current.content_hash}, rules 2"
    ]
    stats = watcher.statistics()
    assert (stats.last_error, stats.loaded_at, stats.reloads, stats.reload_failures, stats.changes) == (
        None,
        clock.current,
        3,
        2,
        2,
    )


async def test_missing_file_on_reload_keeps_the_policy(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = PolicyWatcher(FilePolicySource(policy_file))
    good = await watcher.load_initial()
    await anyio.Path(policy_file).unlink()

    assert await watcher.reload() is False
    assert watcher.current is good
    assert errors(caplog) == [
        f"policy file:{policy_file}: cannot read: No such file or directory; keeping the current policy"
    ]


async def test_unchanged_content_is_not_reparsed_or_relogged(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = SteppedClock()
    watcher = PolicyWatcher(FilePolicySource(policy_file), clock=clock)
    policy = await watcher.load_initial()
    caplog.clear()
    clock.advance(30)

    assert await watcher.reload() is True

    assert watcher.current is policy
    assert caplog.records == []
    stats = watcher.statistics()
    assert (stats.changes, stats.checked_at, stats.loaded_at) == (
        1,
        clock.current,
        clock.current - timedelta(seconds=30),
    )


async def test_request_reload_wakes_the_background_loop_now(policy_file: Path) -> None:
    """1. run() with an hour-long TTL. 2. Change the file and request a reload (the SIGHUP path).
    3. The new policy is current without waiting for the TTL."""
    watcher = PolicyWatcher(FilePolicySource(policy_file), ttl=3600)
    await watcher.load_initial()
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        await anyio.Path(policy_file).write_bytes(SECOND)

        watcher.request_reload()
        with anyio.fail_after(5):
            await watcher.wait_reloaded()

        assert [rule.name for rule in watcher.current.rules] == ["second", "third"]
        tg.cancel_scope.cancel()


async def test_ttl_refreshes_in_the_background(policy_file: Path) -> None:
    """A short TTL stands in for the default 30 s; the test waits for the reload, not for time."""
    watcher = PolicyWatcher(FilePolicySource(policy_file), ttl=0.01)
    await watcher.load_initial()
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        await anyio.Path(policy_file).write_bytes(SECOND)
        with anyio.fail_after(5):
            while watcher.current.rules[0].name != "second":
                await watcher.wait_reloaded()
        tg.cancel_scope.cancel()


async def test_reload_requested_during_a_reload_is_not_lost() -> None:
    """1. A reload is in flight (its fetch is held). 2. Another request arrives. 3. Release the
    first: a second fetch starts at once, not after the (hour-long) TTL."""
    source = GatedSource(FIRST)
    watcher = PolicyWatcher(source, ttl=3600)
    source.release.set()
    await watcher.load_initial()
    source.started = anyio.Event()

    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        watcher.request_reload()
        with anyio.fail_after(5):
            await source.started.wait()
        assert source.fetches == 2

        source.started = anyio.Event()
        source.content = SECOND
        watcher.request_reload()  # arrives while the first reload waits on its fetch
        source.release.set()
        with anyio.fail_after(5):
            await source.started.wait()
            assert source.fetches == 3
            source.release.set()
            await watcher.wait_reloaded()

        assert [rule.name for rule in watcher.current.rules] == ["second", "third"]
        tg.cancel_scope.cancel()


def test_ttl_must_be_positive(policy_file: Path) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        PolicyWatcher(FilePolicySource(policy_file), ttl=0)
