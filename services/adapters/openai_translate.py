"""Translation between our typed messages and OpenAI's JSON: pure functions, no I/O.

Requests: the typed request becomes the JSON body OpenAI documents, field for field (presence
kept: an explicit 0 or null is sent, an absent field is not), with `model` set to the upstream's
name and our extensions (`models`, `provider`) removed. Streams always ask for usage so the
gateway can bill; the client sees the usage chunk only if it asked for it.

Responses: upstream JSON is kept as sent except `model` (the public id) and the added
`provider` object `{"name", "model" (what the upstream reports), "latency_ms"}`. Chat and legacy
text completions share the events; they differ only in where a choice carries its output
(`ChoiceContent`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from aggregator.adapter.v1 import adapter_service_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.json_values import parse_object, whole_numbers
from services.adapters.openai_wire import OpenAIErrorBody, usage_to_proto

EXTENSION_FIELDS = ("models", "provider")
# Delta or message fields that carry generated output: the first chunk with one is the first token.
CONTENT_FIELDS = ("content", "tool_calls", "refusal", "reasoning_content", "reasoning", "function_call")


@dataclass(frozen=True, slots=True)
class ChoiceContent:
    """Where a response's choices carry generated output: chat nests it in `message` (a whole
    completion) or `delta` (a chunk); a legacy `text_completion` puts `text` on the choice itself."""

    whole: str | None
    chunk: str | None
    fields: tuple[str, ...]


CHAT_CONTENT = ChoiceContent("message", "delta", CONTENT_FIELDS)
TEXT_CONTENT = ChoiceContent(None, None, ("text",))


@dataclass(frozen=True, slots=True)
class Target:
    """Who answers, and how its answers are labelled for the client."""

    provider: str
    public_model: str
    upstream_model: str

    @classmethod
    def of(cls, candidate: route_pb2.RouteCandidate) -> Target:
        """The target a route candidate names."""
        return cls(provider=candidate.endpoint.provider, public_model=candidate.public_model,
                   upstream_model=candidate.upstream_model)


@functools.cache
def _int64_fields(descriptor: Descriptor) -> tuple[str, ...]:
    wide = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
    return tuple(f.name for f in descriptor.fields if f.cpp_type in wide)


def request_json(request: Message, upstream_model: str) -> dict[str, Any]:
    """A typed OpenAI request as OpenAI's JSON body: presence kept, numbers as JSON wants them,
    our extensions removed, `model` set to the upstream's name."""
    body: dict[str, Any] = whole_numbers(json_format.MessageToDict(
        request, preserving_proto_field_name=True, unquote_int64_if_possible=True))
    # Proto JSON quotes an int64 beyond 2**53 (`seed`); OpenAI's JSON wants a number.
    for name in _int64_fields(request.DESCRIPTOR):
        if isinstance(body.get(name), str):
            body[name] = int(body[name])
    for name in EXTENSION_FIELDS:
        body.pop(name, None)
    body["model"] = upstream_model
    return body


def chat_request_body(request: Message, upstream_model: str, *,
                      stream_options: bool = True) -> dict[str, Any]:
    """The upstream JSON body of a ChatCompletionRequest (or a legacy CompletionRequest: the same
    rules, a stream always asks for usage). `stream_options=False`: the provider refuses the field
    (config quirk, docs/resilience.md §5), so it is never sent and a stream's usage is estimated."""
    body = request_json(request, upstream_model)
    if not stream_options:
        body.pop("stream_options", None)
    elif body.get("stream"):
        body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
    return body


def embedding_request_body(request: Message, upstream_model: str) -> dict[str, Any]:
    """The upstream JSON body of an EmbeddingRequest."""
    return request_json(request, upstream_model)


def provider_extension(target: Target, reported: Any, latency_ms: int) -> dict[str, Any]:
    """The `provider` object added to every answer; `reported` is the model the upstream named."""
    return {"name": target.provider,
            "model": reported if isinstance(reported, str) and reported else target.upstream_model,
            "latency_ms": latency_ms}


def _stamp(obj: dict[str, Any], target: Target, latency_ms: int) -> None:
    reported = obj.get("model")
    obj["model"] = target.public_model
    obj["provider"] = provider_extension(target, reported, latency_ms)


def _output_chars(value: Any) -> int:
    """Characters of generated output in a field's value: text, or a tool call's name and
    arguments (the cut-stream estimate counts them, services/adapters/token_estimate.py)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_output_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_output_chars(value.get(name)) for name in ("name", "arguments", "function"))
    return 0


def _content(choices: Any, part: str | None, fields: tuple[str, ...]) -> tuple[bool, int]:
    """Whether the choices carry generated output, and how many characters of it."""
    carries, chars = False, 0
    if not isinstance(choices, list):
        return carries, chars
    for choice in choices:
        holder = choice.get(part) if part is not None and isinstance(choice, dict) else choice
        if isinstance(holder, dict):
            for name in fields:
                value = holder.get(name)
                if value:
                    carries = True
                    chars += _output_chars(value)
    return carries, chars


def _finish_reason(choices: Any) -> str:
    """The first choice's finish_reason, for the request log; empty when there is none."""
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str):
            return reason[:64]
    return ""


def completion_event(raw: bytes, target: Target, latency_ms: int, *,
                     content: ChoiceContent = CHAT_CONTENT) -> adapter_service_pb2.ChatResponse:
    """The one event of a non-streamed completion (`content` says where its output lives)."""
    obj = parse_object(raw)
    _stamp(obj, target, latency_ms)
    choices = obj.get("choices")
    has_content, chars = _content(choices, content.whole, content.fields)
    event = adapter_service_pb2.ChatResponse(body=orjson.dumps(obj), latency_ms=latency_ms,
                                             has_content=has_content, finish_reason=_finish_reason(choices),
                                             content_chars=chars)
    if isinstance(obj.get("usage"), dict):
        event.usage.CopyFrom(usage_to_proto(obj["usage"]))
    return event


def stream_error(obj: dict[str, Any]) -> OpenAIErrorBody | None:
    """The error of an in-stream `{"error": ...}` event, or None for an ordinary chunk."""
    return OpenAIErrorBody.from_object(obj) if obj.get("error") is not None else None


def ends_generation(obj: dict[str, Any]) -> bool:
    """Whether a chunk closes the answer: a choice's finish_reason, or the final usage chunk."""
    choices = obj.get("choices")
    if isinstance(obj.get("usage"), dict) and not choices:
        return True
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def chunk_event(obj: dict[str, Any], target: Target, latency_ms: int, *, client_wants_usage: bool,
                content: ChoiceContent = CHAT_CONTENT) -> adapter_service_pb2.ChatResponse:
    """The event of one parsed stream chunk. When the client did not ask for usage, the `usage`
    field it would not have seen is removed, and the usage-only chunk becomes an event with an
    empty body that still carries the counts for billing."""
    usage = obj.get("usage")
    event = adapter_service_pb2.ChatResponse(latency_ms=latency_ms)
    if isinstance(usage, dict):
        event.usage.CopyFrom(usage_to_proto(usage))
    if not client_wants_usage and "usage" in obj:
        del obj["usage"]
        if usage is not None and not obj.get("choices"):
            return event
    _stamp(obj, target, latency_ms)
    event.body = orjson.dumps(obj)
    choices = obj.get("choices")
    event.has_content, event.content_chars = _content(choices, content.chunk, content.fields)
    event.finish_reason = _finish_reason(choices)
    return event


def embedding_event(raw: bytes, target: Target, latency_ms: int) -> adapter_service_pb2.EmbedResponse:
    """The answer of an embedding call."""
    obj = parse_object(raw)
    _stamp(obj, target, latency_ms)
    response = adapter_service_pb2.EmbedResponse(body=orjson.dumps(obj), latency_ms=latency_ms)
    usage = obj.get("usage")
    if isinstance(usage, dict):
        response.usage.CopyFrom(usage_to_proto(usage))
    return response
