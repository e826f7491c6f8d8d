"""Checks of request values that Envoy's typed parsing cannot make (ranges, enums, shapes).

Each failure is a 400 naming the parameter, worded like OpenAI's own messages.
"""

from __future__ import annotations

from google.protobuf import struct_pb2

from aggregator.openai.v1 import chat_pb2, completion_pb2, embedding_pb2
from services.core.errors import GatewayError, Reason, quote

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param, code="invalid_value")


def _range(request: object, name: str, low: float, high: float) -> None:
    if request.HasField(name):  # type: ignore[attr-defined]
        value = getattr(request, name)
        if not low <= value <= high:
            raise _invalid(f"Invalid '{name}': {value:g} is not between {low:g} and {high:g}.", name)


def _kind(value: struct_pb2.Value) -> str:
    return value.WhichOneof("kind") or ""


# Envoy's transcoder reads a JSON number below int64's range as int64's minimum (one above it is
# refused): the minimum itself is therefore ambiguous, and refused as out of range.
_INT64_MIN = -(2**63)
# A token id travels as a double (google.protobuf.Value); past 2**53 a double no longer holds every
# integer, so such an id may already differ from what the client sent and is refused, never changed.
_MAX_TOKEN_ID = 2**53 - 1


def _seed(request: object) -> None:
    if request.HasField("seed") and request.seed == _INT64_MIN:  # type: ignore[attr-defined]
        raise _invalid("Invalid 'seed': integer below the minimum of a 64-bit integer.", "seed")


def _token_ids(value: struct_pb2.Value, param: str, name: str = "") -> None:
    """Token-id arrays (`[1, 2]` or `[[1, 2], [3]]`) hold whole numbers from 0 to 2**53 - 1."""
    if _kind(value) != "list_value":
        return
    name = name or param
    for i, item in enumerate(value.list_value.values):
        if _kind(item) == "list_value":
            _token_ids(item, param, f"{name}[{i}]")
        elif _kind(item) == "number_value":
            number = item.number_value
            if not (number.is_integer() and 0 <= number <= _MAX_TOKEN_ID):
                raise _invalid(
                    f"Invalid '{name}[{i}]': a token id is a whole number from 0 to {_MAX_TOKEN_ID}.", param
                )


def validate_chat(request: chat_pb2.ChatCompletionRequest) -> None:
    if not request.model:
        raise GatewayError(Reason.INVALID_REQUEST, "you must provide a model parameter", param="model")
    if not request.messages:
        raise _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages"
        )
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise _invalid(
                f"Invalid value for 'messages[{i}].role': {quote(message.role)}.", f"messages[{i}].role"
            )
        kind = _kind(message.content)
        if kind not in ("", "string_value", "list_value", "null_value"):
            raise _invalid(
                f"Invalid type for 'messages[{i}].content': expected a string or an array.",
                f"messages[{i}].content",
            )
        # Only a missing id is refused: "" is a string as the spec asks, and the provider judges it.
        if message.role == "tool" and not message.HasField("tool_call_id"):
            raise _invalid(
                f"Missing 'messages[{i}].tool_call_id' for a tool message.", f"messages[{i}].tool_call_id"
            )
    _range(request, "temperature", 0, 2)
    _range(request, "top_p", 0, 1)
    _range(request, "presence_penalty", -2, 2)
    _range(request, "frequency_penalty", -2, 2)
    _range(request, "n", 1, 128)
    _range(request, "top_logprobs", 0, 20)
    _seed(request)
    for name in ("max_tokens", "max_completion_tokens"):
        if request.HasField(name) and getattr(request, name) < 1:
            raise _invalid(f"Invalid '{name}': integer below minimum value 1.", name)
    if request.HasField("stop"):
        kind = _kind(request.stop)
        if kind == "list_value":
            if len(request.stop.list_value.values) > 4 or any(
                _kind(v) != "string_value" for v in request.stop.list_value.values
            ):
                raise _invalid("Invalid 'stop': expected a string or an array of up to 4 strings.", "stop")
        elif kind not in ("string_value", "null_value"):
            raise _invalid("Invalid 'stop': expected a string or an array of up to 4 strings.", "stop")
    for i, tool in enumerate(request.tools):
        if tool.type == "function" and not tool.function.name:
            raise _invalid(f"Missing 'tools[{i}].function.name'.", f"tools[{i}].function.name")
        if tool.type not in ("function", "custom"):
            raise _invalid(f"Invalid value for 'tools[{i}].type': {quote(tool.type)}.", f"tools[{i}].type")
    if request.HasField("tool_choice"):
        kind = _kind(request.tool_choice)
        if kind == "string_value" and request.tool_choice.string_value not in TOOL_CHOICES:
            raise _invalid(
                "Invalid 'tool_choice': expected 'none', 'auto', 'required' or a named tool.", "tool_choice"
            )
        if kind not in ("string_value", "struct_value", "null_value"):
            raise _invalid("Invalid 'tool_choice': expected a string or an object.", "tool_choice")


def validate_embedding(request: embedding_pb2.EmbeddingRequest) -> None:
    if not request.model:
        raise GatewayError(Reason.INVALID_REQUEST, "you must provide a model parameter", param="model")
    kind = _kind(request.input)
    empty_list = kind == "list_value" and not request.input.list_value.values
    if kind not in ("string_value", "list_value") or empty_list:
        raise _invalid("Invalid 'input': expected a non-empty string or array.", "input")
    # OpenAI's reference: the input "cannot be an empty string" (OpenAI answers 400 to it, alone or
    # in a list); token arrays and numbers are left to the provider.
    texts = [request.input] if kind == "string_value" else request.input.list_value.values
    for i, text in enumerate(texts):
        if _kind(text) == "string_value" and not text.string_value:
            where = "input" if kind == "string_value" else f"input[{i}]"
            raise _invalid(f"Invalid '{where}': the input cannot be an empty string.", "input")
    _token_ids(request.input, "input")
    if request.HasField("encoding_format") and request.encoding_format not in ("float", "base64"):
        raise _invalid("Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format")
    if request.HasField("dimensions") and request.dimensions < 1:
        raise _invalid("Invalid 'dimensions': integer below minimum value 1.", "dimensions")


def validate_completion(request: completion_pb2.CompletionRequest) -> None:
    if not request.model:
        raise GatewayError(Reason.INVALID_REQUEST, "you must provide a model parameter", param="model")
    # `prompt` is nullable in OpenAI's spec (null means its default, "<|endoftext|>"): passed on as is.
    if _kind(request.prompt) not in ("string_value", "list_value", "null_value"):
        raise _invalid("Invalid 'prompt': expected a string, an array or null.", "prompt")
    _range(request, "temperature", 0, 2)
    _range(request, "top_p", 0, 1)
    _range(request, "presence_penalty", -2, 2)
    _range(request, "frequency_penalty", -2, 2)
    _range(request, "n", 1, 128)
    _range(request, "logprobs", 0, 5)
    _token_ids(request.prompt, "prompt")
    _seed(request)
    if request.HasField("max_tokens") and request.max_tokens < 0:
        raise _invalid("Invalid 'max_tokens': integer below minimum value 0.", "max_tokens")
    if request.HasField("best_of") and request.best_of < (request.n if request.HasField("n") else 1):
        raise _invalid("Invalid 'best_of': must be at least 'n'.", "best_of")
