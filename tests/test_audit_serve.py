"""The decision log of a real `sentinel serve` through logrotate and shutdown (issue 12)."""

from __future__ import annotations

import dataclasses
import json
import signal
import stat
import threading
from pathlib import Path
from typing import Any

from harness.waiting import DEADLINE, wait_until
from sentinel.audit import DecisionEntry
from tests.support.serve import serving
from tests.support.workload import hammer


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_sighup_after_a_rename_and_a_clean_stop_lose_no_line(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """logrotate's `create` mode against a busy server, then SIGTERM.
    1. serve with tracking on SQLite and --decision-log FILE; 4 keep-alive clients start 400
       requests each in the background.
    2. Once FILE has lines: rename it to FILE.1 and send SIGHUP; the server recreates FILE (0600).
    3. The clients finish, and 4 x 50 more requests land after the reopen.
    4. /metrics says nothing was dropped; SIGTERM exits 0.
    5. FILE.1 + FILE hold one line per 200 served, every request id exactly once, every line a
       complete entry; both files have lines."""
    path = tmp_path / "decisions.jsonl"
    rotated = tmp_path / "decisions.jsonl.1"
    with serving(
        env,
        tmp_path / "run",
        "--policy-file",
        str(policy),
        "--session-db",
        str(tmp_path / "sessions.db"),
        "--decision-log",
        str(path),
    ) as served:
        statuses: list[int] = []
        during = threading.Thread(target=lambda: statuses.extend(hammer(served.port, served.token, 4, 400)))
        during.start()
        try:
            wait_until(lambda: path.exists() and path.stat().st_size > 0, "the first decision lines")
            path.rename(rotated)
            served.process.send_signal(signal.SIGHUP)
            wait_until(path.exists, "the decision log to be reopened")
        finally:
            during.join(DEADLINE)
        statuses += hammer(served.port, served.token, 4, 50)
        metrics = served.metrics()
        assert served.process.stop() == 0
    assert statuses == [200] * 1800
    assert metrics["sentinel_decision_log_dropped_total"] == 0
    assert metrics["sentinel_decision_log_write_errors_total"] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before, after = _entries(rotated), _entries(path)
    assert before
    assert after
    entries = before + after
    assert len(entries) == 1800
    assert len({entry["request_id"] for entry in entries}) == 1800
    assert {entry["status"] for entry in entries} == {200}
    assert {len(entry) for entry in entries} == {len(dataclasses.fields(DecisionEntry))}  # every field
