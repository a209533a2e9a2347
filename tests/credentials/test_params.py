"""SourceIdentity, RoleSessionName and DurationSeconds stay within STS's own service model."""

from __future__ import annotations

import re
from datetime import timedelta

import botocore.session
import pytest

from sentinel.credentials import effective_duration, role_session_name, source_identity

SESSION_ID = "0123456789abcdef"

USERS = [
    "alice",
    "alice@example.com",
    "AWSReservedSSO_Admin/alice",
    "a" * 200,
    "Jürgen Groß-Müller 山田太郎 🚀",
    "aws:alice",
    "x:y:z",
    "'; DROP TABLE sessions; --\n\t\x00",
    "../../etc/passwd",
    "",
    "🚀" * 80,
]


def _sts_rule(shape: str) -> tuple[re.Pattern[str], int, int]:
    metadata = botocore.session.get_session().get_service_model("sts").shape_for(shape).metadata
    # STS (Java) reads \w as ASCII: check with re.ASCII, stricter than Python's default.
    return re.compile(metadata["pattern"], re.ASCII), metadata["min"], metadata["max"]


def _assert_valid(value: str, shape: str) -> None:
    pattern, low, high = _sts_rule(shape)
    assert pattern.fullmatch(value), value
    assert low <= len(value) <= high, value
    assert value.isascii()
    assert not value.lower().startswith("aws:")


@pytest.mark.parametrize("user", USERS)
def test_source_identity_is_valid_for_sts(user: str) -> None:
    """Given any user name, the SourceIdentity matches STS's pattern and length, starts with
    `sentinel.` and ends with the whole session id."""
    value = source_identity(user, SESSION_ID)
    _assert_valid(value, "sourceIdentityType")
    assert value.startswith("sentinel.")
    assert value.endswith("." + SESSION_ID)


def test_source_identity_keeps_an_ordinary_user_readable() -> None:
    assert source_identity("alice@example.com", SESSION_ID) == f"sentinel.alice@example.com.{SESSION_ID}"
    assert source_identity("Jürgen", SESSION_ID) == f"sentinel.J-rgen.{SESSION_ID}"


def test_source_identity_truncates_only_the_user() -> None:
    """Given a 200-character user, the value is exactly 64 characters and keeps prefix and id."""
    value = source_identity("a" * 200, SESSION_ID)
    assert len(value) == 64
    assert value == "sentinel." + "a" * 38 + "." + SESSION_ID


@pytest.mark.parametrize("session_id", ["", "0123", "0123456789ABCDEF", "0123456789abcdeg", "x" * 16])
def test_source_identity_rejects_malformed_session_ids(session_id: str) -> None:
    with pytest.raises(ValueError, match="16 lowercase hex"):
        source_identity("alice", session_id)


@pytest.mark.parametrize("user", USERS)
def test_role_session_name_is_valid_for_sts(user: str) -> None:
    value = role_session_name(user)
    _assert_valid(value, "roleSessionNameType")
    assert value.startswith("sentinel-")


def test_role_session_name_of_an_ordinary_user() -> None:
    assert role_session_name("alice") == "sentinel-alice"
    assert len(role_session_name("b" * 100)) == 64


@pytest.mark.parametrize(
    ("server", "rule_max", "expected"),
    [
        (timedelta(minutes=15), None, timedelta(minutes=15)),
        (timedelta(hours=1), None, timedelta(hours=1)),
        (timedelta(hours=1), timedelta(minutes=30), timedelta(minutes=30)),
        (timedelta(minutes=30), timedelta(hours=2), timedelta(minutes=30)),
        # The STS minimum wins over a smaller server duration or rule maximum.
        (timedelta(minutes=5), None, timedelta(seconds=900)),
        (timedelta(hours=1), timedelta(minutes=5), timedelta(seconds=900)),
        (timedelta(0), None, timedelta(seconds=900)),
        (timedelta(seconds=-10), None, timedelta(seconds=900)),
        # Never above 12 hours.
        (timedelta(hours=36), None, timedelta(hours=12)),
        (timedelta(hours=36), timedelta(hours=24), timedelta(hours=12)),
        # Whole seconds only: DurationSeconds is an integer.
        (timedelta(seconds=1000, milliseconds=900), None, timedelta(seconds=1000)),
    ],
)
def test_effective_duration(server: timedelta, rule_max: timedelta | None, expected: timedelta) -> None:
    assert effective_duration(server, rule_max) == expected


def test_effective_duration_is_within_the_sts_model_range() -> None:
    metadata = (
        botocore.session.get_session().get_service_model("sts").shape_for("roleDurationSecondsType").metadata
    )
    for minutes in (0, 1, 15, 60, 720, 10_000):
        seconds = effective_duration(timedelta(minutes=minutes), None).total_seconds()
        assert metadata["min"] <= seconds <= metadata["max"]
