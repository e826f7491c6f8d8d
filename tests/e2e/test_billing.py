"""Billing through Envoy in both topologies (docs/billing.md): `aggregator admin` creates a plan,
subscribes an organization and invoices two ended months; `GET /v1/billing/subscription`,
`/v1/billing/invoices` (cursor pages) and `/v1/billing/invoices/{id}` (JSON, and `.html` as an
escaped printable page) answer the caller's organization only: another organization's invoice is
404, a key without `read:billing` 403. Prepaid credits stop requests with 429 `insufficient_quota`
until a top-up, which applies within seconds."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest

from services.auth import admin
from services.billing.charges import month_bounds, month_of, previous_month
from services.core.config import StoreUrls
from services.runtime.up import REPO
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def cli(store_urls: StoreUrls, gateway: Gateway, *args: str) -> str:
    """`aggregator admin ...` as an operator runs it; answers its standard output."""
    env = {**os.environ, "DATABASE_URL": store_urls.database_url, "NATS_URL": store_urls.nats_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runtime.cli", "admin", "--data-dir", str(gateway.data_dir), *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


async def org_keys(http: httpx.AsyncClient, org_id: str) -> tuple[str, str]:
    """An admin key and a member key of the organization (made by the platform admin)."""
    made = []
    for role in ("admin", "member"):
        answer = await http.post("/v1/api-keys", json={"name": role, "role": role, "organization_id": org_id})
        assert answer.status_code == 200, answer.text
        made.append(answer.json()["key"])
    return made[0], made[1]


async def seed(pool: asyncpg.Pool, org: str, when: datetime, tokens: int, cost: str) -> None:
    await pool.execute("SELECT ensure_monthly_partitions_from('request_analytics', $1, 0)", when)
    await pool.execute(
        "INSERT INTO request_analytics (request_id, organization_id, endpoint, public_model, status, "
        "http_status, prompt_tokens, completion_tokens, cost_usd, created_at) "
        "VALUES ($1, $2::uuid, 'chat', 'gpt-4o-mini', 'succeeded', 200, $3, 0, $4, $5)",
        uuid.uuid4().hex, org, tokens, Decimal(cost), when)


async def test_subscription_and_invoices_of_the_caller_organization_only(
        http: httpx.AsyncClient, pool: asyncpg.Pool, store_urls: StoreUrls, gateway: Gateway) -> None:
    suffix = uuid.uuid4().hex[:8]
    org_id = await admin.create_org(pool, f"<b>Acme & \"Co\"</b> {suffix}")
    stranger_id = await admin.create_org(pool, f"stranger-{suffix}")
    org_admin, member = await org_keys(http, org_id)
    stranger_admin, _ = await org_keys(http, stranger_id)
    plan = f"team-{suffix}"
    assert await cli(store_urls, gateway, "create-plan", plan, "--monthly-fee", "20", "--included-tokens",
                     "1000", "--overage-per-1k-tokens", "0.5", "--markup-percent", "10")
    now = datetime.now(UTC)
    last = previous_month(now)
    before = previous_month(month_bounds(last)[0])
    for who in (org_id, stranger_id):
        await cli(store_urls, gateway, "subscribe", "--org", who, "--plan", plan)
        # As if subscribed two months ago (the subscription started before the months invoiced).
        await pool.execute("UPDATE subscriptions SET created_at = $2 WHERE organization_id = $1::uuid",
                           who, month_bounds(before)[0] - timedelta(days=3))
    await seed(pool, org_id, month_bounds(last)[0] + timedelta(days=1), 3_333, "0.1234567")
    await seed(pool, org_id, month_bounds(month_of(now))[0], 500, "0.05")
    for period in (before, last):
        await cli(store_urls, gateway, "invoice", "--period", period)
    assert await cli(store_urls, gateway, "invoice", "--period", last) == ""  # made once

    answer = await http.get("/v1/billing/subscription", headers=bearer(org_admin))
    assert answer.status_code == 200, answer.text
    subscription = answer.json()
    assert subscription["object"] == "billing.subscription" and subscription["organization_id"] == org_id
    assert subscription["plan"]["name"] == plan and subscription["plan"]["monthly_fee_usd"] == "20"
    assert subscription["plan"]["included_tokens"] == 1000 and "credits" not in subscription
    period = subscription["current_period"]
    assert period["usage"] == {"requests": 1, "tokens": 500, "cost_usd": "0.05"}
    assert [line["amount_usd"] for line in period["lines"]] == ["20.00", "0.01"]  # markup 0.005, half up
    assert period["total_usd"] == "20.01"

    first = await http.get("/v1/billing/invoices", params={"limit": 1}, headers=bearer(org_admin))
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["object"] == "list" and page["has_more"] is True
    (invoice,) = page["data"]
    # 2,333 tokens over 1,000 at 0.5 per 1k = 1.1665 -> 1.17; 10% of 0.1234567 = 0.01234567 -> 0.01.
    assert (invoice["object"], invoice["period"], invoice["total_usd"]) == ("invoice", last, "21.18")
    assert [(line["kind"], line["amount_usd"]) for line in invoice["lines"]] == [
        ("base_fee", "20.00"), ("token_overage", "1.17"), ("markup", "0.01")]
    assert invoice["usage"] == {"requests": 1, "tokens": 3333, "cost_usd": "0.1234567"}
    second = (await http.get("/v1/billing/invoices", params={"limit": 1, "after": invoice["id"]},
                             headers=bearer(org_admin))).json()
    assert [i["period"] for i in second["data"]] == [before] and second["has_more"] is False
    assert second["data"][0]["total_usd"] == "20.00"

    one = await http.get(f"/v1/billing/invoices/{invoice['id']}", headers=bearer(org_admin))
    assert one.status_code == 200 and one.headers["content-type"].startswith("application/json")
    assert one.json() == invoice  # the same object as in the list
    printable = await http.get(f"/v1/billing/invoices/{invoice['id']}.html", headers=bearer(org_admin))
    assert printable.status_code == 200, printable.text
    assert printable.headers["content-type"] == "text/html; charset=utf-8"
    assert "&lt;b&gt;Acme &amp; &quot;Co&quot;&lt;/b&gt;" in printable.text
    assert "<b>Acme" not in printable.text
    assert "21.18" in printable.text and invoice["id"] in printable.text

    # Scoped: another organization's invoice is not found, as is a cursor of it; no read:billing, 403.
    theirs = (await http.get("/v1/billing/invoices", headers=bearer(stranger_admin))).json()["data"]
    assert len(theirs) == 2 and all(i["organization_id"] == stranger_id for i in theirs)
    for path in (f"/v1/billing/invoices/{theirs[0]['id']}", f"/v1/billing/invoices/{theirs[0]['id']}.html",
                 f"/v1/billing/invoices/{uuid.uuid4()}", "/v1/billing/invoices/not-an-id"):
        missing = await http.get(path, headers=bearer(org_admin))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", path
    cursor = await http.get("/v1/billing/invoices", params={"after": theirs[0]["id"]},
                            headers=bearer(org_admin))
    assert cursor.status_code == 404 and cursor.json()["error"]["param"] == "after"
    for path in ("/v1/billing/subscription", "/v1/billing/invoices", f"/v1/billing/invoices/{invoice['id']}"):
        denied = await http.get(path, headers=bearer(member))
        assert denied.status_code == 403 and "read:billing" in denied.json()["error"]["message"], path
    foreign = await http.get("/v1/billing/invoices", params={"organization_id": stranger_id},
                             headers=bearer(org_admin))
    assert foreign.status_code == 403 and "admin:platform" in foreign.json()["error"]["message"]
    # A platform admin may look at any organization's.
    platform = await http.get(f"/v1/billing/invoices/{invoice['id']}", params={"organization_id": org_id})
    assert platform.status_code == 200 and platform.json()["id"] == invoice["id"]
    bad = await http.get("/v1/billing/invoices", params={"limit": 101}, headers=bearer(org_admin))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    lonely = await admin.create_org(pool, f"unsubscribed-{suffix}")
    lonely_admin, _ = await org_keys(http, lonely)
    assert (await http.get("/v1/billing/subscription", headers=bearer(lonely_admin))).status_code == 404


async def test_prepaid_credits_stop_requests_until_a_top_up(
        http: httpx.AsyncClient, pool: asyncpg.Pool, store_urls: StoreUrls, gateway: Gateway) -> None:
    suffix = uuid.uuid4().hex[:8]
    org_id = await admin.create_org(pool, f"prepaid-{suffix}")
    org_admin, member = await org_keys(http, org_id)
    await cli(store_urls, gateway, "create-plan", f"payg-{suffix}", "--kind", "prepaid")
    await cli(store_urls, gateway, "subscribe", "--org", org_id, "--plan", f"payg-{suffix}")
    refused = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(member))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and "prepaid credits" in error["message"]
    assert await cli(store_urls, gateway, "top-up", "--org", org_id, "--amount", "1.00") == "1.00"
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:  # announced on NATS: every worker applies it within 2 s (10 s on a busy machine)
        answer = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(member))
        if answer.status_code == 200:
            break
        assert answer.status_code == 429 and asyncio.get_running_loop().time() < deadline, answer.text
        await asyncio.sleep(0.1)
    credits: dict = {}
    for _ in range(200):  # the spend settles in the background
        credits = (await http.get("/v1/billing/subscription", headers=bearer(org_admin))).json()["credits"]
        if credits["spent_usd"] != "0":
            break
        await asyncio.sleep(0.05)
    assert credits["purchased_usd"] == "1" and Decimal(credits["spent_usd"]) > 0
    assert Decimal(credits["balance_usd"]) == 1 - Decimal(credits["spent_usd"])
