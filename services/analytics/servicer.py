"""AnalyticsService: `GET /v1/usage` (docs/reference.md §4), read from `request_analytics`, which
the usage ledger writes a few seconds behind the requests (services/analytics/ledger.py).

Scoped to the caller's organization (`read:usage`); a caller holding `admin:platform` may name
another with `organization_id`. Days are UTC; both dates are inclusive. Every request counts,
whatever its outcome; costs are summed exactly (NUMERIC) and answered as decimal strings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from aggregator.analytics.v1 import analytics_service_pb2 as pb
from aggregator.analytics.v1 import analytics_service_pb2_grpc
from aggregator.auth.v1 import auth_service_pb2
from services.auth.permissions import ADMIN_PLATFORM, READ_USAGE, check, requires
from services.auth.validation import key_id
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str
from services.core.rpc import rpc_method

MAX_DAYS = 366
_INT32 = 2_147_483_647
# group_by -> (the SQL expression grouped by, the row field it fills)
_GROUPS = {
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "public_model",
    "key": "coalesce(api_key_id::text, '')",
}
Authenticate = Callable[[Any], Awaitable[auth_service_pb2.Principal]]


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def _day(value: str, param: str) -> date:
    try:
        return date.fromisoformat(value) if len(value) == 10 else date.fromisoformat("x")
    except ValueError:
        raise _invalid(f"{param} must be a date, YYYY-MM-DD (UTC); got {quote(value)}.", param) from None


def _count(value: Any) -> int:
    return min(int(value or 0), _INT32)


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """Usage reports of an organization."""

    def __init__(self, pool: asyncpg.Pool | None = None, authenticate: Authenticate | None = None) -> None:
        self._pool = pool
        self._authenticate = authenticate

    @rpc_method
    @requires(READ_USAGE)
    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        """Requests, tokens and cost per day, model or key between two UTC days (inclusive)."""
        if self._pool is None or self._authenticate is None:
            raise GatewayError(Reason.UNIMPLEMENTED, "Usage reports are not served by this process.")
        caller = await self._authenticate(context)
        organization = caller.organization_id
        if request.organization_id and request.organization_id != caller.organization_id:
            check(caller, ADMIN_PLATFORM)
            organization = key_id(request.organization_id) or ""
            if not organization:
                raise _invalid("organization_id must be an organization id.", "organization_id")
        start, end = _day(request.start_date, "start_date"), _day(request.end_date, "end_date")
        if end < start:
            raise _invalid("end_date must not be before start_date.", "end_date")
        if (end - start).days >= MAX_DAYS:
            raise _invalid(f"A report covers at most {MAX_DAYS} days.", "end_date")
        group = request.group_by or "day"
        if group not in _GROUPS:
            raise _invalid(f"Invalid group_by {quote(group)}: expected 'day', 'model' or 'key'.", "group_by")
        since = datetime(start.year, start.month, start.day, tzinfo=UTC)
        until = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        rows = await self._pool.fetch(
            f"SELECT {_GROUPS[group]} AS grouped, count(*) AS requests, sum(prompt_tokens) AS prompt, "
            "sum(completion_tokens) AS completion, sum(cost_usd) AS cost FROM request_analytics "
            "WHERE organization_id = $1::uuid AND created_at >= $2 AND created_at < $3 "
            "AND ($4 = '' OR public_model = $4) GROUP BY 1 ORDER BY 1",
            organization, since, until, request.model)
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
