"""The analytics series on real PostgreSQL, in a database of its own (services/analytics/series.py,
rollup.py): seeded requests with latencies 1..100 give the percentiles computed by hand (and by
PostgreSQL's percentile_cont), failures per error type, tokens to the token and cost to the last
decimal; the answer is the same read from the raw rows and from the daily rollup; hourly points,
groups, the model filter and the organization scope; a request recorded late joins its rolled-up
day at the next run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from google.protobuf.json_format import MessageToDict

from aggregator.analytics.v1 import analytics_service_pb2 as pb
from aggregator.auth.v1 import auth_service_pb2
from services.analytics.rollup import roll_up
from services.analytics.servicer import AnalyticsServicer
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.migrate import apply_migrations
from tests.support.stores import create_database, drop_database

pytestmark = pytest.mark.asyncio(loop_scope="session")
ORG, OTHER, BIG_VALUES = (str(uuid.uuid4()) for _ in range(3))
KEY = str(uuid.uuid4())
NOW = datetime.now(UTC)
DAY = (NOW - timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)
PRICE = Decimal("0.0012345678")
_INSERT = ("INSERT INTO request_analytics (request_id, organization_id, api_key_id, endpoint, public_model, "
           "status, http_status, error_reason, prompt_tokens, completion_tokens, cached_tokens, "
           "reasoning_tokens, cost_usd, latency_ms, time_to_first_token_ms, created_at) "
           "VALUES ($1, $2, $3, 'chat.completions', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)")
FAILURES = {10: ("failed", 502, "upstream_error"), 20: ("failed", 502, "upstream_error"),
            30: ("failed", 429, "rate_limit_exceeded"), 40: ("cancelled", 499, None)}


@pytest.fixture(scope="module")
async def pool(store_urls: StoreUrls) -> AsyncIterator[asyncpg.Pool]:
    url = await create_database(store_urls.database_url)
    await apply_migrations(url)
    created = await create_pool(url, max_size=2)
    rows = []
    for i in range(1, 101):  # minute i of DAY: latency i ms, a time to first token when i is even
        status, http, reason = FAILURES.get(i, ("succeeded", 200, None))
        rows.append((f"r{i}", ORG, None if i % 4 == 0 else KEY, "m-odd" if i % 2 else "m-even", status, http,
                     reason, i, 2 * i, i // 2, i // 3, PRICE * i, i, i if i % 2 == 0 else None,
                     DAY + timedelta(minutes=i)))
    rows.append(("other", OTHER, None, "m-odd", "succeeded", 200, None, 7, 7, 0, 0, PRICE, 5, None,
                 DAY + timedelta(hours=3)))
    rows += [(f"big{v}", BIG_VALUES, None, "m", "succeeded", 200, None, 1, 1, 0, 0, PRICE, v, None,
              DAY + timedelta(hours=2)) for v in (1234, 5678, 98765)]
    await created.executemany(_INSERT, rows)
    yield created
    await created.close()
    await drop_database(url)


def analytics(pool: asyncpg.Pool, organization: str = ORG) -> AnalyticsServicer:
    principal = auth_service_pb2.Principal(organization_id=organization, permissions=["read:usage"])

    async def authenticate(context: Any) -> auth_service_pb2.Principal:
        return principal

    return AnalyticsServicer(pool, authenticate)


async def ask(pool: asyncpg.Pool, rpc: str, organization: str = ORG, day: date | None = None,
              **query: str) -> dict[str, Any]:
    day = day or DAY.date()
    message = getattr(pb, rpc + "Request")(start_date=day.isoformat(), end_date=day.isoformat(), **query)
    answer = await getattr(AnalyticsServicer, rpc).__wrapped__(analytics(pool, organization), message, None)
    return MessageToDict(answer, preserving_proto_field_name=True)


async def all_three(pool: asyncpg.Pool, **query: str) -> list[dict[str, Any]]:
    return [await ask(pool, rpc, **query)
            for rpc in ("GetRequestAnalytics", "GetTokenAnalytics", "GetCostAnalytics")]


async def test_percentiles_errors_tokens_and_cost_from_raw_rows_and_the_rollup(pool: asyncpg.Pool) -> None:
    before = await all_three(pool)
    requests, tokens, cost = before
    start = DAY.strftime("%Y-%m-%dT%H:%M:%SZ")
    expected_point = {
        "requests": 100, "succeeded": 96, "failed": 4,
        "errors": [{"type": "upstream_error", "count": 2}, {"type": "cancelled", "count": 1},
                   {"type": "rate_limit_exceeded", "count": 1}],
        # percentile_cont over 1..100: rank q*99 interpolated; over 2, 4 .. 100: rank q*49.
        "latency_ms": {"p50": 50.5, "p95": 95.05, "p99": 99.01},
        "time_to_first_token_ms": {"p50": 51.0, "p95": 95.1, "p99": 99.02}}
    assert requests["object"] == "analytics.requests" and requests["interval"] == "day"
    assert requests["data"] == [{"start_time": start, **expected_point}]
    assert requests["totals"] == expected_point
    by_postgres = await pool.fetchrow(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms) AS l, "
        "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY time_to_first_token_ms) AS t "
        "FROM request_analytics WHERE organization_id = $1", ORG)
    assert [round(v, 3) for v in by_postgres["l"]] == list(expected_point["latency_ms"].values())
    assert [round(v, 3) for v in by_postgres["t"]] == list(expected_point["time_to_first_token_ms"].values())
    tokens_point = {"requests": 100, "prompt_tokens": 5050.0, "completion_tokens": 10100.0,
                    "cached_tokens": float(sum(i // 2 for i in range(1, 101))),
                    "reasoning_tokens": float(sum(i // 3 for i in range(1, 101))), "total_tokens": 15150.0}
    assert tokens["data"] == [{"start_time": start, **tokens_point}] and tokens["totals"] == tokens_point
    assert cost["data"] == [{"start_time": start, "requests": 100, "cost_usd": "6.23456739"}]
    assert cost["totals"] == {"requests": 100, "cost_usd": str(PRICE * 5050).rstrip("0")}

    rolled = await roll_up(pool, NOW)
    assert rolled is not None
    first, until = rolled
    assert first <= DAY.date() < until
    assert await pool.fetch("SELECT level, sum(requests) AS n FROM request_analytics_daily "
                            "WHERE organization_id = $1 GROUP BY 1 ORDER BY 1", ORG) == [
        (level, 100) for level in range(4)]  # each level counts every request once
    assert await all_three(pool) == before  # the rollup answers what the raw rows did
    for group, expected in (("model", {("m-even", 50), ("m-odd", 50)}), ("key", {(KEY, 75), ("", 25)})):
        field = "model" if group == "model" else "api_key_id"
        rows = (await ask(pool, "GetCostAnalytics", group_by=group))["data"]
        assert {(r.get(field, ""), r["requests"]) for r in rows} == expected
    only = await ask(pool, "GetRequestAnalytics", model="m-odd")
    assert only["data"][0]["model"] == "m-odd" and only["totals"]["requests"] == 50
    assert only["totals"].get("failed", 0) == 0  # every failure above has an even i


async def test_hourly_points_read_the_raw_rows(pool: asyncpg.Pool) -> None:
    hourly = await ask(pool, "GetTokenAnalytics", interval="hour")
    hour = DAY.strftime("%Y-%m-%dT%H")
    assert hourly["interval"] == "hour"
    assert [(p["start_time"], p["requests"]) for p in hourly["data"]] == [
        (f"{hour}:00:00Z", 59), ((DAY + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z"), 41)]
    assert hourly["totals"]["prompt_tokens"] == 5050.0


async def test_only_the_organization_s_requests_are_counted(pool: asyncpg.Pool) -> None:
    other = await ask(pool, "GetCostAnalytics", OTHER)
    assert other["totals"] == {"requests": 1, "cost_usd": str(PRICE)}
    # From 100 ms on latencies are bucketed (5, 50, 500 ms wide...): 1234, 5678, 98765 count as
    # 1200, 5650, 98500.
    big = await ask(pool, "GetRequestAnalytics", BIG_VALUES)
    assert big["totals"]["latency_ms"] == {"p50": 5650.0, "p95": 89215.0, "p99": 96643.0}
    assert await pool.fetchval("SELECT array_agg(analytics_bucket_ms(v)) FROM unnest($1::int[]) AS v",
                               [0, 99, 100, 104, 999, 1000, 1049, 12345, 2_147_483_647]) == [
        0, 99, 100, 100, 995, 1000, 1000, 12000, 2_100_000_000]


async def test_a_request_recorded_late_joins_its_day_at_the_next_run(pool: asyncpg.Pool) -> None:
    rolled = await roll_up(pool, NOW)
    assert rolled is not None
    until = rolled[1]
    late_day = until - timedelta(days=1)  # the last day rolled up
    await pool.execute(_INSERT, "late", ORG, KEY, "m-odd", "succeeded", 200, None, 1, 1, 0, 0, PRICE, 7, None,
                       datetime.combine(late_day, time(5), tzinfo=UTC))
    assert "data" not in await ask(pool, "GetCostAnalytics", day=late_day)  # read from the rollup
    await roll_up(pool, NOW + timedelta(days=1))  # each run recomputes the days before its watermark
    assert (await ask(pool, "GetCostAnalytics", day=late_day))["totals"] == {"requests": 1,
                                                                           "cost_usd": str(PRICE)}


async def test_a_run_while_another_holds_the_lock_is_skipped(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('analytics_rollup'))")
        assert await roll_up(pool, NOW) is None  # the other connection holds it: nothing waits
    assert await roll_up(pool, NOW) is not None
