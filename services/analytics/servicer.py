"""AnalyticsService: `GET /v1/usage` and `GET /v1/analytics/{requests,tokens,cost}`
(docs/reference.md §4, docs/analytics.md), read from `request_analytics`, which the usage ledger
writes a few seconds behind the requests (services/analytics/ledger.py), and from its daily rollup
(services/analytics/rollup.py).

Scoped to the caller's organization (`read:usage`); a caller holding `admin:platform` may name
another with `organization_id`. Days are UTC; both dates are inclusive. Every request counts,
whatever its outcome; costs are summed exactly (NUMERIC) and answered as decimal strings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from aggregator.analytics.v1 import analytics_service_pb2 as pb
from aggregator.analytics.v1 import analytics_service_pb2_grpc
from aggregator.auth.v1 import auth_service_pb2
from services.analytics import series
from services.analytics.scope import Scope, invalid, resolve
from services.auth.permissions import READ_USAGE, requires
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str
from services.core.rpc import rpc_method

HOURLY_MAX_DAYS = 7
_INT32 = 2_147_483_647
# group_by -> (the SQL expression grouped by, the row field it fills)
_GROUPS = {
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "public_model",
    "key": "coalesce(api_key_id::text, '')",
}
Authenticate = Callable[[Any], Awaitable[auth_service_pb2.Principal]]
Message = TypeVar("Message", pb.RequestPoint, pb.TokenPoint, pb.CostPoint)
Answer = TypeVar("Answer", pb.GetRequestAnalyticsResponse, pb.GetTokenAnalyticsResponse,
                 pb.GetCostAnalyticsResponse)


def _count(value: Any) -> int:
    return min(int(value or 0), _INT32)


def _placed(item: Message, point: series.Point, group: str, scope: Scope) -> Message:
    """`item` with its interval's start (none in totals) and its model or key."""
    if point.start is not None:
        item.start_time = datetime.isoformat(point.start) + "Z"
        if group:
            setattr(item, "model" if group == "model" else "api_key_id", point.group)
    if group != "model" and scope.model:
        item.model = scope.model
    return item


def _filled(answer: Answer, points: list[series.Point], totals: series.Point,
            item: Callable[[series.Point], Any]) -> Answer:
    """`answer` with one item per point in `data` and the totals' item in `totals`."""
    for point in points:
        answer.data.append(item(point))
    answer.totals.CopyFrom(item(totals))
    return answer


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """Usage reports and analytics series of an organization (docs/analytics.md)."""

    def __init__(self, pool: asyncpg.Pool | None = None, authenticate: Authenticate | None = None) -> None:
        self._pool = pool
        self._authenticate = authenticate

    async def _scope(self, request: Any, context: Any) -> tuple[asyncpg.Pool, Scope]:
        if self._pool is None or self._authenticate is None:
            raise GatewayError(Reason.UNIMPLEMENTED, "Usage reports are not served by this process.")
        return self._pool, resolve(await self._authenticate(context), request)

    async def _series(self, request: Any, context: Any, *,
                      detail: bool) -> tuple[str, list[series.Point], series.Point, Scope]:
        pool, scope = await self._scope(request, context)
        interval = request.interval or "day"
        if interval not in series.INTERVALS:
            raise invalid(f"Invalid interval {quote(interval)}: expected 'day' or 'hour'.", "interval")
        if interval == "hour" and scope.days > HOURLY_MAX_DAYS:
            raise invalid(f"An hourly series covers at most {HOURLY_MAX_DAYS} days; use interval=day.",
                          "end_date")
        if request.group_by not in series.GROUPS:
            raise invalid(f"Invalid group_by {quote(request.group_by)}: expected 'model' or 'key'.",
                          "group_by")
        points, totals = await series.series(pool, scope, interval, request.group_by, detail=detail)
        return interval, points, totals, scope

    @rpc_method
    @requires(READ_USAGE)
    async def GetRequestAnalytics(self, request: pb.GetRequestAnalyticsRequest,
                                  context: Any) -> pb.GetRequestAnalyticsResponse:
        """Requests per UTC day or hour: outcomes, failures per error type, latency and
        time-to-first-token percentiles (docs/analytics.md §2)."""
        interval, points, totals, scope = await self._series(request, context, detail=True)
        def item(point: series.Point) -> pb.RequestPoint:
            built = _placed(pb.RequestPoint(
                requests=_count(point.requests), succeeded=_count(point.requests - point.failed),
                failed=_count(point.failed),
                errors=[pb.ErrorCount(type=t, count=_count(n))
                        for t, n in sorted(point.errors.items(), key=lambda e: (-e[1], e[0]))]),
                point, request.group_by, scope)
            for field, metric in (("latency_ms", "latency"), ("time_to_first_token_ms", "ttft")):
                found = point.percentiles.get(metric)
                if found:
                    getattr(built, field).CopyFrom(pb.Percentiles(
                        p50=round(found[0], 3), p95=round(found[1], 3), p99=round(found[2], 3)))
            return built

        return _filled(pb.GetRequestAnalyticsResponse(object="analytics.requests", interval=interval),
                       points, totals, item)

    @rpc_method
    @requires(READ_USAGE)
    async def GetTokenAnalytics(self, request: pb.GetTokenAnalyticsRequest,
                                context: Any) -> pb.GetTokenAnalyticsResponse:
        """Prompt, completion, cached, reasoning and total tokens per UTC day or hour."""
        interval, points, totals, scope = await self._series(request, context, detail=False)
        return _filled(
            pb.GetTokenAnalyticsResponse(object="analytics.tokens", interval=interval), points, totals,
            lambda point: _placed(pb.TokenPoint(
                requests=_count(point.requests), prompt_tokens=point.prompt_tokens,
                completion_tokens=point.completion_tokens, cached_tokens=point.cached_tokens,
                reasoning_tokens=point.reasoning_tokens,
                total_tokens=point.prompt_tokens + point.completion_tokens), point, request.group_by, scope))

    @rpc_method
    @requires(READ_USAGE)
    async def GetCostAnalytics(self, request: pb.GetCostAnalyticsRequest,
                               context: Any) -> pb.GetCostAnalyticsResponse:
        """Exact cost (a decimal string in USD) per UTC day or hour."""
        interval, points, totals, scope = await self._series(request, context, detail=False)
        return _filled(
            pb.GetCostAnalyticsResponse(object="analytics.cost", interval=interval), points, totals,
            lambda point: _placed(pb.CostPoint(requests=_count(point.requests),
                                               cost_usd=decimal_str(point.cost)),
                                  point, request.group_by, scope))

    @rpc_method
    @requires(READ_USAGE)
    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        """Requests, tokens and cost per day, model or key between two UTC days (inclusive)."""
        pool, scope = await self._scope(request, context)
        group = request.group_by or "day"
        if group not in _GROUPS:
            raise invalid(f"Invalid group_by {quote(group)}: expected 'day', 'model' or 'key'.", "group_by")
        rows = await pool.fetch(
            f"SELECT {_GROUPS[group]} AS grouped, count(*) AS requests, sum(prompt_tokens) AS prompt, "
            "sum(completion_tokens) AS completion, sum(cost_usd) AS cost FROM request_analytics "
            "WHERE organization_id = $1::uuid AND created_at >= $2 AND created_at < $3 "
            "AND ($4 = '' OR public_model = $4) GROUP BY 1 ORDER BY 1",
            scope.organization_id, scope.since, scope.until, scope.model)
        answer = pb.GetUsageResponse(object="usage")
        counted, prompts, completions, spent = 0, 0, 0, Decimal(0)
        for row in rows:
            requests, prompt = _count(row["requests"]), _count(row["prompt"])
            completion, cost = _count(row["completion"]), row["cost"] or Decimal(0)
            item = pb.UsageRow(requests=requests, prompt_tokens=prompt, completion_tokens=completion,
                               total_tokens=min(prompt + completion, _INT32), cost_usd=decimal_str(cost))
            setattr(item, {"day": "date", "model": "model", "key": "api_key_id"}[group], row["grouped"])
            if group != "model" and request.model:
                item.model = request.model
            answer.data.append(item)
            counted, prompts, completions, spent = (counted + requests, prompts + prompt,
                                                    completions + completion, spent + cost)
        answer.totals.CopyFrom(pb.UsageTotals(
            requests=_count(counted), prompt_tokens=_count(prompts), completion_tokens=_count(completions),
            total_tokens=_count(prompts + completions), cost_usd=decimal_str(spent)))
        return answer
