"""GET /v1/analytics/* parameters (services/analytics/scope.py, servicer.py): each bad query is a
400 naming its parameter before any database work, another organization needs `admin:platform`,
and percentiles follow PostgreSQL's percentile_cont over a value -> count histogram."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.analytics.v1 import analytics_service_pb2 as pb
from aggregator.auth.v1 import auth_service_pb2
from services.analytics.scope import resolve
from services.analytics.series import percentiles
from services.analytics.servicer import AnalyticsServicer
from services.core.errors import GatewayError

ORG = "0b5c3d2e-1f00-4a6b-8c9d-0123456789ab"
OTHER = "1b5c3d2e-1f00-4a6b-8c9d-0123456789ab"


class NoPool:
    """A pool that must not be reached: validation happens first."""

    def acquire(self) -> Any:
        raise AssertionError("the database was reached")


def servicer(*permissions: str) -> AnalyticsServicer:
    principal = auth_service_pb2.Principal(organization_id=ORG, permissions=["read:usage", *permissions])

    async def authenticate(context: Any) -> auth_service_pb2.Principal:
        return principal

    return AnalyticsServicer(NoPool(), authenticate)  # type: ignore[arg-type]


RPCS = (("GetRequestAnalytics", pb.GetRequestAnalyticsRequest),
        ("GetTokenAnalytics", pb.GetTokenAnalyticsRequest), ("GetCostAnalytics", pb.GetCostAnalyticsRequest))
BAD = (
    ({"start_date": "2026-13-01", "end_date": "2026-12-01"}, "start_date", 400),
    ({"start_date": "2026-12-01"}, "end_date", 400),
    ({"start_date": "2026-12-02", "end_date": "2026-12-01"}, "end_date", 400),
    ({"start_date": "2024-12-31", "end_date": "2026-01-01"}, "end_date", 400),  # 367 days
    ({"start_date": "2026-12-01", "end_date": "2026-12-01", "interval": "week"}, "interval", 400),
    ({"start_date": "2026-12-01", "end_date": "2026-12-08", "interval": "hour"}, "end_date", 400),
    ({"start_date": "2026-12-01", "end_date": "2026-12-01", "group_by": "day"}, "group_by", 400),
    ({"start_date": "2026-12-01", "end_date": "2026-12-01", "organization_id": OTHER}, None, 403),
)


@pytest.mark.parametrize(("rpc", "message"), RPCS)
@pytest.mark.parametrize(("fields", "param", "status"), BAD)
async def test_a_bad_query_is_refused_naming_its_parameter(rpc: str, message: Any, fields: dict[str, str],
                                                           param: str | None, status: int) -> None:
    method = getattr(AnalyticsServicer, rpc).__wrapped__  # the RPC without the error policy
    with pytest.raises(GatewayError) as raised:
        await method(servicer(), message(**fields), None)
    assert (raised.value.http_status, raised.value.param) == (status, param)
    if status == 403:
        assert "admin:platform" in raised.value.message


def test_the_scope_is_whole_utc_days_and_a_platform_admin_may_name_an_organization() -> None:
    admin = auth_service_pb2.Principal(organization_id=ORG, permissions=["read:usage", "admin:platform"])
    scope = resolve(admin, pb.GetCostAnalyticsRequest(start_date="2026-02-27", end_date="2026-03-01",
                                                     organization_id=OTHER, model="m"))
    assert (scope.organization_id, scope.model, scope.days) == (OTHER, "m", 3)
    assert (scope.since.isoformat(), scope.until.isoformat()) == ("2026-02-27T00:00:00+00:00",
                                                                 "2026-03-02T00:00:00+00:00")
    with pytest.raises(GatewayError) as raised:
        resolve(admin, pb.GetCostAnalyticsRequest(start_date="2026-02-27", end_date="2026-03-01",
                                                  organization_id="not-an-id"))
    assert raised.value.param == "organization_id"


def test_percentiles_are_percentile_cont() -> None:
    # 1..100: rank q*(n-1) interpolated, as PostgreSQL's percentile_cont(0.5/0.95/0.99) answers.
    assert percentiles(list(range(1, 101)), [1] * 100) == pytest.approx([50.5, 95.05, 99.01])
    # Counts are copies: (10 x3, 20 x1) is the list 10, 10, 10, 20.
    assert percentiles([10, 20], [3, 1]) == pytest.approx([10.0, 18.5, 19.7])
    assert percentiles([7], [1]) == [7.0, 7.0, 7.0]
    assert percentiles([], []) is None
