"""Several credential paths on one listener, each with its own service and token (issue 14).

The listener routes `/` and `/profiles/NAME` to their own `CredentialService`; a token opens only
its own path, on a fresh connection and on a keep-alive one that another token authenticated
(the fast path checks the path's token too)."""

from __future__ import annotations

from sentinel.server.service import Endpoint
from tests.server.client import TOKEN, Connect, Serve, request
from tests.server.services import FixedService

OPS_TOKEN = "sentinel-ops-token-0c1d2e3f4a5b6c7d8e9f"


async def test_each_path_is_answered_by_its_own_service_with_its_own_token(
    serve: Serve, connect: Connect
) -> None:
    """1. `/` with the default token: the default service answers, on a keep-alive connection.
    2. On that same connection, `/profiles/ops` with the default token: 401 (the connection stays
       authenticated, as after any wrong token: it did present a valid one).
    3. A new connection: `/profiles/ops` with ops's token twice (the second on the fast path),
       then `/` with ops's token: 401.
    4. Each service saw only its own requests."""
    default, ops = FixedService(), FixedService()
    server = await serve(default, endpoints=[Endpoint("/profiles/ops", ops, OPS_TOKEN)])
    first = await connect(server)
    assert (await first.exchange(request("/"))).status == 200
    assert (await first.exchange(request("/profiles/ops"))).status == 401
    assert (await first.exchange(request("/"))).status == 200
    second = await connect(server)
    for _ in range(2):
        response = await second.exchange(request("/profiles/ops?x=1", token=OPS_TOKEN))
        assert (response.status, response.closes) == (200, False)
    assert (await second.exchange(request("/", token=OPS_TOKEN))).status == 401
    assert default.nowait_calls == 2
    assert ops.nowait_calls == 2


async def test_unknown_profiles_are_404_only_for_a_valid_token(serve: Serve, connect: Connect) -> None:
    """Any profile's token makes an unknown path a 404; no token, or a wrong one, a 401: a client
    without a token cannot learn which profiles exist. /metrics takes any profile's token."""
    server = await serve(FixedService(), endpoints=[Endpoint("/profiles/ops", FixedService(), OPS_TOKEN)])
    for token, status in ((OPS_TOKEN, 404), (TOKEN, 404), (None, 401), ("wrong", 401)):
        client = await connect(server)
        assert (await client.exchange(request("/profiles/nope", token=token))).status == status
    client = await connect(server)
    assert (await client.exchange(request("/metrics", token=OPS_TOKEN))).status == 200
