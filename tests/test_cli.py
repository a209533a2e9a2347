"""The command line itself: the fixed flag surface of DESIGN.md §6, usage errors, pipes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel import __version__
from tests.support.sentinel_process import run_sentinel

# DESIGN.md §6: users, scripts and the systemd unit depend on these names.
SERVER_FLAGS = [
    "--session-table",
    "--session-db",
    "--no-session-tracking",
    "--profile",
    "--role-arn",
    "--region",
    "--policy-file",
    "--policy-parameter",
    "--port",
    "--token-file",
    "--server-duration",
    "--server-instance-id",
    "--decision-log",
    "--flush-interval",
    "--queue-size",
    "--revocation-poll",
    "--shutdown-timeout",
    "--lazy",
    "--env-file",
    "--log-format",
    "--config",
]
STORE_FLAGS = ["--session-table", "--session-db"]


def _env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SENTINEL_")}


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", help_text))


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["serve"], SERVER_FLAGS),
        (["exec"], [*SERVER_FLAGS, "--server"]),
        (["server-sessions"], [*STORE_FLAGS, "--status", "--user", "--profile", "--limit", "--json"]),
        (["server-session"], [*STORE_FLAGS, "--json"]),
        (["server-revoke"], [*STORE_FLAGS, "--reason", "--json"]),
        (["create-session-table"], ["--session-table"]),
    ],
)
def test_every_command_has_its_documented_flags(command: list[str], expected: list[str]) -> None:
    result = run_sentinel([*command, "--help"], _env())
    assert result.returncode == 0, result.stderr
    assert set(expected) <= _flags(result.stdout)


def test_version() -> None:
    result = run_sentinel(["--version"], _env())
    assert (result.returncode, result.stdout) == (0, f"sentinel {__version__}\n")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "required: command"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["launch"], "invalid choice: 'launch'"),
        (["server-revoke", "0123456789abcdef"], "--reason"),
        (["server-sessions", "--status", "paused"], "invalid choice: 'paused'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = run_sentinel(args, _env())
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert needle in line
    assert line.endswith("(see --help)")


def test_exec_without_a_command_is_a_config_error() -> None:
    result = run_sentinel(["exec", "--server", "--"], _env())
    assert result.returncode == 78
    assert result.stderr.splitlines() == ["sentinel: exec: give the command to run after --"]


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`sentinel server-sessions | head`: stdout's reader has closed; exit 0, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sentinel", "server-sessions", "--session-db", str(tmp_path / "s.db")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_env(),
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")
