"""evaluate(): users, profiles, modes, first match wins, no match denies, require_server per mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sentinel.policy import Decision, Effect, Mode, Policy, PolicyRequest, evaluate, parse_policy

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # a Monday

POLICY = parse_policy(
    b"""\
version: "1"
rules:
  - name: blocked-user
    effect: deny
    conditions:
      users: [mallory]
    reason: mallory is suspended
  - name: prod-needs-server
    effect: require_server
    conditions:
      profiles: [prod]
    max_server_duration: 1h
  - name: dev-from-cli
    effect: allow
    conditions:
      users: [alice, bob]
      profiles: [dev]
      mode: [cli, credential_process]
    max_server_duration: 30m
  - name: dev-anything-else
    effect: deny
    conditions:
      profiles: [dev]
""",
    "file:/policy.yaml",
)


def decide(user: str, profile: str, mode: Mode = Mode.SERVER, policy: Policy = POLICY) -> Decision:
    return evaluate(policy, PolicyRequest(user=user, profile=profile, mode=mode, now=NOW))


def test_first_matching_rule_wins() -> None:
    """1. mallory matches both blocked-user and prod-needs-server. 2. The earlier rule decides."""
    decision = decide("mallory", "prod")
    assert decision == Decision(
        allowed=False,
        effect=Effect.DENY,
        rule_name="blocked-user",
        rule_index=0,
        reason="mallory is suspended",
        max_server_duration=None,
    )


def test_no_matching_rule_denies() -> None:
    decision = decide("alice", "sandbox")
    assert decision == Decision(False, Effect.DENY, None, None, "no rule matched", None)


@pytest.mark.parametrize(
    ("mode", "allowed"),
    [(Mode.SERVER, True), (Mode.CLI, False), (Mode.CREDENTIAL_PROCESS, False)],
)
def test_require_server_allows_only_in_server_mode(mode: Mode, allowed: bool) -> None:
    """1. A prod request in each mode. 2. Only server mode is allowed; the others say how to fix it."""
    decision = decide("alice", "prod", mode)
    assert (decision.allowed, decision.effect, decision.rule_name, decision.rule_index) == (
        allowed,
        Effect.REQUIRE_SERVER,
        "prod-needs-server",
        1,
    )
    if allowed:
        assert decision.reason == 'allowed by rule "prod-needs-server"'
        assert decision.max_server_duration == timedelta(hours=1)
    else:
        assert decision.reason == 'rule "prod-needs-server" requires server mode; run with --server'
        assert decision.max_server_duration is None


def test_require_server_keeps_the_rule_reason_when_denying() -> None:
    policy = parse_policy(
        b'version: "1"\nrules:\n  - {name: p, effect: require_server, reason: "prod is audited"}\n', "file:/p"
    )
    assert (
        decide("alice", "prod", Mode.CLI, policy).reason
        == 'prod is audited: rule "p" requires server mode; run with --server'
    )
    assert decide("alice", "prod", Mode.SERVER, policy).reason == "prod is audited"


@pytest.mark.parametrize(
    ("user", "mode", "rule", "allowed"),
    [
        ("alice", Mode.CLI, "dev-from-cli", True),
        ("bob", Mode.CREDENTIAL_PROCESS, "dev-from-cli", True),
        ("alice", Mode.SERVER, "dev-anything-else", False),  # mode not listed
        ("carol", Mode.CLI, "dev-anything-else", False),  # user not listed
        ("Alice", Mode.CLI, "dev-anything-else", False),  # names are case-sensitive
    ],
)
def test_users_profiles_and_modes_must_all_match(user: str, mode: Mode, rule: str, allowed: bool) -> None:
    decision = decide(user, "dev", mode)
    assert (decision.rule_name, decision.allowed) == (rule, allowed)


def test_allow_carries_the_rule_cap_and_default_reason() -> None:
    decision = decide("alice", "dev", Mode.CLI)
    assert decision.max_server_duration == timedelta(minutes=30)
    assert decision.reason == 'allowed by rule "dev-from-cli"'
    assert decision.effect is Effect.ALLOW


def test_deny_default_reason_names_the_rule() -> None:
    assert decide("alice", "dev", Mode.SERVER).reason == 'denied by rule "dev-anything-else"'


def test_decisions_are_prebuilt_not_allocated_per_request() -> None:
    """The hot path returns the same immutable Decision object for the same outcome."""
    assert decide("alice", "dev", Mode.CLI) is decide("bob", "dev", Mode.CLI)
    assert decide("x", "none") is decide("y", "none")


def test_naive_request_time_is_refused() -> None:
    """A naive datetime would silently be read as the host's local time."""
    with pytest.raises(ValueError, match="timezone-aware"):
        PolicyRequest(user="alice", profile="dev", mode=Mode.CLI, now=datetime(2024, 6, 3, 12, 0))


def test_catch_all_rule_matches_everything() -> None:
    policy = parse_policy(
        b'version: "1"\nrules:\n  - {name: open, effect: allow, conditions: {}}\n', "file:/p"
    )
    for mode in Mode:
        assert decide("anyone", "anything", mode, policy).allowed
