"""Usage leaves every request as one event on JetStream, deduplicated by the request id."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import httpx
import pytest

from aggregator.events.v1 import usage_event_pb2 as ev
from services.core.config import StoreUrls
from tests.support.usage_watch import UsageWatch

pytestmark = pytest.mark.e2e


async def test_chat_usage_event_is_published_once(http: httpx.AsyncClient, store_urls: StoreUrls) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count my tokens"}]}
    async with UsageWatch(store_urls) as watch:
        response = await http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        usage = response.json()["usage"]
        events = await watch.events_for(request_id)

    assert len(events) == 1
    event = events[0]
    assert event.request_id == request_id and event.endpoint == "chat.completions"
    assert event.public_model == "gpt-4o-mini" and event.provider == "fakeai"
    assert event.status == ev.REQUEST_STATUS_SUCCEEDED and event.http_status == 200
    assert (
        event.prompt_tokens == usage["prompt_tokens"]
        and event.completion_tokens == usage["completion_tokens"]
    )
    expected = (
        Decimal(usage["prompt_tokens"]) * Decimal("0.0015")
        + Decimal(usage["completion_tokens"]) * Decimal("0.002")
    ) / 1000
    assert Decimal(event.cost_usd) == expected
    assert event.organization_id and event.api_key_id and event.attempts == 1


async def test_failed_request_is_recorded_with_its_reason(
    http: httpx.AsyncClient, store_urls: StoreUrls
) -> None:
    body = {"model": "only-dead", "messages": [{"role": "user", "content": "hi"}]}
    async with UsageWatch(store_urls) as watch:
        response = await http.post("/v1/chat/completions", json=body)
        assert response.status_code == 503
        events = await watch.events_for(response.headers["x-request-id"])
    assert len(events) == 1
    assert events[0].status == ev.REQUEST_STATUS_FAILED and events[0].error_reason == "UPSTREAM_UNAVAILABLE"
    assert events[0].cost_usd == "0"


async def test_a_stream_cut_by_the_client_is_billed_for_what_was_generated(
        gateway, upstream, store_urls: StoreUrls) -> None:
    upstream.chunk_delay_s = 0.2  # a slow answer: the client leaves after the first words
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a long answer please"}],
            "stream": True}
    async with UsageWatch(store_urls) as watch, httpx.AsyncClient(
            base_url=gateway.base_url, timeout=30,
            headers={"authorization": f"Bearer {gateway.admin_key}"}) as raw:
        async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-request-id"]
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line.replace(" ", "") and \
                        '"content":""' not in line.replace(" ", ""):
                    break  # the first words reached the client
        await upstream.wait_for_disconnect(within_s=5)
        events = await watch.events_for(request_id)
    assert len(events) == 1
    event = events[0]
    assert event.status == ev.REQUEST_STATUS_CANCELLED and event.http_status == 499
    # No usage came from upstream: what reached the client is estimated and billed, never free.
    assert event.completion_tokens >= 1 and event.prompt_tokens >= 1
    assert Decimal(event.cost_usd) > 0 and event.time_to_first_token_ms >= 0


async def test_the_ledger_records_each_request_once_at_its_exact_cost(
        http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """The analytics process's ledger writes the request log from the stream (a few seconds of lag)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ledger me"}]}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    request_id, usage = response.headers["x-request-id"], response.json()["usage"]
    deadline = asyncio.get_running_loop().time() + 15
    row = None
    while row is None and asyncio.get_running_loop().time() < deadline:
        row = await pool.fetchrow(
            "SELECT a.cost_usd, a.prompt_tokens, a.completion_tokens, a.status, "
            "(SELECT count(*) FROM api_requests r WHERE r.request_id = a.request_id) AS requests "
            "FROM request_analytics a WHERE a.request_id = $1", request_id)
        await asyncio.sleep(0.1)
    assert row is not None, "the request never reached the ledger"
    assert row["prompt_tokens"] == usage["prompt_tokens"]
    assert row["completion_tokens"] == usage["completion_tokens"]
    # gpt-4o-mini's route in tests/e2e/harness.py: $0.0015 and $0.002 per 1k tokens.
    expected = (Decimal(usage["prompt_tokens"]) * Decimal("0.0015")
                + Decimal(usage["completion_tokens"]) * Decimal("0.002")) / 1000
    assert row["cost_usd"] == expected and row["status"] == "succeeded" and row["requests"] == 1
