"""BillingService (internal). ReserveCost and SettleCost answer UNIMPLEMENTED: they are superseded
by the limiter's budget holds, taken in the edge's one Redis round trip (docs/limits.md "Budgets",
docs/billing.md §5), and stay in the proto only because removing RPCs breaks `buf breaking`."""

from __future__ import annotations

from typing import Any

from aggregator.billing.v1 import billing_service_pb2 as pb
from aggregator.billing.v1 import billing_service_pb2_grpc
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    """Reservations and settlements: superseded by the limiter's budget holds."""

    @rpc_method
    async def ReserveCost(self, request: pb.ReserveCostRequest, context: Any) -> pb.ReserveCostResponse:
        raise GatewayError(Reason.UNIMPLEMENTED, "Cost reservations are made by the edge's budget holds.")

    @rpc_method
    async def SettleCost(self, request: pb.SettleCostRequest, context: Any) -> pb.SettleCostResponse:
        raise GatewayError(Reason.UNIMPLEMENTED, "Cost settlements are made by the edge's budget holds.")
