"""InferenceService: the typed gRPC face over the same pipeline as the HTTP face."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format

from aggregator.openai.v1 import chat_pb2, embedding_pb2, inference_service_pb2_grpc
from edge.attempts import NOTHING_ANSWERED
from edge.pipeline import Pipeline
from services.auth.permissions import INFERENCE, requires
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method


def _parse(body: bytes, message: Any) -> Any:
    return json_format.Parse(body, message, ignore_unknown_fields=True)


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Typed answers for native gRPC clients."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def _with_stream(
        self, request: chat_pb2.ChatCompletionRequest, stream: bool
    ) -> chat_pb2.ChatCompletionRequest:
        if request.stream == stream and request.HasField("stream"):
            return request
        copy = chat_pb2.ChatCompletionRequest()
        copy.CopyFrom(request)  # requests may be shared in-process: never mutate them
        copy.stream = stream
        return copy

    @rpc_method
    @requires(INFERENCE)
    async def CreateChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, context: Any
    ) -> chat_pb2.ChatCompletion:
        request = self._with_stream(request, False)
        record = self._pipeline.start(context, "chat.completions", request.model, False)
        with self._pipeline.recorder.recording(record):
            async with contextlib.aclosing(self._pipeline.chat(request, context, record)) as events:
                async for event in events:
                    if event.body:
                        return _parse(event.body, chat_pb2.ChatCompletion())
            raise GatewayError(Reason.UPSTREAM_ERROR, NOTHING_ANSWERED)

    @rpc_method
    @requires(INFERENCE)
    async def StreamChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, context: Any
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        request = self._with_stream(request, True)
        record = self._pipeline.start(context, "chat.completions", request.model, True)
        # A failure after chunks just raises: gRPC has trailers, the status ends the stream cleanly.
        with self._pipeline.recorder.recording(record):
            async with contextlib.aclosing(self._pipeline.chat(request, context, record)) as events:
                async for event in events:
                    chunk = _parse(event.body, chat_pb2.ChatCompletionChunk()) if event.body else None
                    if chunk is None and event.HasField("usage"):
                        chunk = chat_pb2.ChatCompletionChunk(usage=event.usage)
                    if chunk is not None:
                        yield chunk

    @rpc_method
    @requires(INFERENCE)
    async def CreateEmbedding(
        self, request: embedding_pb2.EmbeddingRequest, context: Any
    ) -> embedding_pb2.EmbeddingResponse:
        if request.HasField("encoding_format") and request.encoding_format != "float":
            # The typed answer holds floats; base64 is a wire trick of the JSON face.
            raise GatewayError(
                Reason.INVALID_REQUEST,
                "gRPC embeddings are floats: omit 'encoding_format'.",
                param="encoding_format",
            )
        record = self._pipeline.start(context, "embeddings", request.model, False)
        with self._pipeline.recorder.recording(record):
            answer = await self._pipeline.embed(request, context, record)
        return _parse(answer.body, embedding_pb2.EmbeddingResponse())
