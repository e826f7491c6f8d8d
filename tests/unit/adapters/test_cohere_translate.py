"""cohere_translate: OpenAI requests to Cohere's v2 body, Cohere's answers to OpenAI's (no I/O).

Request bodies are checked with the `cohere` SDK's request types; answers, after stamping, with
the `openai` SDK's types.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from cohere.types import ChatMessageV2, ResponseFormatV2, ToolV2
from google.protobuf import json_format
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from aggregator.openai.v1 import chat_pb2, embedding_pb2
from services.adapters import cohere_answers as answers
from services.adapters import cohere_translate as translate
from services.adapters.openai_translate import Target, chunk_event, completion_event, embedding_event
from services.core.errors import GatewayError, Reason
from tests.fakes import cohere_payloads as payloads

TARGET = Target(provider="co", public_model="smart", upstream_model="command-a-03-2025")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 100}},
                                                "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}


def body_of(request: dict[str, Any]) -> dict[str, Any]:
    typed = json_format.ParseDict({"model": "smart"} | request, chat_pb2.ChatCompletionRequest())
    return dict(translate.chat_request_body(typed, "command-a-03-2025", "co"))


def refusal(request: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        body_of(request)
    return info.value


def valid_cohere(body: dict[str, Any]) -> None:
    """The body parses as the SDK's request types."""
    TypeAdapter(list[ChatMessageV2]).validate_python(body["messages"])
    for tool in body.get("tools", []):
        ToolV2.model_validate(tool)
    if "response_format" in body:
        TypeAdapter(ResponseFormatV2).validate_python(body["response_format"])


def test_conversation_with_tools_and_sampling() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    body = body_of({"messages": [
        {"role": "developer", "content": "Be terse."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "what is this"}, IMAGE]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "12 degrees"}]},
        {"role": "assistant", "content": "It is 12 degrees."},
        {"role": "user", "content": "thanks", "name": "ann"}],
        "tools": [WEATHER], "tool_choice": "required", "temperature": 0, "top_p": 0.5, "seed": 7,
        "max_completion_tokens": 50, "max_tokens": 99, "stop": "END", "frequency_penalty": 0.5,
        "presence_penalty": 0, "n": 1, "parallel_tool_calls": True, "stream": True,
        "stream_options": {"include_usage": True}, "models": ["x"], "provider": {"order": ["co"]}})
    valid_cohere(body)
    assert body == {
        "model": "command-a-03-2025", "stream": True,
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, IMAGE]},
            {"role": "assistant", "tool_plan": "Let me look.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "12 degrees"}]},
            {"role": "assistant", "content": "It is 12 degrees."},
            {"role": "user", "content": "thanks"}],
        "tools": [WEATHER], "tool_choice": "REQUIRED", "temperature": 0, "p": 0.5, "seed": 7,
        "max_tokens": 50, "stop_sequences": ["END"], "frequency_penalty": 0.5, "presence_penalty": 0}
    # Schema integers stay integers on the wire.
    assert b'"maxLength":100' in orjson.dumps(body) and b'"maxLength":100.0' not in orjson.dumps(body)


def test_assistant_tool_calls_without_text_carry_no_plan() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    body = body_of({"messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": None, "tool_calls": [call]},
                                 {"role": "tool", "tool_call_id": "c", "content": "ok"}]})
    valid_cohere(body)
    assert body["messages"][1] == {"role": "assistant", "tool_calls": [call]}


@pytest.mark.parametrize("choice, expected", [("auto", None), ("none", "NONE"), ("required", "REQUIRED"),
                                              ({"type": "function", "function": {"name": "get_weather"}},
                                               "REQUIRED")])
def test_tool_choice(choice: Any, expected: str | None) -> None:
    body = body_of({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
                    "tool_choice": choice})
    assert body.get("tool_choice") == expected


def test_a_named_tool_among_several_cannot_be_forced() -> None:
    error = refusal({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER, CLOCK],
                     "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert error.reason is Reason.UNSUPPORTED_PARAMETER and error.param == "tool_choice"
    assert "'co'" in error.message


def test_tools_without_schema_and_strict() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}  # type: ignore[dict-item]
    body = body_of({"messages": [{"role": "user", "content": "x"}], "tools": [CLOCK, strict]})
    valid_cohere(body)
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    assert body["strict_tools"] is True and "strict" not in body["tools"][1]["function"]


@pytest.mark.parametrize("fmt, expected", [
    ({"type": "text"}, {"type": "text"}),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}}}},
     {"type": "json_object", "json_schema": {"type": "object", "properties": {"a": {"type": "integer",
                                                                                    "minimum": 1}}}}),
])
def test_response_format(fmt: dict[str, Any], expected: dict[str, Any]) -> None:
    body = body_of({"messages": [{"role": "user", "content": "x"}], "response_format": fmt})
    valid_cohere(body)
    assert body["response_format"] == expected
    assert b'"minimum":1.0' not in orjson.dumps(body)


@pytest.mark.parametrize("top_p, p", [(1.0, 0.99), (0.0, 0.01), (0.9, 0.9)])
def test_top_p_is_kept_in_cohere_range(top_p: float, p: float) -> None:
    assert body_of({"messages": [{"role": "user", "content": "x"}], "top_p": top_p})["p"] == p


def test_max_tokens_alone_and_stop_list() -> None:
    body = body_of({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stop": ["a", "b"]})
    assert (body["max_tokens"], body["stop_sequences"]) == (3, ["a", "b"])
    assert "stream" not in body


@pytest.mark.parametrize("request_, param", [
    ({"n": 2}, "n"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"frequency_penalty": -0.5}, "frequency_penalty"),
    ({"presence_penalty": 1.5}, "presence_penalty"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA"}}]}]},
     "messages"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
     "messages"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x", "audio": {"id": "a1"}}]}, "messages"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "custom", "custom": {"name": "g", "input": "x"}}]}]}, "messages"),
])
def test_what_cohere_cannot_honour_is_refused(request_: dict[str, Any], param: str) -> None:
    error = refusal({"messages": [{"role": "user", "content": "x"}]} | request_)
    assert (error.reason, error.param) == (Reason.UNSUPPORTED_PARAMETER, param)
    assert error.code == "unsupported_parameter" and error.http_status == 400


# -- answers -------------------------------------------------------------------------------------


def stamped(answer: dict[str, Any]) -> tuple[ChatCompletion, Any]:
    event = completion_event(orjson.dumps(answer), TARGET, 12)
    parsed = ChatCompletion.model_validate_json(event.body)
    assert parsed.model == "smart" and orjson.loads(event.body)["provider"]["model"] == "command-a-03-2025"
    return parsed, event


def test_text_answer_and_billed_usage() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "Hello, gateway"}]}
    cohere = payloads.chat_response(request, response_id="r-1")
    parsed, event = stamped(answers.completion(cohere, "command-a-03-2025", "co"))
    choice = parsed.choices[0]
    assert (parsed.id, choice.message.content, choice.finish_reason) == ("r-1", "Hello, gateway", "stop")
    assert event.has_content and (event.usage.prompt_tokens, event.usage.completion_tokens) == (5, 2)
    assert cohere["usage"]["tokens"]["input_tokens"] == 5 + payloads.PREAMBLE_TOKENS  # not what we bill


def test_tool_call_answer_keeps_ids_and_shows_the_plan() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "get_weather in Oslo"}],
               "tools": [WEATHER]}
    cohere = payloads.chat_response(request, response_id="r-000000000002")
    parsed, event = stamped(answers.completion(cohere, "command-a-03-2025", "co"))
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I will use get_weather to answer."
    [call] = choice.message.tool_calls or []
    assert call.id == cohere["message"]["tool_calls"][0]["id"]
    assert call.function.arguments == '{"city":"get_weather in Oslo"}'  # type: ignore[union-attr]


def test_thinking_is_reasoning_content() -> None:
    cohere = {"id": "r", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Hmm."}, {"type": "text", "text": "Yes."}]}}
    answer = answers.completion(cohere, "m", "co")
    assert answer["choices"][0]["message"]["reasoning_content"] == "Hmm."
    assert answer["choices"][0]["message"]["content"] == "Yes." and answer["usage"] is None


@pytest.mark.parametrize("reason, finish", [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"),
                                            ("MAX_TOKENS", "length"), ("TOOL_CALL", "tool_calls"),
                                            ("SOMETHING_NEW", "stop")])
def test_finish_reasons(reason: str, finish: str) -> None:
    assert answers.finish_reason(reason, "co") == finish


@pytest.mark.parametrize("reason, expected", [("ERROR", Reason.UPSTREAM_ERROR),
                                              ("TIMEOUT", Reason.UPSTREAM_TIMEOUT)])
def test_failed_generations_raise(reason: str, expected: Reason) -> None:
    with pytest.raises(GatewayError) as info:
        answers.completion({"id": "r", "finish_reason": reason, "message": {"role": "assistant"}},
                             "m", "co")
    assert info.value.reason is expected and "'co'" in info.value.message


def test_usage_prefers_billed_units_and_falls_back_to_tokens() -> None:
    billed = answers.usage({"billed_units": {"input_tokens": 5, "output_tokens": 2},
                              "tokens": {"input_tokens": 70, "output_tokens": 2}})
    assert billed is not None and billed["prompt_tokens"] == 5
    only_tokens = answers.usage({"tokens": {"input_tokens": 70.0, "output_tokens": 3.2},
                                   "cached_tokens": 99})
    assert only_tokens is not None
    assert (only_tokens["prompt_tokens"], only_tokens["completion_tokens"]) == (70, 4)  # never rounded down
    assert only_tokens["prompt_tokens_details"]["cached_tokens"] == 70  # a breakdown, never more
    assert answers.usage(None) is None


# -- streams -------------------------------------------------------------------------------------


def run(translator: answers.StreamTranslator, events: list[Any], *, usage: bool = True,
        ) -> list[ChatCompletionChunk]:
    chunks = []
    for event in events:
        for chunk in translator.feed(event):
            body = chunk_event(chunk, TARGET, 1, client_wants_usage=usage).body
            if body:
                chunks.append(ChatCompletionChunk.model_validate_json(body))
    return chunks


def test_text_stream() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "stream these four words"}]}
    events = [data for _, data in payloads.stream_events(request, response_id="r-s")]
    translator = answers.StreamTranslator("command-a-03-2025", "co")
    chunks = run(translator, events)
    assert translator.finished and translator.error is None
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "stream these four words"
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert {c.id for c in chunks} == {"r-s"}
    assert sum(bool(c.choices and c.choices[0].delta.role) for c in chunks) == 1


def tool_events(*names: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"type": "message-start", "id": "r-t"},
                                    {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "Plan."}}}]
    for i, name in enumerate(names):
        start = {"id": f"{name}_id", "type": "function", "function": {"name": name, "arguments": ""}}
        events += [{"type": "tool-call-start", "index": i, "delta": {"message": {"tool_calls": start}}},
                   {"type": "tool-call-delta", "index": i,
                    "delta": {"message": {"tool_calls": {"function": {"arguments": '{"a":'}}}}},
                   {"type": "tool-call-delta", "index": i,
                    "delta": {"message": {"tool_calls": {"function": {"arguments": f"{i}}}"}}}}},
                   {"type": "tool-call-end", "index": i}]
    events.append({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 9, "output_tokens": 8}}}})
    return events


def test_tool_call_stream_counts_calls() -> None:
    chunks = run(answers.StreamTranslator("m", "co"), tool_events("get_weather", "get_time"))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == "Plan."
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.id) for d in deltas if d.id] == [(0, "get_weather_id"), (1, "get_time_id")]
    assert {i: "".join(d.function.arguments or "" for d in deltas if d.index == i)  # type: ignore[union-attr]
            for i in (0, 1)} == {0: '{"a":0}', 1: '{"a":1}'}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


def test_thinking_citations_and_unknown_events() -> None:
    events = [{"type": "message-start", "id": "r"},
              {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "thinking",
                                                                                     "thinking": ""}}}},
              {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": "Hmm"}}}},
              {"type": "content-end", "index": 0},
              {"type": "content-start", "index": 1,
               "delta": {"message": {"content": {"type": "text", "text": ""}}}},
              {"type": "content-delta", "index": 1, "delta": {"message": {"content": {"text": "Hi"}}}},
              {"type": "citation-start", "index": 0,
               "delta": {"message": {"citations": {"start": 0, "end": 2}}}},
              {"type": "citation-end", "index": 0}, {"type": "debug", "prompt": "..."}, {"type": "brand-new"},
              {"type": "message-end", "delta": {"finish_reason": "COMPLETE"}}]
    chunks = run(answers.StreamTranslator("m", "co"), events, usage=False)
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks]
    assert deltas == [{"role": "assistant", "reasoning_content": ""}, {"reasoning_content": "Hmm"},
                      {"content": "Hi"}, {}]


def test_failed_generation_gives_usage_then_error() -> None:
    translator = answers.StreamTranslator("m", "co")
    chunks = translator.feed(payloads.failed_end(finish_reason="TIMEOUT", output_tokens=3))
    assert [c["choices"] for c in chunks] == [[]] and chunks[0]["usage"]["completion_tokens"] == 3
    assert translator.error is not None and translator.error.reason is Reason.UPSTREAM_TIMEOUT


@pytest.mark.parametrize("event", [{"no": "type"}, [1], {"type": "tool-call-delta", "delta": {}}])
def test_malformed_stream_events(event: Any) -> None:
    with pytest.raises(GatewayError) as info:
        answers.StreamTranslator("m", "co").feed(event)
    assert info.value.reason is Reason.UPSTREAM_ERROR


# -- embeddings ----------------------------------------------------------------------------------


def embed_body(request: dict[str, Any]) -> dict[str, Any]:
    typed = json_format.ParseDict({"model": "smart"} | request, embedding_pb2.EmbeddingRequest())
    return dict(translate.embed_request_body(typed, "embed-v4.0", "co"))


def test_embed_request() -> None:
    assert embed_body({"input": "hello", "models": ["x"]}) == {
        "model": "embed-v4.0", "texts": ["hello"], "input_type": "search_document",
        "embedding_types": ["float"], "truncate": "NONE"}
    chosen = embed_body({"input": ["a", "b"], "dimensions": 256, "encoding_format": "base64",
                         "provider": {"input_type": "search_query", "truncate": "END", "order": ["co"]}})
    assert chosen == {"model": "embed-v4.0", "texts": ["a", "b"], "input_type": "search_query",
                      "embedding_types": ["float"], "truncate": "END", "output_dimension": 256}


@pytest.mark.parametrize("request_, reason, param", [
    ({"input": [1, 2, 3]}, Reason.UNSUPPORTED_PARAMETER, "input"),
    ({"input": [[1, 2], [3]]}, Reason.UNSUPPORTED_PARAMETER, "input"),
    ({"input": []}, Reason.INVALID_REQUEST, "input"),
    ({"input": "x", "user": "u1"}, Reason.UNSUPPORTED_PARAMETER, "user"),
    ({"input": "x", "encoding_format": "int8"}, Reason.INVALID_REQUEST, "encoding_format"),
    ({"input": "x", "provider": {"input_type": "image"}}, Reason.INVALID_REQUEST, "provider.input_type"),
    ({"input": "x", "provider": {"truncate": "MIDDLE"}}, Reason.INVALID_REQUEST, "provider.truncate"),
])
def test_embed_refusals(request_: dict[str, Any], reason: Reason, param: str) -> None:
    with pytest.raises(GatewayError) as info:
        embed_body(request_)
    assert (info.value.reason, info.value.param) == (reason, param)


def test_embedding_answer_float_and_base64() -> None:
    cohere = payloads.embed_response({"texts": ["one", "two words"], "output_dimension": 4}, response_id="e")
    floats = answers.embedding_list(cohere, "embed-v4.0", as_base64=False)
    event = embedding_event(orjson.dumps(floats), TARGET, 3)
    parsed = CreateEmbeddingResponse.model_validate_json(event.body)
    assert [len(d.embedding) for d in parsed.data] == [4, 4] and event.usage.prompt_tokens == 3
    encoded = answers.embedding_list(cohere, "embed-v4.0", as_base64=True)
    vector = struct.unpack("<4f", base64.b64decode(encoded["data"][1]["embedding"]))
    assert vector == pytest.approx(cohere["embeddings"]["float"][1])


def test_embedding_answer_older_shape_and_missing_vectors() -> None:
    older = {"id": "e", "embeddings": [[0.5, 0.25]], "meta": {"tokens": {"input_tokens": 4}}}
    answer = answers.embedding_list(older, "embed-english-v3.0", as_base64=False)
    assert answer["data"][0]["embedding"] == [0.5, 0.25] and answer["usage"]["prompt_tokens"] == 4
    with pytest.raises(GatewayError) as info:
        answers.embedding_list({"id": "e", "embeddings": {"int8": [[1]]}}, "m", as_base64=False)
    assert info.value.reason is Reason.UPSTREAM_ERROR
