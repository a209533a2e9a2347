"""The policy as values: rules precompiled at load time so `evaluate()` only compares (issue 3).

Everything here is immutable. A `Policy` is swapped as a whole on reload, so the hot path reads one
attribute and never sees a half-updated rule set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

MINUTES_PER_DAY = 24 * 60


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    # Allows in server mode only: the point is that production credentials are served (and audited)
    # by a long-running Sentinel server rather than minted by a one-shot `exec` or credential_process.
    REQUIRE_SERVER = "require_server"


class Mode(StrEnum):
    """How the credentials are being requested."""

    SERVER = "server"
    CLI = "cli"
    CREDENTIAL_PROCESS = "credential_process"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """When a rule applies, in the wall-clock time of `timezone`.

    `days` are weekday numbers (Monday = 0) or None for every day; `start`/`end` are minutes after
    local midnight, `end` exclusive, or both None for the whole day. `start > end` is an overnight
    window (22:00-06:00); its `days` name the day the window *starts* on, so "friday 22:00-06:00"
    still matches at 02:00 on Saturday and does not match at 02:00 on Friday.

    Wall-clock semantics across DST: a window covers the local times it names, so on the night the
    clocks go forward 01:00-04:00 lasts two real hours, and a window inside the skipped hour does not
    occur that night; on the night they go back, the repeated hour matches both times.
    """

    timezone: ZoneInfo
    days: frozenset[int] | None = None
    start: int | None = None
    end: int | None = None

    def contains(self, now: datetime) -> bool:
        """Whether the aware instant `now` falls inside this window."""
        local = now.astimezone(self.timezone)
        weekday = local.weekday()
        if self.start is None or self.end is None:
            return self.days is None or weekday in self.days
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end and (self.days is None or weekday in self.days)
        # Overnight: the part after midnight belongs to the window that started the day before.
        if minute >= self.start:
            return self.days is None or weekday in self.days
        if minute < self.end:
            return self.days is None or (weekday - 1) % 7 in self.days
        return False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `evaluate()`; prebuilt per rule at load time, so evaluating allocates nothing.

    `effect` is the matched rule's effect (DENY when no rule matched); `allowed` is the outcome,
    which for REQUIRE_SERVER depends on the mode. `rule_index` is the 0-based position in `rules`.
    `max_server_duration` is the matched rule's cap, only on an allowed decision.
    """

    allowed: bool
    effect: Effect
    rule_name: str | None
    rule_index: int | None
    reason: str
    max_server_duration: timedelta | None = None


NO_MATCH = Decision(
    allowed=False, effect=Effect.DENY, rule_name=None, rule_index=None, reason="no rule matched"
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. A condition that is None matches anything."""

    name: str
    index: int
    effect: Effect
    users: frozenset[str] | None = None
    profiles: frozenset[str] | None = None
    modes: frozenset[Mode] | None = None
    time: TimeWindow | None = None
    reason: str | None = None
    max_server_duration: timedelta | None = None
    # The two possible outcomes, computed once; only REQUIRE_SERVER ever uses `outside_server`.
    on_match: Decision = field(init=False, repr=False, compare=False)
    outside_server: Decision = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        label = f'rule "{self.name}"'
        if self.effect is Effect.DENY:
            on_match = self._decision(False, self.reason or f"denied by {label}")
            outside_server = on_match
        else:
            on_match = self._decision(True, self.reason or f"allowed by {label}", self.max_server_duration)
            why = f"{self.reason}: " if self.reason else ""
            outside_server = self._decision(False, f"{why}{label} requires server mode; run with --server")
        # Frozen dataclass: derived fields are set once here, through object.__setattr__.
        object.__setattr__(self, "on_match", on_match)
        object.__setattr__(self, "outside_server", outside_server)

    def _decision(self, allowed: bool, reason: str, duration: timedelta | None = None) -> Decision:
        return Decision(allowed, self.effect, self.name, self.index, reason, duration)


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy and where it came from (`source`, `content_hash` go into the decision log)."""

    rules: tuple[Rule, ...]
    source: str
    content_hash: str
    version: str = "1"


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """Who asks, for what, how, and when (`now` must be timezone-aware)."""

    user: str
    profile: str
    mode: Mode
    now: datetime

    def __post_init__(self) -> None:
        # A naive datetime would be read as the host's local time by astimezone(): refuse it.
        if self.now.tzinfo is None:
            raise ValueError("PolicyRequest.now must be timezone-aware")
