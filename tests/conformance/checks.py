"""Assertions every case shares: the client-visible bytes stay valid OpenAI, labelled for the
gateway (public model id, `provider` extension)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from aggregator.adapter.v1 import adapter_service_pb2
from tests.conformance.conftest import Harness

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


Labels = Callable[[Harness, dict[str, Any]], None]
M = TypeVar("M", bound=BaseModel)


def whole(harness: Harness, events: list[adapter_service_pb2.ChatResponse], model: type[M],
          labels: Labels) -> M:
    """The one event of a non-streamed call, its labels checked, parsed with an SDK type."""
    assert len(events) == 1
    body = orjson.loads(events[0].body)
    labels(harness, body)
    return model.model_validate(body)


def streamed(harness: Harness, events: list[adapter_service_pb2.ChatResponse], model: type[M],
             labels: Labels) -> list[M]:
    """The client-visible chunks of a streamed call, each checked and parsed; latency never decreases."""
    parsed = []
    for event in events:
        if event.body:
            body = orjson.loads(event.body)
            labels(harness, body)
            parsed.append(model.model_validate(body))
    latencies = [e.latency_ms for e in events]
    assert latencies == sorted(latencies)
    return parsed


def completion(harness: Harness, events: list[adapter_service_pb2.ChatResponse]) -> ChatCompletion:
    """The one event of a non-streamed chat call, checked and parsed."""
    return whole(harness, events, ChatCompletion, _check_labels)


def chunks(harness: Harness, events: list[adapter_service_pb2.ChatResponse]) -> list[ChatCompletionChunk]:
    """The client-visible chunks of a streamed chat call, checked and parsed."""
    return streamed(harness, events, ChatCompletionChunk, _check_labels)


def _check_labels(harness: Harness, body: dict[str, Any]) -> None:
    assert body["model"] == "smart-model"
    provider = body["provider"]
    assert provider["name"] == f"prov-{harness.profile.id}"
    assert provider["model"] == harness.profile.wire.reported_model("gpt-4o-mini")  # the upstream's word
    assert isinstance(provider["latency_ms"], int) and provider["latency_ms"] >= 0


def streamed_text(parsed: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)


def usage_of(events: list[adapter_service_pb2.ChatResponse]) -> adapter_service_pb2.ChatResponse:
    """The one event that carries usage."""
    with_usage = [e for e in events if e.HasField("usage")]
    assert len(with_usage) == 1
    return with_usage[0]

