"""The stubs the facade calls. Each sits on an in-process or a remote channel (docs/architecture.md §2.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aggregator.adapter.v1.adapter_service_pb2_grpc import AdapterServiceStub
from aggregator.auth.v1.auth_service_pb2_grpc import AuthServiceStub
from aggregator.routing.v1.routing_service_pb2_grpc import RoutingServiceStub


@dataclass(frozen=True, slots=True)
class ServiceClients:
    """Generated stubs of the services the facade depends on."""

    auth: AuthServiceStub
    routing: RoutingServiceStub
    adapter: AdapterServiceStub

    @classmethod
    def on(cls, channel_for: Any) -> ServiceClients:
        """Builds the stubs on `channel_for(service_name)`."""
        return cls(
            auth=AuthServiceStub(channel_for("auth")),
            routing=RoutingServiceStub(channel_for("routing")),
            adapter=AdapterServiceStub(channel_for("adapter")),
        )
