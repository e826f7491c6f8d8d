"""Billing on the real PostgreSQL and Valkey, in a database of its own (docs/billing.md): a month
of usage invoiced by the job with an injected clock, compared to the cent with the invoice computed
by hand, made once however often the job or `admin invoice` runs; invoice pages and scoping; and
prepaid credits enforced by the limiter as the organization's `total` cost budget."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg
import pytest

from services.auth import admin
from services.billing import plans
from services.billing.invoicing import InvoiceJob, get_invoice, invoice_month, list_invoices
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.errors import GatewayError, Reason
from services.core.migrate import apply_migrations
from services.core.redis import create_redis
from services.limits.budgets import SpendStore
from services.limits.limiter import Limiter
from services.limits.quotas import QuotaBook, load_quotas
from tests.support.stores import create_database, drop_database

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal
NOV = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def pool(store_urls: StoreUrls) -> AsyncIterator[asyncpg.Pool]:
    url = await create_database(store_urls.database_url)
    await apply_migrations(url)
    created = await create_pool(url, max_size=4)
    for table in ("request_analytics",):
        await created.execute("SELECT ensure_monthly_partitions_from($1, $2, 3)", table,
                              datetime(2026, 9, 1, tzinfo=UTC))
    yield created
    await created.close()
    await drop_database(url)


async def seed(pool: asyncpg.Pool, org: str, when: datetime, prompt: int, completion: int, cost: str,
               status: str = "succeeded") -> None:
    await pool.execute(
        "INSERT INTO request_analytics (request_id, organization_id, endpoint, public_model, status, "
        "http_status, prompt_tokens, completion_tokens, cost_usd, created_at) "
        "VALUES ($1, $2::uuid, 'chat', 'gpt-4o-mini', $3, $4, $5, $6, $7, $8)", uuid.uuid4().hex, org,
        status, 200 if status != "failed" else 502, prompt, completion, D(cost), when)


def cents(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_UP)


async def test_a_month_is_invoiced_to_the_cent_and_only_once(pool: asyncpg.Pool) -> None:
    org = await admin.create_org(pool, "acme")
    other = await admin.create_org(pool, "unsubscribed")
    await plans.create_plan(pool, "team", monthly_fee_usd="49.99", included_requests=3,
                            included_tokens=10_000, overage_per_1k_tokens="0.0015",
                            overage_per_1k_requests="2.5", markup_percent="25")
    await plans.subscribe(pool, org, "team", datetime(2026, 10, 20, tzinfo=UTC))
    # November: five billable requests (one cut off by its client), one failed; the months around
    # it and another organization's requests must not count.
    november = [(9_000, 1_234, "0.0123456789", "succeeded"), (1_500, 777, "0.0045", "succeeded"),
                (2_000, 0, "0.0031", "cancelled"), (640, 1_001, "0.0019999999", "succeeded"),
                (12, 34, "0.0000010001", "succeeded"), (300, 0, "0", "failed")]
    for n, (prompt, completion, cost, status) in enumerate(november):
        await seed(pool, org, NOV + timedelta(days=n * 5, hours=n), prompt, completion, cost, status)
    await seed(pool, org, NOV - timedelta(microseconds=1), 50_000, 0, "1", "succeeded")
    await seed(pool, org, datetime(2026, 12, 1, tzinfo=UTC), 50_000, 0, "1", "succeeded")
    await seed(pool, other, NOV + timedelta(days=2), 50_000, 0, "1", "succeeded")

    # The invoice by hand: 5 billable requests (2 over 3); tokens and cost of every request (the
    # failed one's prompt too), 16,498 tokens (6,498 over 10,000), cost 0.0219466789; each line
    # exact, then rounded half-up to the cent; the total sums the lines.
    tokens = sum(p + c for p, c, _, _ in november)
    cost = sum((D(c) for _, _, c, _ in november), D(0))
    assert (tokens, cost) == (16_498, D("0.0219466789"))
    expected = [("base_fee", cents(D("49.99"))),
                ("token_overage", cents(D(tokens - 10_000) * D("0.0015") / 1000)),  # 0.009747 -> 0.01
                ("request_overage", cents(D(5 - 3) * D("2.5") / 1000)),  # 0.005 -> 0.01 (half up)
                ("markup", cents(cost * D("25") / 100))]  # 0.005486669725 -> 0.01
    assert [amount for _, amount in expected] == [D("49.99"), D("0.01"), D("0.01"), D("0.01")]

    clock = {"now": datetime(2026, 12, 1, 0, 30, tzinfo=UTC)}
    job = InvoiceJob(pool, clock=lambda: clock["now"])
    assert await job.run_once() == []  # within the grace hour: the ledger may still be writing
    clock["now"] = datetime(2026, 12, 1, 1, 5, tzinfo=UTC)
    made = await job.run_once()
    assert len(made) == 1
    assert await job.run_once() == []
    assert await invoice_month(pool, "2026-11", clock["now"]) == []  # `aggregator admin invoice`
    assert await pool.fetchval("SELECT count(*) FROM invoices") == 1
    assert await pool.fetchval("SELECT count(*) FROM invoice_lines") == 4

    invoice = await get_invoice(pool, org, made[0])
    assert invoice is not None
    assert [(line.kind, amount) for line, amount in zip(invoice.lines, invoice.amounts, strict=True)
            ] == expected
    # 50.02, where rounding the exact sum (50.0102...) would have given 50.01.
    assert invoice.row["total_usd"] == D("50.02") == sum(amount for _, amount in expected)
    row = invoice.row
    assert (row["period"], row["requests"], row["tokens"], row["cost_usd"]) == ("2026-11", 5, tokens, cost)
    assert await get_invoice(pool, other, made[0]) is None  # another organization's: not found
    # The month's billed usage per day and model, marked invoiced; the subscription moved on.
    billed = await pool.fetchrow("SELECT sum(requests) AS r, sum(cost_usd) AS c, "
                                 "bool_and(invoiced_at IS NOT NULL) AS done FROM usage_billing "
                                 "WHERE organization_id = $1::uuid", org)
    assert (billed["r"], billed["c"], billed["done"]) == (5, cost, True)
    assert await pool.fetchval("SELECT current_period_start FROM subscriptions "
                               "WHERE organization_id = $1::uuid", org) == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(GatewayError) as early:
        await invoice_month(pool, "2026-12", clock["now"])
    assert early.value.reason is Reason.INVALID_REQUEST and early.value.param == "period"


async def test_invoices_page_newest_first_within_their_organization(pool: asyncpg.Pool) -> None:
    org = await admin.create_org(pool, "pager")
    stranger = await admin.create_org(pool, "stranger")
    await plans.create_plan(pool, "flat", monthly_fee_usd="10")
    for who in (org, stranger):
        await plans.subscribe(pool, who, "flat", datetime(2026, 8, 3, tzinfo=UTC))
    for period in ("2026-08", "2026-09", "2026-10"):
        assert len(await invoice_month(pool, period, datetime(2026, 12, 1, tzinfo=UTC))) == 2
    first, more = await list_invoices(pool, org, None, 2)
    assert [i.row["period"] for i in first] == ["2026-10", "2026-09"] and more
    rest, more = await list_invoices(pool, org, str(first[-1].row["id"]), 2)
    assert [i.row["period"] for i in rest] == ["2026-08"] and not more
    assert all(str(i.row["organization_id"]) == org and i.amounts == [D("10.00")] for i in first + rest)
    theirs, _ = await list_invoices(pool, stranger, None, 1)
    with pytest.raises(GatewayError) as foreign:
        await list_invoices(pool, org, str(theirs[0].row["id"]), 2)
    assert foreign.value.reason is Reason.NOT_FOUND and foreign.value.param == "after"


async def test_prepaid_credits_are_the_organization_budget_the_limiter_enforces(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    org = await admin.create_org(pool, "hobby")
    await plans.create_plan(pool, "payg", kind="prepaid")
    await plans.create_plan(pool, "monthly", monthly_fee_usd="5")
    for bad in ({"kind": "weekly"}, {"markup_percent": "100000"}, {"monthly_fee_usd": "-1"},
                {"included_tokens": -1}, {"overage_per_1k_tokens": "0.00000000001"}):
        with pytest.raises(GatewayError) as refused:
            await plans.create_plan(pool, "bad", **bad)  # type: ignore[arg-type]
        assert refused.value.reason is Reason.INVALID_REQUEST and refused.value.param == next(iter(bad))
    with pytest.raises(GatewayError) as taken:
        await plans.create_plan(pool, "payg")
    assert taken.value.param == "name"
    with pytest.raises(GatewayError) as unsubscribed:
        await plans.top_up(pool, org, "5")
    assert unsubscribed.value.param == "org"
    await plans.subscribe(pool, org, "payg", datetime.now(UTC))
    book = QuotaBook(pool, ttl_s=0)  # no caching: every lookup reads the stored credits
    now = datetime.now(UTC)
    (nothing,) = [b for q in await book.of(org) for b in q.budgets(now)]
    assert (nothing.period, nothing.limit, nothing.unit) == ("total", 0, "cost")
    assert await load_quotas(pool, org) == []  # not a quota: GET /v1/quotas does not list it
    for bad in ("0", "-1", "1.001", "abc"):
        with pytest.raises(GatewayError):
            await plans.top_up(pool, org, bad)
    assert await plans.top_up(pool, org, "1.00", "card") == D("1.00")

    redis = create_redis(store_urls.redis_url)
    limiter = Limiter(redis, spend=SpendStore(pool))
    try:
        (credits,) = [b for q in await book.of(org) for b in q.budgets(now)]
        assert credits.limit == 1_000_000 and "prepaid credits" in credits.label
        held = await limiter.admit([], [], [credits], [600_000], f"a-{uuid.uuid4().hex}")
        with pytest.raises(GatewayError) as over:
            await limiter.admit([], [], [credits], [600_000], f"b-{uuid.uuid4().hex}")
        assert over.value.reason is Reason.QUOTA_EXCEEDED and "prepaid credits" in over.value.message
        limiter.settle_soon(held, {}, D("0.25"), 100)
        await limiter.drain()
        assert await plans.credit_spent(pool, org) == D("0.25")
        # The balance is 0.75: 0.6 fits, then a top-up raises the limit for the next request.
        await limiter.admit([], [], [credits], [600_000], f"c-{uuid.uuid4().hex}")
        assert await plans.top_up(pool, org, "2") == D("3.00")
        (raised,) = [b for q in await book.of(org) for b in q.budgets(now)]
        assert raised.limit == 3_000_000
        await limiter.admit([], [], [raised], [600_000], f"d-{uuid.uuid4().hex}")
    finally:
        await limiter.drain()
        await redis.aclose()
    # Off a prepaid plan, the credits stop applying (and are kept for a return).
    await plans.subscribe(pool, org, "monthly", datetime.now(UTC))
    assert await book.of(org) == []
    await plans.subscribe(pool, org, "payg", datetime.now(UTC))
    (back,) = [b for q in await book.of(org) for b in q.budgets(now)]
    assert back.limit == 3_000_000
