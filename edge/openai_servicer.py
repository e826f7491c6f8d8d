"""OpenAIService: the HTTP face. Writes OpenAI's exact bytes as `google.api.HttpBody` chunks,
which Envoy forwards one by one (DESIGN.md §3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2

from aggregator.events.v1 import usage_event_pb2 as ev
from aggregator.openai.v1 import (
    chat_pb2,
    completion_pb2,
    embedding_pb2,
    model_pb2,
    openai_service_pb2_grpc,
)
from aggregator.openai.v1 import (
    openai_service_pb2 as pb,
)
from aggregator.routing.v1 import routing_service_pb2 as routing_pb
from edge.pipeline import Pipeline, check_model_allowed
from services.core import calls
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method

SSE = "text/event-stream"
JSON = "application/json"
DONE = httpbody_pb2.HttpBody(content_type=SSE, data=b"data: [DONE]\n\n")


def sse(data: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=SSE, data=b"data: " + data + b"\n\n")


class OpenAIServicer(openai_service_pb2_grpc.OpenAIServiceServicer):
    """The public OpenAI-compatible surface."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @rpc_method
    async def CreateChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """`chat.completion` JSON, or SSE chunks ending with `data: [DONE]`."""
        stream = request.stream
        record = self._pipeline.start(context, "chat.completions", request.model, stream)
        started = False
        try:
            async for event in self._pipeline.chat(request, context, record):
                if not started:
                    started = True
                    await context.send_initial_metadata((("x-request-id", record.request_id),))
                if not event.body:
                    continue  # a usage-only event the client did not ask for
                yield sse(event.body) if stream else httpbody_pb2.HttpBody(content_type=JSON, data=event.body)
            if stream:
                yield DONE
        except GatewayError as error:
            record.fail(error)
            if not (started and stream):
                raise
            # After the first byte the status is sent: end the stream with one in-band error event.
            yield sse(error.to_json())
        except (asyncio.CancelledError, GeneratorExit):
            record.status = ev.REQUEST_STATUS_CANCELLED
            record.http_status = 499
            raise
        finally:
            self._pipeline.recorder.finish(record)

    @rpc_method
    async def CreateCompletion(
        self, request: completion_pb2.CompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """Not implemented yet (the providers issue): UNIMPLEMENTED after authentication."""
        await self._pipeline.authenticate(context)
        raise GatewayError(Reason.UNIMPLEMENTED, "POST /v1/completions is not supported yet.")
        yield  # pragma: no cover - makes this an async generator like its siblings

    @rpc_method
    async def CreateEmbedding(
        self, request: embedding_pb2.EmbeddingRequest, context: Any
    ) -> httpbody_pb2.HttpBody:
        """OpenAI's `list` of embeddings."""
        record = self._pipeline.start(context, "embeddings", request.model, False)
        try:
            answer = await self._pipeline.embed(request, context, record)
        except GatewayError as error:
            record.fail(error)
            raise
        finally:
            self._pipeline.recorder.finish(record)
        await context.send_initial_metadata((("x-request-id", record.request_id),))
        return httpbody_pb2.HttpBody(content_type=JSON, data=answer.body)

    @rpc_method
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
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> model_pb2.Model:
        principal = await self._pipeline.authenticate(context)
        try:
            check_model_allowed(principal, [request.id])
        except GatewayError:
            raise self._model_not_found(request.id) from None
        answer = await calls.unary(
            self._pipeline.clients.routing.ListCatalogModels, routing_pb.ListCatalogModelsRequest()
        )
        for model in answer.models:
            if model.id == request.id:
                return model
        raise self._model_not_found(request.id)

    @staticmethod
    def _model_not_found(model_id: str) -> GatewayError:
        return GatewayError(Reason.MODEL_NOT_FOUND, f"The model '{model_id}' does not exist", param="model")

    @rpc_method
    async def ListProviders(self, request: pb.ListProvidersRequest, context: Any) -> pb.ListProvidersResponse:
        await self._pipeline.authenticate(context)
        answer = await calls.unary(
            self._pipeline.clients.routing.ListCatalogProviders, routing_pb.ListCatalogProvidersRequest()
        )
        return pb.ListProvidersResponse(object="list", data=answer.providers)
