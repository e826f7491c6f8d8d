"""GoogleAdapter over a MockTransport: what goes upstream, what comes back (no network)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import chat_pb2, embedding_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import google
from services.adapters.base import AdapterDeps
from services.adapters.capabilities import supported_chat_parameters
from services.adapters.credentials import CredentialResolver
from services.adapters.google import GoogleAdapter
from services.adapters.http import HttpClient, HttpRequest
from services.adapters.registry import AdapterRegistry
from services.core.errors import GatewayError, Reason
from tests.unit.adapters.mock_transport import CannedResponse, MockTransport, json_response

ENV = {"GEMINI_KEY": "AIza-secret-key"}
BASE = "https://generativelanguage.test/"
USAGE = {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}
ANSWER = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
          "usageMetadata": USAGE, "modelVersion": "gemini-2.0-flash-001", "responseId": "r1"}


def event(text: str, finish: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage or {"promptTokenCount": 5},
            "modelVersion": "gemini-2.0-flash-001", "responseId": "r2"}


def sse(*payloads: object) -> CannedResponse:
    """One read per event, CRLF framed as Gemini sends it; no [DONE]."""
    return CannedResponse(chunks=[b"data: " + orjson.dumps(p) + b"\r\n\r\n" for p in payloads],
                          header_items={"Content-Type": "text/event-stream"})


STREAM = (event("Hel"), event("lo"), event("", "STOP", USAGE))


def candidate(upstream_model: str = "gemini-2.0-flash",
              api_key_env: str = "GEMINI_KEY") -> route_pb2.RouteCandidate:
    endpoint = route_pb2.Endpoint(provider="gemini", kind="google", base_url=BASE, api_key_env=api_key_env)
    return route_pb2.RouteCandidate(public_model="smart", upstream_model=upstream_model, endpoint=endpoint)


def call(request: dict[str, Any], *, timeout_ms: int = 0, **route: str) -> adapter_service_pb2.ChatRequest:
    base = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    typed = json_format.ParseDict(base | request, chat_pb2.ChatCompletionRequest())
    return adapter_service_pb2.ChatRequest(candidate=candidate(**route), request=typed, request_id="req-1",
                                           timeout_ms=timeout_ms)


def adapter(transport: MockTransport) -> GoogleAdapter:
    return GoogleAdapter(HttpClient(transport), CredentialResolver(ENV), default_timeout_s=30.0)


async def collect(transport: MockTransport, request: adapter_service_pb2.ChatRequest,
                  ) -> list[adapter_service_pb2.ChatResponse]:
    return [e async for e in adapter(transport).chat(request)]


async def test_non_stream_request_and_answer() -> None:
    transport = MockTransport(lambda r: json_response(ANSWER))
    [answer] = await collect(transport, call({"temperature": 0.2, "models": ["x"]}))
    sent: HttpRequest = transport.sent[0]
    assert (sent.method, sent.url) == (
        "POST", "https://generativelanguage.test/v1beta/models/gemini-2.0-flash:generateContent")
    assert sent.headers["x-goog-api-key"] == "AIza-secret-key" and "Authorization" not in sent.headers
    assert sent.headers["X-Request-Id"] == "req-1" and sent.headers["Accept"] == "application/json"
    assert orjson.loads(sent.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                       "generationConfig": {"temperature": 0.2}}
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (30.0, 30.0)
    body = orjson.loads(answer.body)
    ChatCompletion.model_validate(body)
    assert body["id"] == "r1" and body["model"] == "smart"
    assert body["provider"]["name"] == "gemini" and body["provider"]["model"] == "gemini-2.0-flash-001"
    assert answer.has_content and (answer.usage.prompt_tokens, answer.usage.total_tokens) == (5, 7)
    assert transport.responses[0].released


async def test_stream_events_usage_hidden() -> None:
    transport = MockTransport(lambda r: sse(*STREAM))
    events = await collect(transport, call({"stream": True}, timeout_ms=1500))
    sent = transport.sent[0]
    assert sent.url.endswith("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
    assert sent.headers["Accept"] == "text/event-stream" and "stream" not in orjson.loads(sent.body)
    assert (sent.timeouts.total, sent.timeouts.read_idle, sent.timeouts.connect) == (1.5, 1.5, 1.5)
    assert [e.has_content for e in events] == [False, True, True, False, False]
    for e in events[:4]:
        chunk = orjson.loads(e.body)
        ChatCompletionChunk.model_validate(chunk)
        assert "usage" not in chunk and chunk["model"] == "smart" and chunk["id"] == "r2"
    assert events[4].body == b"" and events[4].usage.total_tokens == 7
    assert transport.responses[0].released


async def test_stream_shows_usage_when_asked() -> None:
    transport = MockTransport(lambda r: sse(*STREAM))
    events = await collect(transport, call({"stream": True, "stream_options": {"include_usage": True}}))
    last = orjson.loads(events[-1].body)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 7 and events[-1].usage.total_tokens == 7


async def test_error_status_is_decoded_and_the_response_closed() -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}
    body = {"error": {"code": 429, "message": "Quota exceeded for project 1234",
                      "status": "RESOURCE_EXHAUSTED", "details": [retry]}}
    transport = MockTransport(lambda r: json_response(body, 429))
    with pytest.raises(GatewayError) as info:
        await collect(transport, call({"stream": True}))
    assert info.value.reason is Reason.UPSTREAM_RATE_LIMITED and info.value.retry_after == 2.5
    assert "1234" not in info.value.message and transport.responses[0].closed


async def test_invalid_key_is_an_auth_failure() -> None:
    body = {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com"}]}}
    with pytest.raises(GatewayError) as info:
        await collect(MockTransport(lambda r: json_response(body, 400)), call({}))
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and info.value.retriable


@pytest.mark.parametrize("status, reason", [("UNAVAILABLE", Reason.UPSTREAM_UNAVAILABLE),
                                            ("RESOURCE_EXHAUSTED", Reason.UPSTREAM_RATE_LIMITED),
                                            ("INTERNAL", Reason.UPSTREAM_ERROR)])
async def test_in_stream_error_after_chunks(status: str, reason: Reason) -> None:
    transport = MockTransport(lambda r: sse(event("x"), {"error": {"message": "boom", "status": status}}))
    seen = []
    with pytest.raises(GatewayError) as info:
        async for e in adapter(transport).chat(call({"stream": True})):
            seen.append(e)
    assert [e.has_content for e in seen] == [False, True] and info.value.reason is reason


async def test_stream_cut_before_a_finish_is_an_error() -> None:
    transport = MockTransport(lambda r: sse(event("a"), event("b")))
    seen = []
    with pytest.raises(GatewayError) as info:
        async for e in adapter(transport).chat(call({"stream": True})):
            seen.append(e)
    assert len(seen) == 3 and info.value.reason is Reason.UPSTREAM_ERROR


async def test_closing_the_stream_early_closes_the_upstream() -> None:
    transport = MockTransport(lambda r: sse(*[event(str(i)) for i in range(10)]))
    events = adapter(transport).chat(call({"stream": True}))
    first = await anext(events)
    assert orjson.loads(first.body)["choices"][0]["delta"]["role"] == "assistant"
    await events.aclose()
    response = transport.responses[0]
    assert response.closed and not response.released and response.reads == 1


async def test_missing_key_fails_before_sending() -> None:
    transport = MockTransport(lambda r: json_response(ANSWER))
    with pytest.raises(GatewayError) as info:
        await collect(transport, call({}, api_key_env="NOT_SET_KEY"))
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and "NOT_SET_KEY" in info.value.message
    assert transport.sent == []


@pytest.mark.parametrize("request_, param", [
    ({"logit_bias": {"50256": -100}}, "logit_bias"), ({"audio": {"voice": "alloy"}}, "audio"),
    ({"prediction": {"type": "content"}}, "prediction"), ({"user": "u1"}, "user"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"service_tier": "flex"}, "service_tier"),
    ({"web_search_options": {}}, "web_search_options"), ({"metadata": {"a": "b"}}, "metadata"),
])
async def test_unsupported_parameters_are_refused_before_sending(request_: dict[str, Any],
                                                                  param: str) -> None:
    transport = MockTransport(lambda r: json_response(ANSWER))
    with pytest.raises(GatewayError) as info:
        await collect(transport, call(request_))
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER and info.value.param == param
    assert "gemini" in info.value.message and transport.sent == []


@pytest.mark.parametrize("model, path", [
    ("gemini-2.5-pro", "/v1beta/models/gemini-2.5-pro:generateContent"),
    ("models/gemini-2.5-pro", "/v1beta/models/gemini-2.5-pro:generateContent"),
    ("tunedModels/my-model-7", "/v1beta/tunedModels/my-model-7:generateContent"),
])
async def test_model_names_in_the_url(model: str, path: str) -> None:
    transport = MockTransport(lambda r: json_response(ANSWER))
    await collect(transport, call({}, upstream_model=model))
    assert transport.sent[0].url == "https://generativelanguage.test" + path


@pytest.mark.parametrize("response", [CannedResponse(chunks=[b"<html>"]),
                                      json_response({"usageMetadata": USAGE})])
async def test_invalid_json_and_empty_answers_are_upstream_errors(response: CannedResponse) -> None:
    with pytest.raises(GatewayError) as info:
        await collect(MockTransport(lambda r: response), call({}))
    assert info.value.reason is Reason.UPSTREAM_ERROR


# -- embeddings -------------------------------------------------------------------------------
def embed_call(request: dict[str, Any]) -> adapter_service_pb2.EmbedRequest:
    typed = json_format.ParseDict({"model": "smart"} | request, embedding_pb2.EmbeddingRequest())
    return adapter_service_pb2.EmbedRequest(candidate=candidate("gemini-embedding-001"), request=typed,
                                            request_id="req-2")


async def test_one_text_uses_embed_content() -> None:
    transport = MockTransport(lambda r: json_response({"embedding": {"values": [0.25, -0.5]}}))
    response = await adapter(transport).embed(embed_call({"input": "hello", "dimensions": 2}))
    sent = transport.sent[0]
    assert sent.url == "https://generativelanguage.test/v1beta/models/gemini-embedding-001:embedContent"
    assert sent.headers["x-goog-api-key"] == "AIza-secret-key" and sent.headers["X-Request-Id"] == "req-2"
    assert orjson.loads(sent.body) == {"model": "models/gemini-embedding-001",
                                       "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 2}
    body = orjson.loads(response.body)
    CreateEmbeddingResponse.model_validate(body)
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]
    assert body["model"] == "smart" and body["provider"]["model"] == "gemini-embedding-001"
    assert response.usage.prompt_tokens == 0  # Gemini's embedding API reports no token counts


async def test_a_list_uses_batch_embed_contents_and_base64() -> None:
    answer = {"embeddings": [{"values": [1.0, 2.0]}, {"values": [0.5, 0.0]}],
              "usageMetadata": {"promptTokenCount": 3}}
    transport = MockTransport(lambda r: json_response(answer))
    request = embed_call({"input": ["a", "b c"], "encoding_format": "base64"})
    response = await adapter(transport).embed(request)
    sent = transport.sent[0]
    assert sent.url.endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert orjson.loads(sent.body) == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b c"}]}}]}
    data = orjson.loads(response.body)["data"]
    assert struct.unpack("<2f", base64.b64decode(data[1]["embedding"])) == (0.5, 0.0)
    assert response.usage.prompt_tokens == 3 and response.usage.total_tokens == 3


@pytest.mark.parametrize("request_, reason, param", [
    ({"input": [[1, 2, 3]]}, Reason.UNSUPPORTED_PARAMETER, "input"),
    ({"input": [1, 2, 3]}, Reason.UNSUPPORTED_PARAMETER, "input"),
    ({"input": []}, Reason.INVALID_REQUEST, "input"),
    ({"input": "x", "user": "u1"}, Reason.UNSUPPORTED_PARAMETER, "user"),
    ({"input": "x", "encoding_format": "int8"}, Reason.INVALID_REQUEST, "encoding_format"),
])
async def test_embedding_requests_refused(request_: dict[str, Any], reason: Reason, param: str) -> None:
    transport = MockTransport(lambda r: json_response({}))
    with pytest.raises(GatewayError) as info:
        await adapter(transport).embed(embed_call(request_))
    assert (info.value.reason, info.value.param) == (reason, param) and transport.sent == []


async def test_embedding_answer_of_the_wrong_size_is_an_upstream_error() -> None:
    transport = MockTransport(lambda r: json_response({"embeddings": [{"values": [1.0]}]}))
    with pytest.raises(GatewayError) as info:
        await adapter(transport).embed(embed_call({"input": ["a", "b"]}))
    assert info.value.reason is Reason.UPSTREAM_ERROR


async def test_embedding_error() -> None:
    body = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    with pytest.raises(GatewayError) as info:
        await adapter(MockTransport(lambda r: json_response(body, 503))).embed(embed_call({"input": "x"}))
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE


def test_registry_and_capabilities() -> None:
    deps = AdapterDeps(http=HttpClient(MockTransport(lambda r: json_response({}))),
                       credentials=CredentialResolver(ENV))
    assert isinstance(AdapterRegistry.build(deps).adapter_for("google"), GoogleAdapter)
    listed = supported_chat_parameters("google")
    assert "tools" in listed and "response_format" in listed and "logit_bias" not in listed
    assert "messages" not in listed and set(listed) <= google.SUPPORTED_CHAT_PARAMETERS
    fields = {f.name for f in chat_pb2.ChatCompletionRequest.DESCRIPTOR.fields}
    assert set(google.SUPPORTED_CHAT_PARAMETERS) <= fields
