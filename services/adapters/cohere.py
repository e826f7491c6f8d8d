"""The Cohere adapter (API v2): `POST {base_url}/v2/chat` and `POST {base_url}/v2/embed`, where the
base URL is the bare host (`https://api.cohere.com`), with `Authorization: Bearer <key>` and our
request id as `X-Request-Id`.

Requests are built by `cohere_translate`, answers read back by `cohere_answers`, the wire types
and error decoding live in `cohere_wire`, the status table in `upstream_errors`.
docs/providers/cohere.md says what is mapped, what is refused and how usage and finish reasons map.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from services.adapters import cohere_answers as answers
from services.adapters import cohere_translate as translate
from services.adapters import openai_translate
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import reject_unsupported
from services.adapters.cohere_wire import CohereErrorBody
from services.adapters.credentials import BEARER, CredentialResolver
from services.adapters.http import HttpClient, HttpResponse, iter_sse
from services.adapters.json_values import parse_object
from services.adapters.upstream import UpstreamClient, elapsed_ms, read_answer
from services.adapters.upstream_errors import incomplete_stream

CHAT_PATH = "/v2/chat"
EMBED_PATH = "/v2/embed"
_DONE = b"[DONE]"

# The ChatCompletionRequest fields Cohere honours (capabilities.py refuses every other one set).
# n, parallel_tool_calls, the penalties, tool_choice and response_format are honoured for the
# values Cohere can express; cohere_translate refuses the others.
SUPPORTED_CHAT_PARAMETERS = frozenset({
    "model", "messages", "stream", "stream_options", "models", "provider",
    "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "seed",
    "frequency_penalty", "presence_penalty", "tools", "tool_choice", "parallel_tool_calls",
    "response_format",
})


# The active health probe's default path (docs/routing.md §5): the free, cheap model list.
HEALTH_PATH = "/v1/models"


class CohereAdapter:
    """Speaks Cohere's API v2 chat and embed endpoints."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, default_timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._upstream = UpstreamClient(http, credentials, BEARER, CohereErrorBody.decode,
                                        default_timeout_s=default_timeout_s,
                                        connect_timeout_s=connect_timeout_s)

    @property
    def upstream(self) -> UpstreamClient:
        """How this adapter reaches its provider: the active health probe reuses its headers."""
        return self._upstream

    async def chat(self, call: adapter_service_pb2.ChatRequest,
                   ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls `/v2/chat`; see ProviderAdapter.chat."""
        candidate, stream = call.candidate, call.request.stream
        provider = candidate.endpoint.provider
        reject_unsupported(call.request, SUPPORTED_CHAT_PARAMETERS, provider)
        body = orjson.dumps(translate.chat_request_body(call.request, candidate.upstream_model, provider))
        target = openai_translate.Target.of(candidate)
        started = time.monotonic()
        async with self._upstream.open(call, CHAT_PATH, body, stream=stream) as response:
            if not stream:
                answer = answers.completion(parse_object(await read_answer(response)), target.upstream_model,
                                            provider)
                yield openai_translate.completion_event(orjson.dumps(answer), target, elapsed_ms(started))
                return
            wants_usage = call.request.stream_options.include_usage
            async with aclosing(self._stream(response, target, wants_usage, started)) as events:
                async for event in events:
                    yield event

    async def _stream(self, response: HttpResponse, target: openai_translate.Target, wants_usage: bool,
                      started: float) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        translator = answers.StreamTranslator(target.upstream_model, target.provider)
        async for event in iter_sse(response):
            if event.data == _DONE or translator.finished:
                break  # message-end is the last event that means anything
            for chunk in translator.feed(parse_object(event.data)):
                # A failed generation's usage is billed but not shown: the client gets the error.
                shown = wants_usage and translator.error is None
                yield openai_translate.chunk_event(chunk, target, elapsed_ms(started),
                                                   client_wants_usage=shown)
            if translator.error is not None:
                raise translator.error
        if not translator.finished:  # cut off before message-end: the answer is incomplete
            raise incomplete_stream()

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Calls `/v2/embed`; see ProviderAdapter.embed."""
        candidate = call.candidate
        body = translate.embed_request_body(call.request, candidate.upstream_model,
                                            candidate.endpoint.provider)
        raw, latency_ms = await self._upstream.exchange(call, EMBED_PATH, orjson.dumps(body))
        answer = answers.embedding_list(parse_object(raw), candidate.upstream_model,
                                        as_base64=call.request.encoding_format == "base64")
        return openai_translate.embedding_event(orjson.dumps(answer), openai_translate.Target.of(candidate),
                                                latency_ms)


def create(deps: AdapterDeps, kind: str) -> CohereAdapter:
    """The adapter for kind `cohere` (a key is always required)."""
    return CohereAdapter(deps.http, deps.credentials, default_timeout_s=deps.default_timeout_s,
                         connect_timeout_s=deps.connect_timeout_s)
