"""The hot path behind the HTTP endpoint (DESIGN.md §3 steps 2-6): the `CredentialService`.

policy -> session gate -> credential cache -> audit -> touch, and nothing in it waits on the
session store, SSM or a log file. A cache hit is answered synchronously (`issue_nowait`), so the
server writes the response from inside its protocol callback without scheduling a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import orjson

from sentinel.audit import DecisionEntry, DecisionLog, encode_tail
from sentinel.clock import Clock
from sentinel.credentials import CacheKey, CredentialCache, Credentials, effective_duration
from sentinel.errors import CredentialError
from sentinel.metrics import Registry
from sentinel.policy import Decision, Mode, Policy, PolicyRequest, PolicyWatcher, evaluate
from sentinel.server.service import JSON, PROMETHEUS_TEXT, Caller, Reply
from sentinel.sessions.tracker import Tracker

REVOKED_MESSAGE = "session revoked"
UNAVAILABLE_MESSAGE = "credentials unavailable"
# Issue 10: with --revocation-staleness-limit, a server that has not heard from its session store
# for that long cannot know whether it was revoked, and refuses rather than serve blind.
STALE_MESSAGE = "session store unreachable: revocation status unknown"


def error_reply(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"Message": message}), JSON)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this server serves, fixed at startup."""

    user: str
    profile: str
    role_arn: str
    session_id: str
    source_identity: str
    mode: Mode


class Pipeline:
    """Answers credential requests for one server session."""

    def __init__(
        self,
        *,
        identity: Identity,
        policy: PolicyWatcher,
        cache: CredentialCache,
        tracker: Tracker,
        audit: DecisionLog,
        registry: Registry,
        clock: Clock,
        server_duration: timedelta,
        health_extra: dict[str, object] | None = None,
    ) -> None:
        self._identity = identity
        self._policy = policy
        self._cache = cache
        self._tracker = tracker
        self._audit = audit
        self._registry = registry
        self._clock = clock
        self._server_duration = server_duration
        self._health_extra = health_extra or {}
        self._keys: dict[timedelta | None, CacheKey] = {}
        self._denials: dict[Decision, Reply] = {}
        # Issue 10: the gate says why: "session revoked", or "session record missing".
        self._revoked_replies: dict[str, Reply] = {}
        self._unavailable_reply = error_reply(500, UNAVAILABLE_MESSAGE)
        self._stale_reply = error_reply(503, STALE_MESSAGE)
        # One Reply per credentials object: a cache hit allocates nothing new for the body.
        self._last_credentials: Credentials | None = None
        self._last_reply: Reply | None = None
        self._decisions = registry.counter(
            "policy_decisions_total", "Policy decisions on credential requests", ("effect",)
        )
        # The decision of the current policy object when it has no time condition (see _evaluate).
        self._seen_policy: Policy | None = None
        self._constant_decision: Decision | None = None
        # The decision log's line tail for the latest outcome, and what it was encoded from.
        self._audit_outcome: tuple[object, ...] = ()
        self._audit_tail = b""

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def last_credentials(self) -> Credentials | None:
        """The credentials of the latest successful issuance (for `exec` without `--server`)."""
        return self._last_credentials

    async def prefetch(self) -> bool:
        """Warm the cache for what the policy allows now; False if it denies now (nothing fetched).

        Not an issuance: nothing is audited or counted. Raises CredentialError if STS fails."""
        decision = self._evaluate()
        if not decision.allowed:
            return False
        await self._cache.get(self._key(decision.max_server_duration))
        return True

    # -- CredentialService --------------------------------------------------------------------

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        outcome = self._decide(caller)
        if isinstance(outcome, Reply):
            return outcome
        decision, key = outcome
        credentials = self._cache.get_nowait(key)
        if credentials is None:
            return None
        return self._allow(decision, credentials, cache_hit=True, caller=caller)

    async def issue(self, caller: Caller | None = None) -> Reply:
        outcome = self._decide(caller)
        if isinstance(outcome, Reply):
            return outcome
        decision, key = outcome
        try:
            credentials, cache_hit = await self._cache.get(key)
        except CredentialError:
            # The cache has logged the cause; the caller learns nothing about upstream errors.
            self._decisions.inc("allow")
            self._audit_entry(decision, 500, cache_hit=False, caller=caller)
            return self._unavailable_reply
        # Revocation may have landed while we waited on STS: check the gate again.
        tracker = self._tracker
        if tracker.revoked:
            self._decisions.inc("revoked")
            return self._refuse_revoked(decision, cache_hit=cache_hit, caller=caller)
        if tracker.stale:
            return self._refuse_stale(decision, cache_hit=cache_hit, caller=caller)
        return self._allow(decision, credentials, cache_hit=cache_hit, caller=caller)

    def health(self) -> Reply:
        return Reply(200, orjson.dumps(self.health_body()), JSON)

    def health_body(self) -> dict[str, object]:
        """What `/healthz` says about this session (a profile set nests it per profile)."""
        tracker = self._tracker.statistics()
        policy = self._policy.statistics()
        cache = self._cache.statistics()
        body = {
            "status": "ok",
            "mode": self._identity.mode.value,
            "session": {
                "id": self._identity.session_id,
                "revoked": tracker.revoked,
                "tracking": "degraded" if tracker.degraded else "ok",
                "tracking_problem": tracker.degraded_reason if tracker.degraded else None,
                # How old this server's view of a revocation may be (issue 10 item 7).
                "revocation_staleness_seconds": round(self._tracker.revocation_staleness(), 3),
                "stale": tracker.stale,
                "created": tracker.session_created,
                "pending": tracker.pending,
                "dropped": tracker.dropped,
                "last_flush_at": tracker.last_flush_at.isoformat() if tracker.last_flush_at else None,
            },
            "policy": {
                "source": policy.source,
                "hash": policy.content_hash,
                "last_error": policy.last_error,
            },
            "credentials": {
                "sts_calls": cache.sts_calls,
                "sts_failures": cache.sts_failures,
                "last_refresh": cache.last_refresh.isoformat() if cache.last_refresh else None,
            },
            **self._health_extra,
        }
        return body

    def metrics(self) -> Reply:
        return Reply(200, self._registry.render().encode(), PROMETHEUS_TEXT)

    # -- steps ---------------------------------------------------------------------------------

    def _decide(self, caller: Caller | None) -> Reply | tuple[Decision, CacheKey]:
        """Steps 2 and 3: the policy, then the session gate (local state only)."""
        decision = self._evaluate()
        if not decision.allowed:
            self._decisions.inc("deny")
            self._audit_entry(decision, 403, cache_hit=False, caller=caller)
            return self._denial(decision)
        tracker = self._tracker
        if tracker.revoked:
            self._decisions.inc("revoked")
            return self._refuse_revoked(decision, cache_hit=False, caller=caller)
        if tracker.stale:  # a plain attribute, set by the tracker's staleness watch
            return self._refuse_stale(decision, cache_hit=False, caller=caller)
        # An allow is counted where the request ends (_allow, or the failure paths of issue()):
        # a cold request passes through here twice, once in issue_nowait and once in issue.
        return decision, self._key(decision.max_server_duration)

    def _refuse_stale(self, decision: Decision, *, cache_hit: bool, caller: Caller | None) -> Reply:
        self._decisions.inc("stale")
        self._audit_entry(decision, 503, cache_hit=cache_hit, reason=STALE_MESSAGE, caller=caller)
        return self._stale_reply

    def _refuse_revoked(self, decision: Decision, *, cache_hit: bool, caller: Caller | None) -> Reply:
        message = self._tracker.revoked_reason or REVOKED_MESSAGE
        self._audit_entry(decision, 403, cache_hit=cache_hit, reason=message, caller=caller)
        reply = self._revoked_replies.get(message)
        if reply is None:
            reply = self._revoked_replies[message] = error_reply(403, message)
        return reply

    def _evaluate(self) -> Decision:
        """`evaluate()` for this server's fixed (user, profile, mode), on every request.

        User, profile and mode never change for a server, so a policy without time conditions
        gives one decision for as long as it is current: that decision is kept per policy
        object, and a reload (which installs a new object) recomputes it. A policy with a time
        condition is evaluated afresh each time, at the clock's now."""
        policy = self._policy.current
        if policy is not self._seen_policy:
            self._seen_policy = policy
            constant = all(rule.time is None for rule in policy.rules)
            self._constant_decision = evaluate(policy, self._request()) if constant else None
        decision = self._constant_decision
        return decision if decision is not None else evaluate(policy, self._request())

    def _request(self) -> PolicyRequest:
        identity = self._identity
        return PolicyRequest(identity.user, identity.profile, identity.mode, self._clock.now())

    def _allow(
        self, decision: Decision, credentials: Credentials, *, cache_hit: bool, caller: Caller | None
    ) -> Reply:
        """Steps 5 and 6: audit, touch (only now, after success), respond."""
        self._decisions.inc("allow")
        reply = self._last_reply
        if credentials is not self._last_credentials or reply is None:
            reply = Reply(200, credentials.to_container_json(), JSON)
            self._last_credentials, self._last_reply = credentials, reply
        self._audit_entry(decision, 200, cache_hit=cache_hit, credentials=credentials, caller=caller)
        self._tracker.touch_nowait()
        return reply

    def _key(self, rule_max: timedelta | None) -> CacheKey:
        key = self._keys.get(rule_max)
        if key is None:
            seconds = int(effective_duration(self._server_duration, rule_max).total_seconds())
            key = self._keys[rule_max] = CacheKey(self._identity.role_arn, seconds)
        return key

    def _denial(self, decision: Decision) -> Reply:
        reply = self._denials.get(decision)
        if reply is None:
            # Decisions are prebuilt per rule, so this map holds at most two entries per rule.
            reply = self._denials[decision] = error_reply(403, decision.reason)
        return reply

    def _audit_entry(
        self,
        decision: Decision,
        status: int,
        *,
        cache_hit: bool,
        credentials: Credentials | None = None,
        reason: str | None = None,
        caller: Caller | None = None,
    ) -> None:
        audit = self._audit
        if not audit.enabled:
            return
        policy = self._policy.current
        # All of a line but its time and request id depends only on this outcome, which is the
        # same request after request: encode it once, and pass the log those bytes (issue 12).
        # Tuple comparison checks identity first, so the hit costs one tuple and no __eq__ call.
        outcome = (policy, decision, credentials, status, cache_hit, reason, caller)
        if outcome != self._audit_outcome:
            self._audit_outcome = outcome
            self._audit_tail = self._encode_tail(
                policy, decision, status, cache_hit, credentials, reason, caller
            )
        audit.log_encoded_nowait(self._audit_tail)

    def _encode_tail(
        self,
        policy: Policy,
        decision: Decision,
        status: int,
        cache_hit: bool,
        credentials: Credentials | None,
        reason: str | None,
        caller: Caller | None,
    ) -> bytes:
        identity = self._identity
        return encode_tail(
            DecisionEntry(
                time=self._clock.now(),  # not in the tail: the log stamps each line itself
                request_id="",
                user=identity.user,
                profile=identity.profile,
                # A reason overrides an allowing decision (the session gate): that request was
                # refused, so it is logged as a deny, with the rule that would have allowed it.
                effect=decision.effect.value if reason is None else "deny",
                rule=decision.rule_name,
                rule_index=decision.rule_index,
                reason=reason or decision.reason,
                mode=identity.mode.value,
                policy_source=policy.source,
                policy_hash=policy.content_hash,
                status=status,
                session_id=identity.session_id,
                source_identity=identity.source_identity,
                role_arn=identity.role_arn,
                expiration=credentials.expiration if credentials else None,
                cache_hit=cache_hit,
                # Who asked, under `--allow-user` (issue 11); None without it.
                caller_uid=caller.uid if caller is not None else None,
                caller_user=caller.user if caller is not None else None,
            )
        )
