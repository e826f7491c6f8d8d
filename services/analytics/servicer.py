"""AnalyticsService. GetUsage answers UNIMPLEMENTED until the analytics issue lands; usage events
are already on the JetStream stream `USAGE` for its consumer."""

from __future__ import annotations

from typing import Any

from aggregator.analytics.v1 import analytics_service_pb2 as pb
from aggregator.analytics.v1 import analytics_service_pb2_grpc
from services.auth.permissions import READ_USAGE, requires
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """Usage reports: not implemented yet."""

    @rpc_method
    @requires(READ_USAGE)  # checked once it authenticates its caller, with its implementation
    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        raise GatewayError(Reason.UNIMPLEMENTED, "Usage reports are not implemented yet.")
