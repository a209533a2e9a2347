"""`sentinel serve` + `sentinel server-revoke` as real subprocesses against the moto server (issue 13).

moto stores and validates the role's inline policy but does not evaluate `aws:SourceIdentity` when
it authorises API calls, so these tests check what AWS would enforce (the policy on the role), not
a denied API call: no end-to-end denial is observed here.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.sentinel_proc import AwsSandbox, serving, store_session


def test_a_served_session_records_its_role_and_credential_lifetime(
    env: dict[str, str], sandbox: AwsSandbox, tmp_path: Path, policy: Path
) -> None:
    """1. `sentinel serve --server-duration 2h` on an SQLite file. 2. its record names the role its
    credentials come from and their longest lifetime (7200 s), which a revocation needs later."""
    db = tmp_path / "sessions.db"
    with serving(
        env, tmp_path / "a", "--policy-file", str(policy), "--session-db", str(db), "--server-duration", "2h"
    ) as served:
        record = store_session(served.session_id, db=db)
    assert record is not None
    assert (record.role_arn, record.credential_lifetime) == (sandbox.role_arn, 7200)
