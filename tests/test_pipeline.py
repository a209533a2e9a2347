"""The hot path in-process, wired as the daemon wires it, over real loopback HTTP (issue 4).

Real parts only: the policy from a file, STS AssumeRole against the moto server through the real
`CredentialCache`/`StsRoleAssumer`, a real SQLite file behind `tests/support/faulty_store.py`'s
wrapper, the real `SessionTracker`, `Pipeline` and `start_server`. The fault wrapper is what lets
one test make the store slow on purpose and show that no request waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import orjson
import pytest
from anyio.abc import TaskGroup

from sentinel.audit import DecisionEntry, DecisionLog, RequestIds, open_decision_log
from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.credentials import CredentialCache, StsRoleAssumer, open_aws, resolve_user, role_session_name
from sentinel.credentials import source_identity as make_source_identity
from sentinel.metrics import Registry
from sentinel.pipeline import Identity, Pipeline
from sentinel.policy import FilePolicySource, Mode, PolicyWatcher
from sentinel.server import Server, start_server
from sentinel.sessions.model import ServerSession, SessionStatus, new_session_id
from sentinel.sessions.sqlite import SqliteSessionStore
from sentinel.sessions.tracker import SessionTracker
from tests.sessions.conftest import FakeClock
from tests.support.faulty_store import FaultyStore
from tests.support.sentinel_proc import ALLOW_POLICY, DENY_POLICY, PROFILE, AwsSandbox

DEADLINE = 30.0
STORE_DELAY = 2.0


@pytest.fixture
def aws_files(sandbox: AwsSandbox, aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reads the sandbox's profile files, like the daemon does."""
    sandbox.ensure_role()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(sandbox.directory / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(sandbox.directory / "aws-credentials"))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)


@dataclass
class Wired:
    server: Server
    token: str
    store: FaultyStore
    tracker: SessionTracker
    template: ServerSession
    watcher: PolicyWatcher
    policy: Path
    registry: Registry


@asynccontextmanager
async def wiring(
    tmp_path: Path,
    clock: Clock = SYSTEM_CLOCK,
    *,
    prefetch: bool = True,
    decision_log: DecisionLog | None = None,
) -> AsyncIterator[Wired]:
    """The daemon's wiring, minus the daemon: policy, cache, tracker, pipeline, listener.

    A context manager the test enters itself, not an async fixture: the task group must be
    entered and left by the same task."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_POLICY)
    registry = Registry()
    watcher = PolicyWatcher(FilePolicySource(policy))
    await watcher.load_initial()
    aws = await open_aws(PROFILE, None, None)
    store = FaultyStore(await SqliteSessionStore.open(tmp_path / "sessions.db"))
    async with aws.sts_client() as sts:
        caller = await resolve_user(sts)
        session_id = new_session_id()
        source_identity = make_source_identity(caller.user, session_id)
        assumer = StsRoleAssumer(
            sts, role_session_name=role_session_name(caller.user), source_identity=source_identity
        )
        async with CredentialCache(assumer, registry=registry) as cache:
            template = ServerSession.start(
                session_id=session_id,
                user=caller.user,
                profile=PROFILE,
                server_instance_id="pipeline-test",
                source_identity=source_identity,
            )
            tracker = SessionTracker(
                store, template, registry=registry, flush_interval=0.05, revocation_poll=0.05
            )
            pipeline = Pipeline(
                identity=Identity(
                    caller.user, PROFILE, aws.role_arn, session_id, source_identity, Mode.SERVER
                ),
                policy=watcher,
                cache=cache,
                tracker=tracker,
                audit=decision_log or open_decision_log(None),
                registry=registry,
                clock=clock,
                server_duration=timedelta(minutes=15),
            )
            if prefetch:
                assert await pipeline.prefetch()
            token = secrets.token_urlsafe(32)
            server = await start_server(pipeline, token=token, metrics=registry)
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(tracker.run)
                    await tracker.start_session()
                    yield Wired(server, token, store, tracker, template, watcher, policy, registry)
                    await _stop(tg, server, tracker, store)
            finally:
                await store.aclose()


async def _stop(tg: TaskGroup, server: Server, tracker: SessionTracker, store: FaultyStore) -> None:
    store.heal()
    await server.shutdown(grace=1)
    await tracker.shutdown(DEADLINE)
    tg.cancel_scope.cancel()


class KeepAlive:
    """One keep-alive connection; `get()` returns (status, body, seconds)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        self._reader, self._writer = reader, writer
        self._request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n".encode()

    @classmethod
    async def open(cls, server: Server, token: str) -> KeepAlive:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        return cls(reader, writer, token)

    async def get(self) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        self._writer.write(self._request)
        async with asyncio.timeout(DEADLINE):
            head = await self._reader.readuntil(b"\r\n\r\n")
            length = int(
                next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
            )
            body = await self._reader.readexactly(length)
        return int(head.split(b" ", 2)[1]), body, time.perf_counter() - started

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def _latencies(client: KeepAlive, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        status, _, seconds = await client.get()
        assert status == 200
        timings.append(seconds)
    return timings


async def test_a_slow_store_does_not_slow_requests(aws_files: None, tmp_path: Path) -> None:
    """1. Fast store: 300 requests on one keep-alive connection; note the latencies.
    2. The store now sleeps 2 s before every call; one more request starts a flush, which hangs.
    3. 300 more requests while that store call is in flight: the median stays within 3x of the
       fast median, and the slowest request is far below the store's 2 s: nothing on the
       request path waits on the store.
    4. The store heals; shutdown flushes everything: request_count == every request served."""
    async with wiring(tmp_path) as wired:
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            fast = await _latencies(client, 300)
            wired.store.slow(STORE_DELAY)
            touches = wired.store.started["touch"]
            await _latencies(client, 1)
            with anyio.fail_after(DEADLINE):
                await wired.store.wait_started("touch", touches + 1)
            slow = await _latencies(client, 300)
            in_flight = wired.store.started["touch"] - wired.store.finished["touch"]
            stats = wired.tracker.statistics()
        finally:
            await client.close()
        assert in_flight >= 1  # the slow phase ran while the store was stuck in a call
        assert stats.queue_depth == 0  # and the worker kept draining meanwhile
        fast_p50, slow_p50 = statistics.median(fast), statistics.median(slow)
        assert slow_p50 <= 3 * fast_p50, (fast_p50, slow_p50)
        assert max(slow) < STORE_DELAY / 4, max(slow)
        wired.store.heal()  # the call already sleeping still finishes its 2 s
        summary = await wired.tracker.shutdown(DEADLINE)
        assert (summary.dropped, summary.unflushed, summary.expired) == (0, 0, True)
        record = await wired.store.inner.get(wired.template.id)
        assert (record.status, record.request_count) == (SessionStatus.EXPIRED, 601)


async def test_only_successful_issuances_touch_the_session(aws_files: None, tmp_path: Path) -> None:
    """1. allow: 200 and one touch queued.
    2. deny (policy reloaded as SIGHUP does): 403 with the rule's reason, no touch.
    3. allow again, then the session is revoked through the store (not the tracker): once the
       tracker has seen it, 403 session revoked, no touch, and no store read on the request path."""
    async with wiring(tmp_path) as wired:
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            assert (await client.get())[0] == 200
            assert wired.tracker.statistics().queued == 1

            wired.policy.write_text(DENY_POLICY)
            assert await wired.watcher.reload()
            status, body, _ = await client.get()
            assert (status, orjson.loads(body)) == (
                403,
                {"Message": "demo profile is closed for maintenance"},
            )
            assert wired.tracker.statistics().queued == 1

            wired.policy.write_text(ALLOW_POLICY)
            assert await wired.watcher.reload()
            await wired.store.inner.revoke(wired.template.id, "test", "incident")
            with anyio.fail_after(DEADLINE):
                await wired.tracker.wait_revoked()
            reads = wired.store.started["get"]
            for _ in range(3):
                status, body, _ = await client.get()
                assert (status, orjson.loads(body)) == (403, {"Message": "session revoked"})
            assert wired.store.started["get"] == reads
            assert wired.tracker.statistics().queued == 1
        finally:
            await client.close()


OFFICE_HOURS_POLICY = """version: "1"
rules:
  - name: office-hours
    effect: allow
    conditions:
      profiles: [demo]
      time: {hours: {start: "09:00", end: "17:00"}, timezone: UTC}
"""


async def test_a_time_window_is_evaluated_on_every_request(aws_files: None, tmp_path: Path) -> None:
    """A decision without time conditions is kept per policy object; one with a time condition
    must not be.
    1. The policy allows 09:00-17:00 UTC; the clock says 16:59:30: 200.
    2. The clock moves to 17:00:30, the same policy object is current: 403 (no rule matched).
    3. The clock moves to the next day at 09:00:30: 200 again."""
    clock = FakeClock(datetime(2026, 11, 23, 16, 59, 30, tzinfo=UTC))
    async with wiring(tmp_path, clock) as wired:
        wired.policy.write_text(OFFICE_HOURS_POLICY)
        assert await wired.watcher.reload()
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            assert (await client.get())[0] == 200
            clock.advance(60)
            status, body, _ = await client.get()
            assert (status, orjson.loads(body)) == (403, {"Message": "no rule matched"})
            clock.advance(16 * 3600)
            assert (await client.get())[0] == 200
        finally:
            await client.close()


async def test_a_cold_request_counts_one_decision(aws_files: None, tmp_path: Path) -> None:
    """1. Start without prefetching: the credential cache is cold.
    2. The first request misses the synchronous path and awaits STS (issue_nowait, then issue).
    3. Two requests later, policy_decisions_total{effect="allow"} is 2, not 3: the cold request
       passed the policy twice but is one decision."""
    async with wiring(tmp_path, prefetch=False) as wired:
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            assert (await client.get())[0] == 200
            assert (await client.get())[0] == 200
        finally:
            await client.close()
        decisions = wired.registry.get("policy_decisions_total")
        assert decisions is not None
        assert decisions.value("allow") == 2


async def test_each_request_logs_one_line_with_every_field_of_its_outcome(
    aws_files: None, tmp_path: Path
) -> None:
    """The decision log behind the real pipeline, over loopback HTTP (issue 12: the pipeline
    passes pre-encoded tails, encoded once per outcome).
    1. Nothing prefetched: the first request is a cold allow (cache_hit false), the next two hot.
    2. The policy is replaced by a deny and reloaded: one request is refused (403).
    3. The log is closed: four lines, every DecisionEntry field in its order, each line's fields
       those of its own outcome (the policy hash changes with the reload), unique request ids."""
    path = tmp_path / "decisions.jsonl"
    log = open_decision_log(str(path), request_ids=RequestIds("0000beef"))
    async with wiring(tmp_path, prefetch=False, decision_log=log) as wired:
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            statuses = [(await client.get())[0] for _ in range(3)]
            allow_hash = wired.watcher.current.content_hash
            wired.policy.write_text(DENY_POLICY)
            assert await wired.watcher.reload()
            statuses.append((await client.get())[0])
        finally:
            await client.close()
        await log.aclose()
    assert statuses == [200, 200, 200, 403]
    entries = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    fields = [field.name for field in dataclasses.fields(DecisionEntry)]
    assert [list(entry) for entry in entries] == [fields] * 4
    assert [e["request_id"] for e in entries] == [f"0000beef-{n}" for n in range(1, 5)]
    assert [(e["status"], e["effect"], e["cache_hit"]) for e in entries] == [
        (200, "allow", False),
        (200, "allow", True),
        (200, "allow", True),
        (403, "deny", False),
    ]
    assert [e["rule"] for e in entries] == ["allow-demo"] * 3 + ["deny-demo"]
    assert entries[0]["policy_hash"] == allow_hash != entries[3]["policy_hash"]
    assert entries[3]["reason"] == "demo profile is closed for maintenance"
    assert entries[3]["expiration"] is None
    assert all(e["expiration"].endswith("Z") for e in entries[:3])
    assert len({e["time"] for e in entries}) == 4  # stamped per request, not per outcome
