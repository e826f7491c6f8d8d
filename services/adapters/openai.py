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
from aggregator.routing.v1 import route_pb2
from services.adapters import openai_images as images
from services.adapters import openai_translate as translate
from services.adapters.base import AdapterDeps
from services.adapters.credentials import BEARER, CredentialResolver
from services.adapters.http import (
    MAX_ERROR_BODY_BYTES,
    HttpClient,
    HttpRequest,
    HttpResponse,
    Timeouts,
    iter_sse,
)
from services.adapters.openai_wire import OpenAIErrorBody, parse_object
from services.adapters.upstream_errors import retry_after_seconds, to_gateway_error
from services.core.errors import GatewayError, Reason

_DONE = b"[DONE]"


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _target(candidate: route_pb2.RouteCandidate) -> translate.Target:
    return translate.Target(provider=candidate.endpoint.provider, public_model=candidate.public_model,
                            upstream_model=candidate.upstream_model)


class OpenAIAdapter:
    """Speaks OpenAI's chat completions, legacy completions, embeddings and images API to one kind
    of endpoint."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, key_required: bool = True,
                 default_timeout_s: float = 120.0, connect_timeout_s: float = 10.0) -> None:
        self._http = http
        self._credentials = credentials
        self._key_required = key_required  # OpenAI itself needs a key; a local vLLM may not
        self._default_timeout_s = default_timeout_s
        self._connect_timeout_s = connect_timeout_s

    def _request(self, candidate: route_pb2.RouteCandidate, path: str, body: bytes, *, request_id: str,
                 timeout_ms: int, stream: bool, content_type: str = "application/json") -> HttpRequest:
        headers = {"Content-Type": content_type,
                   "Accept": "text/event-stream" if stream else "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        headers.update(self._credentials.auth_headers(candidate.endpoint, BEARER,
                                                      key_required=self._key_required))
        timeout_s = timeout_ms / 1000.0 if timeout_ms else self._default_timeout_s
        # A stream may run long; only silence is bounded. A whole answer is bounded end to end.
        timeouts = Timeouts(connect=min(self._connect_timeout_s, timeout_s), read_idle=timeout_s,
                            total=None if stream else timeout_s)
        url = candidate.endpoint.base_url.rstrip("/") + path
        return HttpRequest("POST", url, headers, body, timeouts)

    async def _failure(self, response: HttpResponse, candidate: route_pb2.RouteCandidate) -> GatewayError:
        raw = await response.read(MAX_ERROR_BODY_BYTES)
        failure = OpenAIErrorBody.decode(raw).failure(response.status, retry_after_seconds(response.headers))
        return to_gateway_error(failure, provider=candidate.endpoint.provider,
                                upstream_model=candidate.upstream_model)

    async def _exchange(self, request: HttpRequest, candidate: route_pb2.RouteCandidate) -> tuple[bytes, int]:
        """One whole answer and its latency in milliseconds (embeddings, images)."""
        started = time.monotonic()
        async with self._http.open(request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            raw = await response.read()
        return raw, _elapsed_ms(started)

    async def _events(self, call: adapter_service_pb2.ChatRequest | adapter_service_pb2.CompleteRequest,
                      path: str, content: translate.ChoiceContent,
                      ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """The events of a chat or legacy completion call: the same exchange, whose choices carry
        their output in different places (`content`)."""
        candidate, stream = call.candidate, call.request.stream
        body = translate.chat_request_body(call.request, candidate.upstream_model)
        request = self._request(candidate, path, orjson.dumps(body), request_id=call.request_id,
                                timeout_ms=call.timeout_ms, stream=stream)
        target = _target(candidate)
        started = time.monotonic()
        async with self._http.open(request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            if not stream:
                raw = await response.read()
                yield translate.completion_event(raw, target, _elapsed_ms(started), content=content)
                return
            wants_usage = call.request.stream_options.include_usage
            finished = False
            async for event in iter_sse(response):
                if event.data == _DONE:
                    return
                obj = parse_object(event.data)
                error = translate.stream_error(obj)
                if error is not None:
                    raise to_gateway_error(error.failure(error.status_hint()), provider=target.provider,
                                           upstream_model=target.upstream_model)
                finished = finished or translate.ends_generation(obj)
                yield translate.chunk_event(obj, target, _elapsed_ms(started), client_wants_usage=wants_usage,
                                            content=content)
            if not finished:  # cut off: no [DONE] and no finish_reason, so the answer is incomplete
                raise GatewayError(Reason.UPSTREAM_ERROR,
                                   "The upstream stream ended before the answer was complete.")

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
        candidate = call.candidate
        body = translate.embedding_request_body(call.request, candidate.upstream_model)
        request = self._request(candidate, "/embeddings", orjson.dumps(body),
                                request_id=call.request_id, timeout_ms=call.timeout_ms, stream=False)
        raw, latency_ms = await self._exchange(request, candidate)
        return translate.embedding_event(raw, _target(candidate), latency_ms)

    async def image(self, call: adapter_service_pb2.ImageRequest) -> adapter_service_pb2.ImageResponse:
        """Calls `/images/generations` (JSON) or `/images/edits|variations` (multipart); see
        ProviderAdapter's optional methods."""
        candidate = call.candidate
        upstream = images.upstream_call(call, candidate.upstream_model)
        request = self._request(candidate, upstream.path, upstream.body, request_id=call.request_id,
                                timeout_ms=call.timeout_ms, stream=False, content_type=upstream.content_type)
        raw, latency_ms = await self._exchange(request, candidate)
        return images.image_response(raw, _target(candidate), latency_ms)


SUPPORTED_CHAT_PARAMETERS = frozenset(
    field.name for field in chat_pb2.ChatCompletionRequest.DESCRIPTOR.fields)  # OpenAI's own API: all


def create(deps: AdapterDeps, kind: str) -> OpenAIAdapter:
    """The adapter for `openai` (a key is required) and `openai_compatible` (a key is optional)."""
    return OpenAIAdapter(deps.http, deps.credentials, key_required=kind == "openai",
                         default_timeout_s=deps.default_timeout_s)
