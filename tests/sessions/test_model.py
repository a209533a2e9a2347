"""The session model: ids, the status state machine, timestamps, retention and the record codec."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from sentinel.errors import SentinelError
from sentinel.sessions.model import (
    DEFAULT_RETENTION,
    InvalidSessionId,
    Retention,
    ServerSession,
    SessionStatus,
    format_timestamp,
    new_session_id,
    parse_timestamp,
    validate_session_id,
)

ACTIVE, REVOKED, EXPIRED = SessionStatus.ACTIVE, SessionStatus.REVOKED, SessionStatus.EXPIRED
START = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def sample(**changes: object) -> ServerSession:
    session = ServerSession.start(
        user="alice",
        profile="dev",
        server_instance_id="i-0001",
        source_identity="sentinel.alice.0123456789abcdef",
        session_id="0123456789abcdef",
        now=START,
    )
    return session.with_changes(**changes)


# --- ids ------------------------------------------------------------------------------------------


def test_new_session_ids_are_16_lowercase_hex_and_distinct() -> None:
    made = {new_session_id() for _ in range(1000)}
    assert len(made) == 1000
    for session_id in made:
        assert len(session_id) == 16
        assert set(session_id) <= set("0123456789abcdef")
        assert validate_session_id(session_id) == session_id


@pytest.mark.parametrize(
    "bad",
    ["", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg", " 0123456789abcdef"],
)
def test_validate_session_id_rejects_malformed_ids(bad: str) -> None:
    with pytest.raises(InvalidSessionId) as caught:
        validate_session_id(bad)
    assert isinstance(caught.value, SentinelError)
    assert "\n" not in str(caught.value)


def test_validate_session_id_rejects_non_strings_and_truncates_what_it_shows() -> None:
    with pytest.raises(InvalidSessionId, match="int"):
        validate_session_id(1234)  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionId) as caught:
        validate_session_id("x" * 10_000)
    assert len(str(caught.value)) < 200


def test_start_takes_a_given_id_only_if_valid() -> None:
    assert sample().id == "0123456789abcdef"
    with pytest.raises(InvalidSessionId):
        ServerSession.start(
            user="a", profile="p", server_instance_id="i", source_identity="s", session_id="nope"
        )


# --- status ---------------------------------------------------------------------------------------


def test_only_active_is_not_terminal() -> None:
    assert not ACTIVE.is_terminal
    assert REVOKED.is_terminal
    assert EXPIRED.is_terminal


@pytest.mark.parametrize("old", list(SessionStatus))
@pytest.mark.parametrize("new", list(SessionStatus))
def test_the_only_legal_transitions_are_active_to_revoked_or_expired(
    old: SessionStatus, new: SessionStatus
) -> None:
    legal = {(ACTIVE, REVOKED), (ACTIVE, EXPIRED)}
    assert old.can_become(new) is ((old, new) in legal)


def test_status_values_are_the_stored_strings() -> None:
    assert [s.value for s in SessionStatus] == ["active", "revoked", "expired"]
    assert SessionStatus("revoked") is REVOKED


# --- timestamps -----------------------------------------------------------------------------------


def test_timestamps_are_fixed_width_utc_with_a_z() -> None:
    assert format_timestamp(START) == "2026-03-01T12:00:00.250000Z"
    assert format_timestamp(START.replace(microsecond=0)) == "2026-03-01T12:00:00.000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 3, 1, 14, 0, tzinfo=plus_two)) == "2026-03-01T12:00:00.000000Z"


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2026, 3, 1, 12, 0))
    with pytest.raises(ValueError, match="time zone"):
        parse_timestamp("2026-03-01T12:00:00")


def test_timestamp_strings_sort_as_the_times_do() -> None:
    """Random instants over decades, some in other zones and some a microsecond apart: sorting the
    strings gives the same order as sorting the datetimes (the stores' indexes rely on it)."""
    rng = random.Random(7)
    moments = [START + timedelta(microseconds=n) for n in range(3)]
    moments += [
        datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 40 * 365 * 86400))
        for _ in range(500)
    ]
    zones = [UTC, timezone(timedelta(hours=-8)), timezone(timedelta(hours=5, minutes=30))]
    shown = [(format_timestamp(m.astimezone(rng.choice(zones))), m) for m in moments]
    assert [m for _, m in sorted(shown)] == sorted(moments)
    assert len({len(text) for text, _ in shown}) == 1


def test_timestamps_round_trip_to_utc() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    for moment in (START, START.astimezone(india), START.replace(microsecond=1)):
        parsed = parse_timestamp(format_timestamp(moment))
        assert parsed == moment
        assert parsed.tzinfo is UTC


def test_parse_accepts_other_rfc3339_offsets() -> None:
    assert parse_timestamp("2026-03-01T17:30:00.25+05:30") == START
    assert parse_timestamp("2026-03-01T12:00:00.250Z") == START


# --- retention ------------------------------------------------------------------------------------


def test_retention_derives_expiry_and_ttl_from_the_last_access() -> None:
    retention = Retention(idle_lifetime=timedelta(hours=1), retention=timedelta(days=2))
    assert retention.expires_at(START) == START + timedelta(hours=1)
    assert retention.ttl(START) == int((START + timedelta(hours=1, days=2)).timestamp())
    assert (DEFAULT_RETENTION.idle_lifetime, DEFAULT_RETENTION.retention) == (
        timedelta(hours=12),
        timedelta(days=30),
    )


def test_start_makes_an_active_session_at_now() -> None:
    session = sample()
    assert session.status is ACTIVE
    assert session.request_count == 0
    assert session.started_at == session.last_access_at == session.created_at == session.updated_at == START
    assert session.expires_at == DEFAULT_RETENTION.expires_at(START)
    assert session.ttl == DEFAULT_RETENTION.ttl(START)
    assert (session.revoked_by, session.revoked_reason) == (None, None)


# --- record codec ---------------------------------------------------------------------------------


def test_records_round_trip_and_leave_absent_fields_out() -> None:
    session = sample(request_count=12)
    record = session.to_record()
    assert "revoked_by" not in record
    assert "revoked_reason" not in record
    assert record["status"] == "active"
    assert record["created_at"] == "2026-03-01T12:00:00.250000Z"
    assert ServerSession.from_record(dict(record)) == session


def test_revoked_records_round_trip_with_who_and_why() -> None:
    session = sample(status=REVOKED, revoked_by="ops", revoked_reason="lost laptop")
    record = session.to_record()
    assert (record["revoked_by"], record["revoked_reason"]) == ("ops", "lost laptop")
    assert ServerSession.from_record(dict(record)) == session


def test_records_hold_only_strings_and_integers() -> None:
    record = sample(
        status=EXPIRED,
        revoked_by="x",
        revoked_reason="y",
        role_arn="arn:aws:iam::123456789012:role/dev",
        credential_lifetime=900,
    ).to_record()
    assert set(record) == set(ServerSession.__dataclass_fields__)
    assert {type(v) for v in record.values()} <= {str, int}


def test_from_record_accepts_decimal_numbers_as_dynamodb_returns_them() -> None:
    record: dict[str, object] = dict(sample().to_record())
    record["request_count"] = Decimal(5)
    record["ttl"] = Decimal(1_800_000_000)
    session = ServerSession.from_record(record)
    assert (session.request_count, session.ttl) == (5, 1_800_000_000)
    assert type(session.request_count) is int


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("status", "paused", ValueError),
        ("created_at", "yesterday", ValueError),
        ("user", 5, ValueError),
        ("request_count", "many", ValueError),
    ],
)
def test_from_record_rejects_malformed_fields(field: str, value: object, error: type[Exception]) -> None:
    record: dict[str, object] = dict(sample().to_record())
    record[field] = value
    with pytest.raises(error):
        ServerSession.from_record(record)


def test_from_record_rejects_a_missing_field() -> None:
    record: dict[str, object] = dict(sample().to_record())
    del record["profile"]
    with pytest.raises(KeyError):
        ServerSession.from_record(record)
