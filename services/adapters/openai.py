"""The OpenAI adapter, and with it every OpenAI-compatible server (vLLM, Ollama, Together, Groq):
`openai_compatible` is this class with a key that may be absent, not new code.

Requests go to `{base_url}/chat/completions`, `/completions` (legacy text completions: the same
events with `text_completion` bodies), `/embeddings` and `/images/generations|edits|variations`
(the base URL includes `/v1`), carrying our request id as `X-Request-Id`. Translation lives in
`openai_translate` and `openai_images`, the wire types in `openai_wire`, the status table in
`upstream_errors`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2
from services.adapters import openai_images as images
from services.adapters import openai_translate as translate
from services.adapters.base import AdapterDeps
from services.adapters.credentials import BEARER, CredentialResolver
from services.adapters.http import HttpClient, iter_sse
from services.adapters.json_values import parse_object
from services.adapters.openai_wire import OpenAIErrorBody
from services.adapters.upstream import UpstreamClient, elapsed_ms, read_answer, stream_failure
from services.adapters.upstream_errors import incomplete_stream

_DONE = b"[DONE]"


# The active health probe's default path (docs/routing.md §5): the free, cheap model list.
HEALTH_PATH = "/models"  # under a base URL that ends in /v1


class OpenAIAdapter:
    """Speaks OpenAI's chat completions, legacy completions, embeddings and images API to one kind
    of endpoint."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, key_required: bool = True,
                 default_timeout_s: float = 120.0, connect_timeout_s: float = 10.0,
                 no_stream_options: frozenset[str] = frozenset()) -> None:
        self._no_stream_options = no_stream_options  # providers that refuse the field (config quirk)
        # OpenAI itself needs a key; a local vLLM may not.
        self._upstream = UpstreamClient(http, credentials, BEARER, OpenAIErrorBody.decode,
                                        key_required=key_required, default_timeout_s=default_timeout_s,
                                        connect_timeout_s=connect_timeout_s)

    @property
    def upstream(self) -> UpstreamClient:
        """How this adapter reaches its provider: the active health probe reuses its headers."""
        return self._upstream

    async def _events(self, call: adapter_service_pb2.ChatRequest | adapter_service_pb2.CompleteRequest,
                      path: str, content: translate.ChoiceContent,
                      ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """The events of a chat or legacy completion call: the same exchange, whose choices carry
        their output in different places (`content`)."""
        stream = call.request.stream
        body = orjson.dumps(translate.chat_request_body(
            call.request, call.candidate.upstream_model,
            stream_options=call.candidate.endpoint.provider not in self._no_stream_options))
        target = translate.Target.of(call.candidate)
        started = time.monotonic()
        async with self._upstream.open(call, path, body, stream=stream) as response:
            if not stream:
                raw = await read_answer(response)
                yield translate.completion_event(raw, target, elapsed_ms(started), content=content)
                return
            wants_usage = call.request.stream_options.include_usage
            finished = False
            async for event in iter_sse(response):
                if event.data == _DONE:
                    return
                obj = parse_object(event.data)
                error = translate.stream_error(obj)
                if error is not None:
                    raise stream_failure(error, target)
                finished = finished or translate.ends_generation(obj)
                yield translate.chunk_event(obj, target, elapsed_ms(started), client_wants_usage=wants_usage,
                                            content=content)
            if not finished:  # cut off: no [DONE] and no finish_reason, so the answer is incomplete
                raise incomplete_stream()

    def chat(self, call: adapter_service_pb2.ChatRequest,
             ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls `/chat/completions`; see ProviderAdapter.chat."""
        return self._events(call, "/chat/completions", translate.CHAT_CONTENT)

    def complete(self, call: adapter_service_pb2.CompleteRequest,
                 ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls `/completions` (legacy text completions: `text_completion` bodies, streamed like
        chat); see ProviderAdapter's optional methods."""
        return self._events(call, "/completions", translate.TEXT_CONTENT)

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Calls `/embeddings`; see ProviderAdapter.embed."""
        body = translate.embedding_request_body(call.request, call.candidate.upstream_model)
        raw, latency_ms = await self._upstream.exchange(call, "/embeddings", orjson.dumps(body))
        return translate.embedding_event(raw, translate.Target.of(call.candidate), latency_ms)

    async def image(self, call: adapter_service_pb2.ImageRequest) -> adapter_service_pb2.ImageResponse:
        """Calls `/images/generations` (JSON) or `/images/edits|variations` (multipart); see
        ProviderAdapter's optional methods."""
        upstream = images.upstream_call(call, call.candidate.upstream_model)
        raw, latency_ms = await self._upstream.exchange(call, upstream.path, upstream.body,
                                                        content_type=upstream.content_type)
        return images.image_response(raw, translate.Target.of(call.candidate), latency_ms)


SUPPORTED_CHAT_PARAMETERS = frozenset(
    field.name for field in chat_pb2.ChatCompletionRequest.DESCRIPTOR.fields)  # OpenAI's own API: all


def create(deps: AdapterDeps, kind: str) -> OpenAIAdapter:
    """The adapter for `openai` (a key is required) and `openai_compatible` (a key is optional)."""
    return OpenAIAdapter(deps.http, deps.credentials, key_required=kind == "openai",
                         default_timeout_s=deps.default_timeout_s, connect_timeout_s=deps.connect_timeout_s,
                         no_stream_options=deps.no_stream_options)
