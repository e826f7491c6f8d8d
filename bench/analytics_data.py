"""The analytics benchmark (docs/analytics.md §4): `python -m bench.analytics_data --url URL
[--rows N] [--days D]` fills request_analytics of the (migrated) database at URL with N rows over
the D days before now (generate_series in SQL), rolls them up (services/analytics/rollup.py),
then times each analytics series through the code the servicer runs (services/analytics/series.py)
and prints EXPLAIN (ANALYZE, BUFFERS) of its statements, as Markdown.

100 organizations: the first ("big") holds half the rows, the 99 others share the rest; 5 models,
3 keys per organization (one request in ten without a key); 97 % succeed, 2 % fail (three error
types), 1 % are cancelled; latency log-normal around 650 ms, 40 % streamed with a time to first
token. Use a database of its own: the script writes ~10 M rows into it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.analytics import series
from services.analytics.rollup import RESTATE_DAYS, roll_up
from services.analytics.scope import Scope
from services.core.migrate import apply_migrations

BIG = "00000000-0000-0000-0000-000000000100"
SMALL = "00000000-0000-0000-0000-000000000101"
CHUNK = 1_000_000

# $1 the first row number, $2 the last, $3 all rows, $4 the first instant, $5 the span in seconds
_FILL = """
INSERT INTO request_analytics (request_id, organization_id, api_key_id, endpoint, public_model, provider,
    upstream_model, stream, status, http_status, error_reason, prompt_tokens, completion_tokens,
    cached_tokens, reasoning_tokens, cost_usd, latency_ms, time_to_first_token_ms, created_at)
SELECT 'bench-' || i, org,
       CASE WHEN i % 10 = 0 THEN NULL
            ELSE ('00000000-0000-0000-' || lpad(((i / 7) % 3)::text, 4, '0') || '-'
                  || right(org::text, 12))::uuid
       END,
       'chat.completions', model, 'fakeai', model, stream,
       CASE WHEN r < 0.97 THEN 'succeeded' WHEN r < 0.99 THEN 'failed' ELSE 'cancelled' END,
       CASE WHEN r < 0.97 THEN 200 WHEN r < 0.99 THEN 502 ELSE 499 END,
       CASE WHEN r < 0.97 THEN NULL WHEN r < 0.975 THEN 'rate_limit_exceeded' WHEN r < 0.98 THEN 'timeout'
            WHEN r < 0.99 THEN 'upstream_error' ELSE 'cancelled' END,
       prompt, completion, prompt / 4, completion / 10, (prompt * 0.0015 + completion * 0.002) / 1000,
       latency, CASE WHEN stream THEN latency / 3 END,
       $4::timestamptz + make_interval(secs => (i - 1) * $5 / $3)
FROM (SELECT i, random() AS r,
             CASE WHEN i % 2 = 0 THEN '00000000-0000-0000-0000-000000000100'::uuid
                  ELSE ('00000000-0000-0000-0000-' || lpad((101 + (i / 2) % 99)::text, 12, '0'))::uuid
             END AS org,
             'model-' || (i % 5) AS model, i % 5 < 2 AS stream,
             (20 + random() * 2000)::int AS prompt, (random() * 800)::int AS completion,
             greatest(1, exp(6.5 + 0.6 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())))::int
                 AS latency
      FROM generate_series($1::bigint, $2::bigint) AS i) AS g
"""


async def fill(url: str, rows: int, days: int, now: datetime) -> None:
    conn = await asyncpg.connect(url)
    try:
        first = now - timedelta(days=days)
        await conn.execute("SELECT ensure_monthly_partitions_from('request_analytics', $1, $2)", first,
                           days // 28 + 2)
        for start in range(1, rows + 1, CHUNK):
            began = time.monotonic()
            await conn.execute(_FILL, start, min(start + CHUNK - 1, rows), rows, first, days * 86400.0)
            print(f"<!-- rows {start}..{min(start + CHUNK - 1, rows)}: {time.monotonic() - began:.1f} s -->",
                  flush=True)
        await conn.execute("VACUUM ANALYZE request_analytics")
    finally:
        await conn.close()


async def measure(url: str, now: datetime, days: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        began = time.monotonic()
        rolled = await roll_up(pool, now)
        assert rolled is not None, "another process is rolling this database up"
        first, until = rolled
        print(f"\nRollup run, days {first} to {until} (all of them on the first run): "
              f"{time.monotonic() - began:.1f} s")
        await pool.execute("VACUUM ANALYZE request_analytics_daily")
        raw = await pool.fetchval("SELECT count(*) FROM request_analytics")
        rolled = await pool.fetchval("SELECT count(*) FROM request_analytics_daily")
        print(f"Rows: request_analytics {raw}, request_analytics_daily {rolled}")
        began = time.monotonic()
        await roll_up(pool, datetime.now(UTC))
        print(f"An ordinary run ({RESTATE_DAYS} days restated): {time.monotonic() - began:.2f} s")
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        cases = [
            ("30 days, a small organization (0.5 % of the rows), daily", SMALL, 30, "day", ""),
            ("30 days, the big organization (half the rows), daily", BIG, 30, "day", ""),
            ("30 days, the big organization, daily, group_by=model", BIG, 30, "day", "model"),
            ("366 days (the whole table), the big organization, daily", BIG, 366, "day", ""),
            ("366 days (the whole table), the big organization, daily, group_by=key", BIG, 366, "day", "key"),
            ("7 days, the big organization, hourly", BIG, 7, "hour", ""),
            ("7 days, a small organization, hourly", SMALL, 7, "hour", ""),
        ]
        for title, org, span, interval, group in cases:
            scope = Scope(org, today - timedelta(days=span - 1), today + timedelta(days=1), "")
            await report(pool, title, scope, interval, group)
    finally:
        await pool.close()


async def report(pool: Any, title: str, scope: Scope, interval: str, group: str) -> None:
    timings = []
    for _ in range(3):
        began = time.monotonic()
        points, totals = await series.series(pool, scope, interval, group, detail=True)
        timings.append(time.monotonic() - began)
    print(f"\n### {title}\n\n{len(points)} points, {totals.requests} requests; the requests series "
          f"(all three statements): {min(timings) * 1000:.0f} ms best of 3, "
          f"{max(timings) * 1000:.0f} ms worst\n")
    for name, (sql, args) in series.statements(scope, interval, group).items():
        async with pool.acquire() as conn, conn.transaction():
            await series.configure(conn)
            lines = [r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)]
        print(f"<details><summary>{name}: {lines[-1].strip()}</summary>\n\n```\n" + "\n".join(lines)
              + "\n```\n</details>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--skip-fill", action="store_true")
    args = parser.parse_args()
    now = datetime.now(UTC)
    asyncio.run(apply_migrations(args.url))
    if not args.skip_fill:
        asyncio.run(fill(args.url, args.rows, args.days, now))
    asyncio.run(measure(args.url, now, args.days))


if __name__ == "__main__":
    main()
