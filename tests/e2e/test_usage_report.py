"""`GET /v1/usage` through Envoy in both topologies: the report equals what the test sent, to the
token and to the last decimal (read from the ledger a few seconds behind), grouped by day, model
or key, scoped to the caller's organization (platform admins may name another)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import httpx
import pytest

from services.auth import admin

pytestmark = pytest.mark.e2e
PRICES = (Decimal("0.0015"), Decimal("0.002"))  # gpt-4o-mini's route in tests/e2e/harness.py, per 1k


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_the_report_equals_what_was_sent(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    org_id = await admin.create_org(pool, f"usage-{uuid.uuid4().hex[:8]}")
    keys = [(await http.post("/v1/api-keys", json={"name": f"k{i}", "organization_id": org_id})).json()
            for i in range(2)]
    sent = []
    for i in range(3):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"usage report {i}"}]}
        answer = await http.post("/v1/chat/completions", json=body, headers=bearer(keys[i % 2]["key"]))
        assert answer.status_code == 200
        sent.append(answer.json()["usage"])
    prompt = sum(u["prompt_tokens"] for u in sent)
    completion = sum(u["completion_tokens"] for u in sent)
    cost = (Decimal(prompt) * PRICES[0] + Decimal(completion) * PRICES[1]) / 1000
    today = datetime.now(UTC).date().isoformat()
    query = {"start_date": today, "end_date": today}
    report: dict = {}
    for _ in range(150):  # the ledger lags the requests by a few seconds
        report = (await http.get("/v1/usage", params=query, headers=bearer(keys[0]["key"]))).json()
        if report.get("totals", {}).get("requests") == 3:
            break
        await asyncio.sleep(0.1)
    assert report["object"] == "usage" and report["totals"] == {
        "requests": 3, "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "cost_usd": format(cost.normalize(), "f")}
    assert [row["date"] for row in report["data"]] == [today]
    by_model = (await http.get("/v1/usage", params={**query, "group_by": "model"},
                               headers=bearer(keys[0]["key"]))).json()
    assert [(r["model"], r["requests"]) for r in by_model["data"]] == [("gpt-4o-mini", 3)]
    by_key = (await http.get("/v1/usage", params={**query, "group_by": "key"},
                             headers=bearer(keys[0]["key"]))).json()
    assert sorted((r["api_key_id"], r["requests"]) for r in by_key["data"]) == sorted(
        [(keys[0]["id"], 2), (keys[1]["id"], 1)])
    # Scoped: the gateway's own organization sees none of it unless a platform admin names it.
    assert (await http.get("/v1/usage", params={**query, "model": "gpt-4o-mini", "group_by": "key"})).json()[
        "data"] != by_key["data"]
    named = (await http.get("/v1/usage", params={**query, "organization_id": org_id})).json()
    assert named["totals"] == report["totals"]
    denied = await http.get("/v1/usage", params={**query, "organization_id": str(uuid.uuid4())},
                            headers=bearer(keys[0]["key"]))
    assert denied.status_code == 403 and "admin:platform" in denied.json()["error"]["message"]


async def test_bad_queries_are_400_naming_the_parameter(http: httpx.AsyncClient) -> None:
    today = datetime.now(UTC).date().isoformat()
    for params, param in (({"start_date": "2026-13-01", "end_date": today}, "start_date"),
                          ({"start_date": today}, "end_date"),
                          ({"start_date": today, "end_date": "2020-01-01"}, "end_date"),
                          ({"start_date": "2020-01-01", "end_date": "2026-01-01"}, "end_date"),
                          ({"start_date": today, "end_date": today, "group_by": "week"}, "group_by")):
        answer = await http.get("/v1/usage", params=params)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (params, answer.text)
