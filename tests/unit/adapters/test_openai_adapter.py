"""OpenAIAdapter over a MockTransport: what goes upstream, what comes back (no network)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf import json_format

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient, HttpRequest
from services.adapters.openai import OpenAIAdapter
from services.core.errors import GatewayError, Reason
from tests.unit.adapters.mock_transport import CannedResponse, MockTransport, json_response, sse_response

ENV = {"ACME_KEY": "sk-acme-secret"}
COMPLETION = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}


USAGE_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024",
               "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def call(request: dict[str, Any], *, api_key_env: str = "ACME_KEY", timeout_ms: int = 0,
         kind: str = "openai") -> adapter_service_pb2.ChatRequest:
    candidate = route_pb2.RouteCandidate(
        public_model="smart", upstream_model="gpt-4o-mini", endpoint=route_pb2.Endpoint(
            provider="acme", kind=kind, base_url="https://api.acme.test/v1/", api_key_env=api_key_env))
    base = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    typed = json_format.ParseDict(base | request,
                                  chat_pb2.ChatCompletionRequest())
    return adapter_service_pb2.ChatRequest(candidate=candidate, request=typed, request_id="req-1",
                                           timeout_ms=timeout_ms)


def adapter(transport: MockTransport, *, key_required: bool = True) -> OpenAIAdapter:
    return OpenAIAdapter(HttpClient(transport), CredentialResolver(ENV), key_required=key_required,
                         default_timeout_s=30.0)


async def collect(adapter_: OpenAIAdapter, request: adapter_service_pb2.ChatRequest,
                  ) -> list[adapter_service_pb2.ChatResponse]:
    return [event async for event in adapter_.chat(request)]


async def test_non_stream_request_and_answer() -> None:
    transport = MockTransport(lambda r: json_response(COMPLETION))
    events = await collect(adapter(transport), call({"temperature": 0.2}))
    sent: HttpRequest = transport.sent[0]
    assert (sent.method, sent.url) == ("POST", "https://api.acme.test/v1/chat/completions")
    assert sent.headers["Authorization"] == "Bearer sk-acme-secret"
    assert sent.headers["X-Request-Id"] == "req-1"
    assert sent.headers["Content-Type"] == "application/json"
    assert orjson.loads(sent.body) == {"model": "gpt-4o-mini",
                                       "messages": [{"role": "user", "content": "hi"}],
                                       "temperature": 0.2}
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (30.0, 30.0)
    [event] = events
    body = orjson.loads(event.body)
    assert body["model"] == "smart" and body["provider"]["model"] == "gpt-4o-mini-2024"
    assert event.usage.total_tokens == 6 and event.has_content
    assert transport.responses[0].released


async def test_stream_events_usage_hidden_and_done() -> None:
    transport = MockTransport(lambda r: sse_response(
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
        chunk({}, "stop"), USAGE_CHUNK))
    events = await collect(adapter(transport), call({"stream": True}, timeout_ms=1500))
    sent = transport.sent[0]
    assert orjson.loads(sent.body)["stream_options"] == {"include_usage": True}
    assert sent.headers["Accept"] == "text/event-stream"
    assert (sent.timeouts.total, sent.timeouts.read_idle, sent.timeouts.connect) == (1.5, 1.5, 1.5)
    assert [e.has_content for e in events] == [False, True, True, False, False]
    bodies = [orjson.loads(e.body) for e in events[:4]]
    assert all("usage" not in b and b["model"] == "smart" and b["provider"]["name"] == "acme" for b in bodies)
    assert events[4].body == b"" and events[4].usage.total_tokens == 7
    assert transport.responses[0].released


async def test_stream_forwards_usage_when_asked() -> None:
    transport = MockTransport(lambda r: sse_response(chunk({"content": "x"}), USAGE_CHUNK))
    request = call({"stream": True, "stream_options": {"include_usage": True}})
    events = await collect(adapter(transport), request)
    assert orjson.loads(events[0].body)["usage"] is None
    assert orjson.loads(events[1].body)["usage"]["total_tokens"] == 7 and events[1].usage.total_tokens == 7


async def test_nothing_after_done_is_read() -> None:
    response = sse_response(chunk({"content": "x"}))
    response.chunks.append(b"data: {not json\n\n")
    events = await collect(adapter(MockTransport(lambda r: response)), call({"stream": True}))
    assert len(events) == 1


async def test_error_status_is_decoded() -> None:
    body = {"error": {"message": "Rate limit reached for org-secret", "type": "requests", "param": None,
                      "code": "rate_limit_exceeded"}}
    transport = MockTransport(lambda r: json_response(body, 429, {"retry-after-ms": "2500"}))
    with pytest.raises(GatewayError) as info:
        await collect(adapter(transport), call({"stream": True}))
    assert info.value.reason is Reason.UPSTREAM_RATE_LIMITED and info.value.retry_after == 2.5
    assert "org-secret" not in info.value.message
    assert transport.responses[0].closed


async def test_in_stream_error_after_chunks() -> None:
    transport = MockTransport(lambda r: sse_response(
        chunk({"content": "x"}), {"error": {"message": "overloaded", "type": "overloaded_error"}},
        done=False))
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(transport).chat(call({"stream": True})):
            seen.append(event)
    assert len(seen) == 1 and info.value.reason is Reason.UPSTREAM_OVERLOADED


async def test_closing_the_stream_early_closes_the_upstream() -> None:
    transport = MockTransport(lambda r: sse_response(*[chunk({"content": str(i)}) for i in range(10)]))
    events = adapter(transport).chat(call({"stream": True}))
    first = await anext(events)
    assert orjson.loads(first.body)["choices"][0]["delta"]["content"] == "0"
    await events.aclose()
    response = transport.responses[0]
    assert response.closed and not response.released and response.reads == 1


async def test_keyless_compatible_endpoint_sends_no_authorization() -> None:
    transport = MockTransport(lambda r: json_response(COMPLETION))
    await collect(adapter(transport, key_required=False), call({}, api_key_env="", kind="openai_compatible"))
    assert "Authorization" not in transport.sent[0].headers


async def test_missing_key_fails_before_sending() -> None:
    transport = MockTransport(lambda r: json_response(COMPLETION))
    with pytest.raises(GatewayError) as info:
        await collect(adapter(transport), call({}, api_key_env="NOT_SET_KEY"))
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and "NOT_SET_KEY" in info.value.message
    assert transport.sent == []


async def test_invalid_json_from_upstream() -> None:
    transport = MockTransport(lambda r: CannedResponse(chunks=[b"<html>"]))
    with pytest.raises(GatewayError) as info:
        await collect(adapter(transport), call({}))
    assert info.value.reason is Reason.UPSTREAM_ERROR


async def test_embeddings() -> None:
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.25]}],
              "model": "text-embedding-3-small", "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    transport = MockTransport(lambda r: json_response(answer))
    base = call({})
    request = adapter_service_pb2.EmbedRequest(
        candidate=base.candidate, request_id="req-2",
        request=json_format.ParseDict({"model": "smart", "input": "hello", "models": ["x"]},
                                      embedding_pb2.EmbeddingRequest()))
    response = await adapter(transport).embed(request)
    sent = transport.sent[0]
    assert sent.url == "https://api.acme.test/v1/embeddings" and sent.headers["X-Request-Id"] == "req-2"
    assert orjson.loads(sent.body) == {"model": "gpt-4o-mini", "input": "hello"}
    body = orjson.loads(response.body)
    assert body["model"] == "smart" and body["data"] == answer["data"]
    assert response.usage.prompt_tokens == 2


async def test_embedding_error() -> None:
    transport = MockTransport(lambda r: json_response({"error": {"message": "no", "type": "x"}}, 503))
    base = call({})
    with pytest.raises(GatewayError) as info:
        await adapter(transport).embed(adapter_service_pb2.EmbedRequest(candidate=base.candidate))
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE


async def test_stream_cut_before_the_end_is_an_error() -> None:
    transport = MockTransport(lambda r: sse_response(chunk({"content": "x"}), done=False))
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(transport).chat(call({"stream": True})):
            seen.append(event)
    assert len(seen) == 1 and info.value.reason is Reason.UPSTREAM_ERROR


async def test_stream_without_done_but_finished_is_complete() -> None:
    # Some compatible servers end the body without "data: [DONE]" after the last chunk.
    transport = MockTransport(lambda r: sse_response(chunk({"content": "x"}), chunk({}, "stop"), done=False))
    assert len(await collect(adapter(transport), call({"stream": True}))) == 2
