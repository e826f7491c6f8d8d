"""Exact cost through Envoy with the official SDK, in both topologies (docs/pricing.md): a request
whose prompt was partly read from the provider's cache is recorded at tokens x prices, each class
at its own price, to the last decimal, as `GET /v1/usage` reports it from the ledger; a price set
still to come is listed nowhere and charged to nobody."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from services.auth import admin
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
# claude-cached's route in tests/e2e/conftest.py, per 1k tokens.
INPUT, CACHED, OUTPUT = Decimal("0.003"), Decimal("0.0003"), Decimal("0.015")


async def test_a_cached_prompt_is_recorded_at_tokens_times_prices(
        gateway: Gateway, http: httpx.AsyncClient, pool: asyncpg.Pool, vendors: dict[str, Any]) -> None:
    org_id = await admin.create_org(pool, f"pricing-{uuid.uuid4().hex[:8]}")
    key = (await http.post("/v1/api-keys", json={"name": "pricing", "organization_id": org_id})).json()["key"]
    vendors["anthropic"].cached_prompt_tokens = 5
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0,
                                  timeout=30) as sdk:
        answer = await sdk.chat.completions.create(model="claude-cached", messages=[
            {"role": "user", "content": "a prompt long enough to have a cached prefix of five tokens"}])
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    assert cached == 5 and usage.prompt_tokens > cached and usage.completion_tokens > 0
    uncached = usage.prompt_tokens - cached
    cost = (uncached * INPUT + cached * CACHED + usage.completion_tokens * OUTPUT) / 1000
    assert cost != (usage.prompt_tokens * INPUT + usage.completion_tokens * OUTPUT) / 1000  # the class counts

    today = datetime.now(UTC).date().isoformat()
    query = {"start_date": today, "end_date": today, "organization_id": org_id, "model": "claude-cached"}
    deadline, report = time.monotonic() + 60, {}
    while time.monotonic() < deadline:  # the ledger writes a few seconds behind the requests
        report = (await http.get("/v1/usage", params=query)).json()  # the admin key
        if report.get("totals", {}).get("requests") == 1:
            break
        await asyncio.sleep(0.1)
    assert report["totals"] == {
        "requests": 1, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens, "cost_usd": format(cost.normalize(), "f")}
    stored = await pool.fetchval(
        "SELECT cost_usd FROM api_responses WHERE organization_id = $1::uuid AND cached_tokens = 5", org_id)
    assert stored == cost


async def test_the_catalog_lists_the_prices_in_effect_with_every_class(http: httpx.AsyncClient) -> None:
    answer = await http.get("/v1/models/claude-cached")
    assert answer.status_code == 200, answer.text
    assert answer.json()["pricing"] == {
        "input_per_1k": "0.003", "output_per_1k": "0.015", "cached_input_per_1k": "0.0003",
        "cache_write_per_1k": "0.00375", "reasoning_per_1k": "0.015"}
