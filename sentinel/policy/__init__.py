"""Policy: schema, parsing and validation, loaders with background refresh, and a pure `evaluate()`.

Issue 3, item 2. The hot path calls `evaluate(watcher.current, request)`; everything else here
runs at startup or in the background.
"""

from __future__ import annotations

from sentinel.policy.evaluate import evaluate
from sentinel.policy.model import Decision, Effect, Mode, Policy, PolicyRequest, Rule, TimeWindow
from sentinel.policy.parse import MAX_POLICY_BYTES, parse_policy
from sentinel.policy.sources import FilePolicySource, PolicySource, SsmPolicySource
from sentinel.policy.watcher import DEFAULT_TTL, PolicyStatistics, PolicyWatcher

__all__ = [
    "DEFAULT_TTL",
    "MAX_POLICY_BYTES",
    "Decision",
    "Effect",
    "FilePolicySource",
    "Mode",
    "Policy",
    "PolicyRequest",
    "PolicySource",
    "PolicyStatistics",
    "PolicyWatcher",
    "Rule",
    "SsmPolicySource",
    "TimeWindow",
    "evaluate",
    "parse_policy",
]
