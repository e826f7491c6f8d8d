"""AnthropicAdapter over a MockTransport: what goes upstream, what comes back (no network).

Upstream answers come from the fake's payload builders (tests/fakes/anthropic_payloads.py, whose
output the fake's own tests validate with the `anthropic` SDK types) or are written out here."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import anthropic
from services.adapters.anthropic import AnthropicAdapter
from services.adapters.capabilities import supported_chat_parameters
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient
from services.adapters.registry import AdapterDeps, AdapterRegistry
from services.core.errors import GatewayError, Reason
from tests.fakes import anthropic_failures as failures
from tests.fakes import anthropic_payloads as payloads
from tests.fakes.openai_upstream import Failure
from tests.unit.adapters.mock_transport import CannedResponse, MockTransport, json_response

ENV = {"ANT_KEY": "sk-ant-secret"}
MSG_ID = "msg_01abcdefgh"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}}}}


def call(request: dict[str, Any], *, api_key_env: str = "ANT_KEY", timeout_ms: int = 0,
         max_output_tokens: int = 0) -> adapter_service_pb2.ChatRequest:
    candidate = route_pb2.RouteCandidate(
        public_model="smart", upstream_model="claude-x", max_output_tokens=max_output_tokens,
        endpoint=route_pb2.Endpoint(provider="claude", kind="anthropic", base_url="https://api.ant.test/",
                                    api_key_env=api_key_env))
    base = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    typed = json_format.ParseDict(base | request, chat_pb2.ChatCompletionRequest())
    return adapter_service_pb2.ChatRequest(candidate=candidate, request=typed, request_id="req-1",
                                           timeout_ms=timeout_ms)


def adapter(transport: MockTransport) -> AnthropicAdapter:
    return AnthropicAdapter(HttpClient(transport), CredentialResolver(ENV), default_timeout_s=30.0)


async def collect(transport: MockTransport, request: adapter_service_pb2.ChatRequest,
                  ) -> list[adapter_service_pb2.ChatResponse]:
    return [event async for event in adapter(transport).chat(request)]


def sse(*events: dict[str, Any]) -> CannedResponse:
    """One read per event, each `event: <type>` / `data: <json>` as Anthropic frames them."""
    chunks = [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events]
    return CannedResponse(chunks=chunks, header_items={"Content-Type": "text/event-stream"})


def upstream_stream(request: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    """What the fake would stream for `request` as the adapter sends it."""
    sent = anthropic.translate.messages_request(call(request).request, call(request).candidate).body
    return payloads.events(dict(sent), message_id=MSG_ID, model="claude-x-2025", **options)


def completion_of(events: list[adapter_service_pb2.ChatResponse]) -> ChatCompletion:
    [event] = events
    body = orjson.loads(event.body)
    assert body["model"] == "smart" and body["provider"]["name"] == "claude"
    return ChatCompletion.model_validate(body)


def chunks_of(events: list[adapter_service_pb2.ChatResponse]) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate_json(e.body) for e in events if e.body]


MESSAGE = {"id": MSG_ID, "type": "message", "role": "assistant", "model": "claude-x-2025",
           "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 90,
                     "cache_creation_input_tokens": 5}}


async def test_request_and_whole_answer() -> None:
    transport = MockTransport(lambda r: json_response(MESSAGE))
    events = await collect(transport, call({"temperature": 0.2, "max_tokens": 100}))
    sent = transport.sent[0]
    assert (sent.method, sent.url) == ("POST", "https://api.ant.test/v1/messages")
    assert sent.headers["x-api-key"] == "sk-ant-secret" and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["Content-Type"] == "application/json" and sent.headers["X-Request-Id"] == "req-1"
    assert "Authorization" not in sent.headers
    assert orjson.loads(sent.body) == {"model": "claude-x", "max_tokens": 100, "temperature": 0.2,
                                       "messages": [{"role": "user", "content": "hi"}]}
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (30.0, 30.0)
    answer = completion_of(events)
    assert answer.id == MSG_ID and answer.choices[0].message.content == "Hello there"
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.role == "assistant"
    assert orjson.loads(events[0].body)["provider"]["model"] == "claude-x-2025"
    usage = events[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (105, 7, 112)
    assert usage.prompt_tokens_details.cached_tokens == 90
    assert usage.prompt_tokens_details.cache_creation_tokens == 5
    assert events[0].has_content and transport.responses[0].released


async def test_parallel_tool_calls_and_thinking_in_a_whole_answer() -> None:
    message = {**MESSAGE, "stop_reason": "tool_use", "content": [
        {"type": "thinking", "thinking": "Two cities.", "signature": "sig"},
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome", "days": 2}}]}
    events = await collect(MockTransport(lambda r: json_response(message)), call({"tools": [WEATHER]}))
    answer = completion_of(events)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking both."
    calls = choice.message.tool_calls or []
    assert [c.id for c in calls] == ["toolu_1", "toolu_2"]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Oslo"}, {"city": "Rome", "days": 2}]
    assert orjson.loads(events[0].body)["choices"][0]["message"]["reasoning_content"] == "Two cities."


@pytest.mark.parametrize("stop_reason, finish", [
    ("stop_sequence", "stop"), ("max_tokens", "length"), ("refusal", "content_filter"),
    ("pause_turn", "stop")])
async def test_stop_reasons_of_a_whole_answer(stop_reason: str, finish: str) -> None:
    message = {**MESSAGE, "stop_reason": stop_reason}
    events = await collect(MockTransport(lambda r: json_response(message)), call({}))
    assert completion_of(events).choices[0].finish_reason == finish


async def test_json_mode_whole_answer_is_the_tool_input() -> None:
    request = {"response_format": {"type": "json_object"},
               "messages": [{"role": "user", "content": "json pls"}]}
    sent = anthropic.translate.messages_request(call(request).request, call(request).candidate).body
    message = payloads.message(dict(sent), message_id=MSG_ID, model="claude-x-2025")
    assert message["stop_reason"] == "tool_use"
    transport = MockTransport(lambda r: json_response(message))
    choice = completion_of(await collect(transport, call(request))).choices[0]
    assert json.loads(choice.message.content or "") == {"echo": "json pls"}
    assert choice.finish_reason == "stop" and not choice.message.tool_calls


async def test_stream_of_text() -> None:
    stream = upstream_stream({"messages": [{"role": "user", "content": "one two three"}], "stream": True})
    transport = MockTransport(lambda r: sse(*stream))
    events = await collect(transport, call({"messages": [{"role": "user", "content": "one two three"}],
                                            "stream": True}, timeout_ms=1500))
    sent = transport.sent[0]
    assert orjson.loads(sent.body)["stream"] is True and sent.headers["Accept"] == "text/event-stream"
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (1.5, 1.5)  # the deadline bounds a stream too
    parsed = chunks_of(events)
    assert parsed[0].choices[0].delta.role == "assistant" and parsed[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in parsed) == "one two three"
    assert parsed[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in parsed} == {MSG_ID} and all(c.model == "smart" for c in parsed)
    assert [e.has_content for e in events] == [False, True, True, True, False, False]
    assert b'"usage"' not in b"".join(e.body for e in events)
    assert events[-1].body == b"" and events[-1].usage.prompt_tokens == 3 + 3
    assert events[-1].usage.completion_tokens == 3 and transport.responses[0].released


async def test_stream_usage_chunk_when_asked_with_cache_reads() -> None:
    request = {"stream": True, "stream_options": {"include_usage": True}}
    stream = upstream_stream(request, cached=2)
    events = await collect(MockTransport(lambda r: sse(*stream)), call(request))
    parsed = chunks_of(events)
    assert parsed[-1].choices == [] and parsed[-1].usage is not None
    assert (parsed[-1].usage.prompt_tokens, parsed[-1].usage.completion_tokens) == (4, 1)
    assert parsed[-1].usage.prompt_tokens_details.cached_tokens == 2  # type: ignore[union-attr]
    assert [e for e in events if e.HasField("usage")] == [events[-1]]


async def test_stream_of_parallel_tool_calls_after_text() -> None:
    tool_uses = upstream_stream({"messages": [{"role": "user", "content": "get_weather and get_time"}],
                                 "tools": [WEATHER, TIME], "stream": True})
    # A text block first, so content-block indices (1, 2) differ from tool indices (0, 1).
    shifted = [{**e, "index": e["index"] + 1} if "index" in e else e for e in tool_uses]
    text = [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Both."}},
            {"type": "content_block_stop", "index": 0}]
    stream = shifted[:1] + text + shifted[1:]
    events = await collect(MockTransport(lambda r: sse(*stream)),
                           call({"tools": [WEATHER, TIME], "stream": True}))
    parsed = chunks_of(events)
    assert parsed[0].choices[0].delta.role == "assistant"
    deltas = [d for c in parsed if c.choices for d in c.choices[0].delta.tool_calls or []]
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.id, d.type, d.function.name) for d in firsts] == [  # type: ignore[union-attr]
        (0, "toolu_abcdefgh0", "function", "get_weather"), (1, "toolu_abcdefgh1", "function", "get_time")]
    arguments = {i: "".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)}  # type: ignore[union-attr]
    assert json.loads(arguments[0]) == {"city": "get_weather and get_time"}
    assert json.loads(arguments[1]) == {"zone": "get_weather and get_time"}
    assert parsed[-1].choices[0].finish_reason == "tool_calls"


async def test_stream_of_a_tool_without_input_fragments() -> None:
    stream: list[dict[str, Any]] = [
              {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}},
              {"type": "content_block_start", "index": 0,
               "content_block": {"type": "tool_use", "id": "toolu_9", "name": "now", "input": {}}},
              {"type": "content_block_delta", "index": 0,
               "delta": {"type": "input_json_delta", "partial_json": ""}},
              {"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
              {"type": "message_stop"}]
    events = await collect(MockTransport(lambda r: sse(*stream)), call({"tools": [TIME], "stream": True}))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks_of(events)  # type: ignore[index]
              if c.choices and c.choices[0].delta.tool_calls]
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {}  # type: ignore[union-attr]


async def test_stream_in_json_mode_is_content() -> None:
    request = {"stream": True, "messages": [{"role": "user", "content": "json please"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "echo", "schema": {
                   "type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}}}}
    stream = upstream_stream(request)
    events = await collect(MockTransport(lambda r: sse(*stream)), call(request))
    parsed = chunks_of(events)
    assert all(not c.choices or not c.choices[0].delta.tool_calls for c in parsed)
    assert parsed[0].choices[0].delta.role == "assistant" and not events[0].has_content
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert json.loads(text) == {"echo": "json please"} and parsed[-1].choices[0].finish_reason == "stop"


async def test_stream_thinking_is_reasoning_content() -> None:
    stream: list[dict[str, Any]] = [
              {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}},
              {"type": "content_block_start", "index": 0,
               "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
              {"type": "content_block_delta", "index": 0,
               "delta": {"type": "thinking_delta", "thinking": "Hm."}},
              {"type": "content_block_delta", "index": 0,
               "delta": {"type": "signature_delta", "signature": "s"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Yes."}},
              {"type": "content_block_stop", "index": 1},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
              {"type": "message_stop"}]
    events = await collect(MockTransport(lambda r: sse(*stream)), call({"stream": True}))
    bodies = [orjson.loads(e.body)["choices"][0]["delta"] for e in events if e.body]
    assert bodies[:3] == [{"role": "assistant", "content": ""}, {"reasoning_content": "Hm."},
                          {"content": "Yes."}]
    assert [e.has_content for e in events] == [False, True, True, False, False]


@pytest.mark.parametrize("type_, reason", [("overloaded_error", Reason.UPSTREAM_OVERLOADED),
                                           ("rate_limit_error", Reason.UPSTREAM_RATE_LIMITED),
                                           ("api_error", Reason.UPSTREAM_ERROR)])
async def test_error_event_inside_a_stream(type_: str, reason: Reason) -> None:
    stream = upstream_stream({"stream": True, "messages": [{"role": "user", "content": "a b c"}]})
    error = {"type": "error", "error": {"type": type_, "message": "Overloaded"}}
    response = sse(*stream[:4], error, *stream[4:])
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(MockTransport(lambda r: response)).chat(call({"stream": True})):
            seen.append(event)
    assert len(seen) == 2 and seen[1].has_content and info.value.reason is reason
    assert response.closed


async def test_invalid_request_inside_a_stream_keeps_its_message() -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad image"}}
    with pytest.raises(GatewayError) as info:
        await collect(MockTransport(lambda r: sse(error)), call({"stream": True}))
    assert info.value.reason is Reason.UPSTREAM_BAD_REQUEST and info.value.message == "bad image"


async def test_stream_cut_before_message_stop_is_an_error() -> None:
    stream = upstream_stream({"stream": True})
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(MockTransport(lambda r: sse(*stream[:-1]))).chat(call({"stream": True})):
            seen.append(event)
    assert info.value.reason is Reason.UPSTREAM_ERROR and len(seen) == 3  # role, "hi", finish


async def test_unknown_events_and_pings_are_ignored_and_nothing_after_the_end_is_read() -> None:
    stream = upstream_stream({"stream": True})
    response = sse(*stream[:2], {"type": "ping"}, {"type": "some_new_event", "x": 1}, *stream[2:])
    response.chunks.append(b"event: message_start\ndata: {not json\n\n")
    events = await collect(MockTransport(lambda r: response), call({"stream": True}))
    assert len(events) == 4 and response.reads == len(response.chunks) - 1


async def test_closing_the_stream_early_closes_the_upstream() -> None:
    stream = upstream_stream({"stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]})
    response = sse(*stream)
    events = adapter(MockTransport(lambda r: response)).chat(call({"stream": True}))
    await anext(events)
    await events.aclose()
    assert response.closed and not response.released and response.reads == 2


def failure_response(failure: Failure) -> CannedResponse:
    return CannedResponse(status=failure.status, chunks=[failure.body], header_items=failure.headers)


@pytest.mark.parametrize("failure, reason, expect", [
    (failures.unauthorized(), Reason.UPSTREAM_AUTH_FAILED, {"message": "Provider 'claude' rejected the "
                                                                       "gateway's credentials."}),
    (failures.forbidden(), Reason.UPSTREAM_AUTH_FAILED, {}),
    (failures.rate_limited(2), Reason.UPSTREAM_RATE_LIMITED, {"retry_after": 2.0}),
    (failures.bad_request(), Reason.UPSTREAM_BAD_REQUEST,
     {"message": failures.BAD_REQUEST_MESSAGE, "param": None, "code": None}),
    # No message matching: a too-long prompt stays a bad request carrying Anthropic's words.
    (failures.context_length_exceeded(), Reason.UPSTREAM_BAD_REQUEST,
     {"message": failures.PROMPT_TOO_LONG_MESSAGE}),
    (failures.request_too_large(), Reason.UPSTREAM_BAD_REQUEST,
     {"message": "Request exceeds the maximum allowed number of bytes."}),
    (failures.model_not_found(), Reason.UPSTREAM_BAD_REQUEST, {"code": "model_not_found"}),
    (failures.server_error(), Reason.UPSTREAM_ERROR, {}),
    (failures.unavailable(), Reason.UPSTREAM_UNAVAILABLE, {"retry_after": 1.0}),
    (failures.overloaded(), Reason.UPSTREAM_OVERLOADED, {"retry_after": None}),
    (failures.timeout(), Reason.UPSTREAM_TIMEOUT, {}),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_error_statuses(failure: Failure, reason: Reason, expect: dict[str, Any], stream: bool) -> None:
    transport = MockTransport(lambda r: failure_response(failure))
    with pytest.raises(GatewayError) as info:
        await collect(transport, call({"stream": stream}))
    assert info.value.reason is reason
    for name, value in expect.items():
        assert getattr(info.value, name) == value, name
    assert "org-secret" not in info.value.message and "x-api-key" not in info.value.message
    assert transport.responses[0].closed


@pytest.mark.parametrize("field, value", [
    ("presence_penalty", 0.5), ("frequency_penalty", -1), ("logit_bias", {"50256": -100}), ("logprobs", True),
    ("top_logprobs", 2), ("n", 2), ("seed", 7), ("store", True), ("metadata", {"a": "b"}),
    ("modalities", ["text", "audio"]), ("audio", {"voice": "alloy", "format": "mp3"}),
    ("prediction", {"type": "content", "content": "x"}), ("web_search_options", {}),
    ("reasoning_effort", "low"), ("service_tier", "flex"), ("verbosity", "low"), ("prompt_cache_key", "k"),
    ("functions", [{"name": "f"}]),
])
async def test_parameters_anthropic_cannot_honour_are_refused(field: str, value: Any) -> None:
    transport = MockTransport(lambda r: json_response(MESSAGE))
    with pytest.raises(GatewayError) as info:
        await collect(transport, call({field: value}))
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.param == field
    assert "'claude'" in info.value.message and transport.sent == []


async def test_explicit_neutral_values_are_accepted() -> None:
    transport = MockTransport(lambda r: json_response(MESSAGE))
    neutral = {"n": 1, "logprobs": False, "store": False, "presence_penalty": 0, "frequency_penalty": 0,
               "parallel_tool_calls": True, "stream_options": {"include_usage": False}}
    await collect(transport, call(neutral, max_output_tokens=2048))
    assert orjson.loads(transport.sent[0].body) == {"model": "claude-x", "max_tokens": 2048,
                                                    "messages": [{"role": "user", "content": "hi"}]}


async def test_missing_key_fails_before_sending() -> None:
    transport = MockTransport(lambda r: json_response(MESSAGE))
    with pytest.raises(GatewayError) as info:
        await collect(transport, call({}, api_key_env="NOT_SET_KEY"))
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and "NOT_SET_KEY" in info.value.message
    assert transport.sent == []


async def test_invalid_json_from_upstream() -> None:
    with pytest.raises(GatewayError) as info:
        await collect(MockTransport(lambda r: CannedResponse(chunks=[b"<html>"])), call({}))
    assert info.value.reason is Reason.UPSTREAM_ERROR


async def test_embeddings_are_refused_so_routing_moves_on() -> None:
    transport = MockTransport(lambda r: json_response({}))
    request = adapter_service_pb2.EmbedRequest(
        candidate=call({}).candidate,
        request=json_format.ParseDict({"model": "e", "input": "x"}, embedding_pb2.EmbeddingRequest()))
    with pytest.raises(GatewayError) as info:
        await adapter(transport).embed(request)
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and "embeddings" in info.value.message
    assert transport.sent == []


def test_registry_builds_the_adapter_and_lists_its_parameters() -> None:
    deps = AdapterDeps(http=HttpClient(MockTransport(lambda r: json_response({}))),
                       credentials=CredentialResolver({}))
    assert isinstance(AdapterRegistry.build(deps).adapter_for("anthropic"), AnthropicAdapter)
    listed = supported_chat_parameters("anthropic")
    assert "tools" in listed and "response_format" in listed and "stream_options" in listed
    assert not {"logprobs", "n", "seed", "presence_penalty", "logit_bias", "messages"} & set(listed)
