"""boto3's own container credential provider, in a fresh process, fetching from the running server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from sentinel.server import Server
from tests.server.client import DEADLINE, TOKEN
from tests.server.services import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, FixedService

# Exactly what an application does: default session, default credential chain.
_FETCH = """
import json, sys
import botocore.session
from botocore.exceptions import CredentialRetrievalError
try:
    credentials = botocore.session.get_session().get_credentials()
except CredentialRetrievalError as exc:
    print(json.dumps({"error": type(exc).__name__}))
    sys.exit(0)
frozen = credentials.get_frozen_credentials()
print(json.dumps({"method": credentials.method, "access_key": frozen.access_key,
                  "secret_key": frozen.secret_key, "token": frozen.token}))
"""


def _sdk_environment(server: Server, **variables: str) -> dict[str, str]:
    """The test process's environment without static AWS keys, plus the container variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}
    }
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = server.url
    env.update(variables)
    return env


async def _fetch_with_botocore(env: dict[str, str]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FETCH,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(DEADLINE * 3):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    result: dict[str, Any] = json.loads(stdout)
    return result


async def test_botocore_fetches_credentials_with_the_token(server: Server, service: FixedService) -> None:
    result = await _fetch_with_botocore(_sdk_environment(server, AWS_CONTAINER_AUTHORIZATION_TOKEN=TOKEN))
    assert result == {
        "method": "container-role",
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "token": SESSION_TOKEN,
    }
    assert service.nowait_calls >= 1


async def test_botocore_fetches_credentials_with_a_token_file(
    server: Server, service: FixedService, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)  # no trailing newline, as `sentinel serve` writes it
    token_file.chmod(0o600)
    env = _sdk_environment(server, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file))
    result = await _fetch_with_botocore(env)
    assert (result["method"], result["access_key"], result["token"]) == (
        "container-role",
        ACCESS_KEY,
        SESSION_TOKEN,
    )


# One loop only: botocore retries a refused fetch with one-second sleeps.
@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_botocore_gets_nothing_with_a_wrong_token(server: Server, service: FixedService) -> None:
    env = _sdk_environment(server, AWS_CONTAINER_AUTHORIZATION_TOKEN="not-the-token")
    result = await _fetch_with_botocore(env)
    assert result == {"error": "CredentialRetrievalError"}
    assert service.nowait_calls == 0
