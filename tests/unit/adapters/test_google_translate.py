"""OpenAI chat requests become Gemini generateContent bodies (pure translation, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from google.genai import types
from google.protobuf import json_format

from aggregator.openai.v1 import chat_pb2
from services.adapters import google_translate as translate
from services.core.errors import GatewayError, Reason

CALL = {"id": "call_abc", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 100}},
        "required": ["city"]}}}


def body(request: dict[str, Any]) -> dict[str, Any]:
    """The translated body, validated field by field with google-genai's strict types."""
    typed = json_format.ParseDict({"model": "m"} | request, chat_pb2.ChatCompletionRequest())
    result: dict[str, Any] = dict(translate.chat_request_body(typed))
    for content in result["contents"]:
        types.Content.model_validate(content)
    types.GenerationConfig.model_validate(result.get("generationConfig", {}))
    for tool in result.get("tools", []):
        types.Tool.model_validate(tool)
    types.ToolConfig.model_validate(result.get("toolConfig", {}))
    return result


def refused(request: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        body(request)
    return info.value


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_roles_system_and_merged_turns() -> None:
    sent = body({"messages": [{"role": "system", "content": "Be terse."},
                              {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                              user("hi"), user("again"), {"role": "assistant", "content": "hello"},
                              {"role": "assistant", "content": [{"type": "text", "text": "more"}]},
                              user("q")]})
    assert sent["systemInstruction"] == {"parts": [{"text": "Be terse."}, {"text": "Use metric."}]}
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]},
        {"role": "model", "parts": [{"text": "hello"}, {"text": "more"}]},
        {"role": "user", "parts": [{"text": "q"}]}]
    assert "generationConfig" not in sent and "tools" not in sent


def test_tool_call_and_result_round_trip() -> None:
    signed = {**CALL, "id": "call_1" + translate.THOUGHT_SEPARATOR + "c2ln"}
    sent = body({"messages": [
        user("weather?"), {"role": "assistant", "content": None, "tool_calls": [CALL, signed]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "12 degrees"},
        {"role": "tool", "tool_call_id": signed["id"],
         "content": [{"type": "text", "text": '{"temp": 12}'}]}],
        "tools": [TOOL]})
    model, results = sent["contents"][1], sent["contents"][2]
    assert model == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_abc"}},
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1"},
         "thoughtSignature": "c2ln"}]}
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"content": "12 degrees"},
                              "id": "call_abc"}},
        {"functionResponse": {"name": "get_weather", "response": {"temp": 12}, "id": "call_1"}}]}


@pytest.mark.parametrize("content, response", [
    ("[1, 2]", {"content": [1, 2]}), ("42", {"content": 42}), ("not json", {"content": "not json"}),
    ("", {"content": ""}), ('{"a": {"b": 1}}', {"a": {"b": 1}}),
])
def test_tool_output_becomes_an_object(content: str, response: dict[str, Any]) -> None:
    sent = body({"messages": [user("x"), {"role": "assistant", "tool_calls": [CALL]},
                              {"role": "tool", "tool_call_id": "call_abc", "content": content}]})
    assert sent["contents"][-1]["parts"][0]["functionResponse"]["response"] == response


def test_tool_messages_must_answer_a_known_call() -> None:
    error = refused({"messages": [user("x"), {"role": "tool", "tool_call_id": "call_zzz", "content": "1"}]})
    assert error.reason is Reason.INVALID_REQUEST and "call_zzz" in error.message
    bad = {**CALL, "function": {"name": "f", "arguments": "[1]"}}
    error = refused({"messages": [user("x"), {"role": "assistant", "tool_calls": [bad]}]})
    assert error.reason is Reason.INVALID_REQUEST and error.param == "messages[1].tool_calls[0]"


def test_images_audio_and_files() -> None:
    parts = [{"type": "text", "text": "what"},
             {"type": "image_url",
              "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=2"}},
             {"type": "image_url", "image_url": {"url": "data:image/webp;name=x;base64,UklG"}},
             {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
             {"type": "file",
              "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]
    assert body({"messages": [user(parts)]})["contents"][0]["parts"] == [
        {"text": "what"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=2"}},
        {"inlineData": {"mimeType": "image/webp", "data": "UklG"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}]


@pytest.mark.parametrize("part, reason", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/image"}}, Reason.UNSUPPORTED_PARAMETER),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, Reason.INVALID_REQUEST),
    ({"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}}, Reason.INVALID_REQUEST),
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawtext"}}, Reason.INVALID_REQUEST),
    ({"type": "input_audio", "input_audio": {"data": "AA==", "format": "pcm16"}},
     Reason.UNSUPPORTED_PARAMETER),
    ({"type": "file", "file": {"file_id": "file-1"}}, Reason.UNSUPPORTED_PARAMETER),
    ({"type": "video"}, Reason.UNSUPPORTED_PARAMETER),
])
def test_parts_gemini_cannot_take(part: dict[str, Any], reason: Reason) -> None:
    error = refused({"messages": [user([part])]})
    assert error.reason is reason and error.param == "messages[0].content[0]"


@pytest.mark.parametrize("message, param", [
    ({"role": "user", "content": "x", "name": "alice"}, "messages[0].name"),
    ({"role": "function", "content": "x"}, "messages[0].role"),
    ({"role": "assistant", "content": "x", "audio": {"id": "a1"}}, "messages[0]"),
])
def test_message_fields_gemini_cannot_take(message: dict[str, Any], param: str) -> None:
    error = refused({"messages": [message]})
    assert error.reason is Reason.UNSUPPORTED_PARAMETER and error.param == param


def test_system_only_conversation_is_invalid() -> None:
    error = refused({"messages": [{"role": "system", "content": "x"}]})
    assert error.reason is Reason.INVALID_REQUEST and error.param == "messages"
    error = refused({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}]})
    assert error.reason is Reason.INVALID_REQUEST


def test_generation_config() -> None:
    sent = body({"messages": [user("x")], "temperature": 0, "top_p": 0.9, "n": 2, "max_tokens": 10,
                 "max_completion_tokens": 20, "stop": "END", "presence_penalty": 0.5,
                 "frequency_penalty": -0.5,
                 "seed": 7, "logprobs": True, "top_logprobs": 3, "reasoning_effort": "low"})
    assert sent["generationConfig"] == {
        "temperature": 0, "topP": 0.9, "candidateCount": 2, "maxOutputTokens": 20, "stopSequences": ["END"],
        "presencePenalty": 0.5, "frequencyPenalty": -0.5, "seed": 7, "responseLogprobs": True, "logprobs": 3,
        "thinkingConfig": {"thinkingLevel": "LOW"}}
    config = body({"messages": [user("x")], "max_tokens": 5, "stop": ["a", "b"], "reasoning_effort": "none"})
    assert config["generationConfig"] == {"maxOutputTokens": 5, "stopSequences": ["a", "b"],
                                          "thinkingConfig": {"thinkingBudget": 0}}
    assert refused({"messages": [user("x")], "reasoning_effort": "extreme"}).param == "reasoning_effort"


def test_json_output() -> None:
    schema = {"type": "object", "properties": {"echo": {"type": "string", "maxLength": 100}}}
    def config_of(response_format: dict[str, Any]) -> Any:
        return body({"messages": [user("x")], "response_format": response_format}).get("generationConfig")

    assert config_of({"type": "text"}) is None
    assert config_of({"type": "json_object"}) == {"responseMimeType": "application/json"}
    spec = {"name": "e", "strict": True, "schema": schema}
    config = config_of({"type": "json_schema", "json_schema": spec})
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert type(config["responseJsonSchema"]["properties"]["echo"]["maxLength"]) is int  # not 100.0
    error = refused({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {}}})
    assert error.reason is Reason.INVALID_REQUEST
    assert refused({"messages": [user("x")], "response_format": {"type": "xml"}}).param == "response_format"


@pytest.mark.parametrize("choice, config", [
    (None, None), ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
])
def test_tools_and_tool_choice(choice: Any, config: dict[str, Any] | None) -> None:
    request: dict[str, Any] = {"messages": [user("x")], "tools": [TOOL], "parallel_tool_calls": True}
    if choice is not None:
        request["tool_choice"] = choice
    sent = body(request)
    assert sent["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather now",
        "parametersJsonSchema": TOOL["function"]["parameters"]}]}]
    assert sent.get("toolConfig") == (None if config is None else {"functionCallingConfig": config})


def test_strict_tools_use_validated_mode() -> None:
    strict = {"type": "function", "function": {"name": "f", "strict": True}}
    assert body({"messages": [user("x")], "tools": [strict]})["toolConfig"] == {
        "functionCallingConfig": {"mode": "VALIDATED"}}
    assert body({"messages": [user("x")], "tools": [strict], "tool_choice": "required"})["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY"}}
    declarations = body({"messages": [user("x")], "tools": [strict]})["tools"]
    assert declarations == [{"functionDeclarations": [{"name": "f"}]}]


@pytest.mark.parametrize("request_, reason, param", [
    ({"parallel_tool_calls": False, "tools": [TOOL]}, Reason.UNSUPPORTED_PARAMETER, "parallel_tool_calls"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, Reason.UNSUPPORTED_PARAMETER, "tools[0]"),
    ({"tool_choice": "required"}, Reason.INVALID_REQUEST, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, Reason.INVALID_REQUEST, "tool_choice"),
    ({"modalities": ["text", "audio"]}, Reason.UNSUPPORTED_PARAMETER, "modalities"),
    ({"store": True}, Reason.UNSUPPORTED_PARAMETER, "store"),
])
def test_tool_and_output_options_refused(request_: dict[str, Any], reason: Reason, param: str) -> None:
    error = refused({"messages": [user("x")], **request_})
    assert (error.reason, error.param) == (reason, param)


def test_explicit_defaults_ask_for_nothing() -> None:
    sent = body({"messages": [user("x")], "tool_choice": "none", "modalities": ["text"], "store": False})
    assert "tools" not in sent and "toolConfig" not in sent


def test_split_call_id() -> None:
    assert translate.split_call_id("call_1") == ("call_1", None)
    assert translate.split_call_id("call_1__thought__c2ln") == ("call_1", "c2ln")
    assert translate.split_call_id("call_1__thought__") == ("call_1", None)
