"""`harness.aws_env.isolated_aws_environment`: what the test session and the benchmarks both rely
on to never reach a real AWS account."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.aws_env import REGION, isolated_aws_environment


def test_inherited_credentials_and_systemd_are_dropped_then_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The environment holds a real-looking profile, a Sentinel setting and a notify socket.
    2. Inside the block: none of them, fake keys, empty private config files, `extra` applied.
    3. After the block: the environment is exactly as before."""
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-real-looking-token")
    monkeypatch.setenv("SENTINEL_CONFIG", "/etc/sentinel/sentinel.toml")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    before = dict(os.environ)

    with isolated_aws_environment(tmp_path, AWS_ENDPOINT_URL="http://127.0.0.1:1"):
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SENTINEL_CONFIG", "NOTIFY_SOCKET"):
            assert key not in os.environ
        assert os.environ["AWS_ACCESS_KEY_ID"] == os.environ["AWS_SECRET_ACCESS_KEY"] == "testing"
        assert os.environ["AWS_REGION"] == os.environ["AWS_DEFAULT_REGION"] == REGION
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
        for key in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            path = Path(os.environ[key])
            assert path.parent == tmp_path
            assert path.read_text() == ""

    assert dict(os.environ) == before
