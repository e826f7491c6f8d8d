"""Internal RPCs need the service token over a real channel; public ones and in-process calls do
not (services/core/service_token.py, services/core/server_guard.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.adapter.v1 import adapter_service_pb2, adapter_service_pb2_grpc
from aggregator.ops.v1 import ops_service_pb2 as ops_pb
from aggregator.ops.v1 import ops_service_pb2_grpc
from aggregator.routing.v1 import routing_service_pb2 as pb
from aggregator.routing.v1 import routing_service_pb2_grpc
from edge.ops_servicer import OpsServicer
from services.core import calls
from services.core.errors import GatewayError, Reason, from_rpc_error
from services.core.inproc import InProcessChannel
from services.core.rpc import rpc_method
from services.core.server import GrpcServer, Registration
from services.core.service_token import SERVICE_TOKEN_KEY, derive_service_token
from services.runtime.topology import Topology

TOKEN = derive_service_token(b"s" * 32)


class Routing(routing_service_pb2_grpc.RoutingServiceServicer):
    """Counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    @rpc_method
    async def ListCatalogProviders(self, request: Any, context: Any) -> pb.ListCatalogProvidersResponse:
        self.calls += 1
        return pb.ListCatalogProvidersResponse()


class Adapter(adapter_service_pb2_grpc.AdapterServiceServicer):
    """A streaming internal RPC."""

    @rpc_method
    async def Chat(self, request: Any, context: Any) -> AsyncIterator[adapter_service_pb2.ChatResponse]:
        yield adapter_service_pb2.ChatResponse()


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcServer, Routing]]:
    routing = Routing()
    server = GrpcServer(
        [
            Registration(routing_service_pb2_grpc.add_RoutingServiceServicer_to_server, routing,
                         "aggregator.routing.v1.RoutingService"),
            Registration(ops_service_pb2_grpc.add_OpsServiceServicer_to_server, OpsServicer({}),
                         "aggregator.ops.v1.OpsService"),
            Registration(adapter_service_pb2_grpc.add_AdapterServiceServicer_to_server, Adapter(),
                         "aggregator.adapter.v1.AdapterService"),
        ],
        host="127.0.0.1",
        port=0,
        service_token=TOKEN,
    )
    await server.start()
    try:
        yield server, routing
    finally:
        await server.stop(0)


@pytest.mark.parametrize("metadata", [(), ((SERVICE_TOKEN_KEY, "wrong"),),
                                      ((SERVICE_TOKEN_KEY, derive_service_token(b"t" * 32)),)])
async def test_an_internal_rpc_without_the_token_is_refused(
        served: tuple[GrpcServer, Routing], metadata: tuple[tuple[str, str], ...]) -> None:
    server, routing = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = routing_service_pb2_grpc.RoutingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListCatalogProviders(pb.ListCatalogProvidersRequest(), metadata=metadata)
        adapter = adapter_service_pb2_grpc.AdapterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as streaming:
            [event async for event in adapter.Chat(adapter_service_pb2.ChatRequest(), metadata=metadata)]
    for error in (refused.value, streaming.value):
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert from_rpc_error(error).reason is Reason.SERVICE_UNAUTHENTICATED
    assert routing.calls == 0


async def test_the_topology_channel_sends_the_token(served: tuple[GrpcServer, Routing]) -> None:
    server, routing = served
    topology = Topology(frozenset(), {"routing": f"127.0.0.1:{server.port}"}, TOKEN)
    try:
        stub = routing_service_pb2_grpc.RoutingServiceStub(topology.channel_for("routing"))
        await calls.unary(stub.ListCatalogProviders, pb.ListCatalogProvidersRequest())
        adapter = adapter_service_pb2_grpc.AdapterServiceStub(topology.channel_for("routing"))
        async with calls.stream(adapter.Chat, adapter_service_pb2.ChatRequest()) as events:
            assert len([event async for event in events]) == 1
    finally:
        await topology.close()
    assert routing.calls == 1
    other = Topology(frozenset(), {"routing": f"127.0.0.1:{server.port}"}, derive_service_token(b"x" * 32))
    try:
        stub = routing_service_pb2_grpc.RoutingServiceStub(other.channel_for("routing"))
        with pytest.raises(GatewayError) as refused:
            await calls.unary(stub.ListCatalogProviders, pb.ListCatalogProvidersRequest())
        assert refused.value.reason is Reason.SERVICE_UNAUTHENTICATED
    finally:
        await other.close()
    assert routing.calls == 1


async def test_public_services_need_no_token(served: tuple[GrpcServer, Routing]) -> None:
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        body = await ops_service_pb2_grpc.OpsServiceStub(channel).GetHealthz(ops_pb.GetHealthzRequest())
        assert body.data == b'{"status":"ok"}'


async def test_in_process_calls_need_no_token() -> None:
    channel = InProcessChannel()
    routing = Routing()
    channel.register(routing_service_pb2_grpc.add_RoutingServiceServicer_to_server, routing)
    stub = routing_service_pb2_grpc.RoutingServiceStub(channel)
    await calls.unary(stub.ListCatalogProviders, pb.ListCatalogProvidersRequest())
    assert routing.calls == 1
