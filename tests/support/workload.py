"""What a workload does with a running server: fetch credentials through botocore's default chain
in a fresh process, or hammer it from many keep-alive connections at once."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.waiting import DEADLINE

# What an application does: the default credential chain of botocore, in a fresh process.
BOTOCORE_FETCH = """
import json
import botocore.session
credentials = botocore.session.get_session().get_credentials()
frozen = credentials.get_frozen_credentials()
print(json.dumps({"method": credentials.method, "access_key": frozen.access_key,
                  "secret_key": frozen.secret_key, "token": frozen.token}))
"""


def workload_environment(base: dict[str, str], variables: dict[str, str]) -> dict[str, str]:
    """A workload's environment: no credentials of its own, plus `variables` (from the env file)."""
    env = {
        key: value
        for key, value in base.items()
        if key not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}
    }
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env.update(variables)
    return env


def fetch_with_botocore(env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", BOTOCORE_FETCH],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fetched: dict[str, Any] = json.loads(result.stdout)
    return fetched


def hammer(port: int, token: str, clients: int, requests: int) -> list[int]:
    """`clients` threads, each making `requests` credential requests on one keep-alive connection
    at the same time; returns every response status."""

    def client() -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
        statuses = []
        try:
            for _ in range(requests):
                connection.request("GET", "/", headers={"Authorization": token})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            connection.close()
        return statuses

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        return [status for future in futures for status in future.result(DEADLINE)]
