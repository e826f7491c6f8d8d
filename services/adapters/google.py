"""The Google Gemini adapter (Generative Language API, `v1beta`).

Requests go to `{base_url}/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`,
`:embedContent`, `:batchEmbedContents`); `base_url` is the bare host. The key travels in
`x-goog-api-key`, our request id as `X-Request-Id`. Translation lives in `google_translate`, the
wire types and error decoding in `google_wire`, the status table in `upstream_errors`.
"""

from __future__ import annotations

import base64
import struct
import time
import urllib.parse
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import google_translate as translate
from services.adapters import openai_translate
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import reject_unsupported
from services.adapters.credentials import AuthScheme, CredentialResolver
from services.adapters.google_wire import API_KEY_HEADER, API_VERSION, GoogleError, as_response, parse_object
from services.adapters.http import (
    MAX_ERROR_BODY_BYTES,
    HttpClient,
    HttpRequest,
    HttpResponse,
    Timeouts,
    iter_sse,
)
from services.adapters.upstream_errors import retry_after_seconds, to_gateway_error
from services.core.errors import GatewayError, Reason

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


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _target(candidate: route_pb2.RouteCandidate) -> openai_translate.Target:
    return openai_translate.Target(provider=candidate.endpoint.provider, public_model=candidate.public_model,
                                   upstream_model=candidate.upstream_model)


def model_resource(upstream_model: str) -> str:
    """The resource name in the URL: "models/<name>", or a full name such as "tunedModels/x" as is."""
    name = upstream_model if "/" in upstream_model else f"models/{upstream_model}"
    return urllib.parse.quote(name, safe="/")


# -- embeddings -------------------------------------------------------------------------------
def embedding_texts(request: embedding_pb2.EmbeddingRequest) -> str | list[str]:
    """The text (one) or texts (a batch) to embed; Gemini embeds text, not token ids."""
    value = translate.plain(request.input)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, list) and value and all(isinstance(item, int | list) for item in value):
        raise translate.unsupported("input", "Token-id input")
    raise translate.invalid("input", "input must be a string or a non-empty list of strings.")


def embedding_body(texts: str | list[str], resource: str, dimensions: int | None) -> dict[str, Any]:
    """The embedContent body of one text, or the batchEmbedContents body of several."""
    def one(text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"model": resource, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            item["outputDimensionality"] = dimensions
        return item

    return one(texts) if isinstance(texts, str) else {"requests": [one(text) for text in texts]}


def embedding_list(obj: dict[str, Any], count: int, upstream_model: str, as_base64: bool) -> dict[str, Any]:
    """OpenAI's embedding `list`; base64 is little-endian float32, as OpenAI encodes it. Gemini's
    embedding API reports no token counts (usage is 0) unless a `usageMetadata` is present."""
    items = obj.get("embeddings") if "embeddings" in obj else [obj.get("embedding")]
    vectors = [item.get("values") for item in items or [] if isinstance(item, dict)]
    if len(vectors) != count or not all(isinstance(v, list) for v in vectors):
        raise GatewayError(Reason.UPSTREAM_ERROR,
                           "The upstream provider sent an unexpected embedding answer.")
    data = []
    for index, vector in enumerate(vectors):
        encoded: Any = vector
        if as_base64 and isinstance(vector, list):
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    meta = obj.get("usageMetadata")
    tokens = meta.get("promptTokenCount", 0) if isinstance(meta, dict) else 0
    return {"object": "list", "data": data, "model": upstream_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class GoogleAdapter:
    """Speaks the Gemini API's generateContent and embedContent methods."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, default_timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._http = http
        self._credentials = credentials
        self._default_timeout_s = default_timeout_s
        self._connect_timeout_s = connect_timeout_s

    def _request(self, candidate: route_pb2.RouteCandidate, method: str, body: Any, *,
                 request_id: str, timeout_ms: int, stream: bool) -> HttpRequest:
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if stream else "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        headers.update(self._credentials.auth_headers(candidate.endpoint, API_KEY, key_required=True))
        timeout_s = timeout_ms / 1000.0 if timeout_ms else self._default_timeout_s
        # A stream may run long; only silence is bounded. A whole answer is bounded end to end.
        timeouts = Timeouts(connect=min(self._connect_timeout_s, timeout_s), read_idle=timeout_s,
                            total=None if stream else timeout_s)
        url = (f"{candidate.endpoint.base_url.rstrip('/')}/{API_VERSION}/"
               f"{model_resource(candidate.upstream_model)}:{method}")
        return HttpRequest("POST", url, headers, orjson.dumps(body), timeouts)

    async def _failure(self, response: HttpResponse, candidate: route_pb2.RouteCandidate) -> GatewayError:
        raw = await response.read(MAX_ERROR_BODY_BYTES)
        failure = GoogleError.decode(raw).failure(response.status, retry_after_seconds(response.headers))
        return to_gateway_error(failure, provider=candidate.endpoint.provider,
                                upstream_model=candidate.upstream_model)

    async def chat(self, call: adapter_service_pb2.ChatRequest,
                   ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls generateContent or streamGenerateContent; see ProviderAdapter.chat."""
        candidate, request = call.candidate, call.request
        reject_unsupported(request, SUPPORTED_CHAT_PARAMETERS, candidate.endpoint.provider)
        body = translate.chat_request_body(request)
        n = request.n if request.HasField("n") else 1
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        http_request = self._request(candidate, method, body, request_id=call.request_id,
                                     timeout_ms=call.timeout_ms, stream=request.stream)
        target = _target(candidate)
        started = time.monotonic()
        async with self._http.open(http_request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            if not request.stream:
                answer = translate.completion(as_response(parse_object(await response.read())),
                                              target.upstream_model, n)
                yield openai_translate.completion_event(orjson.dumps(answer), target, _elapsed_ms(started))
                return
            wants_usage = request.stream_options.include_usage
            stream = translate.StreamTranslator(target.upstream_model, n)
            async for event in iter_sse(response):
                obj = parse_object(event.data)
                if obj.get("error") is not None:
                    error = GoogleError.from_object(obj)
                    raise to_gateway_error(error.failure(error.status_hint()), provider=target.provider,
                                           upstream_model=target.upstream_model)
                for chunk in stream.feed(as_response(obj)):
                    yield openai_translate.chunk_event(chunk, target, _elapsed_ms(started),
                                                       client_wants_usage=wants_usage)
            for chunk in stream.end():
                yield openai_translate.chunk_event(chunk, target, _elapsed_ms(started),
                                                   client_wants_usage=wants_usage)

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Calls embedContent (one text) or batchEmbedContents (a list); see ProviderAdapter.embed."""
        candidate, request = call.candidate, call.request
        reject_unsupported(request, SUPPORTED_EMBEDDING_PARAMETERS, candidate.endpoint.provider)
        encoding = request.encoding_format if request.HasField("encoding_format") else "float"
        if encoding not in ("float", "base64"):
            raise translate.invalid("encoding_format", "encoding_format must be 'float' or 'base64'.")
        texts = embedding_texts(request)
        dimensions = request.dimensions if request.HasField("dimensions") else None
        body = embedding_body(texts, model_resource(candidate.upstream_model), dimensions)
        method = "embedContent" if isinstance(texts, str) else "batchEmbedContents"
        http_request = self._request(candidate, method, body, request_id=call.request_id,
                                     timeout_ms=call.timeout_ms, stream=False)
        started = time.monotonic()
        async with self._http.open(http_request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            raw = await response.read()
        count = 1 if isinstance(texts, str) else len(texts)
        answer = embedding_list(parse_object(raw), count, candidate.upstream_model, encoding == "base64")
        return openai_translate.embedding_event(orjson.dumps(answer), _target(candidate),
                                                _elapsed_ms(started))


def create(deps: AdapterDeps, kind: str) -> GoogleAdapter:
    """The adapter for kind `google` (a key is always required)."""
    return GoogleAdapter(deps.http, deps.credentials, default_timeout_s=deps.default_timeout_s)
