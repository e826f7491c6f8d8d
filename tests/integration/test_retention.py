"""Retention with an injected clock, in a database of its own (services/analytics/retention.py):
the job creates the partitions of the next months before they are needed, drops whole months of
request logs past 90 days while keeping analytics for 2 years, deletes audit rows past their
retention, and running it again changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.analytics.retention import Retention, maintain
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.migrate import apply_migrations
from tests.support.stores import create_database, drop_database

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def pool(store_urls: StoreUrls) -> AsyncIterator[asyncpg.Pool]:
    url = await create_database(store_urls.database_url)
    await apply_migrations(url)
    created = await create_pool(url, max_size=2)
    yield created
    await created.close()
    await drop_database(url)


async def partitions(pool: asyncpg.Pool, table: str) -> set[str]:
    rows = await pool.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = $1::regclass", table)
    return {r["relname"] for r in rows}


async def test_partitions_are_created_ahead_and_dropped_past_retention(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO audit_log (actor, action, created_at) "
                       "VALUES ('t', 'old', $1), ('t', 'new', $2)",
                       datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))
    # Billing records of 2022 (past 7 years at the injected time) and of 2024 (kept).
    await pool.execute("INSERT INTO usage_billing (organization_id, usage_date, public_model) VALUES "
                       "(gen_random_uuid(), '2022-11-30', 'm'), (gen_random_uuid(), '2024-01-01', 'm')")
    for year, month in ((2022, 11), (2024, 1)):
        start = datetime(year, month, 1, tzinfo=UTC)
        await pool.execute(
            "INSERT INTO invoices (organization_id, period, period_start, period_end, plan_name, plan_kind, "
            "total_usd) VALUES (gen_random_uuid(), $1, $2::timestamptz, "
            "$2::timestamptz + interval '1 month', 'p', 'subscription', 0)",
            f"{year}-{month:02d}", start)
    later = datetime(2030, 8, 15, 12, tzinfo=UTC)  # the injected clock: years from the real one
    first = await maintain(pool, Retention(), later)
    for table in ("api_requests", "api_responses", "request_analytics"):
        names = await partitions(pool, table)
        assert {f"{table}_y2030m{m:02d}" for m in (8, 9, 10, 11)} <= names
    # The months the migration created (around the real now) are years old at the injected time:
    # gone from the request logs (90 days), kept in analytics (2 years) only where young enough.
    assert all(n >= "api_requests_y2030m05" for n in await partitions(pool, "api_requests"))
    assert all(n >= "request_analytics_y2028m08" for n in await partitions(pool, "request_analytics"))
    assert first.created >= 12 and first.dropped >= 5 and first.audit_deleted == 1
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 1
    assert first.billing_deleted == 2
    assert await pool.fetchval("SELECT string_agg(period, ',') FROM invoices") == "2024-01"
    assert await pool.fetchval("SELECT string_agg(usage_date::text, ',') FROM usage_billing") == "2024-01-01"
    # Rows can go into the new months; a second run has nothing to do.
    await pool.execute("INSERT INTO request_analytics (request_id, organization_id, endpoint, public_model, "
                       "status, http_status, created_at) "
                       "VALUES ('r', gen_random_uuid(), 'e', 'm', 'succeeded', 200, $1)",
                       datetime(2030, 11, 30, tzinfo=UTC))
    again = await maintain(pool, Retention(), later)
    assert (again.created, again.dropped, again.audit_deleted, again.billing_deleted) == (0, 0, 0, 0)
