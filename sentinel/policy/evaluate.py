"""`evaluate()`: the per-request policy check on the hot path (DESIGN.md §3 step 2)."""

from __future__ import annotations

from sentinel.policy.model import NO_MATCH, Decision, Effect, Mode, Policy, PolicyRequest


def evaluate(policy: Policy, request: PolicyRequest) -> Decision:
    """Return the decision of the first rule whose conditions all match; no match denies.

    Pure and synchronous. Rules are precompiled (sets, zone objects, minute ranges) and their
    decisions prebuilt, so this is a few set lookups per rule and no allocation; a time condition
    costs one `astimezone()`. Cheap enough to run on every request without a cache.
    """
    user, profile, mode = request.user, request.profile, request.mode
    for rule in policy.rules:
        if rule.users is not None and user not in rule.users:
            continue
        if rule.profiles is not None and profile not in rule.profiles:
            continue
        if rule.modes is not None and mode not in rule.modes:
            continue
        if rule.time is not None and not rule.time.contains(request.now):
            continue
        if rule.effect is Effect.REQUIRE_SERVER and mode != Mode.SERVER:
            return rule.outside_server
        return rule.on_match
    return NO_MATCH
