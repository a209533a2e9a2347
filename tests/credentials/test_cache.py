"""The credential cache against a real STS (moto over HTTP): single-flight, refresh-ahead, failure.

Time is a `ManualClock`; moto's real-time expirations are moved onto its timeline by
`ControlledSource`. Failures are real STS errors, injected at the HTTP proxy in front of moto.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import pytest

from sentinel.credentials import (
    CacheKey,
    CredentialCache,
    Credentials,
    RefreshPolicy,
    StsRoleAssumer,
    open_aws,
)
from sentinel.errors import CredentialError
from sentinel.metrics import Registry
from tests.credentials.support import (
    NO_RETRY,
    ControlledSource,
    ManualClock,
    StsProxy,
    moto_assumed_roles,
)

SESSION_ID = "00112233445566ff"
FLOOR = RefreshPolicy().safe_floor
DENIED = (403, "AccessDenied", "not authorized; secret=hunter2")


@asynccontextmanager
async def real_source(role_arn: str, clock: ManualClock | None) -> AsyncIterator[ControlledSource]:
    """The production `StsRoleAssumer` on the default chain, wrapped for counting and gating."""
    ctx = await open_aws(None, None, role_arn, client_config=NO_RETRY)
    async with ctx.sts_client() as sts:
        assumer = StsRoleAssumer(
            sts, role_session_name="sentinel-moto", source_identity=f"sentinel.moto.{SESSION_ID}"
        )
        yield ControlledSource(assumer, clock)


def assert_servable(credentials: Credentials | None, clock: ManualClock) -> Credentials:
    """Never empty, never expired, never below the floor when served from the cache."""
    assert credentials is not None
    assert credentials.remaining(clock.now()) > FLOOR.total_seconds()
    return credentials


async def test_100_concurrent_cold_requests_cause_one_assume_role(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock, aws_endpoint: str
) -> None:
    """Given a cold cache, when 100 requests arrive while the first AssumeRole is held, then
    exactly one AssumeRole is made (at the wrapper, on the wire and in moto) and all 100 get
    the same credentials."""
    key = CacheKey(role_arn, 900)
    results: list[tuple[Credentials, bool]] = []
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:

        async def request() -> None:
            results.append(await cache.get(key))

        source.gate = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(request)
                await source.entered.wait()
                await anyio.wait_all_tasks_blocked()
                assert cache.statistics().in_flight == 1
                source.gate.set()

        stats = cache.statistics()
    assert len(results) == 100
    assert len({id(credentials) for credentials, _ in results}) == 1
    assert not any(hit for _, hit in results)
    assert source.calls == 1
    assert len(sts_proxy.actions("AssumeRole")) == 1
    assert await anyio.to_thread.run_sync(moto_assumed_roles, aws_endpoint, role_arn) == 1
    assert (stats.misses, stats.hits, stats.sts_calls, stats.entries, stats.in_flight) == (100, 0, 1, 1, 0)


async def test_all_waiters_of_a_failed_fetch_get_the_error(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given STS denying, when 100 cold requests arrive together, then one AssumeRole is made and
    every request gets a CredentialError naming only the error code."""
    key = CacheKey(role_arn, 900)
    errors: list[CredentialError] = []
    sts_proxy.error = DENIED
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:

        async def request() -> None:
            try:
                await cache.get(key)
            except CredentialError as exc:
                errors.append(exc)

        source.gate = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(request)
                await source.entered.wait()
                await anyio.wait_all_tasks_blocked()
                source.gate.set()
        stats = cache.statistics()
    assert len(errors) == 100
    assert {str(exc) for exc in errors} == {f"STS AssumeRole of {role_arn} failed: AccessDenied"}
    assert len({id(exc) for exc in errors}) == 100
    assert source.calls == 1
    assert len(sts_proxy.actions("AssumeRole")) == 1
    assert (stats.sts_calls, stats.sts_failures, stats.entries) == (1, 1, 0)


async def test_a_cancelled_request_does_not_cancel_the_fetch(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given two requests waiting on one AssumeRole, when the first is cancelled (client went
    away), then the fetch carries on and the second request gets the credentials."""
    key = CacheKey(role_arn, 900)
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:
        source.gate = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as first:
                    tg.start_soon(cache.get, key)
                    await source.entered.wait()
                    first.cancel()
                result: list[tuple[Credentials, bool]] = []

                async def second() -> None:
                    result.append(await cache.get(key))

                tg.start_soon(second)
                await anyio.wait_all_tasks_blocked()
                source.gate.set()
    assert source.cancelled == 0
    assert source.calls == 1
    assert_servable(result[0][0], clock)


async def test_refresh_ahead_then_failure_keeps_serving_until_the_floor(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Given 15-minute credentials:
    1. a cold get fetches; get_nowait serves them without another call;
    2. inside the 12-minute refresh window a background refresh replaces them;
    3. with STS denying, a failed refresh keeps serving the cached ones (one warning per failure,
       one attempt per backoff period, not one per request);
    4. below the 5-minute floor nothing is served and a request gets a CredentialError;
    5. once STS recovers a request gets fresh credentials.
    Nothing expired or below the floor is ever returned, and no secret is ever logged."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="sentinel")
    key = CacheKey(role_arn, 900)
    issued: list[Credentials] = []
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:
        first, hit = await cache.get(key)
        issued.append(first)
        assert not hit
        assert cache.get_nowait(key) is assert_servable(first, clock)
        assert await cache.get(key) == (first, True)

        clock.advance(timedelta(minutes=2))  # 13 min left: outside the window
        assert cache.get_nowait(key) is first
        assert cache.statistics().in_flight == 0

        clock.advance(timedelta(minutes=2))  # 11 min left: refresh, but answer at once
        assert cache.get_nowait(key) is first
        assert cache.statistics().in_flight == 1
        assert cache.get_nowait(key) is first  # the refresh in flight is not started twice
        await cache.wait_idle()
        second = assert_servable(cache.get_nowait(key), clock)
        issued.append(second)
        assert second.access_key_id != first.access_key_id
        assert source.calls == 2
        assert cache.statistics().background_refreshes == 1

        sts_proxy.error = DENIED
        clock.advance(timedelta(minutes=4))  # 11 min left on the second
        assert cache.get_nowait(key) is second
        await cache.wait_idle()
        assert source.calls == 3
        for _ in range(50):  # within the backoff: served from cache, no new STS call
            assert cache.get_nowait(key) is second
        assert (await cache.get(key)) == (second, True)
        assert cache.statistics().in_flight == 0
        assert source.calls == 3

        clock.advance(RefreshPolicy().retry_backoff + timedelta(seconds=1))
        assert cache.get_nowait(key) is assert_servable(second, clock)
        await cache.wait_idle()
        assert source.calls == 4

        clock.advance(timedelta(minutes=6))  # < 5 min left: not servable any more
        assert cache.get_nowait(key) is None
        with pytest.raises(CredentialError, match="AccessDenied"):
            await cache.get(key)
        assert source.calls == 5
        stats = cache.statistics()
        assert (stats.entries, stats.sts_failures, stats.consecutive_failures) == (0, 3, 3)

        sts_proxy.error = None
        third, hit = await cache.get(key)
        issued.append(assert_servable(third, clock))
        assert not hit
        stats = cache.statistics()
        assert (stats.consecutive_failures, stats.last_refresh, stats.sts_calls) == (0, clock.now(), 6)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("sentinel")]
    assert len(warnings) == 3
    assert all("\n" not in r.getMessage() and "AccessDenied" in r.getMessage() for r in warnings)
    assert "serving cached credentials" in warnings[0].getMessage()
    assert "no servable credentials" in warnings[2].getMessage()
    for credentials in issued:
        assert credentials.secret_access_key not in caplog.text
        assert credentials.session_token not in caplog.text
    assert "hunter2" not in caplog.text


async def test_a_slow_refresh_never_makes_a_request_wait(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given a refresh held in flight, requests inside the window are answered from the cache at
    once (by get and get_nowait) until the refresh lands."""
    key = CacheKey(role_arn, 900)
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:
        first, _ = await cache.get(key)
        source.gate = anyio.Event()
        clock.advance(timedelta(minutes=5))
        with anyio.fail_after(5):
            for _ in range(10):
                assert await cache.get(key) == (first, True)
                assert cache.get_nowait(key) is first
        assert cache.statistics().in_flight == 1
        source.gate.set()
        await cache.wait_idle()
        assert cache.get_nowait(key) is not first
        assert source.calls == 2


async def test_get_nowait_from_a_protocol_callback_starts_the_refresh(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """The server calls get_nowait from asyncio.Protocol callbacks, outside any task: the
    background refresh must still start and complete."""
    key = CacheKey(role_arn, 900)
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:
        first, _ = await cache.get(key)
        clock.advance(timedelta(minutes=4))
        answered = anyio.Event()
        served: list[Credentials | None] = []

        def callback() -> None:
            served.append(cache.get_nowait(key))
            answered.set()

        asyncio.get_running_loop().call_soon(callback)
        with anyio.fail_after(5):
            await answered.wait()
            await cache.wait_idle()
        assert served == [first]
        assert source.calls == 2
        assert cache.get_nowait(key) is not first


async def test_long_credentials_refresh_at_half_life(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given 1-hour credentials, the refresh starts when half their life is left (30 min), not at
    the 12-minute window, so an STS outage is ridden out for longer."""
    key = CacheKey(role_arn, 3600)
    async with real_source(role_arn, clock) as source, CredentialCache(source, clock=clock) as cache:
        first, _ = await cache.get(key)
        assert sts_proxy.actions("AssumeRole")[0]["DurationSeconds"] == "3600"
        clock.advance(timedelta(minutes=29))
        assert cache.get_nowait(key) is first
        assert cache.statistics().in_flight == 0
        clock.advance(timedelta(minutes=2))
        assert cache.get_nowait(key) is first
        await cache.wait_idle()
        assert source.calls == 2


async def test_credentials_already_expired_by_the_local_clock_are_refused(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given a local clock 16 minutes ahead of STS, fresh 15-minute credentials are already
    expired here: the request gets a CredentialError, never the expired credentials."""
    clock.advance(timedelta(minutes=16))
    async with real_source(role_arn, None) as source, CredentialCache(source, clock=clock) as cache:
        with pytest.raises(CredentialError, match="already expired"):
            await cache.get(CacheKey(role_arn, 900))
        assert cache.statistics().entries == 0


async def test_a_broken_source_fails_requests_not_the_cache(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given a source that raises something unexpected (with a secret in its text), waiters get a
    CredentialError naming only the type, and the cache keeps working afterwards."""

    class Broken:
        async def fetch(self, role_arn: str, duration_seconds: int) -> Credentials:
            raise RuntimeError("secret=hunter2")

    async with CredentialCache(Broken(), clock=clock) as cache:
        with pytest.raises(CredentialError) as caught:
            await cache.get(CacheKey(role_arn, 900))
        assert str(caught.value) == f"credential fetch for {role_arn} failed: RuntimeError"
        with pytest.raises(CredentialError):
            await cache.get(CacheKey(role_arn, 900))
        assert cache.statistics().sts_failures == 2


async def test_close_cancels_the_fetch_and_releases_its_waiters(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    """Given a request waiting on a held AssumeRole, when the cache closes, the fetch is cancelled,
    the request gets a CredentialError, and later requests are refused."""
    key = CacheKey(role_arn, 900)
    errors: list[CredentialError] = []
    async with real_source(role_arn, clock) as source:
        source.gate = anyio.Event()
        cache = CredentialCache(source, clock=clock)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await cache.__aenter__()

                async def request() -> None:
                    try:
                        await cache.get(key)
                    except CredentialError as exc:
                        errors.append(exc)

                tg.start_soon(request)
                await source.entered.wait()
                await anyio.wait_all_tasks_blocked()
                await cache.aclose()
        await cache.aclose()  # idempotent
    assert [str(exc) for exc in errors] == ["the credential cache is closed"]
    assert source.cancelled == 1
    with pytest.raises(CredentialError, match="closed"):
        await cache.get(key)
    assert cache.get_nowait(key) is None


async def test_nothing_is_served_after_close(role_arn: str, sts_proxy: StsProxy, clock: ManualClock) -> None:
    """Given cached credentials, once the cache is closed neither get_nowait nor get returns them."""
    key = CacheKey(role_arn, 900)
    async with real_source(role_arn, clock) as source:
        async with CredentialCache(source, clock=clock) as cache:
            await cache.get(key)
            assert cache.get_nowait(key) is not None
        assert cache.get_nowait(key) is None
        with pytest.raises(CredentialError, match="closed"):
            await cache.get(key)
        assert cache.statistics().entries == 0


async def test_counters_reach_the_metrics_registry(
    role_arn: str, sts_proxy: StsProxy, clock: ManualClock
) -> None:
    registry = Registry()
    key = CacheKey(role_arn, 900)
    async with (
        real_source(role_arn, clock) as source,
        CredentialCache(source, clock=clock, registry=registry) as cache,
    ):
        await cache.get(key)
        cache.get_nowait(key)
        await cache.get(key)
        sts_proxy.error = DENIED
        with pytest.raises(CredentialError):
            await cache.get(CacheKey(role_arn, 1800))
    text = registry.render()
    for line in (
        "sentinel_credential_cache_hits_total 2",
        "sentinel_credential_cache_misses_total 2",
        "sentinel_sts_assume_role_calls_total 2",
        "sentinel_sts_assume_role_failures_total 1",
    ):
        assert line in text.splitlines()


def test_refresh_policy_validation_and_windows() -> None:
    policy = RefreshPolicy()
    assert policy.window_for(timedelta(minutes=15)) == timedelta(minutes=12)
    assert policy.window_for(timedelta(hours=1)) == timedelta(minutes=30)
    assert policy.window_for(timedelta(hours=12)) == timedelta(hours=6)
    assert policy.window_for(timedelta(minutes=10)) == timedelta(minutes=5)
    with pytest.raises(ValueError, match="safe_floor"):
        RefreshPolicy(refresh_window=timedelta(minutes=5), safe_floor=timedelta(minutes=5))
    with pytest.raises(ValueError, match="safe_floor"):
        RefreshPolicy(safe_floor=timedelta(0))
    with pytest.raises(ValueError, match="retry_backoff"):
        RefreshPolicy(retry_backoff=timedelta(0))


async def test_a_cache_opens_once(clock: ManualClock) -> None:
    class Never:
        async def fetch(self, role_arn: str, duration_seconds: int) -> Credentials:
            raise AssertionError("not called")

    cache = CredentialCache(Never(), clock=clock)
    async with cache:
        pass
    with pytest.raises(RuntimeError, match="opened once"):
        await cache.__aenter__()
