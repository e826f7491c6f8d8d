"""One request limit on both faces: a native gRPC request to a public service over
`max_request_bytes` (10 MiB) is refused with RESOURCE_EXHAUSTED and our REQUEST_TOO_LARGE
ErrorInfo before the servicer sees it (services/core/server_guard.py); JSON requests Envoy
transcoded were held to the limit as JSON and may be larger as protobuf."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from aggregator.openai.v1 import chat_pb2, embedding_pb2, inference_service_pb2_grpc
from services.core.errors import Reason, from_rpc_error
from services.core.limits import MAX_REQUEST_BYTES, MIB
from services.core.rpc import rpc_method
from services.core.server import GrpcServer, Registration
from services.core.server_guard import TRANSCODED_KEY


class Inference(inference_service_pb2_grpc.InferenceServiceServicer):
    """Answers the size of what it received."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @rpc_method
    async def CreateEmbedding(self, request: Any, context: Any) -> embedding_pb2.EmbeddingResponse:
        self.seen.append(request.ByteSize())
        return embedding_pb2.EmbeddingResponse(model=str(request.ByteSize()))

    @rpc_method
    async def StreamChatCompletion(
            self, request: Any, context: Any) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        self.seen.append(request.ByteSize())
        yield chat_pb2.ChatCompletionChunk(id="one")
        yield chat_pb2.ChatCompletionChunk(id="two")


@pytest.fixture
async def served() -> AsyncIterator[tuple[inference_service_pb2_grpc.InferenceServiceStub, Inference]]:
    inference = Inference()
    server = GrpcServer(
        [Registration(inference_service_pb2_grpc.add_InferenceServiceServicer_to_server, inference,
                      "aggregator.openai.v1.InferenceService")],
        host="127.0.0.1", port=0, service_token="t",
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                        options=[("grpc.max_send_message_length", -1)])
    try:
        yield inference_service_pb2_grpc.InferenceServiceStub(channel), inference
    finally:
        await channel.close()
        await server.stop(0)


def embedding(size: int) -> embedding_pb2.EmbeddingRequest:
    request = embedding_pb2.EmbeddingRequest(model="m")
    request.input.string_value = "x" * size
    return request


def chat(size: int) -> chat_pb2.ChatCompletionRequest:
    request = chat_pb2.ChatCompletionRequest(model="m", messages=[chat_pb2.ChatMessage(role="user")])
    request.messages[0].content.string_value = "x" * size
    return request


async def test_a_request_within_the_limit_passes(served: Any) -> None:
    stub, inference = served
    answer = await stub.CreateEmbedding(embedding(9 * MIB))
    assert int(answer.model) > 9 * MIB
    chunks = [chunk.id async for chunk in stub.StreamChatCompletion(chat(9 * MIB))]
    assert chunks == ["one", "two"] and len(inference.seen) == 2


async def test_a_request_over_the_limit_is_refused_clearly(served: Any) -> None:
    stub, inference = served
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.CreateEmbedding(embedding(MAX_REQUEST_BYTES + 1))
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        [chunk async for chunk in stub.StreamChatCompletion(chat(11 * MIB))]
    for refused in (unary.value, streamed.value):
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 10 MiB (10,485,760 bytes)" in (refused.details() or "")
        error = from_rpc_error(refused)
        assert error.reason is Reason.REQUEST_TOO_LARGE and error.http_status == 413
    assert inference.seen == []


async def test_a_transcoded_request_is_held_only_to_the_receive_ceiling(served: Any) -> None:
    stub, inference = served
    answer = await stub.CreateEmbedding(embedding(12 * MIB), metadata=((TRANSCODED_KEY, "POST"),))
    assert int(answer.model) > 12 * MIB and len(inference.seen) == 1
