"""The hot path in-process, wired as the daemon wires it, over real loopback HTTP (issue 4).

Real parts only, built by `sentinel/assembly.py` as for the daemon: the policy from a file, STS
AssumeRole against the moto server through the real `CredentialCache`/`StsRoleAssumer`, a real
SQLite file behind `harness/faulty_store.py`'s wrapper, the real `SessionTracker`, `Pipeline`
and listener. The fault wrapper is what lets one test make the store slow on purpose and show
that no request waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
import pytest

from harness.faulty_store import FaultyStore
from harness.policies import ALLOW_POLICY, DENY_POLICY
from harness.sandbox import PROFILE, AwsSandbox
from sentinel.assembly import Hooks, assemble
from sentinel.audit import DecisionEntry
from sentinel.clock import SYSTEM_CLOCK, Clock
from sentinel.config import ServerConfig
from sentinel.metrics import Registry
from sentinel.policy import Mode, PolicyWatcher
from sentinel.server import Server
from sentinel.sessions.errors import SessionNotFound
from sentinel.sessions.model import ServerSession, SessionStatus
from sentinel.sessions.sqlite import SqliteSessionStore
from sentinel.sessions.store import SessionStore
from sentinel.sessions.tracker import SessionTracker
from tests.sessions.conftest import FakeClock

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
    decision_log: Path | None = None,
) -> AsyncIterator[Wired]:
    """The daemon's assembly, minus the daemon: policy, cache, tracker, pipeline, listener, with
    the store behind a `FaultyStore` and the pipeline on `clock`.

    A context manager the test enters itself, not an async fixture: the task group must be
    entered and left by the same task."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_POLICY)
    config = ServerConfig(
        profile=PROFILE,
        policy_file=policy,
        server_instance_id="pipeline-test",
        session_db=tmp_path / "sessions.db",
        flush_interval=0.05,
        revocation_poll=0.05,
        shutdown_timeout=DEADLINE,
        lazy=not prefetch,
        decision_log=str(decision_log) if decision_log is not None else None,
    )
    stores: list[FaultyStore] = []

    def faulty(inner: SessionStore) -> SessionStore:
        stores.append(FaultyStore(inner))
        return stores[-1]

    async with assemble(config, Mode.SERVER, hooks=Hooks(clock=clock, wrap_store=faulty)) as assembly:
        assert isinstance(assembly.tracker, SessionTracker)
        (store,) = stores
        try:
            yield Wired(
                assembly.listener,
                assembly.token,
                store,
                assembly.tracker,
                assembly.session,
                assembly.watcher,
                policy,
                assembly.registry,
            )
        finally:
            store.heal()


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
        # The tracker opened the store, so its shutdown closed it: read the file afresh.
        async with await SqliteSessionStore.open(tmp_path / "sessions.db") as reader:
            record = await reader.get(wired.template.id)
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


async def test_a_deleted_record_closes_the_gate_with_its_own_message(aws_files: None, tmp_path: Path) -> None:
    """Issue 10: a missing record is not a licence.
    1. allow: 200. 2. the record is deleted through the store (not the tracker).
    3. once the tracker has noticed (its idle poll), every request gets 403 "session record
       missing", with no touch; the record is not recreated."""
    async with wiring(tmp_path) as wired:
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            assert (await client.get())[0] == 200
            await wired.tracker.flush()
            await wired.store.inner.delete(wired.template.id)
            with anyio.fail_after(DEADLINE):
                await wired.tracker.wait_revoked()
            for _ in range(3):
                status, body, _ = await client.get()
                assert (status, orjson.loads(body)) == (403, {"Message": "session record missing"})
            assert wired.tracker.statistics().queued == 1
            with pytest.raises(SessionNotFound):
                await wired.store.inner.get(wired.template.id)
            assert wired.store.started["create"] == 1
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
    async with wiring(tmp_path, prefetch=False, decision_log=path) as wired:
        client = await KeepAlive.open(wired.server, wired.token)
        try:
            statuses = [(await client.get())[0] for _ in range(3)]
            allow_hash = wired.watcher.current.content_hash
            wired.policy.write_text(DENY_POLICY)
            assert await wired.watcher.reload()
            statuses.append((await client.get())[0])
        finally:
            await client.close()
    # Leaving the assembly closed the log: every line is in the file.
    assert statuses == [200, 200, 200, 403]
    entries = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    fields = [field.name for field in dataclasses.fields(DecisionEntry)]
    assert [list(entry) for entry in entries] == [fields] * 4
    prefix = entries[0]["request_id"].rsplit("-", 1)[0]
    assert [e["request_id"] for e in entries] == [f"{prefix}-{n}" for n in range(1, 5)]
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
