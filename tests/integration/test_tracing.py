"""One trace per request, across the edge, the in-process services and the upstream HTTP call
(docs/observability.md §4): the edge served over real gRPC (its span from the server interceptor),
auth, routing and the real adapter co-located on the in-process channel, the fake OpenAI upstream
over real HTTP; spans read from the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from aggregator.adapter.v1 import adapter_service_pb2_grpc
from aggregator.auth.v1 import auth_service_pb2 as auth_pb
from aggregator.auth.v1 import auth_service_pb2_grpc
from aggregator.openai.v1 import chat_pb2, openai_service_pb2_grpc
from aggregator.routing.v1 import route_pb2, routing_service_pb2_grpc
from aggregator.routing.v1 import routing_service_pb2 as routing_pb
from edge.accounting import UsageRecorder
from edge.clients import ServiceClients
from edge.openai_servicer import OpenAIServicer
from edge.pipeline import Pipeline
from services.adapters.servicer import AdapterServicer
from services.core.config import ProviderConfig, Resilience
from services.core.rpc import rpc_method
from services.core.server import GrpcServer, Registration
from services.runtime.topology import Topology
from tests.fakes import openai_failures as failures
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support import tracing

EXPORTER = tracing.install()
UPSTREAM_KEY = "sk-upstream-" + "7" * 16
CHAT = "/aggregator.openai.v1.OpenAIService/CreateChatCompletion"


class Auth(auth_service_pb2_grpc.AuthServiceServicer):
    @rpc_method
    async def Authenticate(self, request: Any, context: Any) -> auth_pb.AuthenticateResponse:
        return auth_pb.AuthenticateResponse(principal=auth_pb.Principal(
            organization_id="", api_key_id="key-1", role="member", permissions=["inference"]))


class Routing(routing_service_pb2_grpc.RoutingServiceServicer):
    def __init__(self, base_url: str) -> None:
        self._base_url = base_url

    @rpc_method
    async def ResolveRoute(self, request: Any, context: Any) -> routing_pb.ResolveRouteResponse:
        endpoint = route_pb2.Endpoint(provider="acme", kind="openai", base_url=self._base_url,
                                      api_key_env="ACME_KEY")
        return routing_pb.ResolveRouteResponse(candidates=[route_pb2.RouteCandidate(
            public_model=request.model, upstream_model="gpt-4o-mini", endpoint=endpoint,
            input_per_1k="0.001", output_per_1k="0.002", model_type="chat")])


@dataclass
class Edge:
    stub: openai_service_pb2_grpc.OpenAIServiceStub
    upstream: FakeOpenAI


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with FakeOpenAI(api_key=UPSTREAM_KEY) as upstream:
        topology = Topology(frozenset({"auth", "routing", "adapter", "edge"}), {}, "tracing-test-token")
        adapter = AdapterServicer.create(
            environ={"ACME_KEY": UPSTREAM_KEY}, key_envs=frozenset({"ACME_KEY"}),
            providers=[ProviderConfig("acme", "openai", upstream.base_url, "ACME_KEY")])
        topology.inproc.register(auth_service_pb2_grpc.add_AuthServiceServicer_to_server, Auth())
        topology.inproc.register(routing_service_pb2_grpc.add_RoutingServiceServicer_to_server,
                                 Routing(upstream.base_url))
        topology.inproc.register(adapter_service_pb2_grpc.add_AdapterServiceServicer_to_server, adapter)
        pipeline = Pipeline(ServiceClients.on(topology.channel_for), UsageRecorder(None),
                            resilience=Resilience(first_token_timeout_s=30))
        server = GrpcServer([Registration(openai_service_pb2_grpc.add_OpenAIServiceServicer_to_server,
                                          OpenAIServicer(pipeline), "aggregator.openai.v1.OpenAIService")],
                            host="127.0.0.1", port=0, service_token="tracing-test-token")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Edge(openai_service_pb2_grpc.OpenAIServiceStub(channel), upstream)
        finally:
            await channel.close()
            await server.stop(0)
            await adapter.close()
            await topology.close()


def chat_request(stream: bool) -> chat_pb2.ChatCompletionRequest:
    request = chat_pb2.ChatCompletionRequest(model="gpt-4o-mini", stream=stream)
    request.messages.add(role="user").content.string_value = "hello there"
    return request


async def answer(edge: Edge, request: chat_pb2.ChatCompletionRequest, request_id: str) -> bytes:
    call = edge.stub.CreateChatCompletion(
        request, metadata=(("authorization", "Bearer sk-anything"), ("x-request-id", request_id)))
    return b"".join([body.data async for body in call])


def trace_of(request_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The edge's server span of the request (found by its upstream span's request id) and every
    span of its trace."""
    spans = EXPORTER.get_finished_spans()
    upstream = next(s for s in spans if (s.attributes or {}).get("aggregator.request_id") == request_id)
    same = [s for s in spans if s.context.trace_id == upstream.context.trace_id]
    edge = next(s for s in same if s.name == CHAT)
    return edge, same


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    return next(s for s in spans if s.context.span_id == span.parent.span_id)


@pytest.mark.parametrize("stream", [False, True])
async def test_one_trace_holds_the_edge_routing_the_adapter_and_the_upstream_call(
        edge: Edge, stream: bool) -> None:
    request_id = f"trace-{stream}"
    body = await answer(edge, chat_request(stream), request_id)
    assert (b"data: [DONE]" in body) if stream else orjson.loads(body)["object"] == "chat.completion"
    root, spans = trace_of(request_id)
    by_name = {s.name: s for s in spans}
    assert root.kind is trace.SpanKind.SERVER
    for path in ("/aggregator.auth.v1.AuthService/Authenticate",
                 "/aggregator.routing.v1.RoutingService/ResolveRoute",
                 "/aggregator.adapter.v1.AdapterService/Chat"):
        hop = by_name[path]
        assert hop.kind is trace.SpanKind.INTERNAL and hop.attributes["rpc.transport"] == "inproc"
        assert parent_of(hop, spans) is root  # each in-process call is a child of the edge's span
        assert hop.status.is_ok
    upstream = by_name["POST"]
    assert upstream.kind is trace.SpanKind.CLIENT
    assert parent_of(upstream, spans).name == "/aggregator.adapter.v1.AdapterService/Chat"
    attributes = upstream.attributes or {}
    assert attributes["aggregator.provider"] == "acme" and attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/v1/chat/completions" and attributes["server.address"] == "127.0.0.1"
    # The adapter's span lasts the whole stream: the upstream exchange ends inside it.
    chat = by_name["/aggregator.adapter.v1.AdapterService/Chat"]
    assert chat.start_time <= upstream.start_time and upstream.end_time <= chat.end_time <= root.end_time
    assert not any(UPSTREAM_KEY in str(s.attributes) for s in spans)  # no secret in a span


async def test_a_failed_upstream_call_marks_its_spans_failed(edge: Edge) -> None:
    edge.upstream.fail_next(failures.server_error())
    with pytest.raises(grpc.aio.AioRpcError):
        await answer(edge, chat_request(False), "trace-failed")
    _, spans = trace_of("trace-failed")
    by_name = {s.name: s for s in spans}
    upstream, chat = by_name["POST"], by_name["/aggregator.adapter.v1.AdapterService/Chat"]
    assert not upstream.status.is_ok and upstream.attributes["http.response.status_code"] == 500
    assert upstream.attributes["aggregator.error.reason"] == "UPSTREAM_ERROR"
    assert not chat.status.is_ok and chat.attributes["aggregator.error.reason"] == "UPSTREAM_ERROR"
