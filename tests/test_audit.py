"""The decision log against real files, real stderr and a real full device."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import resource
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import orjson
import pytest

from sentinel.audit import (
    MAX_BATCH,
    DecisionEntry,
    DecisionLogger,
    DecisionLogStatistics,
    LineFormatter,
    NullDecisionLogger,
    RequestIds,
    encode_entry,
    encode_tail,
    open_decision_log,
)
from sentinel.errors import ConfigError
from sentinel.metrics import Registry

NOW = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
EXPIRES = datetime(2025, 3, 4, 5, 21, 7, tzinfo=UTC)
ALLOW = {
    "time": "2025-03-04T05:06:07.123456Z",
    "request_id": "r-1",
    "user": "alice",
    "profile": "prod",
    "effect": "allow",
    "rule": "ops-hours",
    "rule_index": 0,
    "reason": "ops on call",
    "mode": "server",
    "policy_source": "file:/etc/sentinel/policy.yaml",
    "policy_hash": "sha256:0f1e2d",
    "status": 200,
    "session_id": "0123456789abcdef",
    "source_identity": "sentinel:alice:0123456789abcdef",
    "role_arn": "arn:aws:iam::123456789012:role/prod",
    "expiration": "2025-03-04T05:21:07Z",
    "cache_hit": True,
    "caller_uid": 1000,
    "caller_user": "alice",
}


def allow(request_id: str = "r-1", **changes: Any) -> DecisionEntry:
    fields: dict[str, Any] = {
        **ALLOW,
        "time": NOW,
        "expiration": EXPIRES,
        "request_id": request_id,
        **changes,
    }
    return DecisionEntry(**fields)


def deny(request_id: str) -> DecisionEntry:
    return DecisionEntry(
        time=NOW,
        request_id=request_id,
        user="mallory",
        profile="prod",
        effect="deny",
        rule=None,
        rule_index=None,
        reason="no rule matched",
        mode="server",
        policy_source="file:/etc/sentinel/policy.yaml",
        policy_hash="sha256:0f1e2d",
        status=403,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition the writer brings about, bounded so a bug fails instead of hanging."""
    with anyio.fail_after(5):
        # Polled: nothing signals "the writer thread has finished a batch" except the counters.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


class FakeClock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def now(self) -> datetime:
        return NOW

    def monotonic(self) -> float:
        return self.seconds


async def test_entries_are_written_as_one_json_object_per_line_with_all_fields(tmp_path: Path) -> None:
    """Run the writer, log an allow and a deny, wait until written, close: two exact JSON lines."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLogger(str(path))
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
        log.log_nowait(allow("r-1"))
        log.log_nowait(deny("r-2"))
        await until(lambda: log.statistics().written == 2)
        await log.aclose()  # run() returns on its own once the log is closed
    assert path.read_bytes().count(b"\n") == 2
    first, second = lines(path)
    assert first == ALLOW
    assert list(first) == list(ALLOW)  # field order is the documented order
    assert second == {
        **{key: None for key in ("rule", "rule_index", "session_id", "source_identity", "role_arn")},
        **{"expiration": None, "cache_hit": None, "caller_uid": None, "caller_user": None},
        "time": "2025-03-04T05:06:07.123456Z",
        "request_id": "r-2",
        "user": "mallory",
        "profile": "prod",
        "effect": "deny",
        "reason": "no rule matched",
        "mode": "server",
        "policy_source": "file:/etc/sentinel/policy.yaml",
        "policy_hash": "sha256:0f1e2d",
        "status": 403,
    }
    assert log.statistics() == DecisionLogStatistics(written=2, dropped=0, pending=0, write_errors=0)


async def test_times_in_other_zones_and_naive_times_are_logged_in_utc(tmp_path: Path) -> None:
    path = tmp_path / "log"
    zero = timezone(timedelta(0), "UTC+0")  # zero offset but not datetime.UTC itself
    async with DecisionLogger(str(path)) as log:
        log.log_nowait(allow(time=NOW.astimezone(timezone(timedelta(hours=2))), expiration=None))
        log.log_nowait(allow(time=NOW.replace(tzinfo=None), expiration=EXPIRES.astimezone(zero)))
    first, second = lines(path)
    assert (first["time"], first["expiration"]) == (ALLOW["time"], None)
    assert (second["time"], second["expiration"]) == (ALLOW["time"], ALLOW["expiration"])


async def test_dash_writes_to_stderr_and_leaves_it_open(capfd: pytest.CaptureFixture[str]) -> None:
    """Log to '-', close: the line is on file descriptor 2, which is still usable afterwards."""
    async with DecisionLogger("-") as log:
        log.log_nowait(allow("r-9"))
    os.write(2, b"still open\n")
    err = capfd.readouterr().err.splitlines()
    assert orjson.loads(err[0])["request_id"] == "r-9"
    assert err[1] == "still open"


async def test_full_buffer_drops_counts_and_warns_once_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No writer running, capacity 3: log 5 -> 3 pending, 2 dropped (the newest), one warning."""
    caplog.set_level(logging.WARNING, logger="sentinel.audit")
    registry = Registry()
    path = tmp_path / "log"
    log = DecisionLogger(str(path), capacity=3, registry=registry, clock=FakeClock())
    for n in range(5):
        log.log_nowait(allow(f"r-{n}"))
    assert log.statistics() == DecisionLogStatistics(written=0, dropped=2, pending=3, write_errors=0)
    assert [r.getMessage() for r in caplog.records] == [
        "decision log buffer is full or closed; dropping entries"
    ]
    await log.aclose()
    assert [line["request_id"] for line in lines(path)] == ["r-0", "r-1", "r-2"]
    rendered = registry.render()
    assert "sentinel_decision_log_dropped_total 2\n" in rendered
    assert "sentinel_decision_log_written_total 3\n" in rendered


async def test_shutdown_flush_writes_everything_pending_in_order(tmp_path: Path) -> None:
    """Queue several batches' worth with the writer running, close at once: every line, in order."""
    path = tmp_path / "log"
    total = MAX_BATCH * 2 + 7
    log = DecisionLogger(str(path), capacity=total)
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
        for n in range(total):
            log.log_nowait(allow(f"r-{n}"))
        await log.aclose(timeout=60)
    assert [line["request_id"] for line in lines(path)] == [f"r-{n}" for n in range(total)]
    log.log_nowait(allow("late"))  # after close: counted, never written, never raises
    assert log.statistics() == DecisionLogStatistics(written=total, dropped=1, pending=0, write_errors=0)


async def test_what_is_pending_at_the_shutdown_deadline_is_counted_as_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadline already passed: nothing more is written, the 4 pending entries count as dropped."""
    caplog.set_level(logging.WARNING, logger="sentinel.audit")
    path = tmp_path / "log"
    log = DecisionLogger(str(path))
    for n in range(4):
        log.log_nowait(allow(f"r-{n}"))
    await log.aclose(timeout=0)
    assert path.read_bytes() == b""
    assert log.statistics() == DecisionLogStatistics(written=0, dropped=4, pending=0, write_errors=0)
    assert "decision log closed with 4 entries unwritten" in caplog.text


async def test_write_error_is_counted_warned_rate_limited_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/dev/full fails every write: entries count as dropped, errors counted, one warning a minute."""
    caplog.set_level(logging.WARNING, logger="sentinel.audit")
    clock = FakeClock()
    log = DecisionLogger("/dev/full", clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
        for n in range(3):
            log.log_nowait(allow(f"r-{n}"))
            await until(lambda: log.statistics().pending == 0)
        clock.seconds += 61
        log.log_nowait(allow("r-3"))
        await until(lambda: log.statistics().pending == 0)
        await log.aclose()
    assert log.statistics() == DecisionLogStatistics(written=0, dropped=4, pending=0, write_errors=4)
    assert [r.getMessage() for r in caplog.records] == [
        "decision log: write /dev/full: No space left on device",
        "decision log: write /dev/full: No space left on device (2 similar warnings suppressed)",
    ]


async def test_after_a_partial_write_the_next_entry_starts_on_a_fresh_line(tmp_path: Path) -> None:
    """A file size limit cuts a batch mid-line; later entries still parse, each on its own line.

    RLIMIT_FSIZE makes write(2) write up to the limit and then fail (EFBIG; Python ignores SIGXFSZ):
    a real partial write, as a disk filling up mid-write produces.
    """
    path = tmp_path / "log"
    log = DecisionLogger(str(path))
    log.log_nowait(allow("r-0"))
    await log.flush()
    size = path.stat().st_size
    log.log_nowait(allow("r-1"))
    log.log_nowait(allow("r-2"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, hard))
    try:
        await log.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.stat().st_size == size + size // 2
    log.log_nowait(allow("r-3"))
    await log.aclose()
    raw = path.read_bytes().splitlines()
    assert len(raw) == 3
    assert orjson.loads(raw[0])["request_id"] == "r-0"
    assert orjson.loads(raw[2])["request_id"] == "r-3"
    assert log.statistics() == DecisionLogStatistics(written=2, dropped=2, pending=0, write_errors=1)


def test_an_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^--decision-log {re.escape(str(tmp_path))}: Is a directory$"):
        DecisionLogger(str(tmp_path))
    with pytest.raises(ConfigError):
        DecisionLogger(str(tmp_path / "missing" / "log"))


async def test_new_file_is_0600_and_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    new, existing = tmp_path / "new", tmp_path / "existing"
    existing.write_bytes(b"")
    existing.chmod(0o640)
    for path in (new, existing):
        await DecisionLogger(str(path)).aclose()
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640


async def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    """Write, rotate (rename), reopen with nothing pending -> fresh 0600 file; later lines land there."""
    path = tmp_path / "log"
    log = DecisionLogger(str(path))
    log.log_nowait(allow("before"))
    await log.flush()
    path.rename(tmp_path / "log.1")
    log.reopen()
    await log.flush()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log.log_nowait(allow("after"))
    await log.aclose()
    assert [line["request_id"] for line in lines(tmp_path / "log.1")] == ["before"]
    assert [line["request_id"] for line in lines(path)] == ["after"]


async def test_failed_reopen_keeps_writing_to_the_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log's directory is moved away, then reopen: counted and warned, no line lost."""
    caplog.set_level(logging.WARNING, logger="sentinel.audit")
    directory = tmp_path / "logs"
    directory.mkdir()
    log = DecisionLogger(str(directory / "log"))
    log.reopen()
    directory.rename(tmp_path / "moved")
    log.log_nowait(allow("r-1"))
    await log.aclose()
    assert [line["request_id"] for line in lines(tmp_path / "moved" / "log")] == ["r-1"]
    assert log.statistics() == DecisionLogStatistics(written=1, dropped=0, pending=0, write_errors=1)
    assert "No such file or directory" in caplog.text


async def test_an_unserializable_entry_loses_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "log"
    async with DecisionLogger(str(path)) as log:
        log.log_nowait(allow("r-1"))
        log.log_nowait(allow("r-2", user=cast(str, object())))  # a caller's type bug
        log.log_nowait(allow("r-3"))
    assert [line["request_id"] for line in lines(path)] == ["r-1", "r-3"]
    assert log.statistics() == DecisionLogStatistics(written=2, dropped=1, pending=0, write_errors=1)


async def test_no_field_can_carry_a_secret(tmp_path: Path) -> None:
    """The entry has exactly the documented fields; a credential cannot be passed in, so never logged."""
    names = {field.name for field in dataclasses.fields(DecisionEntry)}
    assert names == set(ALLOW)
    assert not [name for name in names if re.search("key|secret|token|password|credential", name)]
    access_key, secret_key, session_token = "ASIAFAKEFAKEFAKE", "fake/secret/AbCdEf", "FwoGZXIvYXdzEFAKE"
    for field in ("access_key_id", "secret_access_key", "session_token", "token"):
        with pytest.raises(TypeError):
            DecisionEntry(**{**ALLOW, field: secret_key})  # type: ignore[arg-type]
    path = tmp_path / "log"
    async with DecisionLogger(str(path)) as log:
        log.log_nowait(allow("r-1"))
    data = path.read_bytes()
    assert data
    for secret in (access_key, secret_key, session_token):
        assert secret.encode() not in data
    with pytest.raises(dataclasses.FrozenInstanceError):
        allow().user = "eve"  # type: ignore[misc]


def test_request_ids_are_unique_and_carry_a_random_process_prefix() -> None:
    ids = RequestIds()
    many = [ids.new_request_id() for _ in range(10_000)]
    assert len(set(many)) == len(many)
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", value) for value in many)
    assert RequestIds().prefix != RequestIds().prefix != ids.prefix  # 2**-32 odds of a false failure
    assert RequestIds("cafe0001").new_request_id() == "cafe0001-1"


async def test_no_destination_gives_a_no_op_logger_with_the_same_interface() -> None:
    log = open_decision_log(None)
    assert isinstance(log, NullDecisionLogger)
    assert not log.enabled
    assert re.fullmatch(r"[0-9a-f]{8}-1", log.new_request_id())
    log.log_nowait(allow())
    log.reopen()
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
    await log.flush()
    await log.aclose()
    assert log.statistics() == DecisionLogStatistics(0, 0, 0, 0)


async def test_open_decision_log_with_a_path(tmp_path: Path) -> None:
    ids = RequestIds("00000000")
    log = open_decision_log(str(tmp_path / "log"), request_ids=ids)
    assert isinstance(log, DecisionLogger)
    assert log.enabled
    assert log.new_request_id() == "00000000-1"
    await log.aclose()


# -- issue 12: the hot path appends a pre-encoded tail ---------------------------------------------


def _nanoseconds(moment: datetime) -> int:
    return int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + moment.microsecond * 1000


@pytest.mark.parametrize("moment", [NOW, NOW.replace(microsecond=0)], ids=["fraction", "whole-second"])
def test_a_line_from_a_tail_is_byte_for_byte_the_line_of_the_entry(moment: datetime) -> None:
    """Format (time, request number, encode_tail(entry)) and encode the whole entry with that
    time and request id: the same bytes, for an allow and a deny (nulls), with and without a
    fraction of a second (orjson leaves it out when it is zero)."""
    for entry in (allow(), deny("r-0")):
        # Sub-microsecond digits are dropped, as datetime has none.
        line = LineFormatter("cafe0001").line(_nanoseconds(moment) + 789, 0x2A, encode_tail(entry))
        assert line == encode_entry(dataclasses.replace(entry, time=moment, request_id="cafe0001-2a"))


async def test_encoded_lines_are_stamped_numbered_and_carry_every_field(tmp_path: Path) -> None:
    """Run the writer, log three pre-encoded lines, wait until written: every field of the entry
    in its order, the time of logging in UTC, request ids from the shared counter."""
    path = tmp_path / "log"
    ids = RequestIds("0badcafe")
    log = DecisionLogger(str(path), request_ids=ids)
    tail = encode_tail(allow())
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
        before = datetime.now(UTC)
        for _ in range(3):
            log.log_encoded_nowait(tail)
        await until(lambda: log.statistics().written == 3)
        after = datetime.now(UTC)
        assert ids.new_request_id() == "0badcafe-4"  # the counter is shared, never reused
        await log.aclose()
    entries = lines(path)
    assert [entry["request_id"] for entry in entries] == ["0badcafe-1", "0badcafe-2", "0badcafe-3"]
    for entry in entries:
        assert list(entry) == list(ALLOW)
        assert {**entry, "time": None, "request_id": None} == {**ALLOW, "time": None, "request_id": None}
        stamped = datetime.fromisoformat(entry["time"])
        assert entry["time"].endswith("Z")
        assert before - timedelta(microseconds=1) <= stamped <= after


async def test_encoded_lines_on_a_full_buffer_drop_count_and_warn_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No writer running, capacity 3: 5 lines -> 3 pending, 2 dropped; the metrics say so (a
    pending gauge too), one rate-limited warning; the kept lines have ids 1-3 (a dropped line
    takes no number)."""
    caplog.set_level(logging.WARNING, logger="sentinel.audit")
    registry = Registry()
    path = tmp_path / "log"
    log = DecisionLogger(
        str(path), capacity=3, registry=registry, clock=FakeClock(), request_ids=RequestIds("00000001")
    )
    tail = encode_tail(allow())
    for _ in range(5):
        log.log_encoded_nowait(tail)
    assert log.statistics() == DecisionLogStatistics(written=0, dropped=2, pending=3, write_errors=0)
    rendered = registry.render()
    assert "sentinel_decision_log_dropped_total 2\n" in rendered
    assert "sentinel_decision_log_pending 3\n" in rendered
    assert [r.getMessage() for r in caplog.records] == [
        "decision log buffer is full or closed; dropping entries"
    ]
    await log.aclose()
    assert [line["request_id"] for line in lines(path)] == [f"00000001-{n}" for n in (1, 2, 3)]
    assert "sentinel_decision_log_pending 0\n" in registry.render()


async def test_rotation_in_the_middle_of_a_stream_loses_and_repeats_no_line(tmp_path: Path) -> None:
    """logrotate's order while lines keep coming: rename, then reopen. 3000 lines logged in
    bursts of 100 with the writer running: the first 500 are written, 500 more are pending when
    the file is renamed and reopen() requested, 2000 follow; close. The old file holds the first
    500, both files together every request id exactly once, in order; the new file is 0600."""
    path = tmp_path / "log"
    log = DecisionLogger(str(path), request_ids=RequestIds("0000000f"))
    tail = encode_tail(allow())
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
        for burst in range(30):
            if burst == 5:
                await until(lambda: log.statistics().written == 500)
            if burst == 10:
                assert log.statistics().pending > 0
                path.rename(tmp_path / "log.1")
                log.reopen()
            for _ in range(100):
                log.log_encoded_nowait(tail)
            await anyio.lowlevel.checkpoint()
        await log.aclose()
    old, new = lines(tmp_path / "log.1"), lines(path)
    assert len(old) >= 500
    assert new
    assert [e["request_id"] for e in old + new] == [f"0000000f-{n:x}" for n in range(1, 3001)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert log.statistics() == DecisionLogStatistics(written=3000, dropped=0, pending=0, write_errors=0)


async def test_stderr_takes_encoded_lines_too(capfd: pytest.CaptureFixture[str]) -> None:
    """`-` (also what journald reads from a service's stderr): one JSON object per line, no prefix."""
    async with DecisionLogger("-", request_ids=RequestIds("00000002")) as log:
        log.log_encoded_nowait(encode_tail(deny("ignored")))
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith('{"time":"')
    assert orjson.loads(line)["request_id"] == "00000002-1"


async def test_a_backlog_of_several_batches_keeps_order_ids_and_each_line_its_own_fields(
    tmp_path: Path,
) -> None:
    """No writer running: an allow tail for MAX_BATCH + 5 lines, a whole entry, a deny tail up
    to past 2 x MAX_BATCH, then allows again; flush. Every line is there once, in order, ids
    counting up, each with the fields it was logged with, across the batch boundaries."""
    path = tmp_path / "log"
    plan = [("allow", MAX_BATCH + 5), ("entry", 1), ("deny", MAX_BATCH), ("allow", 7)]
    total = sum(count for _, count in plan)
    log = DecisionLogger(str(path), capacity=total, request_ids=RequestIds("0000000a"))
    tails = {"allow": encode_tail(allow()), "deny": encode_tail(deny("ignored"))}
    for kind, count in plan:
        for _ in range(count):
            if kind == "entry":
                log.log_nowait(allow("whole"))
            else:
                log.log_encoded_nowait(tails[kind])
    await log.flush()
    entries = lines(path)
    assert [e["user"] for e in entries] == [
        user for kind, count in plan for user in ["mallory" if kind == "deny" else "alice"] * count
    ]
    ids = [e["request_id"] for e in entries]
    assert ids[MAX_BATCH + 5] == "whole"
    numbered = ids[: MAX_BATCH + 5] + ids[MAX_BATCH + 6 :]
    assert numbered == [f"0000000a-{n:x}" for n in range(1, total)]
    await log.aclose()
    assert log.statistics() == DecisionLogStatistics(written=total, dropped=0, pending=0, write_errors=0)


async def test_a_slow_write_on_the_loop_moves_writing_to_a_thread_for_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12: batches of a regular file are written on the event loop, until one write takes
    longer than `slow_write` (0 here: the first one does). Then one warning, every later batch
    from a worker thread, and no line lost or reordered."""
    caplog.set_level(logging.WARNING, logger="sentinel.audit")
    path = tmp_path / "log"
    log = DecisionLogger(str(path), slow_write=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(log.run)
        for round_ in range(3):
            for n in range(100):
                log.log_nowait(allow(f"r-{round_}-{n}"))
            await log.flush()
        await log.aclose()
    expected = [f"r-{round_}-{n}" for round_ in range(3) for n in range(100)]
    assert [line["request_id"] for line in lines(path)] == expected
    warnings = [r.getMessage() for r in caplog.records if "writing from a thread" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_fifo_whose_reader_stalls_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """A decision log that is a FIFO (not a regular file) is written from a thread.
    1. Its reader (a thread) does not read until released, or for 10 s: about 0.5 MB is logged,
       far more than a pipe holds, in one batch small enough for the loop: the write blocks.
    2. The loop still runs a timer while nothing has been read: had the write blocked the loop,
       the timer could only fire after the reader's 10 s had run out and it had read.
    3. Released, the reader gets every line, in order."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open does not wait
    release = threading.Event()
    received = bytearray()
    total = 1000  # about 0.5 MB, far more than a pipe holds, in one batch of at most SYNC_MAX_LINES

    def read_all() -> None:
        release.wait(10)
        os.set_blocking(reader, True)
        while received.count(b"\n") < total:
            chunk = os.read(reader, 1 << 16)
            if not chunk:
                return
            received.extend(chunk)

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    try:
        log = DecisionLogger(str(fifo), slow_write=60.0)
        async with anyio.create_task_group() as tg:
            await tg.start(log.run)
            for n in range(total):
                log.log_nowait(allow(f"r-{n}"))
            await anyio.sleep(0.05)  # the batch is taken and being written meanwhile
            assert not received  # this timer fired while the reader had read nothing
            release.set()
            await until(lambda: log.statistics().written == total)
            await log.aclose()
        thread.join(10)
        assert [orjson.loads(line)["request_id"] for line in received.splitlines()] == [
            f"r-{n}" for n in range(total)
        ]
    finally:
        release.set()
        os.close(reader)
