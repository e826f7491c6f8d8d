"""Traces cross gRPC hops (server and client interceptors on our channels); logs are JSON lines
carrying the request and trace ids."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from opentelemetry import trace

from aggregator.routing.v1 import routing_service_pb2 as pb
from aggregator.routing.v1 import routing_service_pb2_grpc
from services.core import calls, telemetry
from services.core.rpc import rpc_method
from services.core.server import GrpcServer, Registration
from services.runtime.topology import Topology
from tests.support import tracing

EXPORTER = tracing.install()


class Routing(routing_service_pb2_grpc.RoutingServiceServicer):
    @rpc_method
    async def ListCatalogProviders(self, request: Any, context: Any) -> pb.ListCatalogProvidersResponse:
        return pb.ListCatalogProvidersResponse()


async def test_one_trace_spans_client_and_server_of_a_remote_call() -> None:
    server = GrpcServer(
        [
            Registration(
                routing_service_pb2_grpc.add_RoutingServiceServicer_to_server,
                Routing(),
                "aggregator.routing.v1.RoutingService",
            )
        ],
        host="127.0.0.1",
        port=0,
        service_token="telemetry-test-token",
    )
    await server.start()
    topology = Topology(frozenset(), {"routing": f"127.0.0.1:{server.port}"}, "telemetry-test-token")
    try:
        stub = routing_service_pb2_grpc.RoutingServiceStub(topology.channel_for("routing"))
        with trace.get_tracer("test").start_as_current_span("request") as parent:
            await calls.unary(stub.ListCatalogProviders, pb.ListCatalogProvidersRequest())
    finally:
        await topology.close()
        await server.stop(0)
    trace_id = parent.get_span_context().trace_id
    kinds = {
        span.kind
        for span in EXPORTER.get_finished_spans()
        if span.context.trace_id == trace_id and "ListCatalogProviders" in span.name
    }
    assert kinds == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}


def test_json_logs_carry_request_and_trace_ids() -> None:
    record = logging.LogRecord("edge", logging.INFO, __file__, 1, "served %s", ("gpt-4o-mini",), None)
    token = telemetry.request_id_var.set("req-123")
    try:
        with trace.get_tracer("test").start_as_current_span("request") as span:
            line = telemetry.JsonFormatter().format(record)
    finally:
        telemetry.request_id_var.reset(token)
    entry = orjson.loads(line)
    assert entry["msg"] == "served gpt-4o-mini" and entry["level"] == "info"
    assert entry["request_id"] == "req-123"
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["ts"].endswith("Z")
