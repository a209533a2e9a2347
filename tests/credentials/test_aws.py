"""The AWS side against a real moto server over HTTP: profiles, identity, AssumeRole on the wire."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aioboto3
import anyio.to_thread
import orjson
import pytest

from harness.loopback import free_port
from sentinel.credentials import (
    AwsContext,
    StsRoleAssumer,
    open_aws,
    resolve_user,
    role_session_name,
    source_identity,
)
from sentinel.errors import CredentialError
from tests.credentials.support import NO_RETRY, StsProxy, write_aws_files

SESSION_ID = "00112233445566ff"
HOSTILE = "User arn:aws:iam::123456789012:user/alice is not authorized; secret=hunter2"


@pytest.fixture
def user_key(iam: Any, aws_endpoint: str) -> Callable[[str], tuple[str, str]]:
    """Make an IAM user in moto with an access key; moto's GetCallerIdentity maps the key to it."""

    def make(name: str) -> tuple[str, str]:
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    return make


async def base_access_key(ctx: AwsContext) -> str:
    # botocore (blocking): the base session is plain botocore since issue 12.
    credentials = await anyio.to_thread.run_sync(ctx.session.get_credentials)
    assert credentials is not None
    frozen = await anyio.to_thread.run_sync(credentials.get_frozen_credentials)
    return str(frozen.access_key)


@pytest.fixture
def aws_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return tmp_path


async def test_assume_role_with_source_identity_on_the_wire(role_arn: str, sts_proxy: StsProxy) -> None:
    """Given the default chain and a role in moto, when Sentinel resolves the user and assumes the
    role, then STS received RoleArn, the derived RoleSessionName and SourceIdentity, and the
    requested DurationSeconds, and the credentials parse into a valid container body."""
    ctx = await open_aws(None, None, role_arn)
    async with ctx.sts_client() as sts:
        identity = await resolve_user(sts)
        assumer = StsRoleAssumer(
            sts,
            role_session_name=role_session_name(identity.user),
            source_identity=source_identity(identity.user, SESSION_ID),
        )
        credentials = await assumer.fetch(role_arn, 900)

    assert identity.user == "moto"
    assert identity.account == "123456789012"
    [call] = sts_proxy.actions("AssumeRole")
    assert call["RoleArn"] == role_arn
    assert call["RoleSessionName"] == "sentinel-moto"
    assert call["SourceIdentity"] == f"sentinel.moto.{SESSION_ID}" == assumer.source_identity
    assert call["DurationSeconds"] == "900"
    assert "ExternalId" not in call

    assert credentials.access_key_id.startswith("ASIA")
    assert credentials.expiration.tzinfo is UTC
    assert timedelta(0) < credentials.expiration - datetime.now(UTC) <= timedelta(seconds=900)
    body = orjson.loads(credentials.to_container_json())
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert body["Expiration"].endswith("Z")

    # moto knows the issued keys: calling with them shows the assumed-role session Sentinel named.
    async with aioboto3.Session(
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    ).client("sts") as assumed:
        arn = (await assumed.get_caller_identity())["Arn"]
    assert arn.endswith(f":assumed-role/{role_arn.rsplit('/', 1)[1]}/sentinel-moto")


async def test_role_profile_base_credentials_come_from_the_source_profile(
    user_key: Callable[[str], tuple[str, str]],
    role_arn: str,
    sts_proxy: StsProxy,
    aws_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a profile with role_arn + source_profile (and fake keys in the environment), then the
    base credentials are the source profile's keys, botocore assumed nothing on its own, and
    Sentinel's AssumeRole targets the profile's role with its external_id."""
    key, secret = user_key("alice-src")
    config, creds = write_aws_files(
        aws_dir,
        f"[profile dev]\nrole_arn = {role_arn}\nsource_profile = base\nexternal_id = ext-42\n"
        "region = eu-west-1\n\n[profile base]\nregion = us-east-1\n",
        f"[base]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n",
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))

    ctx = await open_aws("dev", None, None)
    assert ctx.role_arn == role_arn
    assert (ctx.plan.base_profile, ctx.plan.region) == ("base", "eu-west-1")
    assert await base_access_key(ctx) == key
    async with ctx.sts_client() as sts:
        identity = await resolve_user(sts)
        assert sts_proxy.actions("AssumeRole") == []
        assumer = StsRoleAssumer(
            sts,
            role_session_name=role_session_name(identity.user),
            source_identity=source_identity(identity.user, SESSION_ID),
            external_id=ctx.plan.external_id,
        )
        await assumer.fetch(ctx.role_arn, 3600)
    assert identity.user == "alice-src"
    assert identity.arn == "arn:aws:iam::123456789012:user/alice-src"
    [call] = sts_proxy.actions("AssumeRole")
    assert (call["RoleArn"], call["ExternalId"], call["DurationSeconds"]) == (role_arn, "ext-42", "3600")
    assert call["SourceIdentity"] == f"sentinel.alice-src.{SESSION_ID}"


async def test_role_arn_flag_overrides_the_profile_role(
    user_key: Callable[[str], tuple[str, str]],
    role_arn: str,
    sts_proxy: StsProxy,
    aws_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, secret = user_key("alice-flag")
    config, creds = write_aws_files(
        aws_dir,
        "[profile dev]\nrole_arn = arn:aws:iam::123456789012:role/not-this-one\nsource_profile = base\n",
        f"[base]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n",
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    # AWS_PROFILE names the profile just as --profile does.
    monkeypatch.setenv("AWS_PROFILE", "dev")

    ctx = await open_aws(None, None, role_arn)
    assert ctx.role_arn == role_arn
    assert ctx.plan.base_profile == "base"
    assert await base_access_key(ctx) == key


async def test_self_sourced_profile_uses_its_keys_not_its_role(
    user_key: Callable[[str], tuple[str, str]],
    role_arn: str,
    sts_proxy: StsProxy,
    aws_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a profile whose source_profile is itself, then its own keys are the base and no
    AssumeRole happens until Sentinel makes it."""
    key, secret = user_key("alice-self")
    config, creds = write_aws_files(
        aws_dir,
        f"[profile me]\nrole_arn = {role_arn}\nsource_profile = me\n",
        f"[me]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n",
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))

    ctx = await open_aws("me", None, None)
    assert await base_access_key(ctx) == key
    async with ctx.sts_client() as sts:
        assert (await resolve_user(sts)).user == "alice-self"
    assert sts_proxy.actions("AssumeRole") == []


async def test_credential_source_environment(
    user_key: Callable[[str], tuple[str, str]],
    role_arn: str,
    sts_proxy: StsProxy,
    aws_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given credential_source = Environment on an explicitly named profile (which normally turns
    the environment provider off), then the environment's keys are the base."""
    key, secret = user_key("alice-env")
    config, creds = write_aws_files(
        aws_dir, f"[profile envrole]\nrole_arn = {role_arn}\ncredential_source = Environment\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    ctx = await open_aws("envrole", None, None)
    assert ctx.role_arn == role_arn
    assert await base_access_key(ctx) == key
    assert sts_proxy.actions("AssumeRole") == []


class _ContainerEndpoint:
    """A container-credentials endpoint (what Sentinel itself is) serving fixed base keys."""

    def __init__(self, key: str, secret: str) -> None:
        expiration = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = orjson.dumps(
            {"AccessKeyId": key, "SecretAccessKey": secret, "Token": "t", "Expiration": expiration}
        )

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/creds"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


async def test_credential_source_ecs_container(
    role_arn: str, aws_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given credential_source = EcsContainer, then the container endpoint's keys are the base,
    not the environment's, and the profile's role is the target."""
    config, creds = write_aws_files(
        aws_dir, f"[profile ecs]\nrole_arn = {role_arn}\ncredential_source = EcsContainer\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    endpoint = _ContainerEndpoint("AKIACONTAINERBASE", "container-secret")
    try:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
        ctx = await open_aws("ecs", None, None)
        assert await base_access_key(ctx) == "AKIACONTAINERBASE"
        assert ctx.role_arn == role_arn
    finally:
        endpoint.close()


async def test_no_role_is_a_credential_error(aws_endpoint: str) -> None:
    with pytest.raises(CredentialError, match="no role to assume"):
        await open_aws(None, None, None)


async def test_unknown_profile_is_a_credential_error(aws_endpoint: str) -> None:
    with pytest.raises(CredentialError, match="AWS profile 'ghost' not found"):
        await open_aws("ghost", None, "arn:aws:iam::123456789012:role/r")


async def test_profile_without_any_base_credentials(
    aws_endpoint: str, aws_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a named profile with no keys (so the environment's do not count), then startup fails
    with a one-line CredentialError."""
    config, creds = write_aws_files(aws_dir, "[profile bare]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    with pytest.raises(CredentialError, match=r"no base AWS credentials found \(bare\)"):
        await open_aws("bare", None, "arn:aws:iam::123456789012:role/r")


async def test_malformed_config_file_is_a_credential_error(
    aws_endpoint: str, aws_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = write_aws_files(aws_dir, "[profile broken\nrole_arn = x\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    with pytest.raises(CredentialError, match=r"^cannot read the AWS config files: ConfigParseError$"):
        await open_aws(None, None, None)


async def test_sts_error_text_never_reaches_the_message(role_arn: str, sts_proxy: StsProxy) -> None:
    """Given STS answering AccessDenied with a message full of detail, then GetCallerIdentity and
    AssumeRole fail with the error code only, and nothing upstream is chained."""
    ctx = await open_aws(None, None, role_arn, client_config=NO_RETRY)
    sts_proxy.error = (403, "AccessDenied", HOSTILE)
    async with ctx.sts_client() as sts:
        with pytest.raises(CredentialError) as identity_error:
            await resolve_user(sts)
        assumer = StsRoleAssumer(
            sts, role_session_name="sentinel-x", source_identity=f"sentinel.x.{SESSION_ID}"
        )
        with pytest.raises(CredentialError) as assume_error:
            await assumer.fetch(role_arn, 900)
    assert str(identity_error.value) == "STS GetCallerIdentity failed: AccessDenied"
    assert str(assume_error.value) == f"STS AssumeRole of {role_arn} failed: AccessDenied"
    for caught in (identity_error.value, assume_error.value):
        assert "hunter2" not in str(caught)
        assert caught.__cause__ is None
        assert caught.__suppress_context__


@pytest.mark.parametrize("code", ["Bad Code; secret=hunter2", "x" * 65, "<b>", "1Leading"])
async def test_an_error_code_that_is_not_an_identifier_is_not_passed_on(
    role_arn: str, sts_proxy: StsProxy, code: str
) -> None:
    """Given STS answering with something other than an identifier as its code, the message says
    `Unknown` rather than repeat it."""
    ctx = await open_aws(None, None, role_arn, client_config=NO_RETRY)
    sts_proxy.error = (400, code.replace("<", "&lt;").replace(">", "&gt;"), HOSTILE)
    async with ctx.sts_client() as sts:
        with pytest.raises(CredentialError) as caught:
            await resolve_user(sts)
    assert str(caught.value) == "STS GetCallerIdentity failed: Unknown"


async def test_unreachable_sts_is_a_credential_error(
    aws_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given nothing listening at the STS endpoint, then the error names the failure class only."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{free_port()}")
    ctx = await open_aws(None, None, "arn:aws:iam::123456789012:role/r", client_config=NO_RETRY)
    async with ctx.sts_client() as sts:
        with pytest.raises(CredentialError, match=r"^STS GetCallerIdentity failed: EndpointConnectionError$"):
            await resolve_user(sts)
