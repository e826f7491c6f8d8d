"""Organization quotas through Envoy in both topologies (docs/limits.md "Quotas"): a platform admin
sets a daily request quota, the organization's requests stop at it with 429 `insufficient_quota`,
`GET /v1/quotas` shows what is used and left, only platform admins set quotas, and removing one
lifts it on every worker within 2 s."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from services.auth import admin

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_daily_request_quota_stops_the_organization_and_shows_its_use(
        http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    org_id = await admin.create_org(pool, f"quota-{uuid.uuid4().hex[:8]}")
    org_admin = (await http.post("/v1/api-keys", json={"name": "a", "role": "admin",
                                                       "organization_id": org_id})).json()["key"]
    member = (await http.post("/v1/api-keys", json={"name": "m", "organization_id": org_id})).json()["key"]
    quota = await http.put(f"/v1/organizations/{org_id}/quotas", json={"period": "daily", "max_requests": 3,
                                                                        "max_cost_usd": "5"})
    assert quota.status_code == 200, quota.text
    body = quota.json()
    assert (body["object"], body["period"], body["max_requests"], body["max_cost_usd"]) == (
        "quota", "daily", 3, "5")
    assert body["used"]["requests"] == 0 and body["remaining"]["requests"] == 3
    assert body["resets_at"].endswith("T00:00:00Z")
    statuses = []
    for key in (member, org_admin, member, org_admin):
        answer = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
        statuses.append(answer.status_code)
    assert statuses == [200, 200, 200, 429]
    error = answer.json()["error"]
    assert error["code"] == "insufficient_quota" and "daily quota of this organization" in error["message"]
    shown: dict = {}
    for _ in range(100):  # settled in the background
        shown = (await http.get("/v1/quotas", headers=bearer(member))).json()
        if shown["data"] and shown["data"][0]["used"]["requests"] == 3:
            break
        await asyncio.sleep(0.1)
    assert shown["object"] == "list" and shown["data"][0]["remaining"]["requests"] == 0
    assert shown["data"][0]["used"]["cost_usd"] != "0"
    # An organization may not lift its own quota.
    lifted = await http.put(f"/v1/organizations/{org_id}/quotas", json={"period": "daily"},
                            headers=bearer(org_admin))
    assert lifted.status_code == 403 and "admin:platform" in lifted.json()["error"]["message"]
    bad = await http.put(f"/v1/organizations/{org_id}/quotas", json={"period": "weekly", "max_requests": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "period"
    assert (await http.put(f"/v1/organizations/{uuid.uuid4()}/quotas",
                           json={"period": "daily", "max_requests": 1})).status_code == 404
    # Removed (no limit at all): requests pass again within 2 s on every worker.
    removed = await http.put(f"/v1/organizations/{org_id}/quotas", json={"period": "daily"})
    assert removed.status_code == 200 and "max_requests" not in removed.json()
    assert (await http.get("/v1/quotas", headers=bearer(member))).json()["data"] == []
    deadline = asyncio.get_running_loop().time() + 2.0
    while True:
        sent = asyncio.get_running_loop().time()
        if (await http.post("/v1/chat/completions", json=CHAT, headers=bearer(member))).status_code == 200:
            break
        assert sent < deadline, "the quota still applies 2 s after it was removed"
        await asyncio.sleep(0.05)
