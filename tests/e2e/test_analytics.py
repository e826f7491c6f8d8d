"""`GET /v1/analytics/{requests,tokens,cost}` through Envoy in both topologies: requests sent with
the official `openai` SDK (one streamed, one failing upstream) show up within seconds with their
count, tokens to the token, cost to the last decimal, the failure counted by its type, and
latency and time-to-first-token percentiles equal to percentile_cont over the ledger's rows."""

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
from tests.fakes import openai_failures
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
PRICES = (Decimal("0.0015"), Decimal("0.002"))  # gpt-4o-mini's route in tests/e2e/harness.py, per 1k


async def poll(http: httpx.AsyncClient, path: str, params: dict[str, str], key: str,
               done: Any, within_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        answer = await http.get(path, params=params, headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if done(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def test_the_series_equal_what_was_sent(gateway: Gateway, http: httpx.AsyncClient, pool: asyncpg.Pool,
                                              upstream: FakeOpenAI) -> None:
    org_id = await admin.create_org(pool, f"analytics-{uuid.uuid4().hex[:8]}")
    key = (await http.post("/v1/api-keys", json={"name": "k", "organization_id": org_id})).json()
    messages = [{"role": "user", "content": "analytics"}]
    usages = []
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key["key"], max_retries=0,
                                  timeout=30) as sdk:
        for _ in range(3):
            usages.append((await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)).usage)
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                   stream_options={"include_usage": True})
        usages += [chunk.usage async for chunk in stream if chunk.usage]
        upstream.fail_next(openai_failures.bad_request())
        with pytest.raises(openai.BadRequestError):
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert len(usages) == 4
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    cost = (Decimal(prompt) * PRICES[0] + Decimal(completion) * PRICES[1]) / 1000
    today = datetime.now(UTC).date().isoformat()
    query = {"start_date": today, "end_date": today}

    requests = await poll(http, "/v1/analytics/requests", query, key["key"],
                          lambda body: body["totals"]["requests"] == 5)
    totals = requests["totals"]
    assert requests["object"] == "analytics.requests" and requests["interval"] == "day"
    assert (totals["requests"], totals["succeeded"], totals["failed"]) == (5, 4, 1)
    assert totals["errors"] == [{"type": "UPSTREAM_BAD_REQUEST", "count": 1}]
    assert [p["start_time"] for p in requests["data"]] == [f"{today}T00:00:00Z"]
    assert requests["data"][0]["latency_ms"] == totals["latency_ms"]
    ledger = await pool.fetchrow(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
        "(ORDER BY analytics_bucket_ms(latency_ms)) AS l, "
        "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
        "(ORDER BY analytics_bucket_ms(time_to_first_token_ms)) AS t, "
        "count(time_to_first_token_ms) AS streamed FROM request_analytics WHERE organization_id = $1", org_id)
    assert list(totals["latency_ms"].values()) == [round(v, 3) for v in ledger["l"]]
    assert ledger["streamed"] >= 1  # the streamed request at least
    assert list(totals["time_to_first_token_ms"].values()) == [round(v, 3) for v in ledger["t"]]
    assert totals["latency_ms"]["p50"] <= totals["latency_ms"]["p95"] <= totals["latency_ms"]["p99"]

    tokens = (await http.get("/v1/analytics/tokens", params=query,
                             headers={"authorization": f"Bearer {key['key']}"})).json()
    assert tokens["object"] == "analytics.tokens"
    counted = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: tokens["totals"][k] for k in counted} == {
        "requests": 5, "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}
    spent = (await http.get("/v1/analytics/cost", params={**query, "group_by": "model"},
                            headers={"authorization": f"Bearer {key['key']}"})).json()
    assert spent["totals"]["cost_usd"] == format(cost.normalize(), "f")
    assert [(p["model"], p["requests"], p["cost_usd"]) for p in spent["data"]] == [
        ("gpt-4o-mini", 5, format(cost.normalize(), "f"))]
    hourly = (await http.get("/v1/analytics/cost", params={**query, "interval": "hour"},
                             headers={"authorization": f"Bearer {key['key']}"})).json()
    assert hourly["interval"] == "hour" and sum(p["requests"] for p in hourly["data"]) == 5
    assert all(p["start_time"].endswith(":00:00Z") for p in hourly["data"])
    # Scoped: a platform admin names the organization; its own key cannot name another.
    named = (await http.get("/v1/analytics/tokens", params={**query, "organization_id": org_id})).json()
    assert named["totals"] == tokens["totals"]
    denied = await http.get("/v1/analytics/requests", params={**query, "organization_id": str(uuid.uuid4())},
                            headers={"authorization": f"Bearer {key['key']}"})
    assert denied.status_code == 403 and "admin:platform" in denied.json()["error"]["message"]


async def test_bad_queries_are_400_naming_the_parameter(http: httpx.AsyncClient) -> None:
    today = datetime.now(UTC).date().isoformat()
    for path in ("/v1/analytics/requests", "/v1/analytics/tokens", "/v1/analytics/cost"):
        for params, param in (({"start_date": "2026-13-01", "end_date": today}, "start_date"),
                              ({"start_date": today, "end_date": today, "interval": "minute"}, "interval"),
                              ({"start_date": "2026-01-01", "end_date": "2026-01-09", "interval": "hour"},
                               "end_date"),
                              ({"start_date": today, "end_date": today, "group_by": "week"}, "group_by")):
            answer = await http.get(path, params=params)
            assert answer.status_code == 400, (params, answer.text)
            assert answer.json()["error"]["param"] == param, (params, answer.text)
