"""The revocation policy document: which SourceIdentities a role denies, and until when (issue 13).

One inline policy, `sentinel-revocations`, on the role a session's credentials come from. Each of
its statements denies every action to the credentials whose `aws:SourceIdentity` is in its list:

    {"Sid": "SentinelRevokedUntil202611281400", "Effect": "Deny", "Action": "*", "Resource": "*",
     "Condition": {"StringEquals": {"aws:SourceIdentity": ["sentinel.alice.0123456789abcdef"]}}}

The Sid carries the end of usefulness of its entries (UTC, to the minute): after it, no credential
of those sessions can still be valid, so the statement can go. A Sid may only hold [A-Za-z0-9], so
one time per statement: entries are grouped by their end of usefulness rounded *up* to the hour
(never shorter than needed), which bounds the statements to about one per hour of the longest
credential lifetime (12 h). Statements this module did not write are kept exactly as they are.

Pure functions over values: no I/O, no clock of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

POLICY_NAME: Final = "sentinel-revocations"
"""The inline policy's fixed name on each role; documented for admins (docs/DESIGN.md §11)."""

MAX_INLINE_POLICY_CHARS: Final = 10_240
"""IAM's limit on the inline policies of one role, all together, whitespace not counted."""

BUCKET: Final = timedelta(hours=1)
"""Ends of usefulness are rounded up to this; one statement per bucket."""

_SID_PREFIX: Final = "SentinelRevokedUntil"
_SID: Final = re.compile(_SID_PREFIX + r"(\d{12})")
_SID_TIME: Final = "%Y%m%d%H%M"
_CONDITION_KEY: Final = "aws:SourceIdentity"
_STATEMENT_KEYS: Final = frozenset({"Sid", "Effect", "Action", "Resource", "Condition"})
_DENY_ALL: Final = ("Deny", "*", "*")


def round_up(moment: datetime) -> datetime:
    """`moment` rounded up to the next whole `BUCKET` (UTC); a moment on the boundary stays."""
    moment = moment.astimezone(UTC)
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + BUCKET


@dataclass(frozen=True, slots=True)
class RevocationDocument:
    """What the policy says: SourceIdentity -> end of usefulness, plus statements not ours."""

    entries: Mapping[str, datetime] = field(default_factory=dict)
    foreign: tuple[Mapping[str, Any], ...] = ()

    def with_entries(self, added: Mapping[str, datetime]) -> RevocationDocument:
        """Add entries (rounded up to the bucket); an identity keeps the later of two ends."""
        entries = dict(self.entries)
        for identity, until in added.items():
            until = round_up(until)
            entries[identity] = max(until, entries.get(identity, until))
        return RevocationDocument(entries, self.foreign)

    def pruned(self, now: datetime) -> RevocationDocument:
        """Without the entries whose end of usefulness is not after `now`."""
        kept = {identity: until for identity, until in self.entries.items() if until > now}
        return RevocationDocument(kept, self.foreign)

    def expired(self, now: datetime) -> frozenset[str]:
        return frozenset(identity for identity, until in self.entries.items() if until <= now)

    @property
    def empty(self) -> bool:
        """Nothing to write: the inline policy must be deleted, never left without statements."""
        return not self.entries and not self.foreign

    def render(self) -> str:
        """The policy JSON, compact and deterministic (sorted buckets and identities)."""
        buckets: dict[datetime, list[str]] = {}
        for identity, until in self.entries.items():
            buckets.setdefault(until, []).append(identity)
        statements = [_statement(until, sorted(identities)) for until, identities in sorted(buckets.items())]
        document = {"Version": "2012-10-17", "Statement": [*statements, *self.foreign]}
        return orjson.dumps(document).decode()


def _statement(until: datetime, identities: list[str]) -> dict[str, Any]:
    return {
        "Sid": _SID_PREFIX + until.astimezone(UTC).strftime(_SID_TIME),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {"StringEquals": {_CONDITION_KEY: identities}},
    }


def parse(document: Mapping[str, Any] | str | None) -> RevocationDocument:
    """The entries of a policy as IAM returns it (a dict from boto3, or JSON text; None = absent).

    A statement counts as ours only if it has exactly the shape `render` writes; anything else is
    foreign and is kept verbatim, so a hand edit is never lost or misread."""
    if document is None:
        return RevocationDocument()
    if isinstance(document, str):
        document = orjson.loads(document)
    if not isinstance(document, Mapping):
        raise ValueError("a policy document is a JSON object")
    statements = document.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    entries: dict[str, datetime] = {}
    foreign: list[Mapping[str, Any]] = []
    for statement in statements:
        parsed = _ours(statement)
        if parsed is None:
            foreign.append(statement)
            continue
        until, identities = parsed
        for identity in identities:
            entries[identity] = max(until, entries.get(identity, until))
    return RevocationDocument(entries, tuple(foreign))


def _ours(statement: Any) -> tuple[datetime, list[str]] | None:
    if not isinstance(statement, Mapping) or set(statement) != _STATEMENT_KEYS:
        return None
    match = _SID.fullmatch(str(statement["Sid"]))
    if match is None or (statement["Effect"], statement["Action"], statement["Resource"]) != _DENY_ALL:
        return None
    condition = statement["Condition"]
    if not isinstance(condition, Mapping) or set(condition) != {"StringEquals"}:
        return None
    values = condition["StringEquals"]
    if not isinstance(values, Mapping) or set(values) != {_CONDITION_KEY}:
        return None
    identities = values[_CONDITION_KEY]
    if isinstance(identities, str):  # IAM accepts a single value without the list
        identities = [identities]
    if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
        return None
    try:
        until = datetime.strptime(match.group(1), _SID_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None
    return until, identities


def policy_size(text: str) -> int:
    """Characters IAM counts against the role's inline-policy limit: whitespace is not counted."""
    return sum(1 for char in text if not char.isspace())


def missing(expected: Iterable[str], document: RevocationDocument) -> list[str]:
    """The identities of `expected` that `document` does not deny."""
    return [identity for identity in expected if identity not in document.entries]
