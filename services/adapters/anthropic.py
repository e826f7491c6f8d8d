"""The Anthropic adapter: the Messages API, `POST {base_url}/v1/messages` (the base URL is the bare
host), with `x-api-key` and `anthropic-version: 2023-06-01`, our request id as `X-Request-Id`.

Requests are built by `anthropic_translate`; the wire types and error decoding live in
`anthropic_wire`. This module sends the request through the shared HttpClient and reads the
answer back into OpenAI shapes (`openai_shapes`), which `openai_translate` stamps with the public
model and the `provider` extension: `completion()` for a whole message, `StreamTranslator` for
the event stream (one OpenAI chunk per event that says something, as it arrives).

Anthropic has no embeddings API: `embed` refuses with UNSUPPORTED_PARAMETER so routing moves on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import anthropic_translate as translate
from services.adapters import openai_shapes as shapes
from services.adapters import openai_translate as stamp
from services.adapters.anthropic_wire import (
    API_KEY,
    API_VERSION,
    MESSAGES_PATH,
    VERSION_HEADER,
    AnthropicErrorBody,
    AnthropicUsage,
    finish_reason,
)
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import reject_unsupported
from services.adapters.credentials import CredentialResolver
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


def _answer(stop_reason: Any, json_tool: str | None) -> str:
    reason = finish_reason(stop_reason)
    # The forced JSON tool is how the answer arrives, not a call the client must run.
    return "stop" if json_tool is not None and reason == "tool_calls" else reason


def _json_text(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def completion(message: dict[str, Any], json_tool: str | None) -> dict[str, Any]:
    """The OpenAI `chat.completion` of an Anthropic `Message`."""
    blocks = message.get("content")
    if not isinstance(blocks, list):
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent a message without content.")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    json_answer: str | None = None
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use" and json_tool is not None and block.get("name") == json_tool:
            json_answer = _json_text(block.get("input"))
        elif kind == "tool_use":
            calls.append(shapes.tool_call(str(block.get("id")), str(block.get("name")),
                                          _json_text(block.get("input"))))
    content = json_answer if json_answer is not None else ("".join(texts) if texts else None)
    reply = shapes.message(content, tool_calls=calls)
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    choice = shapes.choice(0, reply, _answer(message.get("stop_reason"), json_tool))
    usage = AnthropicUsage.decode(message.get("usage")).to_openai()
    return shapes.completion(str(message.get("id") or shapes.new_id()), shapes.now(),
                             str(message.get("model")), [choice], usage)


# Anthropic text-like block type -> the OpenAI delta field its text goes to.
_TEXT_FIELDS: Mapping[str, str] = MappingProxyType({"text": "content", "thinking": "reasoning_content"})


@dataclass(slots=True)
class _Block:
    """A content block of the stream being translated."""

    kind: str  # "text", "thinking", "tool" (a client tool call), "json" (the forced JSON tool), "other"
    tool_index: int = -1  # among tool_use blocks only: OpenAI's tool_calls[].index
    start_input: Any = None
    streamed: bool = False  # whether an input fragment went out


class StreamTranslator:
    """Turns Anthropic stream events into OpenAI chunk dicts. Role "assistant" rides on the first
    chunk; tool indices count tool_use blocks (0, 1, ...), not content blocks; the usage chunk comes
    at `message_stop`, which is the stream's proper end (`finished`)."""

    def __init__(self, upstream_model: str, json_tool: str | None) -> None:
        self.completion_id = shapes.new_id()
        self.created = shapes.now()
        self.model = upstream_model
        self.usage = AnthropicUsage()
        self.finished = False
        self._json_tool = json_tool
        self._role_pending = True
        self._blocks: dict[Any, _Block] = {}
        self._tools = 0
        self._handlers: Mapping[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "message_start": self._message_start, "content_block_start": self._block_start,
            "content_block_delta": self._block_delta, "content_block_stop": self._block_stop,
            "message_delta": self._message_delta, "message_stop": self._message_stop}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event makes (often one, sometimes none: `ping`, unknown event types)."""
        handler = self._handlers.get(str(event.get("type")))
        return handler(event) if handler is not None else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self._role_pending:
            delta = {"role": "assistant", **delta}
            self._role_pending = False
        return shapes.chunk(self.completion_id, self.created, self.model, delta, finish_reason=finish)

    def _opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"content": ""})] if self._role_pending else []

    def _message_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        message = event.get("message") or {}
        self.completion_id = str(message.get("id") or self.completion_id)
        self.model = str(message.get("model") or self.model)
        self.usage.update(message.get("usage"))
        return []

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use" and self._json_tool is not None and block.get("name") == self._json_tool:
            self._blocks[event.get("index")] = _Block("json", start_input=block.get("input"))
            return self._opening()
        if kind == "tool_use":
            index, self._tools = self._tools, self._tools + 1
            self._blocks[event.get("index")] = _Block("tool", index, block.get("input"))
            first = shapes.tool_call_delta(index, call_id=str(block.get("id")), name=str(block.get("name")))
            return [self._chunk({"tool_calls": [first]})]
        text_field = _TEXT_FIELDS.get(str(kind))
        self._blocks[event.get("index")] = _Block(str(kind) if text_field else "other")
        text = block.get(text_field) if text_field else None
        return [self._chunk({text_field: text})] if text_field and text else self._opening()

    def _fragment(self, block: _Block, fragment: str) -> list[dict[str, Any]]:
        if not fragment:
            return []
        block.streamed = True
        if block.kind == "json":
            return [self._chunk({"content": fragment})]
        return [self._chunk({"tool_calls": [shapes.tool_call_delta(block.tool_index, arguments=fragment)]})]

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta":
            block = self._blocks.get(event.get("index"))
            if block is None or block.kind not in ("tool", "json"):
                raise GatewayError(Reason.UPSTREAM_ERROR,
                                   "The upstream stream sent tool input outside a tool.")
            return self._fragment(block, str(delta.get("partial_json") or ""))
        return []  # signatures, citations, empty text: nothing for an OpenAI client

    def _block_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(event.get("index"))
        if block is None or block.kind not in ("tool", "json") or block.streamed:
            return []
        # No fragment came (a tool without arguments): the assembled arguments must still be JSON.
        return self._fragment(block, _json_text(block.start_input))

    def _message_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.usage.update(event.get("usage"))
        delta = event.get("delta") or {}
        return [self._chunk({}, _answer(delta.get("stop_reason"), self._json_tool))]

    def _message_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        return [shapes.usage_chunk(self.completion_id, self.created, self.model, self.usage.to_openai())]


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _target(candidate: route_pb2.RouteCandidate) -> stamp.Target:
    return stamp.Target(provider=candidate.endpoint.provider, public_model=candidate.public_model,
                        upstream_model=candidate.upstream_model)


class AnthropicAdapter:
    """Speaks Anthropic's Messages API."""

    def __init__(self, http: HttpClient, credentials: CredentialResolver, *, default_timeout_s: float = 120.0,
                 connect_timeout_s: float = 10.0) -> None:
        self._http = http
        self._credentials = credentials
        self._default_timeout_s = default_timeout_s
        self._connect_timeout_s = connect_timeout_s

    def _request(self, candidate: route_pb2.RouteCandidate, body: Mapping[str, Any], *, request_id: str,
                 timeout_ms: int, stream: bool) -> HttpRequest:
        headers = {"Content-Type": "application/json", VERSION_HEADER: API_VERSION,
                   "Accept": "text/event-stream" if stream else "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        headers.update(self._credentials.auth_headers(candidate.endpoint, API_KEY, key_required=True))
        timeout_s = timeout_ms / 1000.0 if timeout_ms else self._default_timeout_s
        # A stream may run long; only silence is bounded. A whole answer is bounded end to end.
        timeouts = Timeouts(connect=min(self._connect_timeout_s, timeout_s), read_idle=timeout_s,
                            total=None if stream else timeout_s)
        url = candidate.endpoint.base_url.rstrip("/") + MESSAGES_PATH
        return HttpRequest("POST", url, headers, orjson.dumps(body), timeouts)

    async def _failure(self, response: HttpResponse, candidate: route_pb2.RouteCandidate) -> GatewayError:
        raw = await response.read(MAX_ERROR_BODY_BYTES)
        retry_after = retry_after_seconds(response.headers)
        failure = AnthropicErrorBody.decode(raw).failure(response.status, retry_after)
        return to_gateway_error(failure, provider=candidate.endpoint.provider,
                                upstream_model=candidate.upstream_model)

    async def chat(self, call: adapter_service_pb2.ChatRequest,
                   ) -> AsyncGenerator[adapter_service_pb2.ChatResponse, None]:
        """Calls `/v1/messages`; see ProviderAdapter.chat."""
        candidate, request = call.candidate, call.request
        reject_unsupported(request, honoured_parameters(request), candidate.endpoint.provider)
        translated = translate.messages_request(request, candidate)
        http_request = self._request(candidate, translated.body, request_id=call.request_id,
                                     timeout_ms=call.timeout_ms, stream=request.stream)
        target, started = _target(candidate), time.monotonic()
        async with self._http.open(http_request) as response:
            if response.status >= 300:
                raise await self._failure(response, candidate)
            if not request.stream:
                answer = completion(parse_object(await response.read()), translated.json_tool)
                yield stamp.completion_event(orjson.dumps(answer), target, _elapsed_ms(started))
                return
            stream = StreamTranslator(candidate.upstream_model, translated.json_tool)
            wants_usage = request.stream_options.include_usage
            async for event in iter_sse(response):
                obj = parse_object(event.data)
                if event.event == "error" or obj.get("type") == "error":
                    error = AnthropicErrorBody.from_object(obj)
                    raise to_gateway_error(error.failure(error.status_hint()), provider=target.provider,
                                           upstream_model=target.upstream_model)
                for chunk in stream.feed(obj):
                    yield stamp.chunk_event(chunk, target, _elapsed_ms(started),
                                            client_wants_usage=wants_usage)
                if stream.finished:
                    return
            # Cut off before `message_stop`: the answer is incomplete.
            raise GatewayError(Reason.UPSTREAM_ERROR,
                               "The upstream stream ended before the answer was complete.")

    async def embed(self, call: adapter_service_pb2.EmbedRequest) -> adapter_service_pb2.EmbedResponse:
        """Anthropic has no embeddings API: refused, so routing may try another candidate."""
        raise GatewayError(Reason.UNSUPPORTED_PARAMETER,
                           f"Provider '{call.candidate.endpoint.provider}' (Anthropic) has no embeddings "
                           "API.",
                           code="unsupported_parameter")


def create(deps: AdapterDeps, kind: str) -> AnthropicAdapter:
    """The adapter for kind `anthropic` (a key is always required)."""
    return AnthropicAdapter(deps.http, deps.credentials, default_timeout_s=deps.default_timeout_s)
