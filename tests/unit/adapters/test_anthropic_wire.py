"""Anthropic wire decoding: error bodies, usage, stop reasons (no I/O)."""

from __future__ import annotations

import orjson
import pytest
from openai.types import CompletionUsage

from services.adapters.anthropic_wire import (
    ERROR_TYPE_STATUS,
    AnthropicErrorBody,
    AnthropicUsage,
    finish_reason,
)
from tests.fakes import anthropic_failures as failures


def test_error_body_decodes_type_and_message() -> None:
    error = AnthropicErrorBody.decode(failures.overloaded().body)
    assert (error.type, error.message) == ("overloaded_error", "Overloaded")
    failure = error.failure(529, retry_after=3.0)
    assert (failure.status, failure.message, failure.param, failure.code, failure.retry_after) == (
        529, "Overloaded", None, None, 3.0)


@pytest.mark.parametrize("raw", [b"<html>Bad gateway</html>", b"[1]", b'{"error": "text"}', b""])
def test_undecodable_error_bodies_are_empty(raw: bytes) -> None:
    assert AnthropicErrorBody.decode(raw) == AnthropicErrorBody()


@pytest.mark.parametrize("type_, status", [
    ("invalid_request_error", 400), ("authentication_error", 401), ("billing_error", 402),
    ("permission_error", 403), ("not_found_error", 404), ("request_too_large", 413),
    ("rate_limit_error", 429), ("api_error", 500), ("timeout_error", 504), ("overloaded_error", 529),
    ("some_future_error", 500),
])
def test_in_stream_errors_map_by_type(type_: str, status: int) -> None:
    event = {"type": "error", "error": {"type": type_, "message": "m"}}
    assert AnthropicErrorBody.from_object(event).status_hint() == status
    assert type_ not in ERROR_TYPE_STATUS or ERROR_TYPE_STATUS[type_] == status


def test_usage_counts_the_prompt_once() -> None:
    usage = AnthropicUsage.decode({"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 90,
                                   "cache_creation_input_tokens": 5, "service_tier": "standard"})
    openai = usage.to_openai()
    assert (openai["prompt_tokens"], openai["completion_tokens"], openai["total_tokens"]) == (105, 7, 112)
    assert openai["prompt_tokens_details"] == {"cached_tokens": 90, "cache_creation_tokens": 5}
    CompletionUsage.model_validate(openai)


def test_stream_usage_updates_keep_known_counts() -> None:
    usage = AnthropicUsage.decode({"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": None})
    usage.update({"output_tokens": 33, "input_tokens": None})  # message_delta: cumulative output
    usage.update({"output_tokens": 40, "output_tokens_details": {"thinking_tokens": 12}})
    usage.update(None)
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (20, 40, 0)
    assert usage.to_openai()["completion_tokens_details"] == {"reasoning_tokens": 12}


@pytest.mark.parametrize("stop_reason, expected", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    (None, "stop"), ("a_new_reason", "stop"),
])
def test_finish_reasons(stop_reason: str | None, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_failures_module_speaks_the_error_shape() -> None:
    body = orjson.loads(failures.rate_limited(2, 1500).body)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
