"""The analytics time series (docs/analytics.md): per interval (a UTC day or hour) and group
(model or key), the requests, failures per error type, tokens, exact cost, and latency and
time-to-first-token percentiles of an organization's requests.

Closed days come from the rollup (request_analytics_daily, services/analytics/rollup.py), the days
after its watermark from request_analytics itself; an hourly series reads request_analytics only.
Both sides bucket latencies alike (SQL analytics_bucket_ms: exact below 100 ms, then at most 5 %
low), so a series is the same before and after its days are rolled up. The three statements run in one
read-only REPEATABLE READ transaction: they see one snapshot, watermark included.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.analytics.scope import Scope

INTERVALS = ("day", "hour")
GROUPS = ("", "model", "key")
QUANTILES = (0.5, 0.95, 0.99)
NO_KEY = "00000000-0000-0000-0000-000000000000"  # the rollup's api_key_id of keyless requests

# group -> (its expression over request_analytics, over request_analytics_daily)
_GROUP_SQL = {
    "": ("''", "''"),
    "model": ("public_model", "public_model"),
    "key": ("coalesce(api_key_id::text, '')", f"coalesce(nullif(api_key_id, '{NO_KEY}')::text, '')"),
}
# Latency and time to first token of each raw row, in one scan.
_BOTH_METRICS = (", LATERAL (VALUES ('latency', latency_ms), ('ttft', time_to_first_token_ms)) "
                 "AS m(metric, ms)")
# Where the raw rows start: the rollup's watermark for a daily series (clamped into the range),
# the range's start for an hourly one ($5 false).
_CUT = ("WITH cut AS (SELECT CASE WHEN $5 THEN least(greatest(coalesce("
        "(SELECT rolled_until FROM analytics_rollup_state)::timestamp AT TIME ZONE 'UTC', $2), $2), $3) "
        "ELSE $2 END AS at) ")
_ROLLUP_WHERE = ("FROM request_analytics_daily d, cut{unnest} WHERE d.organization_id = $1::uuid "
                 "AND d.day >= ($2 AT TIME ZONE 'UTC')::date AND d.day < (cut.at AT TIME ZONE 'UTC')::date "
                 "AND d.level = $6 AND ($4 = '' OR d.public_model = $4)")
_RAW_WHERE = ("FROM request_analytics WHERE organization_id = $1::uuid "
              "AND created_at >= (SELECT at FROM cut) AND created_at < $3 AND ($4 = '' OR public_model = $4)")


def _sql(interval: str, group: str) -> tuple[str, str, str]:
    """The counters, histograms and errors statements of a series."""
    raw_group, rolled_group = _GROUP_SQL[group]
    bucket = f"date_trunc('{interval}', created_at AT TIME ZONE 'UTC')"
    counters = (
        f"{_CUT}SELECT bucket, grp, sum(requests)::bigint AS requests, sum(failed)::bigint AS failed, "
        "sum(prompt)::bigint AS prompt, sum(completion)::bigint AS completion, "
        "sum(cached)::bigint AS cached, sum(reasoning)::bigint AS reasoning, sum(cost) AS cost FROM ("
        f"SELECT d.day::timestamp AS bucket, {rolled_group} AS grp, d.requests, d.failed, "
        "d.prompt_tokens AS prompt, d.completion_tokens AS completion, d.cached_tokens AS cached, "
        f"d.reasoning_tokens AS reasoning, d.cost_usd AS cost {_ROLLUP_WHERE.format(unnest='')} UNION ALL "
        f"SELECT {bucket}, {raw_group}, 1, (status <> 'succeeded')::int, prompt_tokens, completion_tokens, "
        f"cached_tokens, reasoning_tokens, cost_usd {_RAW_WHERE}) AS u GROUP BY 1, 2 ORDER BY 1, 2")
    # Each (bucket, group, metric)'s histogram, and each metric's over the whole range (total = 1),
    # ranked: a row holds the ranks [below, below + n); only the rows around the ranks the
    # percentiles need come back (`percentiles` reads them), not whole histograms.
    histograms = (
        f"{_CUT}, hist AS (SELECT bucket, grp, metric, value, sum(n)::bigint AS n, "
        "GROUPING(bucket)::int AS total "
        f"FROM (SELECT d.day::timestamp AS bucket, {rolled_group} AS grp, 'latency' AS metric, h.value, h.n "
        f"{_ROLLUP_WHERE.format(unnest=', unnest(d.latency_values, d.latency_counts) AS h(value, n)')}"
        f" UNION ALL SELECT d.day::timestamp, {rolled_group}, 'ttft', h.value, h.n "
        f"{_ROLLUP_WHERE.format(unnest=', unnest(d.ttft_values, d.ttft_counts) AS h(value, n)')}"
        f" UNION ALL SELECT {bucket}, {raw_group}, m.metric, analytics_bucket_ms(m.ms), 1 "
        f"{_RAW_WHERE.replace(' WHERE', _BOTH_METRICS + ' WHERE')} AND m.ms IS NOT NULL) AS u "
        "GROUP BY GROUPING SETS ((bucket, grp, metric, value), (metric, value))), "
        "c AS (SELECT *, sum(n) OVER (PARTITION BY total, bucket, grp, metric ORDER BY value) - n AS below, "
        "sum(n) OVER (PARTITION BY total, bucket, grp, metric) AS count FROM hist) "
        "SELECT total, bucket, grp, metric, value, below, n, count FROM c WHERE EXISTS ("
        "SELECT FROM unnest($7::float8[]) AS q WHERE below <= floor(q * (count - 1)) + 1 "
        "AND below + n > floor(q * (count - 1)) - 1)")
    errors = (
        f"{_CUT}SELECT bucket, grp, type, sum(n)::bigint AS n FROM ("
        f"SELECT d.day::timestamp AS bucket, {rolled_group} AS grp, e.type, e.n "
        f"{_ROLLUP_WHERE.format(unnest=', unnest(d.error_types, d.error_counts) AS e(type, n)')}"
        f" UNION ALL SELECT {bucket}, {raw_group}, coalesce(error_reason, status), 1 {_RAW_WHERE}"
        " AND status <> 'succeeded') AS u GROUP BY 1, 2, 3")
    return counters, histograms, errors


@dataclass(slots=True)
class Point:
    """One interval of one group (or, with `start` None, the whole range)."""

    start: datetime | None
    group: str
    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    errors: Counter[str] = field(default_factory=Counter)
    # metric ("latency", "ttft") -> p50, p95, p99
    percentiles: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: Point) -> None:
        self.requests += other.requests
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost += other.cost
        self.errors.update(other.errors)


@dataclass(frozen=True, slots=True)
class Run:
    """`n` copies of `value` holding the ranks [below, below + n) of a sorted distribution."""

    value: int
    below: int
    n: int


def percentiles(runs: Iterable[Run], count: int,
                quantiles: Iterable[float] = QUANTILES) -> list[float] | None:
    """PostgreSQL's percentile_cont over a distribution of `count` values, of which `runs` hold at
    least the ranks around each quantile's: the value at fractional rank q*(count-1), interpolated
    linearly between its two neighbours (the same float arithmetic); None when empty."""
    ordered = sorted(runs, key=lambda run: run.below)
    starts = [run.below for run in ordered]
    if not count or not ordered:
        return None

    def at(rank: int) -> int:
        run = ordered[bisect.bisect_right(starts, rank) - 1]
        if not run.below <= rank < run.below + run.n:
            raise ValueError(f"rank {rank} is not among the runs")
        return run.value

    answers = []
    for q in quantiles:
        position = q * (count - 1)
        below = int(position)
        low = at(below)
        answers.append(low + (position - below) * (at(below + 1) - low) if position > below else float(low))
    return answers


def level(group: str, model: str) -> int:
    """The rollup level a series reads (migration 0019): one row per point and group."""
    if group == "key":
        return 0 if model else 2
    return 1 if group == "model" or model else 3


def arguments(scope: Scope, interval: str, group: str) -> tuple[Any, ...]:
    """The parameters of the statements of `_sql`."""
    return (scope.organization_id, scope.since, scope.until, scope.model, interval == "day",
            level(group, scope.model))


async def series(pool: Any, scope: Scope, interval: str, group: str, *,
                 detail: bool) -> tuple[list[Point], Point]:
    """The points of `scope` in time then group order, and their totals; with `detail`, the
    latency and time-to-first-token histograms and the errors per type as well."""
    counters, histograms, errors = _sql(interval, group)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # JIT compiling these short statements costs more than it saves (docs/analytics.md §4).
        await conn.execute("SET LOCAL jit = off")
        args = arguments(scope, interval, group)
        points = {(r["bucket"], r["grp"]): Point(
            r["bucket"], r["grp"], int(r["requests"]), int(r["failed"]), int(r["prompt"]),
            int(r["completion"]), int(r["cached"]), int(r["reasoning"]), r["cost"] or Decimal(0))
            for r in await conn.fetch(counters, *args)}
        totals = Point(None, "")
        for point in points.values():
            totals.add(point)
        if detail:
            runs: dict[tuple[Any, ...], list[Run]] = {}
            counts: dict[tuple[Any, ...], int] = {}
            for r in await conn.fetch(histograms, *args, list(QUANTILES)):
                key = (r["total"], r["bucket"], r["grp"], r["metric"])
                runs.setdefault(key, []).append(Run(r["value"], int(r["below"]), int(r["n"])))
                counts[key] = int(r["count"])
            for (total, bucket, grp, metric), found in runs.items():
                point = totals if total else points[(bucket, grp)]
                point.percentiles[metric] = percentiles(found, counts[(total, bucket, grp, metric)]) or []
            for r in await conn.fetch(errors, *args):
                points[(r["bucket"], r["grp"])].errors[r["type"]] += int(r["n"])
                totals.errors[r["type"]] += int(r["n"])
    return list(points.values()), totals
