"""With OTEL_EXPORTER_OTLP_ENDPOINT set, `configure_tracing` exports the gateway's spans over
OTLP/gRPC (docs/observability.md §4): a real collector endpoint (the OTLP TraceService, served
here) receives them, with the service name. Run in a child process: a tracer provider is global
and set once per process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
CHILD = """
from opentelemetry import trace
from services.core import telemetry
telemetry.configure_tracing("aggregator-edge")
assert telemetry.tracing_on()
with telemetry.TRACER.start_as_current_span("/aggregator.routing.v1.RoutingService/ResolveRoute"):
    pass
trace.get_tracer_provider().shutdown()  # flushes the batch processor
"""


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = asyncio.Event()

    async def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_the_otlp_endpoint_with_the_service_name() -> None:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, env=env,
                                                     stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(child.communicate(), 120)
        assert child.returncode == 0, stderr.decode()
        await asyncio.wait_for(collector.received.wait(), 60)
    finally:
        await server.stop(0)
    spans = [(resource, span) for request in collector.requests for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    assert [span.name for _, span in spans] == ["/aggregator.routing.v1.RoutingService/ResolveRoute"]
    attributes = {a.key: a.value.string_value for a in spans[0][0].resource.attributes}
    assert attributes["service.name"] == "aggregator-edge"
