"""Credentials value, its container-protocol body and redaction; user names from caller ARNs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from sentinel.credentials import Credentials, user_from_arn

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FQoGZXIvYXdzEXAMPLE//////////wEaDEXAMPLETOKEN"


def make(expiration: datetime | None = None) -> Credentials:
    return Credentials(
        access_key_id="ASIAEXAMPLE",
        secret_access_key=SECRET,
        session_token=TOKEN,
        expiration=expiration or datetime(2026, 11, 24, 0, 15, 0, 123456, tzinfo=UTC),
    )


def test_container_json_has_exactly_four_string_fields_and_z_expiration() -> None:
    """Given credentials, when rendered, then the body has the four protocol keys, all strings,
    and Expiration is whole-second UTC ending in Z."""
    body = orjson.loads(make().to_container_json())
    assert body == {
        "AccessKeyId": "ASIAEXAMPLE",
        "SecretAccessKey": SECRET,
        "Token": TOKEN,
        "Expiration": "2026-11-24T00:15:00Z",
    }
    assert all(isinstance(value, str) for value in body.values())


def test_expiration_in_another_zone_is_converted_to_utc() -> None:
    """Given an expiration at +02:00, then it is stored and rendered in UTC."""
    credentials = make(datetime(2026, 11, 24, 2, 15, tzinfo=timezone(timedelta(hours=2))))
    assert credentials.expiration.tzinfo is UTC
    assert orjson.loads(credentials.to_container_json())["Expiration"] == "2026-11-24T00:15:00Z"


def test_body_is_computed_once_per_credentials() -> None:
    """The hot path returns the same bytes object every time, not a fresh serialisation."""
    credentials = make()
    assert credentials.to_container_json() is credentials.to_container_json()


def test_repr_and_str_redact_secrets(caplog: pytest.LogCaptureFixture) -> None:
    """Given credentials in repr, str, an f-string and a log record, then no secret shows."""
    credentials = make()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("sentinel.test").warning("issued %s / %r", credentials, credentials)
    for text in (repr(credentials), str(credentials), f"{credentials}", caplog.text):
        assert SECRET not in text
        assert TOKEN not in text
        assert "ASIAEXAMPLE" in text


@pytest.mark.parametrize(
    "field", ["access_key_id", "secret_access_key", "session_token"], ids=lambda name: name
)
def test_empty_parts_are_refused(field: str) -> None:
    """Never an empty credential: building one with an empty part fails."""
    values = {"access_key_id": "A", "secret_access_key": "S", "session_token": "T"}
    values[field] = ""
    with pytest.raises(ValueError, match="need an access key id"):
        Credentials(**values, expiration=datetime(2026, 1, 1, tzinfo=UTC))


def test_naive_expiration_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make(datetime(2026, 1, 1))


def test_remaining_counts_down_to_negative() -> None:
    credentials = make(datetime(2026, 1, 1, 0, 15, tzinfo=UTC))
    assert credentials.remaining(datetime(2026, 1, 1, 0, 5, tzinfo=UTC)) == 600
    assert credentials.remaining(datetime(2026, 1, 1, 0, 16, tzinfo=UTC)) == -60


@pytest.mark.parametrize(
    ("arn", "user"),
    [
        ("arn:aws:iam::123456789012:user/alice", "alice"),
        ("arn:aws:iam::123456789012:user/division/team/alice", "alice"),
        (
            "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_0123/alice@example.com",
            "alice@example.com",
        ),
        ("arn:aws:sts::123456789012:federated-user/bob", "bob"),
        ("arn:aws:iam::123456789012:root", "root"),
        ("arn:aws-cn:iam::123456789012:user/carol", "carol"),
        ("arn:aws:sts::123456789012:user/moto", "moto"),
    ],
)
def test_user_from_arn(arn: str, user: str) -> None:
    assert user_from_arn(arn) == user
