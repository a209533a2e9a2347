"""Policy sources against real parts: files on disk, and SSM parameters on a moto server over HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import aioboto3
import pytest
from aiobotocore.config import AioConfig

from harness.loopback import free_port
from sentinel.errors import PolicyError
from sentinel.policy import MAX_POLICY_BYTES, FilePolicySource, SsmPolicySource, parse_policy

POLICY = b'version: "1"\nrules:\n  - name: everyone\n    effect: allow\n    max_server_duration: 1h\n'
REGION = "us-east-1"


async def put_parameter(value: str, kind: str = "SecureString") -> str:
    """Create a uniquely named parameter on the moto server; the shared server outlives the test."""
    name = f"/sentinel/test/{uuid.uuid4().hex}/policy"
    async with aioboto3.Session().client("ssm", region_name=REGION) as ssm:
        await ssm.put_parameter(Name=name, Value=value, Type=kind)  # type: ignore[arg-type]
    return name


# -- files ----------------------------------------------------------------------------------------


async def test_file_source_reads_the_bytes_and_describes_itself(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(POLICY)
    source = FilePolicySource(path)

    assert source.description == f"file:{path}"
    assert await source.fetch() == POLICY


async def test_relative_paths_are_described_absolutely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert FilePolicySource("policy.yaml").description == f"file:{tmp_path / 'policy.yaml'}"


async def test_missing_file_is_a_policy_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as caught:
        await FilePolicySource(path).fetch()
    assert caught.value.message == f"policy file:{path}: cannot read: No such file or directory"


async def test_directory_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read: Is a directory$"):
        await FilePolicySource(tmp_path).fetch()


async def test_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (MAX_POLICY_BYTES + 10))
    with pytest.raises(PolicyError, match=r"larger than 1048576 bytes$"):
        await FilePolicySource(path).fetch()


# -- SSM ------------------------------------------------------------------------------------------


async def test_ssm_securestring_is_decrypted_and_parses(aws_endpoint: str) -> None:
    """1. Store the policy as a SecureString on moto. 2. Fetch it (one-shot client). 3. It parses."""
    name = await put_parameter(POLICY.decode())
    source = SsmPolicySource(name, region=REGION)

    raw = await source.fetch()

    assert raw == POLICY
    policy = parse_policy(raw, source.description)
    assert policy.source == f"ssm:{name}"
    assert [rule.name for rule in policy.rules] == ["everyone"]


async def test_ssm_source_as_context_manager_reuses_one_client(aws_endpoint: str) -> None:
    """1. Open the source once. 2. Fetch, update the parameter, fetch again: the new value is seen."""
    name = await put_parameter(POLICY.decode(), kind="String")
    updated = POLICY.replace(b"everyone", b"everybody")
    async with SsmPolicySource(name, aioboto3.Session(), REGION) as source:
        first = await source.fetch()
        async with aioboto3.Session().client("ssm", region_name=REGION) as ssm:
            await ssm.put_parameter(Name=name, Value=updated.decode(), Type="String", Overwrite=True)
        second = await source.fetch()
    assert (first, second) == (POLICY, updated)


async def test_missing_ssm_parameter_is_a_policy_error_naming_it(aws_endpoint: str) -> None:
    name = f"/sentinel/test/{uuid.uuid4().hex}/absent"
    with pytest.raises(PolicyError) as caught:
        await SsmPolicySource(name, region=REGION).fetch()
    assert caught.value.message == f"policy ssm:{name}: parameter not found"


async def test_stringlist_parameter_is_refused(aws_endpoint: str) -> None:
    name = await put_parameter("a,b", kind="StringList")
    with pytest.raises(PolicyError, match=r": parameter is a StringList; expected String or SecureString$"):
        await SsmPolicySource(name, region=REGION).fetch()


async def test_unreachable_ssm_is_a_policy_error_without_upstream_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. Point the standard endpoint variable at a closed port. 2. The error names only the class."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    config = AioConfig(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1, "mode": "standard"})
    source = SsmPolicySource("/sentinel/policy", region=REGION, config=config)
    with pytest.raises(PolicyError) as caught:
        await source.fetch()
    assert (
        caught.value.message == "policy ssm:/sentinel/policy: GetParameter failed (EndpointConnectionError)"
    )


async def test_no_region_is_a_policy_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(PolicyError) as caught:
        await SsmPolicySource("/sentinel/policy").fetch()
    assert caught.value.message == "policy ssm:/sentinel/policy: cannot create an SSM client (NoRegionError)"


def test_empty_parameter_name_is_refused() -> None:
    with pytest.raises(PolicyError, match="policy parameter name is empty"):
        SsmPolicySource("")
