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
import itertools
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
                 "AND d.level = {level} AND ($4 = '' OR d.public_model = $4)")
_RAW_WHERE = ("FROM request_analytics WHERE organization_id = $1::uuid "
              "AND created_at >= (SELECT at FROM cut) AND created_at < $3 AND ($4 = '' OR public_model = $4)")
_RAW_BOTH_METRICS = _RAW_WHERE.replace(" WHERE", _BOTH_METRICS + " WHERE")


def _rolled(histogram: str = "", level: str = "$6") -> str:
    """FROM and WHERE of the rollup rows of a series at `level`, each with the (value, n) rows of
    its `histogram` ("latency" or "ttft") when named."""
    unnest = f", unnest(d.{histogram}_values, d.{histogram}_counts) AS h(value, n)" if histogram else ""
    return _ROLLUP_WHERE.format(unnest=unnest, level=level)


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
        f"d.reasoning_tokens AS reasoning, d.cost_usd AS cost {_rolled()} UNION ALL "
        f"SELECT {bucket}, {raw_group}, 1, (status <> 'succeeded')::int, prompt_tokens, completion_tokens, "
        f"cached_tokens, reasoning_tokens, cost_usd {_RAW_WHERE}) AS u GROUP BY 1, 2 ORDER BY 1, 2")
    # Each point's latency and time-to-first-token histograms as sorted value and count arrays
    # (total false), then the whole range's (total true). A rolled-up point is one rollup row, as
    # stored; a point after the watermark is aggregated from its raw rows (r: one scan for both
    # metrics and for the totals). The totals merge the rollup rows of the ungrouped level ($7:
    # one row a day, fewer values than the points') and r.
    arrays = ", ".join(f"coalesce(array_agg({c} ORDER BY value) FILTER (WHERE metric = '{m}'), '{{}}')"
                       for m in ("latency", "ttft") for c in ("value", "n"))
    histograms = (
        f"{_CUT}, r AS MATERIALIZED (SELECT {bucket} AS bucket, {raw_group} AS grp, m.metric, "
        f"analytics_bucket_ms(m.ms) AS value, count(*) AS n {_RAW_BOTH_METRICS} AND m.ms IS NOT NULL "
        "GROUP BY 1, 2, 3, 4) "
        f"SELECT false AS total, d.day::timestamp AS bucket, {rolled_group} AS grp, d.latency_values, "
        "d.latency_counts::bigint[], d.ttft_values, d.ttft_counts::bigint[] "
        f"{_rolled()} "
        f"UNION ALL SELECT false, bucket, grp, {arrays} FROM r GROUP BY 2, 3 "
        f"UNION ALL SELECT true, NULL, NULL, {arrays} FROM (SELECT metric, value, sum(n)::bigint AS n FROM ("
        f"SELECT 'latency' AS metric, h.value, h.n {_rolled('latency', '$7')}"
        f" UNION ALL SELECT 'ttft', h.value, h.n {_rolled('ttft', '$7')}"
        " UNION ALL SELECT metric, value, n FROM r) AS u GROUP BY 1, 2) AS t")
    errors = (
        f"{_CUT}SELECT bucket, grp, type, sum(n)::bigint AS n FROM ("
        f"SELECT d.day::timestamp AS bucket, {rolled_group} AS grp, e.type, e.n "
        f"{_ROLLUP_WHERE.format(unnest=', unnest(d.error_types, d.error_counts) AS e(type, n)', level='$6')}"
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


def percentiles(values: list[int], counts: list[int],
                quantiles: Iterable[float] = QUANTILES) -> list[float] | None:
    """PostgreSQL's percentile_cont over a histogram (sorted `values`, each `counts` times): the
    value at fractional rank q*(n-1), interpolated linearly between its two neighbours, in the same
    float arithmetic; None when empty."""
    ends = list(itertools.accumulate(counts))  # ends[i]: the rank after the last copy of values[i]
    if not ends or not ends[-1]:
        return None
    total = ends[-1]

    def at(rank: int) -> int:
        return values[bisect.bisect_right(ends, rank)]

    answers = []
    for q in quantiles:
        position = q * (total - 1)
        below = int(position)
        low = at(below)
        answers.append(low + (position - below) * (at(below + 1) - low) if position > below else float(low))
    return answers


async def configure(conn: Any) -> None:
    """Settings of a series' transaction: JIT compiling these short statements, or starting
    parallel workers for a point's few or pre-summed rows, costs more than it saves
    (docs/analytics.md §4)."""
    await conn.execute("SET LOCAL jit = off")
    await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")


def level(group: str, model: str) -> int:
    """The rollup level a series reads (migration 0019): one row per point and group."""
    if group == "key":
        return 0 if model else 2
    return 1 if group == "model" or model else 3


def statements(scope: Scope, interval: str, group: str) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """The statements of a series and their parameters, by name."""
    counters, histograms, errors = _sql(interval, group)
    points = (scope.organization_id, scope.since, scope.until, scope.model, interval == "day",
              level(group, scope.model))
    return {"counters": (counters, points), "histograms": (histograms, (*points, level("", scope.model))),
            "errors": (errors, points)}


async def series(pool: Any, scope: Scope, interval: str, group: str, *,
                 detail: bool) -> tuple[list[Point], Point]:
    """The points of `scope` in time then group order, and their totals; with `detail`, the
    latency and time-to-first-token histograms and the errors per type as well."""
    sql = statements(scope, interval, group)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await configure(conn)
        points = {(r["bucket"], r["grp"]): Point(
            r["bucket"], r["grp"], int(r["requests"]), int(r["failed"]), int(r["prompt"]),
            int(r["completion"]), int(r["cached"]), int(r["reasoning"]), r["cost"] or Decimal(0))
            for r in await conn.fetch(sql["counters"][0], *sql["counters"][1])}
        totals = Point(None, "")
        for point in points.values():
            totals.add(point)
        if detail:
            for r in await conn.fetch(sql["histograms"][0], *sql["histograms"][1]):
                point = totals if r[0] else points[(r[1], r[2])]
                point.percentiles["latency"] = percentiles(r[3], r[4]) or []
                point.percentiles["ttft"] = percentiles(r[5], r[6]) or []
            for r in await conn.fetch(sql["errors"][0], *sql["errors"][1]):
                points[(r["bucket"], r["grp"])].errors[r["type"]] += int(r["n"])
                totals.errors[r["type"]] += int(r["n"])
    return list(points.values()), totals
