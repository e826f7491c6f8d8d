"""The adapter calls only the upstreams of its own config file (services/adapters/endpoints.py),
whatever endpoint a caller of the services' port puts in the RouteCandidate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from aggregator.adapter.v1 import adapter_service_pb2, adapter_service_pb2_grpc
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.servicer import AdapterServicer
from services.core.config import ProviderConfig
from services.core.errors import Reason, from_rpc_error
from tests.fakes.openai_upstream import FakeOpenAI

KEY = "sk-configured-" + "0" * 16


@dataclass
class Adapter:
    stub: adapter_service_pb2_grpc.AdapterServiceStub
    configured: FakeOpenAI
    foreign: FakeOpenAI

    def endpoint(self, **changes: str) -> route_pb2.Endpoint:
        fields = {"provider": "acme", "kind": "openai", "base_url": self.configured.base_url,
                  "api_key_env": "ACME_KEY", **changes}
        return route_pb2.Endpoint(**fields)

    async def chat(self, endpoint: route_pb2.Endpoint) -> list[adapter_service_pb2.ChatResponse]:
        candidate = route_pb2.RouteCandidate(public_model="m", endpoint=endpoint,
                                             upstream_model="gpt-4o-mini", input_per_1k="0",
                                             output_per_1k="0", model_type="chat")
        request = chat_pb2.ChatCompletionRequest(model="m")
        request.messages.add(role="user").content.string_value = "hi"
        call = self.stub.Chat(adapter_service_pb2.ChatRequest(candidate=candidate, request=request,
                                                              request_id="req-endpoints"))
        return [event async for event in call]


@pytest.fixture
async def adapter() -> AsyncIterator[Adapter]:
    async with FakeOpenAI(api_key=KEY) as configured, FakeOpenAI() as foreign:
        servicer = AdapterServicer.create(
            environ={"ACME_KEY": KEY, "DATABASE_URL": "postgresql://secret@db/x"},
            key_envs=frozenset({"ACME_KEY"}),
            providers=[ProviderConfig("acme", "openai", configured.base_url, "ACME_KEY")],
        )
        server = grpc.aio.server()
        adapter_service_pb2_grpc.add_AdapterServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield Adapter(adapter_service_pb2_grpc.AdapterServiceStub(channel), configured, foreign)
        finally:
            await channel.close()
            await server.stop(None)
            await servicer.close()


async def test_the_configured_endpoint_is_called_with_its_key(adapter: Adapter) -> None:
    events = await adapter.chat(adapter.endpoint())  # the fake answers only with KEY
    assert events and len(adapter.configured.requests) == 1


@pytest.mark.parametrize("changes", [
    {"base_url": "FOREIGN"},  # the provider's key sent to another server
    {"base_url": "FOREIGN", "api_key_env": "DATABASE_URL"},
    {"base_url": "FOREIGN", "provider": "not-configured"},
    {"base_url": "FOREIGN", "api_key_env": ""},  # even keyless: the adapter is no open proxy
    {"kind": "openai_compatible"},
])
async def test_a_foreign_endpoint_is_refused_and_reaches_nobody(
        adapter: Adapter, changes: dict[str, str]) -> None:
    changes = {k: adapter.foreign.base_url if v == "FOREIGN" else v for k, v in changes.items()}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await adapter.chat(adapter.endpoint(**changes))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert from_rpc_error(refused.value).reason is Reason.PERMISSION_DENIED
    assert list(adapter.foreign.requests) == [] and list(adapter.configured.requests) == []


async def test_embeddings_are_checked_too(adapter: Adapter) -> None:
    candidate = route_pb2.RouteCandidate(public_model="e", upstream_model="text-embedding-3-small",
                                         endpoint=adapter.endpoint(base_url=adapter.foreign.base_url),
                                         input_per_1k="0", output_per_1k="0", model_type="embedding")
    request = embedding_pb2.EmbeddingRequest(model="e")
    request.input.string_value = "hello"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await adapter.stub.Embed(adapter_service_pb2.EmbedRequest(candidate=candidate, request=request))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert list(adapter.foreign.requests) == []
