"""Budgets through Envoy in both topologies, with the official SDK (docs/limits.md "Budgets"): 50
concurrent requests (and 200 over two replicas sharing the stores) against a key whose budget
affords only a few at their worst case: the rest get 429 `insufficient_quota`, every answered
request's true cost is recorded, and together they never exceed the budget."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from services.core.config import StoreUrls, load_config
from tests.e2e.harness import Gateway, start_gateway

pytestmark = pytest.mark.e2e
BUDGET = Decimal("0.002")  # a request of max_tokens 100 may cost about $0.0002 here
PRICES = (Decimal("0.0015"), Decimal("0.002"))  # gpt-4o-mini's route in tests/e2e/harness.py, per 1k


def true_cost(completions: list[object]) -> Decimal:
    """What the answered requests cost, from the usage they report."""
    return sum(((Decimal(c.usage.prompt_tokens) * PRICES[0]  # type: ignore[attr-defined]
                 + Decimal(c.usage.completion_tokens) * PRICES[1]) / 1000  # type: ignore[attr-defined]
                for c in completions), Decimal(0))


async def recorded(pool: asyncpg.Pool, key_id: str, requests: int) -> Decimal | None:
    """The spend recorded for the key once every answered request has settled (in the background)."""
    for _ in range(100):
        row = await pool.fetchrow("SELECT requests, cost_usd FROM rate_limit_tracking "
                                  "WHERE api_key_id = $1::uuid", key_id)
        if row is not None and row["requests"] == requests:
            return Decimal(row["cost_usd"])
        await asyncio.sleep(0.1)
    return None
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


async def test_concurrent_requests_never_overspend_a_budget(gateway: Gateway, http: httpx.AsyncClient,
                                                             pool: asyncpg.Pool) -> None:
    created = await http.post("/v1/api-keys", json={"name": "budgeted", "max_budget_usd": str(BUDGET),
                                                     "budget_period": "daily"})
    assert created.status_code == 200, created.text
    assert created.json()["max_budget_usd"] == "0.002" and created.json()["budget_period"] == "daily"
    key, key_id = created.json()["key"], created.json()["id"]
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0,
                                  timeout=60) as client:
        results = await asyncio.gather(*(client.chat.completions.create(**CHAT) for _ in range(50)),
                                       return_exceptions=True)
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(succeeded) + len(refused) == 50, [r for r in results if isinstance(r, BaseException)][:3]
    assert succeeded and refused
    assert all(r.code == "insufficient_quota" and r.status_code == 429 for r in refused)
    assert "budget of this API key" in refused[0].message
    # Every answered request's true cost is recorded (none lost), and together they fit the budget.
    assert await recorded(pool, key_id, len(succeeded)) == true_cost(succeeded) <= BUDGET


async def test_budget_fields_are_validated_and_cleared_together(http: httpx.AsyncClient) -> None:
    for body, param in (({"max_budget_usd": "-1"}, "max_budget_usd"), ({"max_budget_usd": "1e3"}, None),
                        ({"max_budget_usd": "0.00000000001"}, "max_budget_usd"),
                        ({"max_budget_usd": "5", "budget_period": "weekly"}, "budget_period"),
                        ({"budget_period": "daily"}, "budget_period")):
        answer = await http.post("/v1/api-keys", json={"name": "b", **body})
        if param is None:
            assert answer.status_code == 200 and answer.json()["max_budget_usd"] == "1000", answer.text
            assert answer.json()["budget_period"] == "monthly"  # the default period
            continue
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (body, answer.text)
    created = (await http.post("/v1/api-keys", json={"name": "b", "max_budget_usd": "2.50"})).json()
    changed = await http.put(f"/v1/api-keys/{created['id']}",
                             json={"max_budget_usd": "7", "budget_period": "total"})
    assert (changed.json()["max_budget_usd"], changed.json()["budget_period"]) == ("7", "total")
    cleared = (await http.put(f"/v1/api-keys/{created['id']}", json={"max_budget_usd": None})).json()
    assert "max_budget_usd" not in cleared and "budget_period" not in cleared


async def test_two_replicas_sharing_the_stores_never_overspend(
        gateway: Gateway, http: httpx.AsyncClient, pool: asyncpg.Pool, store_urls: StoreUrls,
        tmp_path: Path) -> None:
    """200 requests spread over two gateways (each its own Envoy and workers) that share
    PostgreSQL, Redis and NATS, against one budget."""
    config = load_config(gateway.data_dir / "aggregator.yaml")
    replica = await start_gateway("all", store_urls, tmp_path / "replica", config, secret=gateway.secret)
    try:
        created = (await http.post("/v1/api-keys", json={"name": "shared",
                                                          "max_budget_usd": str(BUDGET)})).json()
        clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key=created["key"], max_retries=0,
                                      timeout=60) for url in (gateway.base_url, replica.base_url)]
        try:
            results = await asyncio.gather(*(clients[i % 2].chat.completions.create(**CHAT)
                                             for i in range(200)), return_exceptions=True)
        finally:
            for client in clients:
                await client.close()
    finally:
        replica.stop()
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(succeeded) + len(refused) == 200 and succeeded and refused
    assert await recorded(pool, created["id"], len(succeeded)) == true_cost(succeeded) <= BUDGET
