"""Where policy bytes come from: a file (`--policy-file`) or an SSM parameter (`--policy-parameter`).

A source only fetches bytes; `parse_policy` validates them. Every expected failure becomes a
`PolicyError` with a safe one-line message, so the watcher can keep the last good policy.

The AWS SDK (aioboto3, aiohttp) is imported only when an SSM source is created: a policy file must
not pay for it at start-up (issue 12, item 3).
"""

from __future__ import annotations

import os
import re
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Protocol, Self

import anyio
import anyio.to_thread

from sentinel.errors import PolicyError
from sentinel.policy.parse import MAX_POLICY_BYTES

if TYPE_CHECKING:
    import aioboto3
    from aiobotocore.config import AioConfig
    from types_aiobotocore_ssm.client import SSMClient


def default_ssm_config() -> AioConfig:
    """Bounded, so a black-holed SSM endpoint delays one background refresh by seconds, not minutes.

    The endpoint itself comes from the standard variables (AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL),
    which botocore reads on its own (DESIGN.md §6)."""
    from aiobotocore.config import AioConfig

    return AioConfig(connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})


_ERROR_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")


class PolicySource(Protocol):
    @property
    def description(self) -> str:
        """Where the policy comes from (`file:/path`, `ssm:/name`); shown in logs and the decision log."""
        ...

    async def fetch(self) -> bytes:
        """The raw policy document; raises `PolicyError` on any expected failure."""
        ...


class FilePolicySource:
    """A policy file on disk, read in a worker thread so a slow disk never stalls the event loop."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.description = f"file:{self.path}"

    async def fetch(self) -> bytes:
        try:
            raw = await anyio.to_thread.run_sync(_read_at_most, self.path, MAX_POLICY_BYTES + 1)
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
            raise PolicyError(f"policy {self.description}: cannot read: {problem}") from None
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy {self.description}: larger than {MAX_POLICY_BYTES} bytes")
        return raw


def _read_at_most(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        return file.read(limit)


class SsmPolicySource:
    """An SSM parameter (String or SecureString, decrypted) holding the policy document.

    Use it as an async context manager to keep one client open for the life of the server (the
    watcher fetches every TTL); outside the context, each `fetch()` opens and closes its own client.
    """

    def __init__(
        self,
        parameter_name: str,
        session: aioboto3.Session | None = None,
        region: str | None = None,
        *,
        config: AioConfig | None = None,
    ) -> None:
        if not parameter_name:
            raise PolicyError("policy parameter name is empty")
        import aioboto3

        self.parameter_name = parameter_name
        self.description = f"ssm:{parameter_name}"
        self._session = session if session is not None else aioboto3.Session()
        self._region = region
        self._config = config if config is not None else default_ssm_config()
        self._stack: AsyncExitStack | None = None
        self._client: SSMClient | None = None

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            self._client = await self._enter_client(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def fetch(self) -> bytes:
        if self._client is not None:
            return await self._get(self._client)
        async with AsyncExitStack() as stack:
            return await self._get(await self._enter_client(stack))

    async def _enter_client(self, stack: AsyncExitStack) -> SSMClient:
        from botocore.exceptions import BotoCoreError

        try:
            return await stack.enter_async_context(
                self._session.client("ssm", region_name=self._region, config=self._config)
            )
        except BotoCoreError as exc:
            # NoRegionError, InvalidRegionError, a broken profile: configuration, not SSM, failed.
            self._fail(f"cannot create an SSM client ({type(exc).__name__})")

    async def _get(self, client: SSMClient) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = await client.get_parameter(Name=self.parameter_name, WithDecryption=True)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ParameterNotFound":
                self._fail("parameter not found")
            # The error code only: AWS messages can echo request details we do not want in logs.
            self._fail(f"GetParameter failed ({code if _ERROR_CODE.fullmatch(code) else 'unknown error'})")
        except BotoCoreError as exc:
            self._fail(f"GetParameter failed ({type(exc).__name__})")
        parameter = response.get("Parameter", {})
        if parameter.get("Type") == "StringList":
            self._fail("parameter is a StringList; expected String or SecureString")
        raw = parameter.get("Value", "").encode()
        if len(raw) > MAX_POLICY_BYTES:
            self._fail(f"larger than {MAX_POLICY_BYTES} bytes")
        return raw

    def _fail(self, problem: str) -> NoReturn:
        raise PolicyError(f"policy {self.description}: {problem}")
