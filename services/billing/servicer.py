"""BillingService. Every RPC answers UNIMPLEMENTED until the quotas and billing issue lands; the
pipeline's reservation step is the seam where it plugs in."""

from __future__ import annotations

from typing import Any

from aggregator.billing.v1 import billing_service_pb2 as pb
from aggregator.billing.v1 import billing_service_pb2_grpc
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    """Reservations and settlements: not implemented yet."""

    @rpc_method
    async def ReserveCost(self, request: pb.ReserveCostRequest, context: Any) -> pb.ReserveCostResponse:
        raise GatewayError(Reason.UNIMPLEMENTED, "Cost reservations are not implemented yet.")

    @rpc_method
    async def SettleCost(self, request: pb.SettleCostRequest, context: Any) -> pb.SettleCostResponse:
        raise GatewayError(Reason.UNIMPLEMENTED, "Cost settlements are not implemented yet.")
