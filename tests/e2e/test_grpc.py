"""Native gRPC on Envoy's listener: health, the typed InferenceService, a betterproto2 client."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from aggregator.openai.v1 import chat_pb2, embedding_pb2, inference_service_pb2_grpc
from services.core.errors import Reason, from_rpc_error
from services.core.limits import MAX_REQUEST_BYTES, MIB
from services.core.service_token import SERVICE_TOKEN_KEY
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e


def _metadata(gateway: Gateway) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {gateway.admin_key}"),)


async def test_health_through_envoy_and_on_services_port(gateway: Gateway) -> None:
    for target in (gateway.grpc_target, gateway.services_target):
        async with grpc.aio.insecure_channel(target) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_internal_rpcs_on_the_services_port_need_the_service_token(gateway: Gateway) -> None:
    # BillingService is internal and hosted by the front process in both topologies; its servicer
    # answers UNIMPLEMENTED for now, so reaching it shows as UNIMPLEMENTED.
    request = billing_service_pb2.ReserveCostRequest()
    async with grpc.aio.insecure_channel(gateway.services_target) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        for metadata in ((), ((SERVICE_TOKEN_KEY, "0" * 64),), _metadata(gateway)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ReserveCost(request, metadata=metadata)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as reached:
            await stub.ReserveCost(request, metadata=((SERVICE_TOKEN_KEY, gateway.service_token),))
        assert reached.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_native_grpc_requests_have_the_json_size_limit(gateway: Gateway) -> None:
    def embedding(size: int) -> embedding_pb2.EmbeddingRequest:
        request = embedding_pb2.EmbeddingRequest(model="text-embedding-3-small")
        request.input.string_value = "x" * size
        return request

    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        answer = await stub.CreateEmbedding(embedding(9 * MIB), metadata=_metadata(gateway))
        assert len(answer.data) == 1
        # A client cannot pass for a request Envoy transcoded from JSON: Envoy drops the mark.
        for extra in ((), (("x-envoy-original-method", "POST"),)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateEmbedding(
                    embedding(MAX_REQUEST_BYTES + 1), metadata=(*_metadata(gateway), *extra)
                )
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 10 MiB" in (refused.value.details() or "")
            assert from_rpc_error(refused.value).reason is Reason.REQUEST_TOO_LARGE


async def test_typed_streaming_chat_through_envoy(gateway: Gateway) -> None:
    request = chat_pb2.ChatCompletionRequest(
        model="gpt-4o-mini",
        messages=[chat_pb2.ChatMessage(role="user")],
        stream_options=chat_pb2.StreamOptions(include_usage=True),
    )
    request.messages[0].content.string_value = "Say hello"
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        text, usage = "", None
        async for chunk in stub.StreamChatCompletion(request, metadata=_metadata(gateway)):
            assert chunk.object == "chat.completion.chunk" and chunk.provider.name == "fakeai"
            for choice in chunk.choices:
                text += choice.delta.content
            if chunk.HasField("usage"):
                usage = chunk.usage
        assert "Say hello" in text
        assert usage is not None and usage.total_tokens > 0
        completion = await stub.CreateChatCompletion(request, metadata=_metadata(gateway))
        assert "Say hello" in completion.choices[0].message.content


async def test_typed_errors_carry_status_and_reason(gateway: Gateway) -> None:
    request = chat_pb2.ChatCompletionRequest(model="nope", messages=[chat_pb2.ChatMessage(role="user")])
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateChatCompletion(request, metadata=_metadata(gateway))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateChatCompletion(request)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", ["/aggregator.adapter.v1.AdapterService/Embed",
                                    "/aggregator.auth.v1.AuthService/Authenticate",
                                    "/aggregator.routing.v1.RoutingService/ResolveRoute",
                                    "/aggregator.billing.v1.BillingService/ReserveCost"])
async def test_internal_services_are_not_exposed_publicly(gateway: Gateway, method: str) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda m: m, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", metadata=_metadata(gateway))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_json_within_the_limit_passes_though_its_protobuf_form_is_larger(gateway: Gateway) -> None:
    # 1.5 million token ids: about 3 MB of JSON, over 10 MiB once each number is a
    # google.protobuf.Value; the limit is the JSON body's (Envoy's), not the typed message's.
    tokens = [1] * 1_500_000
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60,
                                 headers={"authorization": f"Bearer {gateway.admin_key}"}) as http:
        answer = await http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": tokens})
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["data"]) == 1
