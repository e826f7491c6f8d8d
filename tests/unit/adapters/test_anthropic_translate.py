"""OpenAI chat request -> Anthropic Messages request: the pure translation (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from aggregator.openai.v1 import chat_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.anthropic_translate import MessagesCall, messages_request
from services.core.errors import GatewayError, Reason

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def translate(request: dict[str, Any], *, max_output_tokens: int = 0) -> MessagesCall:
    typed = json_format.ParseDict({"model": "smart", "messages": [user("hi")]} | request,
                                  chat_pb2.ChatCompletionRequest())
    candidate = route_pb2.RouteCandidate(
        public_model="smart", upstream_model="claude-x", max_output_tokens=max_output_tokens,
        endpoint=route_pb2.Endpoint(provider="claude", kind="anthropic", base_url="https://api.test"))
    return messages_request(typed, candidate)


def body(request: dict[str, Any], **options: Any) -> dict[str, Any]:
    return dict(translate(request, **options).body)


def refused(request: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        translate(request)
    return info.value


def test_minimal_request() -> None:
    assert body({}) == {"model": "claude-x", "max_tokens": 4096,
                        "messages": [{"role": "user", "content": "hi"}]}
    assert translate({}).json_tool is None


@pytest.mark.parametrize("request_, catalog, expected", [
    ({"max_completion_tokens": 50, "max_tokens": 70}, 8192, 50),
    ({"max_tokens": 70}, 8192, 70),
    ({}, 8192, 8192),
    ({}, 0, 4096),
])
def test_max_tokens_is_always_sent(request_: dict[str, Any], catalog: int, expected: int) -> None:
    assert body(request_, max_output_tokens=catalog)["max_tokens"] == expected


def test_system_and_developer_messages_become_the_system_prompt_in_order() -> None:
    sent = body({"messages": [{"role": "system", "content": "Be terse."}, user("hi"),
                              {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]}]})
    assert sent["system"] == [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "No emoji."}]
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert body({"messages": [{"role": "system", "content": "Alone."}, user("hi")]})["system"] == "Alone."


def test_consecutive_turns_of_one_role_merge() -> None:
    sent = body({"messages": [user("a"), user([{"type": "text", "text": "b"}]),
                              {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"},
                              user("e")]})
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
        {"role": "user", "content": "e"}]


def test_tool_calls_and_results() -> None:
    second = {**CALL, "id": "call_2", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    sent = body({"tools": [WEATHER], "messages": [
        user("weather?"), {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "20 degrees"}]},
        user("and tomorrow?")]})
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        # Tool results of one turn merge into one user message, the user's next words after them.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12 degrees"},
            {"type": "tool_result", "tool_use_id": "call_2",
             "content": [{"type": "text", "text": "20 degrees"}]},
            {"type": "text", "text": "and tomorrow?"}]}]


def test_assistant_with_empty_content_and_empty_arguments() -> None:
    call = {**CALL, "function": {"name": "now", "arguments": ""}}
    sent = body({"messages": [user("time?"), {"role": "assistant", "content": "", "tool_calls": [call]},
                              {"role": "tool", "tool_call_id": "call_1", "content": ""}]})
    assert sent["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "now", "input": {}}]}
    assert sent["messages"][2] == {"role": "user",
                                   "content": [{"type": "tool_result", "tool_use_id": "call_1"}]}


def test_assistant_refusal_is_what_it_said() -> None:
    sent = body({"messages": [user("x"), {"role": "assistant", "content": None, "refusal": "I can't."},
                              user("y")]})
    assert sent["messages"][1] == {"role": "assistant", "content": "I can't."}
    parts = [{"type": "text", "text": "Well."}, {"type": "refusal", "refusal": "No."}]
    sent = body({"messages": [user("x"), {"role": "assistant", "content": parts}, user("y")]})
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "Well."},
                                              {"type": "text", "text": "No."}]


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", '"Oslo"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {**CALL, "function": {"name": "get_weather", "arguments": arguments}}
    error = refused({"messages": [user("x"), {"role": "assistant", "tool_calls": [call]}]})
    assert error.reason is Reason.INVALID_REQUEST and error.http_status == 400
    assert error.param == "messages[1].tool_calls[0].function.arguments" and "call_1" in error.message


def test_tool_message_needs_its_call_id() -> None:
    error = refused({"messages": [user("x"), {"role": "tool", "content": "r"}]})
    assert error.reason is Reason.INVALID_REQUEST and error.param == "messages[1].tool_call_id"


def test_images_by_data_url_and_by_http_url() -> None:
    parts = [{"type": "text", "text": "compare"},
             {"type": "image_url",
              "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    assert body({"messages": [user(parts)]})["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


def test_pdf_file_becomes_a_document() -> None:
    part = {"type": "file",
            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    assert body({"messages": [user([part])]})["messages"][0]["content"] == [
        {"type": "document", "source": source}]


@pytest.mark.parametrize("part, reason, param", [
    ({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}, Reason.UNSUPPORTED_PARAMETER,
     "messages[0].content[0]"),
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, Reason.INVALID_REQUEST,
     "messages[0].content[0]"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/x.png"}}, Reason.INVALID_REQUEST,
     "messages[0].content[0]"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, Reason.UNSUPPORTED_PARAMETER,
     "messages[0].content[0]"),
    ({"type": "file", "file": {"file_id": "file-1"}}, Reason.UNSUPPORTED_PARAMETER, "messages[0].content[0]"),
])
def test_content_parts_anthropic_cannot_read(part: dict[str, Any], reason: Reason, param: str) -> None:
    error = refused({"messages": [user([part])]})
    assert error.reason is reason and error.param == param and error.http_status == 400


def test_sampling_stop_and_end_user() -> None:
    sent = body({"temperature": 0.3, "top_p": 0.9, "stop": "END", "user": "u-42", "stream": True})
    assert (sent["temperature"], sent["top_p"], sent["stop_sequences"]) == (0.3, 0.9, ["END"])
    assert sent["metadata"] == {"user_id": "u-42"} and sent["stream"] is True
    assert body({"stop": ["A", "B"], "safety_identifier": "h-1"})["stop_sequences"] == ["A", "B"]
    assert body({"safety_identifier": "h-1", "user": "h-1"})["metadata"] == {"user_id": "h-1"}
    assert refused({"safety_identifier": "h-1", "user": "u-2"}).reason is Reason.INVALID_REQUEST


def test_temperature_above_one_is_refused_not_clamped() -> None:
    error = refused({"temperature": 1.5})
    assert error.reason is Reason.UNSUPPORTED_PARAMETER and error.param == "temperature"
    assert "'claude'" in error.message and "1.5" in error.message
    assert body({"temperature": 1})["temperature"] == 1


def test_tools_keep_their_schema() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    strict = {"type": "function", "function": {"name": "add", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"],
        "additionalProperties": False}}}
    sent = body({"tools": [WEATHER, bare, strict]})
    assert sent["tools"] == [
        {"name": "get_weather", "description": "Current weather",
         "input_schema": WEATHER["function"]["parameters"]},  # type: ignore[index]
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        {"name": "add", "strict": True, "input_schema": strict["function"]["parameters"]}]  # type: ignore[index]
    assert isinstance(sent["tools"][2]["input_schema"]["properties"]["a"]["minimum"], int)
    assert "tool_choice" not in sent


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None,
     {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
    (None, True, None),
])
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    request: dict[str, Any] = {"tools": [WEATHER]}
    if choice is not None:
        request["tool_choice"] = choice
    if parallel is not None:
        request["parallel_tool_calls"] = parallel
    assert body(request).get("tool_choice") == expected


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in body({"tool_choice": "auto", "parallel_tool_calls": False})
    error = refused({"tool_choice": "required"})
    assert error.reason is Reason.INVALID_REQUEST and error.param == "tool_choice"


@pytest.mark.parametrize("request_, param", [
    ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
     "tool_choice"),
    ({"messages": [user("x"), {"role": "assistant", "tool_calls": [{**CALL, "type": "custom"}]}]},
     "messages[1].tool_calls[0].type"),
    ({"messages": [user("x"), {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]},
     "messages[1].function_call"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "list", "schema": {"type": "array"}}}},
     "response_format.json_schema.schema"),
])
def test_unsupported_shapes_are_refused_by_name(request_: dict[str, Any], param: str) -> None:
    error = refused(request_)
    assert error.reason is Reason.UNSUPPORTED_PARAMETER and error.param == param
    assert "provider 'claude'" in error.message
    assert error.to_openai()["error"]["code"] == "unsupported_parameter"


def test_json_object_is_a_forced_tool() -> None:
    call = translate({"response_format": {"type": "json_object"}, "tool_choice": "auto"})
    assert call.json_tool == "json_object"
    assert call.body["tools"] == [{"name": "json_object", "input_schema": {"type": "object"},  # type: ignore[typeddict-item]
                                   "description": call.body["tools"][0]["description"]}]
    assert call.body["tool_choice"] == {"type": "tool", "name": "json_object",  # type: ignore[typeddict-item]
                                        "disable_parallel_tool_use": True}


def test_json_schema_is_a_forced_tool_with_that_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}}, "required": ["n"],
              "additionalProperties": False}
    call = translate({"response_format": {"type": "json_schema", "json_schema": {
        "name": "count", "description": "A count.", "strict": True, "schema": schema}}})
    assert call.json_tool == "count"
    assert call.body["tools"] == [{"name": "count", "description": "A count.", "input_schema": schema,  # type: ignore[typeddict-item]
                                   "strict": True}]
    assert isinstance(call.body["tools"][0]["input_schema"]["properties"]["n"]["maximum"], int)  # type: ignore[typeddict-item]
    assert translate({"response_format": {"type": "text"}}).json_tool is None
    missing = refused({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    assert missing.reason is Reason.INVALID_REQUEST and missing.param == "response_format.json_schema.name"
