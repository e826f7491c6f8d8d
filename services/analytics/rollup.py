"""The analytics rollup (docs/analytics.md §3): a job in every analytics process (at start and
every EVERY_S) sums each closed UTC day of request_analytics into request_analytics_daily, one row
per organization, day, model and key, with its latency, time-to-first-token and error histograms,
and moves the watermark (analytics_rollup_state.rolled_until) the analytics series read from.

A day is closed GRACE after it ends (the ledger writes a request within seconds; the grace
covers a short NATS outage). Each run also recomputes the RESTATE_DAYS before the watermark, so a
request recorded late (a usage event replayed from an outbox) joins its day's rollup at the next
run; one recorded later than that stays in request_analytics (and GET /v1/usage) only. Runs are
serialised by an advisory lock (a process finding it taken skips its run) and each is one
transaction: a reader sees the rollup and its
watermark before or after a run, never half of one. Rollup rows past the analytics retention
(config `retention.analytics_days`) are deleted with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from services.analytics.series import NO_KEY
from services.core.periodic import PeriodicJob

log = logging.getLogger(__name__)

EVERY_S = 600
GRACE = timedelta(minutes=10)
RESTATE_DAYS = 2

# GROUPING(public_model, api_key_id) is the level: 0 by model and key, 1 by model, 2 by key, 3 all.
_LEVEL = ("GROUPING(public_model, api_key_id)::smallint AS level, "
          f"coalesce(public_model, '') AS public_model, coalesce(api_key_id, '{NO_KEY}') AS api_key_id")


def _sets(extra: str = "") -> str:
    """The four levels' grouping sets, each also grouped by `extra`."""
    groups = (", public_model, api_key_id", ", public_model", ", api_key_id", "")
    return "GROUPING SETS (" + ", ".join(f"(organization_id, day{g}{extra})" for g in groups) + ")"


def _histogram(value: str, where: str) -> str:
    """Value and count arrays per level and group, of the raw rows' `value` where `where`."""
    return (f"SELECT organization_id, day, level, public_model, api_key_id, array_agg(v ORDER BY v) AS vs, "
            f"array_agg(n ORDER BY v) AS ns FROM (SELECT organization_id, day, {_LEVEL}, {value} AS v, "
            f"count(*)::integer AS n FROM raw WHERE {where} GROUP BY {_sets(', ' + value)}) AS h "
            "GROUP BY 1, 2, 3, 4, 5")


_ROLL = f"""
WITH raw AS (
    SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day, public_model,
           coalesce(api_key_id, '{NO_KEY}') AS api_key_id, status, error_reason, prompt_tokens,
           completion_tokens, cached_tokens, reasoning_tokens, cost_usd,
           analytics_bucket_ms(latency_ms) AS latency, analytics_bucket_ms(time_to_first_token_ms) AS ttft
    FROM request_analytics WHERE created_at >= $1 AND created_at < $2),
counters AS (
    SELECT organization_id, day, {_LEVEL}, count(*)::integer AS requests,
           (count(*) FILTER (WHERE status <> 'succeeded'))::integer AS failed,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cached_tokens) AS cached_tokens, sum(reasoning_tokens) AS reasoning_tokens,
           sum(cost_usd) AS cost_usd
    FROM raw GROUP BY {_sets()}),
latency AS ({_histogram("latency", "true")}),
ttft AS ({_histogram("ttft", "ttft IS NOT NULL")}),
errors AS ({_histogram("coalesce(error_reason, status)", "status <> 'succeeded'")})
INSERT INTO request_analytics_daily
SELECT c.organization_id, c.day, c.level, c.public_model, c.api_key_id, c.requests, c.failed, c.prompt_tokens,
       c.completion_tokens, c.cached_tokens, c.reasoning_tokens, c.cost_usd, l.vs, l.ns,
       coalesce(t.vs, '{{}}'), coalesce(t.ns, '{{}}'), coalesce(e.vs, '{{}}'), coalesce(e.ns, '{{}}')
FROM counters c
JOIN latency l USING (organization_id, day, level, public_model, api_key_id)
LEFT JOIN ttft t USING (organization_id, day, level, public_model, api_key_id)
LEFT JOIN errors e USING (organization_id, day, level, public_model, api_key_id)
"""


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def roll_up(pool: Any, now: datetime, *, analytics_days: int = 730, grace: timedelta = GRACE,
                  restate_days: int = RESTATE_DAYS) -> tuple[date, date] | None:
    """Rolls up the closed days not rolled up yet (and the `restate_days` before them) as of
    `now`; returns the days [first, watermark) it (re)wrote, or None when another process's run
    holds the lock (it does the same work)."""
    until = (now - grace).date()
    keep_from = (now - timedelta(days=analytics_days)).date()
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('analytics_rollup'))"):
            return None
        rolled = await conn.fetchval("SELECT rolled_until FROM analytics_rollup_state")
        if rolled is None:  # the first run: every day recorded so far
            oldest = await conn.fetchval("SELECT min(created_at) FROM request_analytics")
            first = oldest.astimezone(UTC).date() if oldest else until
        else:
            first = min(rolled, until) - timedelta(days=restate_days)
        first = min(max(first, keep_from), until)
        await conn.execute("DELETE FROM request_analytics_daily WHERE day >= $1 AND day < $2", first, until)
        # The planner guesses the CTE's aggregates at a row or two and would join them in nested
        # loops (minutes for a day of 20 000 requests); hash joins take milliseconds.
        await conn.execute("SET LOCAL enable_nestloop = off")
        day = first
        while day < until:  # a day per statement: a small sort in memory, not a year on disk
            await conn.execute(_ROLL, _midnight(day), _midnight(day + timedelta(days=1)))
            day += timedelta(days=1)
        await conn.execute("DELETE FROM request_analytics_daily WHERE day < $1", keep_from)
        await conn.execute(
            "INSERT INTO analytics_rollup_state (rolled_until) VALUES ($1) "
            "ON CONFLICT (singleton) DO UPDATE SET rolled_until = excluded.rolled_until", until)
    if rolled != until:
        log.info("analytics rollup: days %s to %s rolled up", first, until - timedelta(days=1))
    return first, until


class RollupJob(PeriodicJob):
    """Runs `roll_up` at start and every `every_s`, in the background."""

    name = "analytics rollup"

    def __init__(self, pool: Any, analytics_days: int = 730, *, every_s: float = EVERY_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(every_s)
        self._pool = pool
        self._analytics_days = analytics_days
        self._clock = clock

    async def run_once(self) -> tuple[date, date] | None:
        return await roll_up(self._pool, self._clock(), analytics_days=self._analytics_days)
