"""Migrations on a real PostgreSQL: fresh databases, reruns, concurrency, partitions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.core.config import StoreUrls
from services.core.migrate import MIGRATIONS_DIR, apply_migrations, migration_files
from tests.support.stores import create_database, drop_database

TABLES = {
    "organizations", "users", "api_keys", "providers", "models", "provider_endpoints", "api_requests",
    "api_responses", "request_analytics", "rate_limit_rules", "usage_quotas", "rate_limit_tracking",
    "billing_plans", "subscriptions", "usage_billing", "audit_log", "schema_migrations",
    "signing_keys", "auth_sessions", "refresh_tokens", "oauth_clients", "oauth_codes", "route_prices",
    "invoices", "invoice_lines", "credit_purchases", "request_analytics_daily", "analytics_rollup_state",
}
PARTITIONED = ("api_requests", "api_responses", "request_analytics")
# Columns other services rely on (their SQL names them).
REQUIRED_COLUMNS = {
    "organizations": {"id", "name", "created_at", "updated_at"},
    "users": {"id", "organization_id", "email", "password_hash", "role", "created_at"},
    "api_keys": {"id", "organization_id", "user_id", "name", "key_hash", "prefix", "role", "allowed_models",
                 "rate_limit_per_minute", "rate_limit_per_hour", "rate_limit_per_day", "tokens_per_minute",
                 "expires_at", "revoked_at", "last_used_at", "created_at"},
    "providers": {"id", "name", "kind", "base_url", "api_key_env", "enabled", "created_at", "updated_at"},
    "models": {"id", "public_id", "type", "context_window", "enabled", "created_at", "updated_at"},
    "provider_endpoints": {"id", "model_id", "provider_id", "upstream_model", "input_per_1k", "output_per_1k",
                           "position", "enabled"},
    "audit_log": {"id", "organization_id", "actor", "action", "target", "details", "created_at", "ip",
                  "request_id", "before", "after", "event_id"},
    "api_requests": {"request_id", "created_at"},
    "billing_plans": {"id", "name", "kind", "monthly_fee_usd", "included_requests", "included_tokens",
                      "overage_per_1k_tokens", "overage_per_1k_requests", "markup_percent", "active"},
    "invoices": {"id", "organization_id", "period", "period_start", "period_end", "total_usd", "created_at"},
    "invoice_lines": {"invoice_id", "position", "kind", "description", "quantity", "unit_price",
                      "amount_usd"},
    "credit_purchases": {"id", "organization_id", "amount_usd", "created_at"},
    "rate_limit_rules": {"id", "scope", "organization_id", "api_key_id", "user_id", "model", "window_seconds",
                         "max_requests", "max_tokens", "max_cost_usd", "enabled", "created_by", "created_at"},
}


@pytest.fixture
async def fresh_database_url(store_urls: StoreUrls) -> AsyncIterator[str]:
    url = await create_database(store_urls.database_url)
    yield url
    await drop_database(url)


def _month(offset: int) -> datetime:
    """The first instant (UTC) of the month `offset` months from now."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def test_fresh_database_gets_every_migration_once(fresh_database_url: str) -> None:
    versions = [p.stem for p in migration_files()]
    assert await apply_migrations(fresh_database_url) == versions
    assert await apply_migrations(fresh_database_url) == []

    conn = await asyncpg.connect(fresh_database_url)
    try:
        rows = await conn.fetch("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                                "AND relkind IN ('r', 'p') AND NOT relispartition")
        assert {r["relname"] for r in rows} == TABLES
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in recorded] == versions
        for table, required in REQUIRED_COLUMNS.items():
            columns = await conn.fetch("SELECT column_name FROM information_schema.columns "
                                       "WHERE table_schema = 'public' AND table_name = $1", table)
            assert required <= {c["column_name"] for c in columns}, table
        # Money is exact and time is zoned everywhere.
        loose = await conn.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = 'public' AND data_type IN "
                                 "('real', 'double precision', 'money', 'timestamp without time zone')")
        assert loose == []
        price_type = await conn.fetchval(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'provider_endpoints' AND column_name = 'input_per_1k'")
        assert price_type == "numeric"
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_file_once(fresh_database_url: str) -> None:
    results = await asyncio.gather(*(apply_migrations(fresh_database_url) for _ in range(3)))
    versions = [p.stem for p in migration_files()]
    assert sorted(results, key=len) == [[], [], versions]


async def test_request_rows_land_in_their_monthly_partition(migrated_database_url: str) -> None:
    conn = await asyncpg.connect(migrated_database_url)
    try:
        for offset in (-1, 0, 3):
            created_at = _month(offset) + timedelta(days=2, hours=5)
            partition = await conn.fetchval(
                "INSERT INTO api_requests (request_id, organization_id, endpoint, public_model, created_at) "
                "VALUES ($1, gen_random_uuid(), 'chat.completions', 'gpt-4o-mini', $2) "
                "RETURNING tableoid::regclass::text", f"req_{uuid.uuid4().hex}", created_at)
            assert partition == f"api_requests_y{created_at:%Y}m{created_at:%m}"
        # The last instant of a month is still that month's (UTC bounds, not the session's zone).
        await conn.execute("SET TIME ZONE 'America/Los_Angeles'")
        edge = _month(1) - timedelta(microseconds=1)
        partition = await conn.fetchval(
            "INSERT INTO api_requests (request_id, organization_id, endpoint, public_model, created_at) "
            "VALUES ('req_month_edge_' || gen_random_uuid(), gen_random_uuid(), 'embeddings', 'm', $1) "
            "RETURNING tableoid::regclass::text", edge)
        assert partition == f"api_requests_y{edge:%Y}m{edge:%m}"
        # One request id per instant: a replayed usage event inserts nothing.
        insert = ("INSERT INTO api_requests (request_id, organization_id, endpoint, public_model, "
                  "created_at) VALUES ('req_replayed', gen_random_uuid(), 'embeddings', 'm', $1) "
                  "ON CONFLICT (request_id, created_at) DO NOTHING")
        moment = _month(0) + timedelta(hours=1)
        assert await conn.execute(insert, moment) == "INSERT 0 1"
        assert await conn.execute(insert, moment) == "INSERT 0 0"
    finally:
        await conn.close()


async def test_partition_functions_create_and_drop_whole_months(fresh_database_url: str) -> None:
    await apply_migrations(fresh_database_url)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        for table in PARTITIONED:
            names = {r["relname"] for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = $1::regclass", table)}
            assert names == {f"{table}_y{_month(o):%Y}m{_month(o):%m}" for o in range(-1, 4)}
        assert await conn.fetchval("SELECT ensure_monthly_partitions('request_analytics', 3, 1)") == 0
        assert await conn.fetchval("SELECT ensure_monthly_partitions('request_analytics', 4, 6)") == 6
        # Retention: everything older than the month before last goes, current data stays.
        dropped = await conn.fetchval("SELECT drop_monthly_partitions_before('request_analytics', $1)",
                                      _month(-1))
        assert dropped == 5
        remaining = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'request_analytics'::regclass")
        assert remaining == 6  # one behind, this month, four ahead
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_no_trace(fresh_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_create_things.sql").write_text("CREATE TABLE things (id int);")
    (tmp_path / "0002_break_things.sql").write_text("CREATE TABLE more_things (id int); SELECT nonsense();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await apply_migrations(fresh_database_url, tmp_path)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        assert [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")] == [
            "0001_create_things"]
        assert await conn.fetchval("SELECT to_regclass('more_things')") is None
    finally:
        await conn.close()
    (tmp_path / "0002_break_things.sql").write_text("CREATE TABLE more_things (id int);")
    assert await apply_migrations(fresh_database_url, tmp_path) == ["0002_break_things"]


def test_migration_files_must_be_numbered(tmp_path: Path) -> None:
    assert [p.name for p in migration_files(MIGRATIONS_DIR)][0].startswith("0001_")
    (tmp_path / "0001_create_things.sql").write_text("")
    (tmp_path / "0001_create_others.sql").write_text("")
    with pytest.raises(ValueError, match="used twice"):
        migration_files(tmp_path)
    (tmp_path / "0001_create_others.sql").unlink()
    (tmp_path / "2_bad.sql").write_text("")
    with pytest.raises(ValueError, match="NNNN_verb_noun"):
        migration_files(tmp_path)


async def test_rate_limit_rules_written_before_0012_get_their_scope(fresh_database_url: str,
                                                                    tmp_path: Path) -> None:
    """0012 gives older rows the scope their columns describe and drops unenforceable windows."""
    import shutil

    for path in migration_files():
        if path.stem < "0012":
            shutil.copy(path, tmp_path / path.name)
    await apply_migrations(fresh_database_url, tmp_path)
    conn = await asyncpg.connect(fresh_database_url)
    try:
        org = await conn.fetchval("INSERT INTO organizations (name) VALUES ('limits') RETURNING id")
        key = await conn.fetchval("INSERT INTO api_keys (organization_id, name, key_hash, prefix, role) "
                                  "VALUES ($1, 'k', $2, 'sk_live_abcd', 'member') RETURNING id",
                                  org, "a" * 64)
        rows = [(org, key, None, 60), (org, None, None, 3600), (None, None, "gpt-4o-mini", 86400),
                (None, None, None, 60), (org, None, None, 120)]
        for values in rows:
            await conn.execute("INSERT INTO rate_limit_rules (organization_id, api_key_id, model, "
                               "window_seconds, max_requests) VALUES ($1, $2, $3, $4, 5)", *values)
        await apply_migrations(fresh_database_url)
        scopes = await conn.fetch("SELECT scope, window_seconds FROM rate_limit_rules "
                                  "ORDER BY created_at, id")
        assert [(r["scope"], r["window_seconds"]) for r in scopes] == [
            ("key", 60), ("organization", 3600), ("model", 86400), ("global", 60)]
        with pytest.raises(asyncpg.CheckViolationError):  # at least one limit, the cost limit included
            await conn.execute("INSERT INTO rate_limit_rules (scope, window_seconds) VALUES ('global', 60)")
        await conn.execute("INSERT INTO rate_limit_rules (scope, window_seconds, max_cost_usd) "
                           "VALUES ('global', 3600, 0.5)")
        with pytest.raises(asyncpg.UniqueViolationError):  # one rule per scope, target, model and window
            await conn.execute("INSERT INTO rate_limit_rules (scope, window_seconds, max_tokens) "
                               "VALUES ('global', 3600, 9)")
        # An unknown scope or window, a scope without its target, a platform rule of an organization.
        for scope, owner, window in (("team", None, 60), ("global", None, 120), ("organization", None, 60),
                                     ("model", None, 60), ("global", org, 60)):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("INSERT INTO rate_limit_rules (scope, organization_id, window_seconds, "
                                   "max_requests) VALUES ($1, $2, $3, 1)", scope, owner, window)
    finally:
        await conn.close()
