"""Translation between our typed messages and OpenAI JSON (no I/O)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aggregator.openai.v1 import chat_pb2, embedding_pb2
from services.adapters import openai_translate as translate

TARGET = translate.Target(provider="acme", public_model="smart", upstream_model="gpt-4o-mini")

# A request using every field of ChatCompletionRequest, as a client would send it.
FULL_REQUEST: dict[str, Any] = {
    "model": "smart",
    "messages": [
        {"role": "developer", "content": "Be terse.", "name": "dev"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url",
                                      "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
        {"role": "assistant", "content": None, "refusal": "no", "audio": {"id": "audio_1"},
         "function_call": {"name": "f", "arguments": "{}"},
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": "{\"a\":1}"}},
                        {"id": "call_2", "type": "custom", "custom": {"name": "g", "input": "x"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ],
    "stream": False,
    "stream_options": {"include_usage": False, "include_obfuscation": True},
    "temperature": 0, "top_p": 0.5, "n": 2, "stop": ["END", "STOP"], "max_tokens": 0,
    "max_completion_tokens": 100, "presence_penalty": -0.5, "frequency_penalty": 1.5,
    "logit_bias": {"50256": -100, "11": 5}, "logprobs": True, "top_logprobs": 3, "user": "u-1",
    "seed": 9007199254740993,
    "tools": [{"type": "function", "function": {
        "name": "f", "description": "d", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 1, "maximum": 10.5}},
        "required": ["a"], "additionalProperties": False}}},
              {"type": "custom", "custom": {"name": "g", "format": {"type": "text"}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "strict": True,
                                                               "schema": {"type": "object",
                                                                          "maxProperties": 3}}},
    "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "reasoning_effort": "low",
    "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "draft"}, "verbosity": "low",
    "web_search_options": {"search_context_size": "low"}, "function_call": "auto",
    "functions": [{"name": "f", "parameters": {}}], "prompt_cache_key": "pk", "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "x"}, "safety_identifier": "sid", "moderation": {"enabled": True},
}
EXTENSIONS = {"models": ["other"], "provider": {"order": ["a", "b"], "allow_fallbacks": False}}


def typed(obj: dict[str, Any]) -> chat_pb2.ChatCompletionRequest:
    """What Envoy's transcoder hands us for this JSON body."""
    return json_format.ParseDict(obj, chat_pb2.ChatCompletionRequest())


def test_full_request_covers_every_proto_field() -> None:
    fields = {f.name for f in chat_pb2.ChatCompletionRequest.DESCRIPTOR.fields}
    assert fields - set(FULL_REQUEST) == set(EXTENSIONS)


def test_every_field_is_kept_and_extensions_dropped() -> None:
    body = translate.chat_request_body(typed(FULL_REQUEST | EXTENSIONS), "gpt-4o-mini")
    assert body == FULL_REQUEST | {"model": "gpt-4o-mini"}
    # Integers stay integers on the wire (Struct and map<string, double> hold doubles).
    schema = body["tools"][0]["function"]["parameters"]["properties"]["a"]
    assert type(schema["minimum"]) is int and type(schema["maximum"]) is float
    assert type(body["response_format"]["json_schema"]["schema"]["maxProperties"]) is int
    assert type(body["logit_bias"]["50256"]) is int and type(body["seed"]) is int
    wire = orjson.dumps(body)
    assert b'"seed":9007199254740993' in wire and b'"temperature":0' in wire and b'"max_tokens":0' in wire


def test_absent_fields_stay_absent() -> None:
    request = typed({"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
    body = translate.chat_request_body(request,
                                       "up")
    assert body == {"model": "up", "messages": [{"role": "user", "content": "hi"}]}


def test_stream_always_asks_for_usage() -> None:
    base = {"model": "m", "messages": [], "stream": True}
    assert translate.chat_request_body(typed(base), "up")["stream_options"] == {"include_usage": True}
    kept = translate.chat_request_body(typed(base | {"stream_options": {"include_obfuscation": False}}), "up")
    assert kept["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_a_provider_refusing_stream_options_never_gets_them() -> None:
    request = typed({"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}})
    body = translate.chat_request_body(request, "up", stream_options=False)
    assert "stream_options" not in body and body["stream"] is True


def test_embedding_request() -> None:
    request = json_format.ParseDict({"model": "e", "input": [[1, 2], [3]], "dimensions": 8,
                                     "encoding_format": "base64",
                                     "user": "u", **EXTENSIONS}, embedding_pb2.EmbeddingRequest())
    assert translate.embedding_request_body(request, "text-embedding-3-small") == {
        "model": "text-embedding-3-small", "input": [[1, 2], [3]], "dimensions": 8,
        "encoding_format": "base64",
        "user": "u"}


COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0,
                 "message": {"role": "assistant", "content": "Hi", "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10,
              "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_1", "x_vendor_extra": {"kept": 1.25},
}


def test_completion_is_relabelled_and_otherwise_untouched() -> None:
    event = translate.completion_event(orjson.dumps(COMPLETION), TARGET, 37)
    body = orjson.loads(event.body)
    assert body["model"] == "smart"
    assert body["provider"] == {"name": "acme", "model": "gpt-4o-mini-2024-07-18", "latency_ms": 37}
    assert {k: v for k, v in body.items() if k not in ("model", "provider")} == {
        k: v for k, v in COMPLETION.items() if k != "model"}
    assert list(body)[:4] == ["id", "object", "created", "model"]  # field order kept
    assert event.has_content and event.latency_ms == 37
    assert (event.usage.prompt_tokens, event.usage.total_tokens) == (9, 10)
    assert event.usage.prompt_tokens_details.cached_tokens == 2
    ChatCompletion.model_validate_json(event.body)


def test_completion_without_reported_model_uses_the_upstream_name() -> None:
    obj = {k: v for k, v in COMPLETION.items() if k != "model"}
    body = orjson.loads(translate.completion_event(orjson.dumps(obj), TARGET, 1).body)
    assert body["provider"]["model"] == "gpt-4o-mini"


def chunk(delta: dict[str, Any], *, finish: str | None = None, usage: Any = "absent") -> dict[str, Any]:
    obj: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                           "model": "gpt-4o-mini-x",
                           "system_fingerprint": "fp",
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                    "finish_reason": finish}]}
    if usage != "absent":
        obj["usage"] = usage
    return obj


@pytest.mark.parametrize("delta, has_content", [
    ({"role": "assistant", "content": "", "refusal": None}, False),
    ({"content": "Hi"}, True),
    ({"refusal": "no"}, True),
    ({"reasoning_content": "thinking"}, True),
    ({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                      "function": {"name": "f", "arguments": ""}}]}, True),
    ({}, False),
])
def test_chunk_has_content(delta: dict[str, Any], has_content: bool) -> None:
    event = translate.chunk_event(chunk(delta), TARGET, 5, client_wants_usage=False)
    assert event.has_content is has_content
    body = orjson.loads(event.body)
    assert body["model"] == "smart" and body["provider"] == {"name": "acme", "model": "gpt-4o-mini-x",
                                                             "latency_ms": 5}
    assert body["choices"] == chunk(delta)["choices"]
    ChatCompletionChunk.model_validate_json(event.body)


USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6,
         "completion_tokens_details": {"reasoning_tokens": 1}}


def usage_chunk() -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
            "usage": USAGE}


def test_usage_chunk_forwarded_when_the_client_asked() -> None:
    event = translate.chunk_event(usage_chunk(), TARGET, 9, client_wants_usage=True)
    assert orjson.loads(event.body)["usage"] == USAGE
    assert event.usage.total_tokens == 6 and event.usage.completion_tokens_details.reasoning_tokens == 1
    assert not event.has_content


def test_usage_chunk_hidden_but_billed_when_the_client_did_not_ask() -> None:
    event = translate.chunk_event(usage_chunk(), TARGET, 9, client_wants_usage=False)
    assert event.body == b"" and event.usage.total_tokens == 6 and event.latency_ms == 9


def test_null_usage_field_removed_when_the_client_did_not_ask() -> None:
    hidden = translate.chunk_event(chunk({"content": "a"}, usage=None), TARGET, 1, client_wants_usage=False)
    assert "usage" not in orjson.loads(hidden.body) and not hidden.HasField("usage")
    shown = translate.chunk_event(chunk({"content": "a"}, usage=None), TARGET, 1, client_wants_usage=True)
    assert orjson.loads(shown.body)["usage"] is None


def test_usage_on_a_content_chunk_keeps_the_content() -> None:
    # Some compatible servers put usage on the last content chunk instead of a chunk of its own.
    event = translate.chunk_event(chunk({"content": "z"}, finish="stop", usage=USAGE), TARGET, 1,
                                  client_wants_usage=False)
    body = orjson.loads(event.body)
    assert body["choices"][0]["delta"] == {"content": "z"} and "usage" not in body
    assert event.usage.prompt_tokens == 4


def test_stream_error_detection() -> None:
    assert translate.stream_error(chunk({"content": "a"})) is None
    error = translate.stream_error({"error": {"message": "boom", "type": "server_error"}})
    assert error is not None and error.status_hint() == 500


def test_embedding_event() -> None:
    data = [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
    raw = orjson.dumps({"object": "list", "data": data,
                        "model": "text-embedding-3-small", "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    response = translate.embedding_event(raw, TARGET, 12)
    body = orjson.loads(response.body)
    assert body["model"] == "smart" and body["data"][0]["embedding"] == [0.5, -1.0]
    assert body["provider"] == {"name": "acme", "model": "text-embedding-3-small", "latency_ms": 12}
    assert (response.usage.prompt_tokens, response.usage.total_tokens, response.latency_ms) == (3, 3, 12)


def test_translation_does_not_mutate_the_request() -> None:
    request = typed(FULL_REQUEST | EXTENSIONS)
    before = copy.deepcopy(request)
    translate.chat_request_body(request, "up")
    assert request == before
