"""The read-merge-write-readback loop (sentinel/revocation/enforce.py) against IAM on a real moto
server, over HTTP, with real aiobotocore clients.

moto validates the policy syntax on PutRolePolicy, so every write here was accepted as a policy.
moto does not evaluate `aws:SourceIdentity` when it authorises calls (nor the 10,240-character
limit on a role's inline policies): these tests check the policy the role carries, not a denial.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from harness.aws_env import REGION
from sentinel.revocation import (
    MAX_INLINE_POLICY_CHARS,
    POLICY_NAME,
    EnforcementError,
    Enforcer,
    PolicyFull,
    RevocationDocument,
    role_name,
)
from sentinel.revocation.document import round_up
from sentinel.revocation.iam import IamRolePolicies, open_role_policies
from sentinel.sessions.retry import Backoff
from tests.revocation.roles import denied, new_role
from tests.sessions.conftest import FakeClock

START = datetime(2026, 11, 28, 4, 10, tzinfo=UTC)
ALICE = "sentinel.alice.0123456789abcdef"
BOB = "sentinel.bob.fedcba9876543210"


@pytest.fixture
def role_arn(aws_endpoint: str) -> str:
    return new_role(aws_endpoint)


@pytest.fixture
async def policies(aws_endpoint: str) -> AsyncIterator[IamRolePolicies]:
    async with open_role_policies(None, REGION) as opened:
        yield opened


def sid(until: datetime) -> str:
    return "SentinelRevokedUntil" + round_up(until).strftime("%Y%m%d%H%M")


async def test_a_revocation_denies_exactly_that_identity_and_a_second_adds_to_it(
    aws_endpoint: str, role_arn: str, policies: IamRolePolicies
) -> None:
    """1. no policy on the role. 2. enforce Alice: the role's inline policy holds exactly her
    identity, in a statement named for its end. 3. enforce Bob (another end): both are denied."""
    clock = FakeClock(START)
    enforcer = Enforcer(policies, clock=clock, settle=0)
    assert denied(aws_endpoint, role_arn) is None
    alice_end = START + timedelta(minutes=30)
    done = await enforcer.enforce(role_arn, {ALICE: alice_end})
    assert denied(aws_endpoint, role_arn) == {sid(alice_end): [ALICE]}
    assert (done.until, done.attempts, done.pruned, done.deleted) == (
        {ALICE: round_up(alice_end)},
        1,
        set(),
        False,
    )
    bob_end = START + timedelta(hours=12, minutes=15)
    await enforcer.enforce(role_arn, {BOB: bob_end})
    assert denied(aws_endpoint, role_arn) == {sid(alice_end): [ALICE], sid(bob_end): [BOB]}
    assert await enforcer.lookup(role_arn, ALICE) == round_up(alice_end)
    assert await enforcer.lookup(role_arn, "sentinel.carol.0000000000000000") is None


async def test_pruning_with_a_driven_clock_removes_expired_entries_then_the_policy(
    aws_endpoint: str, role_arn: str, policies: IamRolePolicies
) -> None:
    """1. Alice (ends in 30 min) and Bob (12 h) are denied. 2. the clock passes Alice's end: the
    next enforcement (here a prune-only one) removes her and keeps Bob. 3. past Bob's end the
    inline policy is deleted, not left with an empty condition."""
    clock = FakeClock(START)
    enforcer = Enforcer(policies, clock=clock, settle=0)
    alice_end, bob_end = START + timedelta(minutes=30), START + timedelta(hours=12)
    await enforcer.enforce(role_arn, {ALICE: alice_end, BOB: bob_end})
    clock.advance((round_up(alice_end) - START).total_seconds())
    done = await enforcer.enforce(role_arn, {})
    assert done.pruned == {ALICE}
    assert denied(aws_endpoint, role_arn) == {sid(bob_end): [BOB]}
    clock.advance(timedelta(hours=12).total_seconds())
    done = await enforcer.enforce(role_arn, {})
    assert (done.pruned, done.deleted) == ({BOB}, True)
    assert denied(aws_endpoint, role_arn) is None


class ReadTogether:
    """Holds each writer after its first read until every writer has read: the lost-update race
    (both read the same policy, both write) happens on every run instead of by chance."""

    def __init__(self, parties: int) -> None:
        self._parties = parties
        self._arrived = 0
        self._all_read = anyio.Event()

    async def arrive(self) -> None:
        self._arrived += 1
        if self._arrived == self._parties:
            self._all_read.set()
        await self._all_read.wait()


class RaceOnFirstRead:
    """The real IAM policies, with the first read held at a `ReadTogether` (ordering only)."""

    def __init__(self, inner: IamRolePolicies, together: ReadTogether) -> None:
        self._inner = inner
        self._together: ReadTogether | None = together
        self.puts = 0

    async def get(self, role: str, name: str) -> Mapping[str, Any] | None:
        document = await self._inner.get(role, name)
        together, self._together = self._together, None
        if together is not None:
            await together.arrive()
        return document

    async def put(self, role: str, name: str, document: str) -> None:
        self.puts += 1
        await self._inner.put(role, name, document)

    async def delete(self, role: str, name: str) -> None:
        await self._inner.delete(role, name)


async def test_two_concurrent_revocations_on_one_role_both_land(role_arn: str, aws_endpoint: str) -> None:
    """1. two enforcers, each with its own IAM client, revoke Alice and Bob on one role at once.
    2. both read the (empty) policy before either writes, so one write overwrites the other.
    3. the read-back catches the loss and the loser retries: both identities end up denied, and
    the retry is visible (three writes or more, one enforcement took two attempts or more)."""
    together = ReadTogether(2)
    end = START + timedelta(hours=1)
    outcomes = {}
    writers: list[RaceOnFirstRead] = []

    async def revoke(identity: str) -> None:
        async with open_role_policies(None, REGION) as real:
            gated = RaceOnFirstRead(real, together)
            writers.append(gated)
            # settle: long enough for the other writer's write to land before our read-back.
            enforcer = Enforcer(gated, clock=FakeClock(START), settle=0.5)
            outcomes[identity] = await enforcer.enforce(role_arn, {identity: end})

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(revoke, ALICE)
            group.start_soon(revoke, BOB)
    assert denied(aws_endpoint, role_arn) == {sid(end): [ALICE, BOB]}
    assert sum(writer.puts for writer in writers) >= 3
    assert max(outcome.attempts for outcome in outcomes.values()) >= 2


def identities(count: int) -> list[str]:
    return [f"sentinel.user{n:04d}-with-a-long-name-here.{n:016x}" for n in range(count)]


async def test_the_size_limit_prunes_first_and_then_refuses(
    aws_endpoint: str, role_arn: str, policies: IamRolePolicies
) -> None:
    """1. a full policy of expired entries: a new revocation prunes them and fits. 2. a policy
    full of live entries: the next revocation is refused with PolicyFull naming the limit, and the
    role keeps the policy it had (nothing half-written)."""
    clock = FakeClock(START)
    enforcer = Enforcer(policies, clock=clock, settle=0)
    many = identities(200)
    stale = RevocationDocument().with_entries({identity: START - timedelta(hours=2) for identity in many})
    assert len(stale.render()) > MAX_INLINE_POLICY_CHARS
    # Written directly: moto does not enforce the size limit, which is why the code checks it itself.
    await policies.put(role_arn.rsplit("/", 1)[1], POLICY_NAME, stale.render())
    done = await enforcer.enforce(role_arn, {ALICE: START + timedelta(hours=1)})
    assert len(done.pruned) == 200
    assert denied(aws_endpoint, role_arn) == {sid(START + timedelta(hours=1)): [ALICE]}

    live_end = START + timedelta(hours=3)
    already = {ALICE: START + timedelta(hours=1)}

    def size_with(count: int) -> int:
        added = {**already, **dict.fromkeys(many[:count], live_end)}
        return len(RevocationDocument().with_entries(added).render())

    fitting = 0  # the most live entries that still fit beside Alice's
    while size_with(fitting + 1) <= MAX_INLINE_POLICY_CHARS:
        fitting += 1
    assert fitting < len(many)
    await enforcer.enforce(role_arn, dict.fromkeys(many[:fitting], live_end))
    before = denied(aws_endpoint, role_arn)
    with pytest.raises(PolicyFull) as caught:
        await enforcer.enforce(role_arn, {many[fitting]: live_end})
    assert "10240" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert denied(aws_endpoint, role_arn) == before


class OtherAdminAlwaysWins:
    """The real IAM policies, but right after each of our writes another admin's write (based on
    an older read) replaces the policy with one that lacks our entries."""

    def __init__(self, inner: IamRolePolicies, theirs: str) -> None:
        self._inner = inner
        self._theirs = theirs
        self.puts = 0

    async def get(self, role: str, name: str) -> Mapping[str, Any] | None:
        return await self._inner.get(role, name)

    async def put(self, role: str, name: str, document: str) -> None:
        self.puts += 1
        await self._inner.put(role, name, document)
        await self._inner.put(role, name, self._theirs)

    async def delete(self, role: str, name: str) -> None:
        await self._inner.delete(role, name)


async def test_a_write_that_never_sticks_fails_after_the_bounded_attempts(
    aws_endpoint: str, role_arn: str, policies: IamRolePolicies
) -> None:
    """1. every write of ours is overwritten at once by a policy without our entry. 2. the
    enforcer tries exactly `attempts` times, then raises one line saying it did not stick."""
    theirs = RevocationDocument().with_entries({BOB: START + timedelta(hours=1)}).render()
    racing = OtherAdminAlwaysWins(policies, theirs)
    enforcer = Enforcer(racing, clock=FakeClock(START), settle=0, attempts=3, backoff=Backoff(0.01, 0.02))
    with pytest.raises(EnforcementError) as caught:
        await enforcer.enforce(role_arn, {ALICE: START + timedelta(hours=1)})
    assert racing.puts == 3
    assert "after 3 attempts" in str(caught.value)
    assert denied(aws_endpoint, role_arn) == {sid(START + timedelta(hours=1)): [BOB]}


@pytest.mark.parametrize(
    ("arn", "name"),
    [
        ("arn:aws:iam::123456789012:role/dev", "dev"),
        ("arn:aws:iam::123456789012:role/teams/platform/deploy+ci", "deploy+ci"),
        ("arn:aws-us-gov:iam::123456789012:role/x", "x"),
    ],
)
def test_role_name_is_the_last_path_segment_of_a_role_arn(arn: str, name: str) -> None:
    assert role_name(arn) == name


@pytest.mark.parametrize(
    "arn", ["arn:aws:iam::123456789012:user/alice", "arn:aws:sts::123456789012:assumed-role/dev/s", "dev", ""]
)
def test_anything_but_a_role_arn_is_refused_in_one_line(arn: str) -> None:
    with pytest.raises(EnforcementError, match="not an IAM role ARN"):
        role_name(arn)
