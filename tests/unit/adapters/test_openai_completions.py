"""Legacy completions: translation, OpenAIAdapter.complete and AdapterServicer.Complete over a
MockTransport (no network)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pytest
from google.protobuf import json_format
from openai.types import Completion, CompletionChoice

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.openai.v1 import completion_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters import openai_translate as translate
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient
from services.adapters.openai import OpenAIAdapter
from services.adapters.registry import AdapterRegistry
from services.adapters.servicer import AdapterServicer
from services.core.errors import GatewayError, Reason
from services.core.rpc import InProcessContext
from tests.unit.adapters.mock_transport import MockTransport, json_response, sse_response

ENV = {"ACME_KEY": "sk-acme-secret"}
TARGET = translate.Target(provider="acme", public_model="writer", upstream_model="gpt-3.5-turbo-instruct")

# Every field of CompletionRequest, as a client would send it.
FULL_REQUEST: dict[str, Any] = {
    "model": "writer", "prompt": ["Say this", "is a test"], "stream": True,
    "stream_options": {"include_usage": False}, "best_of": 3, "echo": True, "frequency_penalty": 0.5,
    "logit_bias": {"50256": -100, "11": 2.5}, "logprobs": 2, "max_tokens": 0, "n": 2,
    "presence_penalty": -1, "seed": 9007199254740993, "stop": ["\n", "END"], "suffix": "!", "temperature": 0,
    "top_p": 0.9, "user": "u-1",
}
EXTENSIONS = {"models": ["other"], "provider": {"order": ["a"], "allow_fallbacks": False}}
HEAD = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct-0914"}
USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
ANSWER: dict[str, Any] = {
    **HEAD, "usage": USAGE,
    "choices": [{"text": " Hello there", "index": 0, "logprobs": None, "finish_reason": "stop"}]}


class CompletionChunkChoice(CompletionChoice):
    """A streamed choice: `finish_reason` is null until the last (the SDK shares one type for both)."""

    finish_reason: Literal["stop", "length", "content_filter"] | None = None  # type: ignore[assignment]


class CompletionChunk(Completion):
    choices: list[CompletionChunkChoice]  # type: ignore[assignment]


def typed(obj: dict[str, Any]) -> completion_pb2.CompletionRequest:
    """What Envoy's transcoder hands us for this JSON body."""
    return json_format.ParseDict(obj, completion_pb2.CompletionRequest())


def chunk(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    return {**HEAD, "choices": [choice], **extra}


def call(request: dict[str, Any], kind: str = "openai",
         timeout_ms: int = 0) -> adapter_service_pb2.CompleteRequest:
    candidate = route_pb2.RouteCandidate(
        public_model="writer", upstream_model="gpt-3.5-turbo-instruct", endpoint=route_pb2.Endpoint(
            provider="acme", kind=kind, base_url="https://api.acme.test/v1", api_key_env="ACME_KEY"))
    typed_request = typed({"model": "writer"} | request)
    return adapter_service_pb2.CompleteRequest(candidate=candidate, request=typed_request,
                                               request_id="req-c", timeout_ms=timeout_ms)


def adapter(transport: MockTransport) -> OpenAIAdapter:
    return OpenAIAdapter(HttpClient(transport), CredentialResolver(ENV), default_timeout_s=30.0)


async def collect(request: adapter_service_pb2.CompleteRequest,
                  transport: MockTransport) -> list[adapter_service_pb2.ChatResponse]:
    return [event async for event in adapter(transport).complete(request)]


def test_request_body_keeps_every_field_and_asks_for_usage() -> None:
    body = translate.chat_request_body(typed(FULL_REQUEST | EXTENSIONS), "gpt-3.5-turbo-instruct")
    asked = {"model": "gpt-3.5-turbo-instruct", "stream_options": {"include_usage": True}}
    assert body == FULL_REQUEST | asked
    assert isinstance(body["seed"], int) and body["logit_bias"] == {"50256": -100, "11": 2.5}


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], ""])
def test_every_prompt_form_goes_out_as_sent(prompt: Any) -> None:
    body = translate.chat_request_body(typed({"model": "w", "prompt": prompt}), "up")
    assert body == {"model": "up", "prompt": prompt}
    assert "stream_options" not in body  # only a stream asks for usage


def test_text_in_a_choice_is_content() -> None:
    event = translate.completion_event(orjson.dumps(ANSWER), TARGET, 12, content=translate.TEXT_CONTENT)
    body = orjson.loads(event.body)
    assert body["model"] == "writer" and body["provider"] == {
        "name": "acme", "model": "gpt-3.5-turbo-instruct-0914", "latency_ms": 12}
    Completion.model_validate(body)
    assert event.has_content and event.usage.total_tokens == 6
    # The chat rule would not have seen it: chat content lives under `message`.
    assert not translate.completion_event(orjson.dumps(ANSWER), TARGET, 1).has_content
    empty = {**ANSWER, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]}
    event = translate.completion_event(orjson.dumps(empty), TARGET, 1, content=translate.TEXT_CONTENT)
    assert not event.has_content


async def test_non_stream_request_and_answer() -> None:
    transport = MockTransport(lambda r: json_response(ANSWER))
    [event] = await collect(call({"prompt": "Say hi", "max_tokens": 5, "models": ["x"]}), transport)
    sent = transport.sent[0]
    assert (sent.method, sent.url) == ("POST", "https://api.acme.test/v1/completions")
    assert sent.headers["Authorization"] == "Bearer sk-acme-secret"
    assert sent.headers["X-Request-Id"] == "req-c"
    assert orjson.loads(sent.body) == {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}
    assert sent.headers["Accept"] == "application/json" and sent.timeouts.total == 30.0
    body = orjson.loads(event.body)
    assert Completion.model_validate(body).choices[0].text == " Hello there"
    assert body["model"] == "writer" and event.has_content
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (4, 2)
    assert transport.responses[0].released


async def test_stream_events_usage_hidden() -> None:
    transport = MockTransport(lambda r: sse_response(
        chunk(" Hel", usage=None), chunk("lo", usage=None), chunk("", "stop", usage=None),
        {**HEAD, "choices": [], "usage": USAGE}))
    events = await collect(call({"prompt": "x", "stream": True}, timeout_ms=2000), transport)
    sent = transport.sent[0]
    assert orjson.loads(sent.body)["stream_options"] == {"include_usage": True}
    assert sent.headers["Accept"] == "text/event-stream"
    assert (sent.timeouts.total, sent.timeouts.read_idle) == (2.0, 2.0)  # the deadline bounds a stream too
    assert [e.has_content for e in events] == [True, True, False, False]
    shown = [orjson.loads(e.body) for e in events[:3]]
    assert all("usage" not in b and b["model"] == "writer" and b["provider"]["name"] == "acme" for b in shown)
    assert [CompletionChunk.model_validate(b).choices[0].text for b in shown] == [" Hel", "lo", ""]
    assert events[3].body == b"" and events[3].usage.total_tokens == 6


async def test_stream_shows_usage_when_asked() -> None:
    transport = MockTransport(lambda r: sse_response(chunk("a", "stop", usage=None),
                                                     {**HEAD, "choices": [], "usage": USAGE}))
    events = await collect(call({"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}),
                           transport)
    assert orjson.loads(events[0].body)["usage"] is None
    last = orjson.loads(events[1].body)
    assert last["usage"] == USAGE and last["model"] == "writer" and events[1].usage.total_tokens == 6
    CompletionChunk.model_validate(last)


async def test_errors_as_chat() -> None:
    body = {"error": {"message": "Rate limit reached for org-secret", "type": "requests", "param": None,
                      "code": "rate_limit_exceeded"}}
    transport = MockTransport(lambda r: json_response(body, 429, {"Retry-After": "7"}))
    with pytest.raises(GatewayError) as info:
        await collect(call({"prompt": "x"}), transport)
    assert info.value.reason is Reason.UPSTREAM_RATE_LIMITED and info.value.retry_after == 7.0
    assert "org-secret" not in info.value.message and transport.responses[0].closed


async def test_in_stream_error_and_cut_stream() -> None:
    failing = MockTransport(lambda r: sse_response(
        chunk("a"), {"error": {"message": "boom", "type": "server_error"}}, done=False))
    seen = []
    with pytest.raises(GatewayError) as info:
        async for event in adapter(failing).complete(call({"prompt": "x", "stream": True})):
            seen.append(event)
    assert len(seen) == 1 and info.value.reason is Reason.UPSTREAM_ERROR
    cut = MockTransport(lambda r: sse_response(chunk("a"), done=False))
    with pytest.raises(GatewayError) as info:
        await collect(call({"prompt": "x", "stream": True}), cut)
    assert info.value.reason is Reason.UPSTREAM_ERROR and "ended before" in info.value.message


async def test_closing_the_stream_early_closes_the_upstream() -> None:
    transport = MockTransport(lambda r: sse_response(*[chunk(str(i)) for i in range(10)]))
    events = adapter(transport).complete(call({"prompt": "x", "stream": True}))
    await anext(events)
    await events.aclose()
    response = transport.responses[0]
    assert response.closed and not response.released and response.reads == 1


class Context(InProcessContext):
    def invocation_metadata(self) -> tuple[()]:
        return ()


class ChatOnlyAdapter:
    """A provider with chat and embeddings only (as anthropic, google and cohere)."""

    def chat(self, call: Any) -> Any:
        raise AssertionError("not called")

    async def embed(self, call: Any) -> Any:
        raise AssertionError("not called")


async def test_servicer_complete_streams_or_refuses() -> None:
    transport = MockTransport(lambda r: sse_response(chunk("a", "stop")))
    http = HttpClient(transport)
    registry = AdapterRegistry({"openai_compatible": OpenAIAdapter(http, CredentialResolver(ENV)),
                                "cohere": ChatOnlyAdapter()})  # type: ignore[dict-item]
    servicer = AdapterServicer(registry, http)
    request = call({"prompt": "x", "stream": True}, kind="openai_compatible")
    events = [e async for e in servicer.Complete(request, Context())]
    assert len(events) == 1 and events[0].has_content
    with pytest.raises(GatewayError) as info:
        [e async for e in servicer.Complete(call({"prompt": "x"}, kind="cohere"), Context())]
    assert info.value.reason is Reason.UNSUPPORTED_PARAMETER
    assert info.value.message == "Provider kind 'cohere' does not support completions."
    with pytest.raises(GatewayError) as info:
        [e async for e in servicer.Complete(adapter_service_pb2.CompleteRequest(), Context())]
    assert info.value.reason is Reason.INVALID_REQUEST and len(transport.sent) == 1
