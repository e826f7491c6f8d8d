"""Request checks Envoy's typed parsing cannot make; each failure is a 400 naming the parameter."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import json_format

from aggregator.openai.v1 import chat_pb2, completion_pb2, embedding_pb2
from edge.validation import validate_chat, validate_completion, validate_embedding
from services.core.errors import GatewayError, Reason

CHAT: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "developer", "content": "ok"},
    ],
    "temperature": 0.7, "top_p": 1, "n": 1, "stop": ["a", "b", "c", "d"], "max_tokens": 10,
    "presence_penalty": -2, "frequency_penalty": 2, "top_logprobs": 20,
    "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "w"}},
}


def chat(**changes: Any) -> chat_pb2.ChatCompletionRequest:
    data = copy.deepcopy(CHAT)
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return json_format.ParseDict(data, chat_pb2.ChatCompletionRequest())


def embedding(**changes: Any) -> embedding_pb2.EmbeddingRequest:
    data: dict[str, Any] = {"model": "embed", "input": "hello"}
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return json_format.ParseDict(data, embedding_pb2.EmbeddingRequest())


def rejected(check: Any, request: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        check(request)
    error = info.value
    assert error.reason is Reason.INVALID_REQUEST and error.http_status == 400
    return error


def test_valid_chat_request_passes() -> None:
    validate_chat(chat())


@pytest.mark.parametrize("changes", [
    {"temperature": 0}, {"temperature": 2}, {"top_p": 0}, {"n": 128}, {"stop": "END"}, {"stop": None},
    {"stop": []}, {"tool_choice": "none"}, {"tool_choice": "auto"}, {"tool_choice": "required"},
    {"tool_choice": None}, {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
    {"max_completion_tokens": 1}, {"messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "function", "name": "f", "content": "x"}]},
])
def test_edge_values_pass(changes: dict[str, Any]) -> None:
    validate_chat(chat(**changes))


@pytest.mark.parametrize(("changes", "param"), [
    ({"temperature": 2.1}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"stop": 7}, "stop"),
    ({"stop": {"a": 1}}, "stop"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": ["auto"]}, "tool_choice"),
    ({"tool_choice": True}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"messages": []}, "messages"),
    ({"messages": ...}, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}, "messages[1].role"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}]},
     "messages[1].tool_call_id"),
])
def test_chat_rules(changes: dict[str, Any], param: str) -> None:
    error = rejected(validate_chat, chat(**changes))
    assert error.param == param
    assert error.to_openai()["error"]["code"] == "invalid_value"
    assert param.split("[")[0].split(".")[0] in error.message


def test_messages_message_wording() -> None:
    error = rejected(validate_chat, chat(messages=[]))
    assert error.message == "Invalid 'messages': empty array. Expected an array with minimum length 1."


def test_temperature_message_wording() -> None:
    error = rejected(validate_chat, chat(temperature=2.5))
    assert error.message == "Invalid 'temperature': 2.5 is not between 0 and 2."


def test_missing_model() -> None:
    error = rejected(validate_chat, chat(model=...))
    assert error.param == "model" and error.to_openai()["error"]["code"] is None


@pytest.mark.parametrize("changes", [
    {}, {"input": ["a", "b"]}, {"input": [[1, 2, 3]]}, {"encoding_format": "float"},
    {"encoding_format": "base64"}, {"dimensions": 1},
])
def test_valid_embedding_requests_pass(changes: dict[str, Any]) -> None:
    validate_embedding(embedding(**changes))


@pytest.mark.parametrize(("changes", "param"), [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ...}, "input"),
    ({"input": None}, "input"),
    ({"input": 5}, "input"),
    ({"input": {"text": "x"}}, "input"),
    ({"encoding_format": "hex"}, "encoding_format"),
    ({"encoding_format": ""}, "encoding_format"),
    ({"dimensions": 0}, "dimensions"),
    ({"model": ...}, "model"),
])
def test_embedding_rules(changes: dict[str, Any], param: str) -> None:
    assert rejected(validate_embedding, embedding(**changes)).param == param


# Checked against OpenAI's spec and answers (docs/edge.md, "What the gateway refuses itself").

def test_an_empty_tool_call_id_is_the_providers_to_judge() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "", "content": "r"}]
    validate_chat(chat(messages=messages))


@pytest.mark.parametrize("value", [["a", ""], ""])
def test_an_empty_string_input_is_refused_as_openai_does(value: Any) -> None:
    error = rejected(validate_embedding, embedding(input=value))
    assert error.param == "input" and "empty string" in error.message


def test_a_null_prompt_is_valid_as_in_openais_spec() -> None:
    request = json_format.ParseDict({"model": "davinci", "prompt": None}, completion_pb2.CompletionRequest())
    validate_completion(request)


def test_a_missing_prompt_is_refused() -> None:
    error = rejected(validate_completion, completion_pb2.CompletionRequest(model="davinci"))
    assert error.param == "prompt"


@pytest.mark.parametrize("value", [[2**53], [[1, 2], [2**60]], [-1], [1.5]])
def test_token_ids_that_a_double_cannot_hold_exactly_are_refused(value: Any) -> None:
    error = rejected(validate_embedding, embedding(input=value))
    assert error.param == "input" and "token id" in error.message
    request = json_format.ParseDict({"model": "davinci", "prompt": value}, completion_pb2.CompletionRequest())
    assert rejected(validate_completion, request).param == "prompt"


def test_token_ids_up_to_two_to_the_53_pass() -> None:
    validate_embedding(embedding(input=[0, 2**53 - 1]))


def test_the_seed_envoy_clamped_is_refused() -> None:
    error = rejected(validate_chat, chat(seed=-(2**63)))
    assert error.param == "seed"
    validate_chat(chat(seed=-(2**63) + 1))
