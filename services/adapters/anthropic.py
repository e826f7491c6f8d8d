"""The Anthropic adapter: the Messages API, `POST {base_url}/v1/messages` (the base URL is the bare
host), with `x-api-key` and `anthropic-version: 2023-06-01`, our request id as `X-Request-Id`.

Requests are built by `anthropic_translate`; answers are read back into OpenAI shapes by
`anthropic_answers` (`completion()` for a whole message, `StreamTranslator` for the event stream),
which `openai_translate` stamps with the public model and the `provider` extension; the wire
types and error decoding live in `anthropic_wire`. This module decides what Anthropic honours and
sends the request through the shared `UpstreamClient`.

Anthropic has no embeddings API: `embed` refuses with UNSUPPORTED_PARAMETER so routing moves on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2
from services.adapters import anthropic_translate as translate
from services.adapters import openai_translate as stamp
from services.adapters.anthropic_answers import StreamTranslator, completion
from services.adapters.anthropic_wire import (
    API_KEY,
    API_VERSION,
    MESSAGES_PATH,
    VERSION_HEADER,
    AnthropicErrorBody,
)
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import reject_unsupported
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient, iter_sse
from services.adapters.json_values import parse_object
from services.adapters.upstream import UpstreamClient, elapsed_ms, read_answer, stream_failure
from services.adapters.upstream_errors import incomplete_stream
from services.core.errors import GatewayError, Reason

# The ChatCompletionRequest fields this adapter honours (capabilities.py).
SUPPORTED_CHAT_PARAMETERS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "stop", "max_tokens",
    "max_completion_tokens", "user", "safety_identifier", "tools", "tool_choice", "parallel_tool_calls",
    "response_format",
})
# Fields Anthropic cannot honour in general, but whose explicit OpenAI default asks for nothing.
NEUTRAL_VALUES: Mapping[str, Any] = MappingProxyType({
    "n": 1, "logprobs": False, "store": False, "presence_penalty": 0.0, "frequency_penalty": 0.0,
})


def honoured_parameters(request: chat_pb2.ChatCompletionRequest) -> frozenset[str]:
    """SUPPORTED_CHAT_PARAMETERS plus the fields this request sets to their neutral value."""
    neutral = {name for name, value in NEUTRAL_VALUES.items()
               if request.HasField(name) and getattr(request, name) == value}
    return SUPPORTED_CHAT_PARAMETERS | neutral


# The active health probe's default path (docs/routing.md §5): the free, cheap model list.
HEALTH_PATH = "/v1/models"


class AnthropicAdapter:
    """Speaks Anthropic's Messages API."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, default_timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._upstream = UpstreamClient(http, credentials, API_KEY, AnthropicErrorBody.decode,
                                        fixed_headers={VERSION_HEADER: API_VERSION},
                                        default_timeout_s=default_timeout_s,
                                        connect_timeout_s=connect_timeout_s)

    @property
    def upstream(self) -> UpstreamClient:
        """How this adapter reaches its provider: the active health probe reuses its headers."""
        return self._upstream

    async def chat(self, call: adapter_service_pb2.ChatRequest,
                   ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls `/v1/messages`; see ProviderAdapter.chat."""
        candidate, request = call.candidate, call.request
        reject_unsupported(request, honoured_parameters(request), candidate.endpoint.provider)
        translated = translate.messages_request(request, candidate)
        body = orjson.dumps(translated.body)
        target, started = stamp.Target.of(candidate), time.monotonic()
        async with self._upstream.open(call, MESSAGES_PATH, body, stream=request.stream) as response:
            if not request.stream:
                answer = completion(parse_object(await read_answer(response)), translated.json_tool)
                yield stamp.completion_event(orjson.dumps(answer), target, elapsed_ms(started))
                return
            stream = StreamTranslator(candidate.upstream_model, translated.json_tool)
            wants_usage = request.stream_options.include_usage
            async for event in iter_sse(response):
                obj = parse_object(event.data)
                if event.event == "error" or obj.get("type") == "error":
                    raise stream_failure(AnthropicErrorBody.from_object(obj), target)
                for chunk in stream.feed(obj):
                    yield stamp.chunk_event(chunk, target, elapsed_ms(started),
                                            client_wants_usage=wants_usage)
                if stream.finished:
                    return
            # Cut off before `message_stop`: the answer is incomplete.
            raise incomplete_stream()

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Anthropic has no embeddings API: refused, so routing may try another candidate."""
        raise GatewayError(Reason.UNSUPPORTED_PARAMETER,
                           f"Provider '{call.candidate.endpoint.provider}' (Anthropic) has no embeddings "
                           "API.",
                           code="unsupported_parameter")


def create(deps: AdapterDeps, kind: str) -> AnthropicAdapter:
    """The adapter for kind `anthropic` (a key is always required)."""
    return AnthropicAdapter(deps.http, deps.credentials, default_timeout_s=deps.default_timeout_s,
                            connect_timeout_s=deps.connect_timeout_s)
