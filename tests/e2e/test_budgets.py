"""Budgets through Envoy in both topologies, with the official SDK (docs/limits.md "Budgets"): 50
concurrent requests against a key whose budget affords only a few at their worst case: no more
succeed than the budget can hold, the rest get 429 `insufficient_quota`, and the recorded spend
never exceeds the budget."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import httpx
import openai
import pytest

from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
BUDGET = Decimal("0.002")  # a request of max_tokens 100 may cost about $0.0002 here
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
    assert 1 <= len(succeeded) <= 10 and refused
    assert all(r.code == "insufficient_quota" and r.status_code == 429 for r in refused)
    assert "budget of this API key" in refused[0].message
    # The spend recorded (settled in the background) is the true cost, within the budget.
    spent = None
    for _ in range(100):
        spent = await pool.fetchval("SELECT cost_usd FROM rate_limit_tracking WHERE api_key_id = $1::uuid "
                                    "AND period = 'day'", key_id)
        requests = await pool.fetchval("SELECT requests FROM rate_limit_tracking WHERE api_key_id = $1::uuid",
                                       key_id)
        if requests == len(succeeded):
            break
        await asyncio.sleep(0.1)
    assert spent is not None and Decimal(0) < spent <= BUDGET


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
