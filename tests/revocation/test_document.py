"""The revocation policy document (sentinel/revocation/document.py): its shapes, parsing, pruning,
size, and an independent linter (parliament) on every shape the code can produce."""

from __future__ import annotations

import gc
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from sentinel.revocation.document import (
    MAX_INLINE_POLICY_CHARS,
    RevocationDocument,
    parse,
    policy_size,
    round_up,
)


def _import_parliament() -> Any:
    """parliament leaves its IAM definition file open at import (a ResourceWarning, an error
    under this suite's settings) and imports the deprecated pkg_resources (a UserWarning):
    import it once with those two silenced, and collect."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import parliament

        gc.collect()
    return parliament


parliament = _import_parliament()

NOW = datetime(2026, 11, 28, 4, 10, 30, tzinfo=UTC)
ALICE = "sentinel.alice.0123456789abcdef"
BOB = "sentinel.bob.fedcba9876543210"
FOREIGN = {"Sid": "HandWritten", "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": "*"}


def shapes() -> dict[str, str]:
    """Every shape `render` produces: one entry, several in one bucket, several buckets, with a
    statement it did not write, and the largest identity AWS allows (64 characters)."""
    longest = "sentinel." + "u" * 38 + ".0123456789abcdef"
    assert len(longest) == 64
    one = RevocationDocument().with_entries({ALICE: NOW})
    two = one.with_entries({BOB: NOW + timedelta(minutes=5)})
    buckets = two.with_entries({longest: NOW + timedelta(hours=12)})
    foreign = RevocationDocument(buckets.entries, (FOREIGN,))
    return {
        "one": one.render(),
        "one-bucket": two.render(),
        "buckets": buckets.render(),
        "foreign": foreign.render(),
    }


def test_one_entry_is_one_deny_statement_with_the_end_in_its_sid() -> None:
    document = orjson.loads(RevocationDocument().with_entries({ALICE: NOW}).render())
    assert document == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SentinelRevokedUntil202611280500",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceIdentity": [ALICE]}},
            }
        ],
    }


def test_ends_round_up_to_the_hour_and_share_a_statement() -> None:
    assert round_up(NOW) == datetime(2026, 11, 28, 5, tzinfo=UTC)
    assert round_up(datetime(2026, 11, 28, 5, tzinfo=UTC)) == datetime(2026, 11, 28, 5, tzinfo=UTC)
    document = RevocationDocument().with_entries({ALICE: NOW, BOB: NOW + timedelta(minutes=40)})
    statements = orjson.loads(document.render())["Statement"]
    assert [s["Condition"]["StringEquals"]["aws:SourceIdentity"] for s in statements] == [[ALICE, BOB]]


def test_parse_reads_back_what_render_wrote_and_keeps_foreign_statements() -> None:
    written = RevocationDocument({ALICE: round_up(NOW), BOB: round_up(NOW + timedelta(hours=3))}, (FOREIGN,))
    assert parse(written.render()) == written
    assert parse(orjson.loads(written.render())) == written
    assert parse(None) == RevocationDocument()


def test_an_identity_revoked_twice_keeps_the_later_end() -> None:
    document = RevocationDocument().with_entries({ALICE: NOW + timedelta(hours=5)}).with_entries({ALICE: NOW})
    assert document.entries == {ALICE: round_up(NOW + timedelta(hours=5))}


def test_pruning_drops_entries_at_their_end_and_an_empty_document_is_empty() -> None:
    document = RevocationDocument().with_entries({ALICE: NOW, BOB: NOW + timedelta(hours=2)})
    assert document.pruned(round_up(NOW) - timedelta(microseconds=1)) == document
    later = document.pruned(round_up(NOW))
    assert later.entries == {BOB: round_up(NOW + timedelta(hours=2))}
    assert document.expired(round_up(NOW)) == {ALICE}
    assert later.pruned(NOW + timedelta(hours=3)).empty
    assert not RevocationDocument({}, (FOREIGN,)).empty


@pytest.mark.parametrize(
    "statement",
    [
        {**FOREIGN},
        {
            "Sid": "SentinelRevokedUntil202611280500",
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceIdentity": [ALICE]}},
        },
        {
            "Sid": "SentinelRevokedUntil202613990500",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceIdentity": [ALICE]}},
        },
        {
            "Sid": "SentinelRevokedUntil202611280500",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringLike": {"aws:SourceIdentity": [ALICE]}},
        },
    ],
)
def test_statements_not_exactly_ours_are_foreign_and_never_pruned(statement: dict[str, Any]) -> None:
    parsed = parse({"Version": "2012-10-17", "Statement": [statement]})
    assert parsed.entries == {}
    assert parsed.foreign == (statement,)
    assert parsed.pruned(NOW + timedelta(days=365)).foreign == (statement,)


def test_size_counts_no_whitespace() -> None:
    text = RevocationDocument().with_entries({ALICE: NOW}).render()
    spaced = orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    assert policy_size(spaced) == policy_size(text) == len(text)
    assert policy_size(text) < MAX_INLINE_POLICY_CHARS


@pytest.mark.parametrize("name", sorted(shapes()))
def test_every_shape_passes_the_parliament_linter(name: str) -> None:
    """parliament (an IAM policy linter independent of moto and of us) finds nothing to say."""
    findings = parliament.analyze_policy_string(shapes()[name]).findings
    assert [(f.issue, f.detail) for f in findings] == []


def test_the_linter_is_not_vacuous() -> None:
    """The same check does flag a broken policy, so the test above can fail."""
    broken = orjson.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": "s3:NoSuchAction", "Resource": "*"}],
        }
    ).decode()
    assert parliament.analyze_policy_string(broken).findings
