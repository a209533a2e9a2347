"""The IAM side of an AWS-enforced revocation: read, write and delete one inline role policy.

AWS client types stay in this module (DESIGN.md §2). The client is built like the admin's other
clients: the standard chain for the configured profile and region, endpoints from the standard
variables (`AWS_ENDPOINT_URL_IAM`, `AWS_ENDPOINT_URL`), which botocore reads itself.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aioboto3
import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from sentinel.credentials.aws import CLIENT_OPTIONS
from sentinel.revocation.errors import EnforcementError, IamRefused, PolicyFull

if TYPE_CHECKING:
    from types_aiobotocore_iam import IAMClient

# IAM error codes are short identifiers; nothing else from upstream reaches a message.
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


class IamRolePolicies:
    """`enforce.RolePolicies` on a real IAM client (GetRolePolicy, PutRolePolicy, DeleteRolePolicy)."""

    def __init__(self, client: IAMClient) -> None:
        self._client = client

    async def get(self, role: str, name: str) -> Mapping[str, Any] | None:
        try:
            response = await self._client.get_role_policy(RoleName=role, PolicyName=name)
        except ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return None
            raise _refused("GetRolePolicy", role, exc) from None
        except BotoCoreError as exc:
            raise _refused("GetRolePolicy", role, exc) from None
        # botocore decodes the URL-encoded JSON into a dict itself; the stubs also allow text.
        document = response["PolicyDocument"]
        return document if isinstance(document, Mapping) else _decoded(document)

    async def put(self, role: str, name: str, document: str) -> None:
        try:
            await self._client.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=document)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _code(exc) == "LimitExceeded":
                # The role's inline policies together passed 10,240 characters: ours plus others.
                raise PolicyFull(
                    f"IAM PutRolePolicy on role {role}: the role's inline policies exceed IAM's size limit"
                ) from None
            raise _refused("PutRolePolicy", role, exc) from None

    async def delete(self, role: str, name: str) -> None:
        try:
            await self._client.delete_role_policy(RoleName=role, PolicyName=name)
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise _refused("DeleteRolePolicy", role, exc) from None
        except BotoCoreError as exc:
            raise _refused("DeleteRolePolicy", role, exc) from None


def _decoded(text: str) -> Mapping[str, Any]:
    decoded = orjson.loads(urllib.parse.unquote(text))
    if not isinstance(decoded, dict):
        raise EnforcementError("IAM returned a policy document that is not a JSON object")
    return decoded


def _code(exc: ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code") or "")
    return code if _ERROR_CODE.fullmatch(code) else "Unknown"


def _refused(operation: str, role: str, exc: ClientError | BotoCoreError) -> IamRefused:
    # `from None` at the raise sites: upstream text (which may quote the request) stays out of logs.
    return IamRefused(operation, role, _code(exc) if isinstance(exc, ClientError) else type(exc).__name__)


@asynccontextmanager
async def open_role_policies(profile: str | None, region: str | None) -> AsyncIterator[IamRolePolicies]:
    """An IAM client for the admin's own identity (the standard chain for `profile`)."""
    try:
        session = aioboto3.Session(profile_name=profile, region_name=region)
        client_context = session.client("iam", config=AioConfig(**CLIENT_OPTIONS))
    except BotoCoreError as exc:  # e.g. a profile that does not exist
        raise IamRefused("client", "-", type(exc).__name__) from None
    async with client_context as client:
        yield IamRolePolicies(client)
