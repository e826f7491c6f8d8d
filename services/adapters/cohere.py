"""The Cohere adapter (API v2): `POST {base_url}/v2/chat` and `POST {base_url}/v2/embed`, where the
base URL is the bare host (`https://api.cohere.com`), with `Authorization: Bearer <key>` and our
request id as `X-Request-Id`.

Translation lives in `cohere_translate`, the wire types and error decoding in `cohere_wire`, the
status table in `upstream_errors`. docs/providers/cohere.md says what is mapped, what is refused
and how usage and finish reasons map.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import cohere_translate as translate
from services.adapters import openai_translate
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import reject_unsupported
from services.adapters.cohere_wire import CohereErrorBody
from services.adapters.credentials import BEARER, CredentialResolver
from services.adapters.http import (
    MAX_ERROR_BODY_BYTES,
    HttpClient,
    HttpRequest,
    HttpResponse,
    Timeouts,
    iter_sse,
)
from services.adapters.openai_wire import parse_object
from services.adapters.upstream_errors import retry_after_seconds, to_gateway_error
from services.core.errors import GatewayError, Reason

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


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _target(candidate: route_pb2.RouteCandidate) -> openai_translate.Target:
    return openai_translate.Target(provider=candidate.endpoint.provider, public_model=candidate.public_model,
                                   upstream_model=candidate.upstream_model)


class CohereAdapter:
    """Speaks Cohere's API v2 chat and embed endpoints."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, default_timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._http = http
        self._credentials = credentials
        self._default_timeout_s = default_timeout_s
        self._connect_timeout_s = connect_timeout_s

    def _request(self, candidate: route_pb2.RouteCandidate, path: str, body: Any, *,
                 request_id: str, timeout_ms: int, stream: bool) -> HttpRequest:
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if stream else "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        headers.update(self._credentials.auth_headers(candidate.endpoint, BEARER, key_required=True))
        timeout_s = timeout_ms / 1000.0 if timeout_ms else self._default_timeout_s
        # A stream may run long; only silence is bounded. A whole answer is bounded end to end.
        timeouts = Timeouts(connect=min(self._connect_timeout_s, timeout_s), read_idle=timeout_s,
                            total=None if stream else timeout_s)
        url = candidate.endpoint.base_url.rstrip("/") + path
        return HttpRequest("POST", url, headers, orjson.dumps(body), timeouts)

    async def _failure(self, response: HttpResponse, candidate: route_pb2.RouteCandidate) -> GatewayError:
        raw = await response.read(MAX_ERROR_BODY_BYTES)
        failure = CohereErrorBody.decode(raw).failure(response.status, retry_after_seconds(response.headers))
        return to_gateway_error(failure, provider=candidate.endpoint.provider,
                                upstream_model=candidate.upstream_model)

    async def chat(self, call: adapter_service_pb2.ChatRequest,
                   ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls `/v2/chat`; see ProviderAdapter.chat."""
        candidate, stream = call.candidate, call.request.stream
        provider = candidate.endpoint.provider
        reject_unsupported(call.request, SUPPORTED_CHAT_PARAMETERS, provider)
        body = translate.chat_request_body(call.request, candidate.upstream_model, provider)
        request = self._request(candidate, CHAT_PATH, body, request_id=call.request_id,
                                timeout_ms=call.timeout_ms, stream=stream)
        target = _target(candidate)
        started = time.monotonic()
        async with self._http.open(request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            if not stream:
                answer = translate.completion(parse_object(await response.read()), target.upstream_model,
                                              provider)
                yield openai_translate.completion_event(orjson.dumps(answer), target, _elapsed_ms(started))
                return
            wants_usage = call.request.stream_options.include_usage
            async with aclosing(self._stream(response, target, wants_usage, started)) as events:
                async for event in events:
                    yield event

    async def _stream(self, response: HttpResponse, target: openai_translate.Target, wants_usage: bool,
                      started: float) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        translator = translate.StreamTranslator(target.upstream_model, target.provider)
        async for event in iter_sse(response):
            if event.data == _DONE or translator.finished:
                break  # message-end is the last event that means anything
            for chunk in translator.feed(parse_object(event.data)):
                # A failed generation's usage is billed but not shown: the client gets the error.
                shown = wants_usage and translator.error is None
                yield openai_translate.chunk_event(chunk, target, _elapsed_ms(started),
                                                   client_wants_usage=shown)
            if translator.error is not None:
                raise translator.error
        if not translator.finished:  # cut off before message-end: the answer is incomplete
            raise GatewayError(Reason.UPSTREAM_ERROR,
                               "The upstream stream ended before the answer was complete.")

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Calls `/v2/embed`; see ProviderAdapter.embed."""
        candidate = call.candidate
        body = translate.embed_request_body(call.request, candidate.upstream_model,
                                            candidate.endpoint.provider)
        request = self._request(candidate, EMBED_PATH, body, request_id=call.request_id,
                                timeout_ms=call.timeout_ms, stream=False)
        started = time.monotonic()
        async with self._http.open(request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            raw = await response.read()
        answer = translate.embedding_list(parse_object(raw), candidate.upstream_model,
                                          as_base64=call.request.encoding_format == "base64")
        return openai_translate.embedding_event(orjson.dumps(answer), _target(candidate),
                                                _elapsed_ms(started))


def create(deps: AdapterDeps, kind: str) -> CohereAdapter:
    """The adapter for kind `cohere` (a key is always required)."""
    return CohereAdapter(deps.http, deps.credentials, default_timeout_s=deps.default_timeout_s)
