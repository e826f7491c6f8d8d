"""The Google Gemini adapter (Generative Language API, `v1beta`).

Requests go to `{base_url}/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`,
`:embedContent`, `:batchEmbedContents`); `base_url` is the bare host. The key travels in
`x-goog-api-key`, our request id as `X-Request-Id`. Requests are built by `google_translate`,
answers read back by `google_answers`, the wire types and error decoding live in `google_wire`,
the status table in `upstream_errors`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncGenerator

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import google_answers as answers
from services.adapters import google_translate as translate
from services.adapters import openai_translate
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import reject_unsupported
from services.adapters.credentials import AuthScheme, CredentialResolver
from services.adapters.google_wire import API_KEY_HEADER, API_VERSION, GoogleError, as_response
from services.adapters.http import HttpClient, iter_sse
from services.adapters.json_values import parse_object
from services.adapters.upstream import UpstreamClient, elapsed_ms, read_answer, stream_failure

API_KEY = AuthScheme(API_KEY_HEADER)

# What Gemini honours. `parallel_tool_calls`, `modalities` and `store` only at the values that ask
# for nothing Gemini lacks (true; ["text"]; false): google_translate refuses the others.
SUPPORTED_CHAT_PARAMETERS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "stop", "max_tokens",
    "max_completion_tokens", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "seed",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "modalities",
    "store",
})
SUPPORTED_EMBEDDING_PARAMETERS = frozenset({"dimensions", "encoding_format"})


def model_resource(upstream_model: str) -> str:
    """The resource name in the URL: "models/<name>", or a full name such as "tunedModels/x" as is."""
    name = upstream_model if "/" in upstream_model else f"models/{upstream_model}"
    return urllib.parse.quote(name, safe="/")


def method_path(candidate: route_pb2.RouteCandidate, method: str) -> str:
    """The path under the base URL of one of the model's methods ("generateContent", ...)."""
    return f"/{API_VERSION}/{model_resource(candidate.upstream_model)}:{method}"


# The active health probe's default path (docs/routing.md §5): the free, cheap model list.
HEALTH_PATH = f"/{API_VERSION}/models"


class GoogleAdapter:
    """Speaks the Gemini API's generateContent and embedContent methods."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, default_timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._upstream = UpstreamClient(http, credentials, API_KEY, GoogleError.decode,
                                        default_timeout_s=default_timeout_s,
                                        connect_timeout_s=connect_timeout_s)

    @property
    def upstream(self) -> UpstreamClient:
        """How this adapter reaches its provider: the active health probe reuses its headers."""
        return self._upstream

    async def chat(self, call: adapter_service_pb2.ChatRequest,
                   ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls generateContent or streamGenerateContent; see ProviderAdapter.chat."""
        candidate, request = call.candidate, call.request
        reject_unsupported(request, SUPPORTED_CHAT_PARAMETERS, candidate.endpoint.provider)
        body = orjson.dumps(translate.chat_request_body(request))
        n = request.n if request.HasField("n") else 1
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        target = openai_translate.Target.of(candidate)
        started = time.monotonic()
        async with self._upstream.open(call, method_path(candidate, method), body,
                                       stream=request.stream) as response:
            if not request.stream:
                answer = answers.completion(as_response(parse_object(await read_answer(response))),
                                            target.upstream_model, n)
                yield openai_translate.completion_event(orjson.dumps(answer), target, elapsed_ms(started))
                return
            wants_usage = request.stream_options.include_usage
            stream = answers.StreamTranslator(target.upstream_model, n)
            async for event in iter_sse(response):
                obj = parse_object(event.data)
                if obj.get("error") is not None:
                    raise stream_failure(GoogleError.from_object(obj), target)
                for chunk in stream.feed(as_response(obj)):
                    yield openai_translate.chunk_event(chunk, target, elapsed_ms(started),
                                                       client_wants_usage=wants_usage)
            for chunk in stream.end():
                yield openai_translate.chunk_event(chunk, target, elapsed_ms(started),
                                                   client_wants_usage=wants_usage)

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Calls embedContent (one text) or batchEmbedContents (a list); see ProviderAdapter.embed."""
        candidate, request = call.candidate, call.request
        reject_unsupported(request, SUPPORTED_EMBEDDING_PARAMETERS, candidate.endpoint.provider)
        encoding = request.encoding_format if request.HasField("encoding_format") else "float"
        if encoding not in ("float", "base64"):
            raise translate.invalid("encoding_format", "encoding_format must be 'float' or 'base64'.")
        texts = translate.embedding_texts(request)
        dimensions = request.dimensions if request.HasField("dimensions") else None
        body = translate.embedding_body(texts, model_resource(candidate.upstream_model), dimensions)
        method = "embedContent" if isinstance(texts, str) else "batchEmbedContents"
        raw, latency_ms = await self._upstream.exchange(call, method_path(candidate, method),
                                                        orjson.dumps(body))
        count = 1 if isinstance(texts, str) else len(texts)
        answer = answers.embedding_list(parse_object(raw), count, candidate.upstream_model,
                                        encoding == "base64")
        return openai_translate.embedding_event(orjson.dumps(answer), openai_translate.Target.of(candidate),
                                                latency_ms)


def create(deps: AdapterDeps, kind: str) -> GoogleAdapter:
    """The adapter for kind `google` (a key is always required)."""
    return GoogleAdapter(deps.http, deps.credentials, default_timeout_s=deps.default_timeout_s,
                         connect_timeout_s=deps.connect_timeout_s)
