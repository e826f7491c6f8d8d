"""Our request messages model every field of OpenAI's published request types.

Envoy's gRPC-JSON transcoder silently drops JSON fields that the request message does not declare,
so a field that OpenAI adds and our protos lack would be a parameter silently lost. The official
`openai` package's TypedDicts are the reference: when a new SDK adds a field, this test names it.
Our messages may have more fields (our extensions, such as `models` and `provider`).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass

import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallUnionParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionToolUnionParam,
)
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.chat.chat_completion_message_function_tool_call_param import Function as ToolCallFunction
from openai.types.shared_params import FunctionDefinition

from aggregator.openai.v1 import chat_pb2, completion_pb2, embedding_pb2

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def typed_dict_keys(*types: object) -> set[str]:
    """The keys of TypedDicts, a Union of TypedDicts standing for the keys of all its members."""
    keys: set[str] = set()
    for tp in types:
        members = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
        for member in members:
            keys |= set(typing.get_type_hints(member))
    return keys


@dataclass(frozen=True)
class Pair:
    """One of our messages beside the OpenAI request type(s) it must cover."""

    name: str
    descriptor: Descriptor
    openai_keys: frozenset[str]


def _nested(root: Descriptor, *path: str) -> Descriptor:
    """The message type reached from `root` through `path`, as a request actually nests it."""
    descriptor = root
    for field_name in path:
        descriptor = descriptor.fields_by_name[field_name].message_type
    return descriptor


CHAT = chat_pb2.ChatCompletionRequest.DESCRIPTOR
PAIRS = [
    # Base has every body field except `stream`, which its Streaming/NonStreaming children add.
    Pair("ChatCompletionRequest", CHAT,
         frozenset(typed_dict_keys(chat_create_params.CompletionCreateParamsBase) | {"stream"})),
    Pair("CompletionRequest", completion_pb2.CompletionRequest.DESCRIPTOR,
         frozenset(typed_dict_keys(completion_create_params.CompletionCreateParamsBase) | {"stream"})),
    Pair("EmbeddingRequest", embedding_pb2.EmbeddingRequest.DESCRIPTOR,
         frozenset(typed_dict_keys(embedding_create_params.EmbeddingCreateParams))),
    Pair("ChatMessage", _nested(CHAT, "messages"), frozenset(typed_dict_keys(ChatCompletionMessageParam))),
    Pair("Tool", _nested(CHAT, "tools"), frozenset(typed_dict_keys(ChatCompletionToolUnionParam))),
    Pair("FunctionDefinition", _nested(CHAT, "tools", "function"),
         frozenset(typed_dict_keys(FunctionDefinition))),
    Pair("StreamOptions", _nested(CHAT, "stream_options"),
         frozenset(typed_dict_keys(ChatCompletionStreamOptionsParam))),
    Pair("CompletionRequest.stream_options",
         _nested(completion_pb2.CompletionRequest.DESCRIPTOR, "stream_options"),
         frozenset(typed_dict_keys(ChatCompletionStreamOptionsParam))),
    Pair("ToolCall", _nested(CHAT, "messages", "tool_calls"),
         frozenset(typed_dict_keys(ChatCompletionMessageToolCallUnionParam))),
    Pair("FunctionCall", _nested(CHAT, "messages", "tool_calls", "function"),
         frozenset(typed_dict_keys(ToolCallFunction))),
]
IDS = [pair.name for pair in PAIRS]


def test_the_nested_types_are_the_ones_we_name() -> None:
    named = {pair.name: pair.descriptor.full_name for pair in PAIRS}
    assert named["ChatMessage"] == chat_pb2.ChatMessage.DESCRIPTOR.full_name
    assert named["Tool"] == chat_pb2.Tool.DESCRIPTOR.full_name
    assert named["FunctionDefinition"] == chat_pb2.FunctionDefinition.DESCRIPTOR.full_name
    assert named["StreamOptions"] == chat_pb2.StreamOptions.DESCRIPTOR.full_name
    assert named["ToolCall"] == chat_pb2.ToolCall.DESCRIPTOR.full_name
    assert named["FunctionCall"] == chat_pb2.FunctionCall.DESCRIPTOR.full_name


def test_the_reference_is_not_empty() -> None:
    # Guards against a refactored SDK where the lookups above would silently yield nothing.
    keys = {pair.name: pair.openai_keys for pair in PAIRS}
    assert {"model", "messages", "stream", "tools", "response_format"} <= keys["ChatCompletionRequest"]
    assert {"model", "prompt", "suffix", "echo"} <= keys["CompletionRequest"]
    assert {"model", "input", "dimensions", "encoding_format"} <= keys["EmbeddingRequest"]
    assert {"role", "content", "tool_calls", "tool_call_id", "name"} <= keys["ChatMessage"]
    assert {"name", "parameters"} <= keys["FunctionDefinition"]
    assert "include_usage" in keys["StreamOptions"]


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_every_openai_field_is_declared(pair: Pair) -> None:
    missing = sorted(pair.openai_keys - set(pair.descriptor.fields_by_name))
    assert not missing, (
        f"{pair.descriptor.full_name} lacks OpenAI field(s) {', '.join(missing)}: Envoy would drop them "
        f"silently. Add them to protos/ (then `make gen`).")


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_field_names_are_the_openai_json_names(pair: Pair) -> None:
    # Envoy parses JSON keys by proto field name (and prints them so with preserve_proto_field_names),
    # so each proto name must be the snake_case OpenAI name itself, for our extensions too.
    for key in pair.openai_keys & set(pair.descriptor.fields_by_name):
        assert pair.descriptor.fields_by_name[key].name == key
    odd = sorted(field.name for field in pair.descriptor.fields if not SNAKE_CASE.fullmatch(field.name))
    assert not odd, f"{pair.descriptor.full_name}: field names not snake_case: {odd}"


def _sample(field: FieldDescriptor) -> object:
    """A JSON value of the right shape for `field`, as a client would send it."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return {}
    if field.is_repeated:
        return []
    if field.message_type is not None:
        return "x" if field.message_type.full_name == "google.protobuf.Value" else {}
    scalar: dict[int, object] = {FieldDescriptor.CPPTYPE_STRING: "x", FieldDescriptor.CPPTYPE_BOOL: True,
                                 FieldDescriptor.CPPTYPE_DOUBLE: 0.5, FieldDescriptor.CPPTYPE_FLOAT: 0.5}
    return scalar.get(field.cpp_type, 1)


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_an_openai_shaped_body_parses_field_by_field(pair: Pair) -> None:
    # What the transcoder does with a request body: strict proto3 JSON parsing of OpenAI's keys.
    fields = pair.descriptor.fields_by_name
    body = {key: _sample(fields[key]) for key in sorted(pair.openai_keys & set(fields))}
    message = message_factory.GetMessageClass(pair.descriptor)()
    json_format.ParseDict(body, message, ignore_unknown_fields=False)
    printed = json_format.MessageToDict(message, preserving_proto_field_name=True)
    non_empty = {key for key, value in body.items() if value not in ([], {})}
    assert non_empty <= set(printed)

