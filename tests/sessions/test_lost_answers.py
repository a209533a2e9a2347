"""Exactly-once counts when DynamoDB applies a touch and the answer is lost (issue 12).

A real TCP proxy sits between the store's botocore client and the moto server. It forwards every
request, so moto applies it, and drops the response of chosen `UpdateItem` touches: botocore sees
a closed connection and retries (up to 3 attempts), then the tracker retries the same batch. Every
request still goes through the DynamoDB lint.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlparse

import anyio
import pytest

from harness.aws_env import REGION
from sentinel.sessions.dynamodb import DynamoDBSessionStore, create_session_table
from tests.sessions.conftest import FakeClock
from tests.sessions.test_tracker import FAST_BACKOFF, make_template, running, touch_and_flush
from tests.support.dynamodb_lint import linted_session
from tests.support.lossy_proxy import LossyProxy


def _is_touch(head: bytes, body: bytes) -> bool:
    return b"DynamoDB_20120810.UpdateItem" in head and b"request_count" in body


async def test_lost_dynamodb_answers_never_double_count(
    request: pytest.FixtureRequest, aws_endpoint: str, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """1. A session on a fresh table, its client behind the proxy; 10 touches flushed.
    2. The proxy drops the answers of the next 4 touch requests: botocore's 3 attempts of one
       batch, then the tracker's first retry. Each of them reached moto.
    3. 25 touches arrive meanwhile, 8 more after. 4. After shutdown: stored == flushed == 43,
    although moto received the first lost batch 4 times."""
    from sentinel.sessions.tracker import SessionTracker

    session = linted_session(request)
    table = f"sentinel-lossy-{uuid.uuid4().hex[:12]}"
    await create_session_table(table, region=REGION, session=session)
    upstream = urlparse(aws_endpoint).port
    assert upstream is not None
    async with LossyProxy(upstream).running() as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", proxy.url)
        store = await DynamoDBSessionStore.open(table, region=REGION, clock=clock, session=session)
        template = make_template(clock)
        tracker = SessionTracker(store, template, clock=clock, flush_interval=0.01, backoff=FAST_BACKOFF)
        try:
            async with running(tracker):
                assert await tracker.start_session()
                await touch_and_flush(tracker, 10)
                proxy.lose(4, _is_touch)
                for _ in range(25):
                    tracker.touch_nowait()
                tracker.flush_nowait()
                with anyio.fail_after(30):
                    await proxy.wait_dropped(3)
                for _ in range(8):
                    tracker.touch_nowait()
                with anyio.fail_after(30):
                    await proxy.wait_dropped(4)
                    await tracker.flush()
                    summary = await tracker.shutdown(10.0)
            record = await store.get(template.id)
        finally:
            await store.aclose()
    assert proxy.dropped == 4
    assert tracker.statistics().flush_failures >= 1  # botocore gave up once; the tracker retried
    assert record.request_count == summary.flushed == 43
    assert (summary.dropped, summary.discarded, summary.unflushed) == (0, 0, 0)
    assert summary.expired
