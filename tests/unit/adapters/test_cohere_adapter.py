"""CohereAdapter over a MockTransport: what goes upstream, what comes back (no network)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import cohere
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import supported_chat_parameters
from services.adapters.cohere import CohereAdapter
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient, HttpRequest
from services.core.errors import GatewayError, Reason
from tests.fakes import cohere_failures, cohere_payloads
from tests.unit.adapters.mock_transport import CannedResponse, MockTransport, json_response

ENV = {"CO_KEY": "co-secret-key"}


def call(request: dict[str, Any], *, api_key_env: str = "CO_KEY", timeout_ms: int = 0,
         ) -> adapter_service_pb2.ChatRequest:
    candidate = route_pb2.RouteCandidate(
        public_model="smart", upstream_model="command-a-03-2025", endpoint=route_pb2.Endpoint(
            provider="co", kind="cohere", base_url="https://api.cohere.test/", api_key_env=api_key_env))
    typed = json_format.ParseDict({"model": "smart", "messages": [{"role": "user", "content": "hi there"}]}
                                  | request, chat_pb2.ChatCompletionRequest())
    return adapter_service_pb2.ChatRequest(candidate=candidate, request=typed, request_id="req-1",
                                           timeout_ms=timeout_ms)


def adapter(transport: MockTransport) -> CohereAdapter:
    return cohere.create(AdapterDeps(HttpClient(transport), CredentialResolver(ENV), default_timeout_s=30.0),
                         "cohere")


async def collect(request: adapter_service_pb2.ChatRequest, transport: MockTransport,
                  ) -> list[adapter_service_pb2.ChatResponse]:
    return [event async for event in adapter(transport).chat(request)]


def sse(events: list[tuple[str, dict[str, Any]]], *, done: bool = True) -> CannedResponse:
    """Cohere's stream framing, one read per event: `event:` and `data:` lines."""
    chunks = [b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data)) for name, data in events]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return CannedResponse(chunks=chunks, header_items={"Content-Type": "text/event-stream"})


def answered(request: HttpRequest) -> CannedResponse:
    """Answers like Cohere would, from the body the adapter sent."""
    body = orjson.loads(request.body)
    if request.url.endswith("/v2/embed"):
        return json_response(cohere_payloads.embed_response(body, response_id="e-1"))
    if body.get("stream"):
        return sse(cohere_payloads.stream_events(body, response_id="r-1"))
    return json_response(cohere_payloads.chat_response(body, response_id="r-1"))


async def test_non_stream_request_and_answer() -> None:
    transport = MockTransport(answered)
    [event] = await collect(call({"temperature": 0.2, "stop": "END"}), transport)
    sent = transport.sent[0]
    assert (sent.method, sent.url) == ("POST", "https://api.cohere.test/v2/chat")
    assert sent.headers["Authorization"] == "Bearer co-secret-key" and sent.headers["X-Request-Id"] == "req-1"
    assert sent.headers["Accept"] == "application/json"
    assert orjson.loads(sent.body) == {"model": "command-a-03-2025", "messages": [
        {"role": "user", "content": "hi there"}], "temperature": 0.2, "stop_sequences": ["END"]}
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (30.0, 30.0)
    answer = ChatCompletion.model_validate_json(event.body)
    assert answer.model == "smart" and answer.choices[0].message.content == "hi there"
    assert orjson.loads(event.body)["provider"] == {"name": "co", "model": "command-a-03-2025",
                                                    "latency_ms": event.latency_ms}
    assert event.has_content and (event.usage.prompt_tokens, event.usage.completion_tokens) == (5, 2)
    assert transport.responses[0].released


async def test_stream_events_usage_hidden() -> None:
    transport = MockTransport(answered)
    events = await collect(call({"stream": True}, timeout_ms=1500), transport)
    sent = transport.sent[0]
    assert orjson.loads(sent.body)["stream"] is True and sent.headers["Accept"] == "text/event-stream"
    assert (sent.timeouts.total, sent.timeouts.read_idle, sent.timeouts.connect) == (1.5, 1.5, 1.5)
    assert [e.has_content for e in events] == [False, True, True, False, False]
    chunks = [ChatCompletionChunk.model_validate_json(e.body) for e in events[:4]]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[3].choices[0].finish_reason == "stop"
    assert all(b'"usage"' not in e.body for e in events)
    usage = events[4].usage
    assert events[4].body == b"" and (usage.prompt_tokens, usage.completion_tokens) == (5, 2)
    assert transport.responses[0].released


async def test_stream_usage_shown_when_asked() -> None:
    events = await collect(call({"stream": True, "stream_options": {"include_usage": True}}),
                           MockTransport(answered))
    last = ChatCompletionChunk.model_validate_json(events[-1].body)
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 7
    assert events[-1].usage.total_tokens == 7


async def test_stream_tool_call() -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    events = await collect(call({"stream": True, "tools": [weather], "tool_choice": "required"}),
                           MockTransport(answered))
    chunks = [ChatCompletionChunk.model_validate_json(e.body) for e in events if e.body]
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in calls if d.function) == '{"city":"hi there"}'
    assert events[0].has_content and chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_stream_without_message_end_is_an_error() -> None:
    events = cohere_payloads.stream_events({"messages": [{"role": "user", "content": "a b"}]},
                                           response_id="r")
    transport = MockTransport(lambda r: sse(events[:-1], done=True))  # [DONE] alone does not end it
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(transport).chat(call({"stream": True})):
            seen.append(event)
    assert info.value.reason is Reason.UPSTREAM_ERROR and len(seen) == 3


async def test_failed_generation_in_stream_bills_then_fails() -> None:
    events = cohere_payloads.stream_events({"messages": [{"role": "user", "content": "a b"}]},
                                           response_id="r")
    failed = [*events[:3], ("message-end", cohere_payloads.failed_end(output_tokens=1))]
    transport = MockTransport(lambda r: sse(failed))
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(transport).chat(call({"stream": True,
                                                         "stream_options": {"include_usage": True}})):
            seen.append(event)
    assert info.value.reason is Reason.UPSTREAM_ERROR and "'co'" in info.value.message
    assert seen[-1].body == b"" and seen[-1].usage.completion_tokens == 1  # billed, not shown
    assert transport.responses[0].closed


async def test_closing_the_stream_early_closes_the_upstream() -> None:
    words = " ".join(str(i) for i in range(20))
    events = cohere_payloads.stream_events({"messages": [{"role": "user", "content": words}]},
                                           response_id="r")
    transport = MockTransport(lambda r: sse(events))
    stream = adapter(transport).chat(call({"stream": True}))
    first = await anext(stream)
    assert orjson.loads(first.body)["choices"][0]["delta"]["role"] == "assistant"
    await stream.aclose()
    response = transport.responses[0]
    assert response.closed and not response.released and response.reads == 2


async def test_upstream_errors_are_decoded() -> None:
    preset = cohere_failures.rate_limited(3)
    transport = MockTransport(lambda r: CannedResponse(status=preset.status, chunks=[preset.body],
                                                       header_items=preset.headers))
    with pytest.raises(GatewayError) as info:
        await collect(call({"stream": True}), transport)
    assert info.value.reason is Reason.UPSTREAM_RATE_LIMITED and info.value.retry_after == 3.0
    assert "org-secret" not in info.value.message
    bad = MockTransport(lambda r: json_response({"message": "invalid request: p must be below 1"}, 400))
    with pytest.raises(GatewayError) as info:
        await collect(call({}), bad)
    assert (info.value.reason, info.value.message) == (Reason.UPSTREAM_BAD_REQUEST,
                                                       "invalid request: p must be below 1")


async def test_generation_error_in_a_whole_answer() -> None:
    transport = MockTransport(lambda r: json_response({"id": "r", "finish_reason": "TIMEOUT",
                                                       "message": {"role": "assistant", "content": []}}))
    with pytest.raises(GatewayError) as info:
        await collect(call({}), transport)
    assert info.value.reason is Reason.UPSTREAM_TIMEOUT


@pytest.mark.parametrize("request_", [{"logit_bias": {"50256": -100}}, {"logprobs": True},
                                      {"top_logprobs": 2}, {"user": "u-1"}, {"modalities": ["text", "audio"]},
                                      {"prediction": {"type": "content", "content": "x"}}, {"n": 3},
                                      {"reasoning_effort": "low"}, {"service_tier": "flex"}])
async def test_unsupported_parameters_are_refused_before_sending(request_: dict[str, Any]) -> None:
    transport = MockTransport(answered)
    with pytest.raises(GatewayError) as info:
        await collect(call(request_), transport)
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.param == next(iter(request_))
    assert "'co'" in info.value.message and transport.sent == []


async def test_missing_key_fails_before_sending() -> None:
    transport = MockTransport(answered)
    with pytest.raises(GatewayError) as info:
        await collect(call({}, api_key_env=""), transport)
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and transport.sent == []


async def test_invalid_json_from_upstream() -> None:
    with pytest.raises(GatewayError) as info:
        await collect(call({}), MockTransport(lambda r: CannedResponse(chunks=[b"<html>"])))
    assert info.value.reason is Reason.UPSTREAM_ERROR


def embed_call(request: dict[str, Any]) -> adapter_service_pb2.EmbedRequest:
    return adapter_service_pb2.EmbedRequest(
        candidate=call({}).candidate, request_id="req-2",
        request=json_format.ParseDict({"model": "smart"} | request, embedding_pb2.EmbeddingRequest()))


async def test_embeddings() -> None:
    transport = MockTransport(answered)
    response = await adapter(transport).embed(embed_call({"input": ["one", "two words"], "dimensions": 8,
                                                          "provider": {"input_type": "search_query"}}))
    sent = transport.sent[0]
    assert sent.url == "https://api.cohere.test/v2/embed" and sent.headers["X-Request-Id"] == "req-2"
    assert orjson.loads(sent.body) == {"model": "command-a-03-2025", "texts": ["one", "two words"],
                                       "input_type": "search_query", "embedding_types": ["float"],
                                       "truncate": "NONE", "output_dimension": 8}
    body = orjson.loads(response.body)
    assert body["model"] == "smart" and [len(d["embedding"]) for d in body["data"]] == [8, 8]
    assert body["provider"]["model"] == "command-a-03-2025" and response.usage.prompt_tokens == 3
    encoded = await adapter(transport).embed(embed_call({"input": "x", "encoding_format": "base64"}))
    assert isinstance(orjson.loads(encoded.body)["data"][0]["embedding"], str)


async def test_embedding_errors() -> None:
    preset = cohere_failures.payment_required()
    transport = MockTransport(lambda r: CannedResponse(status=preset.status, chunks=[preset.body]))
    with pytest.raises(GatewayError) as info:
        await adapter(transport).embed(embed_call({"input": "x"}))
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and "org-secret" not in info.value.message
    with pytest.raises(GatewayError) as info:
        await adapter(transport).embed(embed_call({"input": [[1, 2]]}))
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and len(transport.sent) == 1


def test_declared_parameters() -> None:
    assert supported_chat_parameters("cohere") == (
        "frequency_penalty", "max_completion_tokens", "max_tokens", "n", "parallel_tool_calls",
        "presence_penalty", "response_format", "seed", "stop", "stream_options", "temperature", "tool_choice",
        "tools", "top_p")
