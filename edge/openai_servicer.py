"""OpenAIService: the HTTP face. Writes OpenAI's exact bytes as `google.api.HttpBody` chunks,
which Envoy forwards one by one (docs/architecture.md §3).

The servicer sends no initial metadata of its own: Envoy already puts the request id (which it
generated and passed in) on every response, and errors carry it in their trailers too
(rpc.abort). The pipeline sends the headers it gathered (attempts, provider, rate limits, cache)
once, with the first content (Pipeline.send_headers).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

from google.api import httpbody_pb2

from aggregator.openai.v1 import (
    chat_pb2,
    completion_pb2,
    embedding_pb2,
    image_pb2,
    model_pb2,
    openai_service_pb2_grpc,
)
from aggregator.openai.v1 import (
    openai_service_pb2 as pb,
)
from aggregator.routing.v1 import routing_service_pb2 as routing_pb
from edge.accounting import RequestRecord
from edge.multipart import parse_image_upload
from edge.pipeline import Pipeline, check_model_allowed
from services.auth.permissions import INFERENCE, READ_MODELS, requires
from services.core import calls
from services.core.errors import GatewayError, Reason, quote
from services.core.limits import HTTP_CHUNK_BYTES
from services.core.rpc import rpc_method

SSE = "text/event-stream"
JSON = "application/json"
DONE = httpbody_pb2.HttpBody(content_type=SSE, data=b"data: [DONE]\n\n")


def json_body(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=JSON, data=data)


def json_chunks(data: bytes, size: int = HTTP_CHUNK_BYTES) -> Iterator[httpbody_pb2.HttpBody]:
    """A JSON answer as HttpBody messages of at most `size` bytes: Envoy sends them on as one
    body (the first one's content type is the response's), so no message nears a size limit."""
    view = memoryview(data)
    for start in range(0, max(len(data), 1), size):
        yield json_body(bytes(view[start : start + size]))


def sse(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=SSE, data=b"data: " + data + b"\n\n")


class OpenAIServicer(openai_service_pb2_grpc.OpenAIServiceServicer):
    """The public OpenAI-compatible surface."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @rpc_method
    @requires(INFERENCE)
    async def CreateChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """`chat.completion` JSON, or SSE chunks ending with `data: [DONE]`."""
        record = self._pipeline.start(context, "chat.completions", request.model, request.stream)
        async with contextlib.aclosing(self._pipeline.chat(request, context, record)) as events:
            async for body in self._respond(events, record, context):
                yield body

    @rpc_method
    @requires(INFERENCE)
    async def CreateCompletion(
        self, request: completion_pb2.CompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """`text_completion` JSON, or SSE chunks ending with `data: [DONE]`."""
        record = self._pipeline.start(context, "completions", request.model, request.stream)
        async with contextlib.aclosing(self._pipeline.complete(request, context, record)) as events:
            async for body in self._respond(events, record, context):
                yield body

    async def _respond(
        self, events: AsyncIterator[Any], record: RequestRecord, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """The bytes of a (possibly streamed) answer, and its usage record whatever happens."""
        stream = record.stream
        started = False
        with self._pipeline.recorder.recording(record):
            try:
                async for event in events:
                    started = True
                    if not event.body:
                        continue  # a usage-only event the client did not ask for
                    yield sse(event.body) if stream else json_body(event.body)
                if stream:
                    yield DONE
            except GatewayError as error:
                if not (started and stream):
                    raise
                # After the first byte the status is sent: end the stream with one in-band error event.
                record.fail(error)
                yield sse(error.to_json())

    async def _whole(
        self, record: RequestRecord, answer: Awaitable[Any]
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """One JSON answer of a unary endpoint, in pieces of at most HTTP_CHUNK_BYTES, and its usage
        record whatever happens."""
        with self._pipeline.recorder.recording(record):
            result = await answer
        for body in json_chunks(result.body):
            yield body

    @rpc_method
    @requires(INFERENCE)
    async def CreateEmbedding(
        self, request: embedding_pb2.EmbeddingRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """OpenAI's `list` of embeddings."""
        record = self._pipeline.start(context, "embeddings", request.model, False)
        async for body in self._whole(record, self._pipeline.embed(request, context, record)):
            yield body

    @rpc_method
    @requires(INFERENCE)
    async def CreateImage(
        self, request: image_pb2.ImageGenerationRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """OpenAI's images answer for a prompt."""
        record = self._pipeline.start(context, "images.generations", request.model, False)
        answer = self._pipeline.image(request, request.model, list(request.models), context, record)
        async for body in self._whole(record, answer):
            yield body

    @rpc_method
    @requires(INFERENCE)
    async def CreateImageEdit(
        self, request: httpbody_pb2.HttpBody, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """OpenAI's images answer for an uploaded image (multipart/form-data)."""
        async for body in self._upload(request, context, "edit", "images.edits"):
            yield body

    @rpc_method
    @requires(INFERENCE)
    async def CreateImageVariation(
        self, request: httpbody_pb2.HttpBody, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """OpenAI's images answer of variations of an uploaded image (multipart/form-data)."""
        async for body in self._upload(request, context, "variation", "images.variations"):
            yield body

    async def _upload(
        self, body: httpbody_pb2.HttpBody, context: Any, operation: str, endpoint: str
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        await self._pipeline.authenticate(context)  # before reading anything of the body
        upload = parse_image_upload(body.content_type, body.data, operation)
        model = upload.fields.get("model", "")
        record = self._pipeline.start(context, endpoint, model, False)
        async for piece in self._whole(record, self._pipeline.image(upload, model, [], context, record)):
            yield piece

    @rpc_method
    @requires(READ_MODELS)
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        principal = await self._pipeline.authenticate(context)
        answer = await calls.unary(
            self._pipeline.clients.routing.ListCatalogModels, routing_pb.ListCatalogModelsRequest()
        )
        models = list(answer.models)
        if principal.HasField("allowed_models"):
            allowed = {v.string_value for v in principal.allowed_models.values}
            models = [m for m in models if m.id in allowed]
        return pb.ListModelsResponse(object="list", data=models)

    @rpc_method
    @requires(READ_MODELS)
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> model_pb2.Model:
        principal = await self._pipeline.authenticate(context)
        try:
            check_model_allowed(principal, [request.id])
        except GatewayError:
            raise self._model_not_found(request.id) from None
        answer = await calls.unary(  # this model alone, with its endpoints' health
            self._pipeline.clients.routing.ListCatalogModels,
            routing_pb.ListCatalogModelsRequest(id=request.id),
        )
        for model in answer.models:
            if model.id == request.id:
                return model
        raise self._model_not_found(request.id)

    @staticmethod
    def _model_not_found(model_id: str) -> GatewayError:
        return GatewayError(
            Reason.MODEL_NOT_FOUND, f"The model {quote(model_id, '`')} does not exist", param="model"
        )

    @rpc_method
    @requires(READ_MODELS)
    async def ListProviders(self, request: pb.ListProvidersRequest, context: Any) -> pb.ListProvidersResponse:
        await self._pipeline.authenticate(context)
        answer = await calls.unary(
            self._pipeline.clients.routing.ListCatalogProviders, routing_pb.ListCatalogProvidersRequest()
        )
        return pb.ListProvidersResponse(object="list", data=answer.providers)
