"""Time conditions: local wall-clock windows across timezones, day boundaries, overnight and DST.

Request times are given as UTC instants (what the server sees); the rule's timezone decides the
local day and time. Dates used: 2024-01-08, 2024-06-03 and 2024-07-08 are Mondays; Europe/Berlin
springs forward 2024-03-31 01:00 UTC and falls back 2024-10-27 01:00 UTC; America/Los_Angeles
springs forward 2024-03-10 10:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sentinel.policy import Mode, Policy, PolicyRequest, evaluate, parse_policy


def window(time_condition: str) -> Policy:
    """A one-rule policy allowing inside the given `time:` condition (YAML flow mapping)."""
    document = (
        'version: "1"\nrules:\n  - name: window\n    effect: allow\n'
        f"    conditions:\n      time: {time_condition}\n"
    )
    return parse_policy(document.encode(), "file:/policy.yaml")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def allowed(policy: Policy, now: datetime) -> bool:
    return evaluate(policy, PolicyRequest(user="alice", profile="prod", mode=Mode.SERVER, now=now)).allowed


def minutes_inside(policy: Policy, start: datetime, end: datetime) -> int:
    """How many real (UTC) minutes in [start, end) the window covers."""
    count, now = 0, start
    while now < end:
        count += allowed(policy, now)
        now += timedelta(minutes=1)
    return count


def check(policy: Policy, expectations: list[tuple[str, bool]]) -> None:
    results = [(when, allowed(policy, utc(when))) for when, _ in expectations]
    assert results == expectations


def test_start_is_inclusive_and_end_exclusive() -> None:
    policy = window('{hours: {start: "09:00", end: "18:00"}}')
    check(
        policy,
        [
            ("2024-06-03T08:59:59", False),
            ("2024-06-03T09:00:00", True),
            ("2024-06-03T17:59:59.999999", True),
            ("2024-06-03T18:00:00", False),
        ],
    )


def test_end_of_day_is_written_24_00() -> None:
    policy = window('{days: [monday], hours: {start: "20:00", end: "24:00"}}')
    check(
        policy,
        [("2024-06-03T23:59:59", True), ("2024-06-04T00:00:00", False), ("2024-06-03T19:59:00", False)],
    )


def test_days_without_hours_cover_the_whole_local_day() -> None:
    """Asia/Tokyo is UTC+9: the local Saturday starts at 15:00 UTC on Friday."""
    policy = window("{days: [saturday, sun], timezone: Asia/Tokyo}")
    check(
        policy,
        [
            ("2024-06-07T14:59:00", False),  # Fri 23:59 JST
            ("2024-06-07T15:00:00", True),  # Sat 00:00 JST, still Friday in UTC
            ("2024-06-09T14:59:00", True),  # Sun 23:59 JST
            ("2024-06-09T15:00:00", False),  # Mon 00:00 JST, still Sunday in UTC
        ],
    )


def test_rule_in_los_angeles_judges_a_utc_request_by_the_local_day_and_time() -> None:
    """1. Weekdays 09:00-17:00 in Los Angeles (UTC-8 in January). 2. UTC day and local day differ."""
    policy = window(
        "{days: [monday, tuesday, wednesday, thursday, friday],"
        ' hours: {start: "09:00", end: "17:00"}, timezone: America/Los_Angeles}'
    )
    check(
        policy,
        [
            ("2024-01-08T16:59:00", False),  # Mon 08:59 PST
            ("2024-01-08T17:00:00", True),  # Mon 09:00 PST
            ("2024-01-09T00:30:00", True),  # Tuesday in UTC, Mon 16:30 PST
            ("2024-01-09T01:00:00", False),  # Mon 17:00 PST
            ("2024-01-13T00:30:00", True),  # Saturday in UTC, Fri 16:30 PST
            ("2024-01-08T00:30:00", False),  # Monday in UTC, Sun 16:30 PST
            ("2024-07-08T16:00:00", True),  # Mon 09:00 PDT (UTC-7 in summer)
            ("2024-01-08T16:00:00", False),  # the same UTC time in winter is 08:00 PST
        ],
    )


def test_the_instant_matters_not_the_offset_it_is_written_in() -> None:
    policy = window('{hours: {start: "09:00", end: "17:00"}, timezone: America/Los_Angeles}')
    instant = utc("2024-01-08T17:30:00")  # 09:30 PST
    for zone in ("UTC", "Asia/Kolkata", "Pacific/Chatham", "America/Los_Angeles"):
        assert allowed(policy, instant.astimezone(ZoneInfo(zone))), zone


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    """Friday 22:00-06:00 in Berlin (UTC+2 in June) covers Friday night into Saturday morning only."""
    policy = window('{days: [friday], hours: {start: "22:00", end: "06:00"}, timezone: Europe/Berlin}')
    check(
        policy,
        [
            ("2024-06-07T19:59:00", False),  # Fri 21:59
            ("2024-06-07T20:00:00", True),  # Fri 22:00
            ("2024-06-07T21:59:00", True),  # Fri 23:59
            ("2024-06-07T22:00:00", True),  # Sat 00:00: still Friday's window
            ("2024-06-08T03:59:00", True),  # Sat 05:59
            ("2024-06-08T04:00:00", False),  # Sat 06:00
            ("2024-06-07T00:30:00", False),  # Fri 02:30 belongs to Thursday's window
            ("2024-06-08T20:30:00", False),  # Sat 22:30: Saturday is not listed
            ("2024-06-06T20:30:00", False),  # Thu 22:30
        ],
    )
    assert minutes_inside(policy, utc("2024-06-03T00:00"), utc("2024-06-10T00:00")) == 8 * 60


def test_overnight_window_on_the_last_day_of_the_week_wraps_into_monday() -> None:
    policy = window('{days: [sunday], hours: {start: "23:00", end: "01:00"}}')
    check(
        policy, [("2024-06-09T23:30:00", True), ("2024-06-10T00:30:00", True), ("2024-06-03T00:30:00", True)]
    )
    check(policy, [("2024-06-10T23:30:00", False), ("2024-06-11T00:30:00", False)])


def test_overnight_window_without_days_runs_every_night() -> None:
    policy = window('{hours: {start: "22:00", end: "06:00"}}')
    check(
        policy,
        [
            ("2024-06-03T21:59:00", False),
            ("2024-06-03T22:00:00", True),
            ("2024-06-04T05:59:00", True),
            ("2024-06-04T06:00:00", False),
            ("2024-06-04T12:00:00", False),
        ],
    )


def test_overnight_window_across_spring_forward_is_an_hour_shorter() -> None:
    """Saturday 22:00-06:00 Berlin on 2024-03-30: 22:00 CET to 06:00 CEST is 7 real hours."""
    policy = window('{days: [saturday], hours: {start: "22:00", end: "06:00"}, timezone: Europe/Berlin}')
    check(
        policy,
        [
            ("2024-03-30T20:59:00", False),  # Sat 21:59 CET
            ("2024-03-30T21:00:00", True),  # Sat 22:00 CET
            ("2024-03-31T00:59:00", True),  # Sun 01:59 CET
            ("2024-03-31T01:00:00", True),  # Sun 03:00 CEST: 02:xx never happens
            ("2024-03-31T03:59:00", True),  # Sun 05:59 CEST
            ("2024-03-31T04:00:00", False),  # Sun 06:00 CEST
        ],
    )
    assert minutes_inside(policy, utc("2024-03-30T12:00"), utc("2024-03-31T12:00")) == 7 * 60


def test_overnight_window_across_fall_back_is_an_hour_longer() -> None:
    policy = window('{days: [saturday], hours: {start: "22:00", end: "06:00"}, timezone: Europe/Berlin}')
    check(
        policy, [("2024-10-26T20:00:00", True), ("2024-10-27T04:59:00", True), ("2024-10-27T05:00:00", False)]
    )
    assert minutes_inside(policy, utc("2024-10-26T12:00"), utc("2024-10-27T12:00")) == 9 * 60


def test_overnight_window_across_los_angeles_spring_forward() -> None:
    policy = window(
        '{days: [saturday], hours: {start: "22:00", end: "06:00"}, timezone: America/Los_Angeles}'
    )
    check(
        policy,
        [
            ("2024-03-09T06:00:00", False),  # Fri 22:00 PST
            ("2024-03-10T06:00:00", True),  # Sat 22:00 PST
            ("2024-03-10T12:59:00", True),  # Sun 05:59 PDT
            ("2024-03-10T13:00:00", False),  # Sun 06:00 PDT
        ],
    )
    assert minutes_inside(policy, utc("2024-03-09T12:00"), utc("2024-03-11T12:00")) == 7 * 60


@pytest.mark.parametrize(
    ("night_start", "real_minutes"),
    [
        ("2024-03-30T22:00", 0),  # spring forward: local 02:00-03:00 does not exist that night
        ("2024-10-26T22:00", 120),  # fall back: local 02:00-03:00 happens twice
    ],
)
def test_window_inside_the_changed_hour(night_start: str, real_minutes: int) -> None:
    policy = window('{days: [sunday], hours: {start: "02:00", end: "03:00"}, timezone: Europe/Berlin}')
    start = utc(night_start)
    assert minutes_inside(policy, start, start + timedelta(hours=6)) == real_minutes


def test_same_utc_time_flips_across_dst_for_a_daytime_window() -> None:
    """07:30 UTC is 08:30 in Berlin before the change (CET) and 09:30 after it (CEST)."""
    policy = window('{hours: {start: "09:00", end: "17:00"}, timezone: Europe/Berlin}')
    check(policy, [("2024-03-29T07:30:00", False), ("2024-04-02T07:30:00", True)])
