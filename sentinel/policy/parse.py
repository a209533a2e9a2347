"""Policy YAML -> `Policy`: strict validation with the rule and the line in every error (issue 3).

The document is *composed* (yaml.compose with the safe loader), never constructed: we walk the node
tree ourselves, so nothing but scalars, lists and mappings can ever be built, every node has a line
number for the error message, and duplicate keys are caught instead of silently overwritten. It also
lets `end: 18:00` work unquoted, although YAML 1.1 resolves that plain scalar to the integer 1080.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sentinel.config import parse_duration
from sentinel.errors import PolicyError
from sentinel.policy.model import MINUTES_PER_DAY, Effect, Mode, Policy, Rule, TimeWindow

# A policy is a few kilobytes (an SSM advanced parameter tops out at 8 KiB); anything near this
# is a wrong file, and composing it would hold the event loop's worker thread for seconds.
MAX_POLICY_BYTES = 1024 * 1024

# STS AssumeRole accepts 900 s .. 12 h (the role's MaxSessionDuration may lower the top further).
MIN_SERVER_DURATION = timedelta(minutes=15)
MAX_SERVER_DURATION = timedelta(hours=12)

SUPPORTED_VERSIONS = ("1",)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_TAG_NAMES = {
    _STR: "a string",
    _INT: "an integer",
    "tag:yaml.org,2002:float": "a decimal number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "nothing",
    "tag:yaml.org,2002:timestamp": "a timestamp",
}

_TOP_KEYS = ("version", "rules")
_RULE_KEYS = ("name", "effect", "conditions", "reason", "max_server_duration")
_CONDITION_KEYS = ("users", "profiles", "time", "mode")
_TIME_KEYS = ("days", "hours", "timezone")
_HOURS_KEYS = ("start", "end")

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Full names and their three-letter forms, case-insensitively: "Mon", "monday" and "MONDAY" alike.
_DAY_NUMBERS = {name: number for number, day in enumerate(_DAYS) for name in (day, day[:3])}

# ASCII digits only: `\d` would also accept other scripts' digits.
_CLOCK_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_MAX_NAME = 128


def parse_policy(raw: bytes, source: str) -> Policy:
    """Validate a policy document and compile it; raises `PolicyError` naming the rule and line.

    `source` (`file:/path`, `ssm:/name`) prefixes every message and is kept with the policy, with
    the SHA-256 of `raw`, for the decision log.
    """
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy {source}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        root = yaml.compose(raw, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its line: str(exc) would quote a snippet of the document.
        mark = exc.problem_mark or exc.context_mark
        problem = ", ".join(part for part in (exc.context, exc.problem) if part)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise PolicyError(f"policy {source}: {line}invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise PolicyError(f"policy {source}: invalid YAML: {exc.reason} at byte {exc.position}") from None
    except yaml.YAMLError:
        raise PolicyError(f"policy {source}: invalid YAML") from None
    if root is None:
        raise PolicyError(f"policy {source}: the document is empty")
    rules = _Parser(source).document(root)
    return Policy(rules=rules, source=source, content_hash=hashlib.sha256(raw).hexdigest())


def _describe(node: Node) -> str:
    """How a node reads to a person: "a list", "an integer", or its explicit tag if it has one."""
    tag = str(node.tag)
    if isinstance(node, MappingNode) and tag == _MAP:
        return "a mapping"
    if isinstance(node, SequenceNode) and tag == _SEQ:
        return "a list"
    return _TAG_NAMES.get(tag, f"a {tag.replace('tag:yaml.org,2002:', '!!')} value")


def _choices(values: Iterable[str]) -> str:
    return ", ".join(values)


class _Parser:
    """Walks the node tree; knows which rule it is in, so every error can name it."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._rule: str | None = None

    def fail(self, node: Node, problem: str) -> NoReturn:
        line = node.start_mark.line + 1
        where = f"{self._rule} (line {line})" if self._rule else f"line {line}"
        raise PolicyError(f"policy {self._source}: {where}: {problem}")

    # -- structure --------------------------------------------------------------------------------

    def document(self, root: Node) -> tuple[Rule, ...]:
        fields = self.mapping(root, _TOP_KEYS, "the policy")
        version = self.required(root, fields, "version", "the policy")
        text = self.scalar_text(version, '"version"', tags=(_STR, _INT))
        if text not in SUPPORTED_VERSIONS:
            self.fail(version, f'unsupported version "{text}": expected "1"')
        rules_node = self.required(root, fields, "rules", "the policy")
        items = self.sequence(rules_node, '"rules"', "add a deny rule to deny everything")
        names: dict[str, int] = {}
        rules = []
        for index, item in enumerate(items):
            rule = self.rule(item, index)
            if rule.name in names:
                self.fail(item, f"duplicate rule name; rules[{names[rule.name]}] has the same name")
            names[rule.name] = index
            rules.append(rule)
            self._rule = None
        return tuple(rules)

    def rule(self, node: Node, index: int) -> Rule:
        self._rule = f"rules[{index}]"
        if not isinstance(node, MappingNode) or node.tag != _MAP:
            self.fail(node, f"a rule must be a mapping, got {_describe(node)}")
        # The name first, so that every later error in this rule can name it.
        name_node = next((value for key, value in node.value if key.value == "name"), None)
        if name_node is None:
            self.fail(node, 'missing "name"')
        name = self.name(name_node)
        self._rule = f'rule "{name}"'
        fields = self.mapping(node, _RULE_KEYS, "a rule")
        effect_node = self.required(node, fields, "effect", "a rule")
        effect_text = self.scalar_text(effect_node, '"effect"')
        try:
            effect = Effect(effect_text)
        except ValueError:
            self.fail(effect_node, f'bad effect "{effect_text}": expected one of {_choices(Effect)}')
        conditions = fields.get("conditions")
        reason = fields.get("reason")
        duration = fields.get("max_server_duration")
        if duration is not None and effect is Effect.DENY:
            self.fail(duration, "max_server_duration has no effect on a deny rule")
        # `conditions: {}` is allowed: an explicit catch-all rule.
        when = (
            self.mapping(conditions, _CONDITION_KEYS, '"conditions"', allow_empty=True)
            if conditions is not None
            else {}
        )
        return Rule(
            name=name,
            index=index,
            effect=effect,
            users=frozenset(self.names(when["users"], '"users"')) if "users" in when else None,
            profiles=frozenset(self.names(when["profiles"], '"profiles"')) if "profiles" in when else None,
            modes=frozenset(self.modes(when["mode"])) if "mode" in when else None,
            time=self.time(when["time"]) if "time" in when else None,
            reason=self.reason(reason) if reason is not None else None,
            max_server_duration=self.duration(duration) if duration is not None else None,
        )

    def time(self, node: Node) -> TimeWindow:
        fields = self.mapping(node, _TIME_KEYS, '"time"')
        if "days" not in fields and "hours" not in fields:
            self.fail(node, '"time" needs "days" or "hours"')
        zone = ZoneInfo("UTC")
        if "timezone" in fields:
            zone = self.timezone(fields["timezone"])
        days = None
        if "days" in fields:
            days = frozenset(self.day(item) for item in self.sequence(fields["days"], '"days"'))
        start = end = None
        if "hours" in fields:
            hours = fields["hours"]
            bounds = self.mapping(hours, _HOURS_KEYS, '"hours"')
            start = self.clock_time(self.required(hours, bounds, "start", '"hours"'), "start")
            end = self.clock_time(self.required(hours, bounds, "end", '"hours"'), "end")
            if start == end:
                self.fail(hours, 'hours "start" equals "end"; omit "hours" for the whole day')
        return TimeWindow(timezone=zone, days=days, start=start, end=end)

    # -- values -----------------------------------------------------------------------------------

    def name(self, node: Node) -> str:
        text = self.scalar_text(node, '"name"')
        if not text:
            self.fail(node, '"name" is empty')
        if len(text) > _MAX_NAME or not text.isprintable() or text != text.strip():
            self.fail(node, f'"name" must be 1-{_MAX_NAME} printable characters without surrounding spaces')
        return text

    def names(self, node: Node, what: str) -> list[str]:
        names = []
        for item in self.sequence(node, what):
            text = self.scalar_text(item, f"each of {what}")
            if not text:
                self.fail(item, f"empty entry in {what}")
            names.append(text)
        return names

    def modes(self, node: Node) -> list[Mode]:
        modes = []
        for item in self.sequence(node, '"mode"'):
            text = self.scalar_text(item, 'each of "mode"')
            try:
                modes.append(Mode(text))
            except ValueError:
                self.fail(item, f'unknown mode "{text}": expected one of {_choices(Mode)}')
        return modes

    def day(self, node: Node) -> int:
        text = self.scalar_text(node, 'each of "days"')
        number = _DAY_NUMBERS.get(text.lower())
        if number is None:
            self.fail(node, f'unknown day "{text}": expected monday..sunday or mon..sun')
        return number

    def clock_time(self, node: Node, what: str) -> int:
        # Plain `18:00` is YAML 1.1's base-60 integer 1080: take the text as written, not its value.
        text = self.scalar_text(node, f'"{what}"', tags=(_STR, _INT))
        match = _CLOCK_TIME.fullmatch(text)
        if match is not None:
            minutes = int(match[1]) * 60 + int(match[2])
            # 24:00 only as an end: "until midnight", which end-exclusive 23:59 cannot say.
            limit = MINUTES_PER_DAY if what == "end" else MINUTES_PER_DAY - 1
            if int(match[2]) < 60 and minutes <= limit:
                return minutes
        self.fail(node, f'bad time "{text}" for "{what}": expected HH:MM, 00:00 to 23:59')

    def timezone(self, node: Node) -> ZoneInfo:
        text = self.scalar_text(node, '"timezone"')
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.fail(node, f'unknown timezone "{text}": expected an IANA name such as Europe/Berlin')

    def reason(self, node: Node) -> str:
        # Reasons end up in log lines and response bodies: always one line.
        text = " ".join(self.scalar_text(node, '"reason"').split())
        if not text:
            self.fail(node, '"reason" is empty')
        return text

    def duration(self, node: Node) -> timedelta:
        text = self.scalar_text(node, '"max_server_duration"', tags=(_STR, _INT))
        try:
            value = parse_duration(text)
        except ValueError:
            value = None
        # STS takes whole seconds: a fractional cap would be silently truncated later.
        if value is None or value.microseconds:
            self.fail(node, f'bad max_server_duration "{text}": expected seconds or a duration like 1h30m')
        if value < MIN_SERVER_DURATION:
            self.fail(node, f"max_server_duration {text} is below the STS minimum of 15m (900 seconds)")
        if value > MAX_SERVER_DURATION:
            self.fail(node, f"max_server_duration {text} is above the STS maximum of 12h")
        return value

    # -- node shapes ------------------------------------------------------------------------------

    def mapping(
        self, node: Node, allowed: tuple[str, ...], what: str, *, allow_empty: bool = False
    ) -> dict[str, Node]:
        if not isinstance(node, MappingNode) or node.tag != _MAP:
            self.fail(node, f"{what} must be a mapping, got {_describe(node)}")
        if not node.value and not allow_empty:
            self.fail(node, f"{what} is empty")
        fields: dict[str, Node] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or key.tag != _STR:
                self.fail(key, f"keys must be strings, got {_describe(key)}")
            if key.value not in allowed:
                import difflib  # only for the error message: not at every start-up (issue 12)

                close = difflib.get_close_matches(key.value, allowed, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.fail(key, f'unknown key "{key.value}"{hint}')
            if key.value in fields:
                self.fail(key, f'duplicate key "{key.value}"')
            fields[key.value] = value
        return fields

    def required(self, parent: Node, fields: dict[str, Node], key: str, what: str) -> Node:
        if key not in fields:
            self.fail(parent, f'{what} is missing "{key}"')
        return fields[key]

    def sequence(self, node: Node, what: str, empty_hint: str = "omit it to match any") -> list[Node]:
        if not isinstance(node, SequenceNode) or node.tag != _SEQ:
            self.fail(node, f"{what} must be a list, got {_describe(node)}")
        # An empty list would silently match nothing (or, for rules, deny everything): say so.
        if not node.value:
            self.fail(node, f"{what} is an empty list; {empty_hint}")
        items: list[Node] = node.value
        return items

    def scalar_text(self, node: Node, what: str, *, tags: tuple[str, ...] = (_STR,)) -> str:
        if not isinstance(node, ScalarNode) or node.tag not in tags:
            expected = " or ".join(_TAG_NAMES[tag] for tag in tags)
            self.fail(node, f"{what} must be {expected}, got {_describe(node)}")
        text: str = node.value
        return text
