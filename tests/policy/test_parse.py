"""Parsing and validation: the schema, its forms, and one-line errors that name the rule and line."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from sentinel.errors import PolicyError
from sentinel.policy import MAX_POLICY_BYTES, Effect, Mode, Policy, parse_policy

SOURCE = "file:/etc/sentinel/policy.yaml"

FULL = """\
version: "1"
rules:
  - name: weekday-server
    effect: require_server
    conditions:
      users: [alice, bob]
      profiles: [prod, staging]
      time:
        days: [monday, tue, Wednesday]
        hours: {start: "09:00", end: "18:00"}
        timezone: Europe/Berlin
      mode: [server, cli]
    reason: production goes through the server
    max_server_duration: 1h
  - name: everyone-else
    effect: deny
    conditions: {}
"""


def parse(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text).encode(), SOURCE)


def error_of(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse(text)
    return caught.value.message


def test_full_policy_compiles_to_sets_minutes_and_zones() -> None:
    """1. Parse the documented example. 2. Every condition is precompiled for evaluate()."""
    policy = parse_policy(FULL.encode(), SOURCE)

    first, second = policy.rules
    assert (first.name, first.index, first.effect) == ("weekday-server", 0, Effect.REQUIRE_SERVER)
    assert first.users == frozenset({"alice", "bob"})
    assert first.profiles == frozenset({"prod", "staging"})
    assert first.modes == frozenset({Mode.SERVER, Mode.CLI})
    assert first.time is not None
    assert first.time.days == frozenset({0, 1, 2})
    assert (first.time.start, first.time.end) == (9 * 60, 18 * 60)
    assert first.time.timezone.key == "Europe/Berlin"
    assert first.reason == "production goes through the server"
    assert first.max_server_duration == timedelta(hours=1)
    assert (second.name, second.effect, second.users, second.time) == (
        "everyone-else",
        Effect.DENY,
        None,
        None,
    )
    assert policy.source == SOURCE
    assert policy.content_hash == hashlib.sha256(FULL.encode()).hexdigest()


def test_unquoted_times_and_integer_version_are_read_as_written() -> None:
    """YAML 1.1 reads a plain 18:00 as the integer 1080; the parser uses the text as written."""
    policy = parse_policy(
        b"version: 1\nrules:\n  - name: r\n    effect: allow\n"
        b"    conditions:\n      time: {hours: {start: 9:30, end: 24:00}}\n",
        SOURCE,
    )
    window = policy.rules[0].time
    assert window is not None
    assert (window.start, window.end, window.days, window.timezone.key) == (570, 1440, None, "UTC")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("900", timedelta(seconds=900)),
        ("'900'", timedelta(seconds=900)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        ("1h0m30s", timedelta(hours=1, seconds=30)),
        ("12h", timedelta(hours=12)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    policy = parse(f"version: '1'\nrules:\n  - {{name: r, effect: allow, max_server_duration: {text}}}\n")
    assert policy.rules[0].max_server_duration == expected


@pytest.mark.parametrize("text", ["1d", "h", "1.5h", "900.5", "-900", "15 m", ""])
def test_bad_durations(text: str) -> None:
    document = f"version: '1'\nrules:\n  - {{name: r, effect: allow, max_server_duration: '{text}'}}\n"
    message = error_of(document)
    assert message.endswith(f'bad max_server_duration "{text}": expected seconds or a duration like 1h30m')


IANA = "expected an IANA name such as Europe/Berlin"
RULE = 'version: "1"\nrules:\n  - name: prod\n    effect: allow\n'


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        # Unknown keys at every level, with the nearest known key as a hint.
        ('version: "1"\nrule: []\n', 'line 2: unknown key "rule" (did you mean "rules"?)'),
        (RULE + "    owner: me\n", 'rule "prod" (line 5): unknown key "owner"'),
        (
            RULE + "    conditions:\n      users2: [a]\n",
            'rule "prod" (line 6): unknown key "users2" (did you mean "users"?)',
        ),
        (
            RULE + "    conditions:\n      time:\n        day: [mon]\n",
            'rule "prod" (line 7): unknown key "day" (did you mean "days"?)',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: '09:00', end: '10:00', tz: UTC}\n",
            'rule "prod" (line 7): unknown key "tz"',
        ),
        (RULE + "    effect: deny\n", 'rule "prod" (line 5): duplicate key "effect"'),
        # Version and rules.
        ('version: "2"\nrules: []\n', 'line 1: unsupported version "2": expected "1"'),
        ("rules:\n  - {name: a, effect: allow}\n", 'line 1: the policy is missing "version"'),
        ('version: "1"\n', 'line 1: the policy is missing "rules"'),
        ('version: "1"\nrules: []\n', 'line 2: "rules" is an empty list; add a deny rule to deny everything'),
        ('version: "1"\nrules: {a: 1}\n', 'line 2: "rules" must be a list, got a mapping'),
        ('version: "1"\nrules:\n  - allow\n', "rules[0] (line 3): a rule must be a mapping, got a string"),
        # Names: the index stands in until a rule has a usable name.
        ('version: "1"\nrules:\n  - effect: allow\n', 'rules[0] (line 3): missing "name"'),
        ('version: "1"\nrules:\n  - {name: "", effect: allow}\n', 'rules[0] (line 3): "name" is empty'),
        (
            'version: "1"\nrules:\n  - {name: 7, effect: allow}\n',
            'rules[0] (line 3): "name" must be a string, got an integer',
        ),
        (
            RULE + "  - name: other\n    effect: allow\n  - name: prod\n    effect: deny\n",
            'rule "prod" (line 7): duplicate rule name; rules[0] has the same name',
        ),
        # Effects and reasons.
        (
            RULE.replace("allow", "permit"),
            'rule "prod" (line 4): bad effect "permit": expected one of allow, deny, require_server',
        ),
        ('version: "1"\nrules:\n  - name: prod\n', 'rule "prod" (line 3): a rule is missing "effect"'),
        (RULE + "    reason: ' '\n", 'rule "prod" (line 5): "reason" is empty'),
        # Conditions: types and empties.
        (
            RULE + "    conditions:\n      users: alice\n",
            'rule "prod" (line 6): "users" must be a list, got a string',
        ),
        (
            RULE + "    conditions:\n      users: []\n",
            'rule "prod" (line 6): "users" is an empty list; omit it to match any',
        ),
        (
            RULE + "    conditions:\n      profiles: [prod, 12]\n",
            'rule "prod" (line 6): each of "profiles" must be a string, got an integer',
        ),
        (
            RULE + "    conditions:\n      mode: [servr]\n",
            'rule "prod" (line 6): unknown mode "servr": expected one of server, cli, credential_process',
        ),
        (RULE + "    conditions:\n", 'rule "prod" (line 5): "conditions" must be a mapping, got nothing'),
        # Time.
        (RULE + "    conditions:\n      time: {}\n", 'rule "prod" (line 6): "time" is empty'),
        (
            RULE + "    conditions:\n      time: {timezone: UTC}\n",
            'rule "prod" (line 6): "time" needs "days" or "hours"',
        ),
        (
            RULE + "    conditions:\n      time: {days: [funday]}\n",
            'rule "prod" (line 6): unknown day "funday": expected monday..sunday or mon..sun',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: '25:00', end: '10:00'}\n",
            'rule "prod" (line 7): bad time "25:00" for "start": expected HH:MM, 00:00 to 23:59',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: 9am, end: '10:00'}\n",
            'rule "prod" (line 7): bad time "9am" for "start": expected HH:MM, 00:00 to 23:59',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: '24:00', end: '10:00'}\n",
            'rule "prod" (line 7): bad time "24:00" for "start": expected HH:MM, 00:00 to 23:59',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: '10:00', end: '10:60'}\n",
            'rule "prod" (line 7): bad time "10:60" for "end": expected HH:MM, 00:00 to 23:59',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: '10:00'}\n",
            'rule "prod" (line 7): "hours" is missing "end"',
        ),
        (
            RULE + "    conditions:\n      time:\n        hours: {start: '10:00', end: '10:00'}\n",
            'rule "prod" (line 7): hours "start" equals "end"; omit "hours" for the whole day',
        ),
        (
            RULE + "    conditions:\n      time:\n        days: [mon]\n        timezone: Mars/Olympus\n",
            f'rule "prod" (line 8): unknown timezone "Mars/Olympus": {IANA}',
        ),
        (
            RULE + "    conditions:\n      time:\n        days: [mon]\n        timezone: ../../etc/passwd\n",
            f'rule "prod" (line 8): unknown timezone "../../etc/passwd": {IANA}',
        ),
        # Durations: STS bounds, and meaningless on a deny rule.
        (
            RULE + "    max_server_duration: 10m\n",
            'rule "prod" (line 5): max_server_duration 10m is below the STS minimum of 15m (900 seconds)',
        ),
        (
            RULE + "    max_server_duration: 899\n",
            'rule "prod" (line 5): max_server_duration 899 is below the STS minimum of 15m (900 seconds)',
        ),
        (
            RULE + "    max_server_duration: 12h1s\n",
            'rule "prod" (line 5): max_server_duration 12h1s is above the STS maximum of 12h',
        ),
        (
            RULE + "    max_server_duration: 1.5h\n",
            'rule "prod" (line 5): bad max_server_duration "1.5h": expected seconds or a duration like 1h30m',
        ),
        (
            RULE + "    max_server_duration: true\n",
            'rule "prod" (line 5): "max_server_duration" must be a string or an integer, got a boolean',
        ),
        (
            RULE.replace("allow", "deny") + "    max_server_duration: 1h\n",
            'rule "prod" (line 5): max_server_duration has no effect on a deny rule',
        ),
        # Documents that are not a policy at all.
        ("", "the document is empty"),
        ("# nothing but a comment\n", "the document is empty"),
        ("- a\n- b\n", "line 1: the policy must be a mapping, got a list"),
        (
            'version: "1"\nrules:\n  - name: a\n  effect: deny\n',
            "line 4: invalid YAML: while parsing a block collection, did not find expected '-' indicator",
        ),
        (
            'version: "1"\n---\nrules: []\n',
            "line 2: invalid YAML: expected a single document in the stream, but found another document",
        ),
        ('version: "1"\n1: x\n', "line 2: keys must be strings, got an integer"),
        ("!custom {version: '1'}\n", "line 1: the policy must be a mapping, got a !custom value"),
        (
            RULE + "    conditions:\n      users: !!set {a: null}\n",
            'rule "prod" (line 6): "users" must be a list, got a !!set value',
        ),
    ],
)
def test_invalid_policies_name_the_rule_and_line(document: str, expected: str) -> None:
    """1. Parse a broken document. 2. The error is one line: source, rule (or index), line, problem."""
    message = error_of(document)
    assert message == f"policy {SOURCE}: {expected}"
    assert "\n" not in message


def test_python_tags_are_never_constructed(tmp_path: Path) -> None:
    """1. A document carrying a python/object tag. 2. It is rejected as a wrong type; nothing runs."""
    marker = tmp_path / "pwned"
    document = (
        f'version: "1"\nrules:\n  - name: x\n    effect: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    message = error_of(document)
    assert message.endswith(
        'rule "x" (line 4): "effect" must be a string, got a !!python/object/apply:os.system value'
    )
    assert not marker.exists()


def test_invalid_utf8_is_a_policy_error() -> None:
    with pytest.raises(
        PolicyError, match=r"^policy file:/etc/sentinel/policy.yaml: invalid YAML: .* at byte 9$"
    ):
        parse_policy(b'version: \xff"1"\n', SOURCE)


def test_oversized_document_is_rejected_before_parsing() -> None:
    raw = FULL.encode() + b"#" * MAX_POLICY_BYTES
    with pytest.raises(PolicyError, match="larger than 1048576 bytes"):
        parse_policy(raw, SOURCE)


def test_reason_is_collapsed_to_one_line() -> None:
    policy = parse_policy(
        RULE.encode() + b"    reason: >\n      two\n      lines\n\n      and more\n", SOURCE
    )
    assert policy.rules[0].reason == "two lines and more"
