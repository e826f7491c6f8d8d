"""Decoding OpenAI's (and OpenAI-compatible servers') error bodies and usage objects."""

from __future__ import annotations

import orjson
import pytest

from services.adapters.json_values import parse_object
from services.adapters.openai_wire import OpenAIErrorBody, usage_to_proto
from services.core.errors import GatewayError, Reason


def test_openai_shape() -> None:
    raw = orjson.dumps({"error": {"message": "bad", "type": "invalid_request_error", "param": "n",
                                  "code": "invalid_value"}})
    expected = OpenAIErrorBody("bad", "invalid_request_error", "n", "invalid_value")
    assert OpenAIErrorBody.decode(raw) == expected


@pytest.mark.parametrize("body, expected", [
    ({"object": "error", "message": "too long", "type": "BadRequestError", "param": None, "code": 400},
     OpenAIErrorBody("too long", "BadRequestError", None, "400")),
    ({"detail": "Not Found"}, OpenAIErrorBody("Not Found")),
    ({"detail": [{"loc": ["body", "messages"], "msg": "field required"}]},
     OpenAIErrorBody('[{"loc":["body","messages"],"msg":"field required"}]')),
    ({"error": "plain string"}, OpenAIErrorBody("plain string")),
    ({"error": None}, OpenAIErrorBody()),
    ([1, 2], OpenAIErrorBody()),
])
def test_compatible_shapes(body: object, expected: OpenAIErrorBody) -> None:
    assert OpenAIErrorBody.decode(orjson.dumps(body)) == expected


def test_non_json_body() -> None:
    assert OpenAIErrorBody.decode(b"<html>502 Bad Gateway</html>") == OpenAIErrorBody()
    assert OpenAIErrorBody.decode(b"") == OpenAIErrorBody()


@pytest.mark.parametrize("error, status", [
    (OpenAIErrorBody(type="server_error"), 500),
    (OpenAIErrorBody(type="rate_limit_error"), 429),
    (OpenAIErrorBody(type="invalid_request_error", code="context_length_exceeded"), 400),
    (OpenAIErrorBody(type="overloaded_error"), 529),
    (OpenAIErrorBody(type="whatever", code="503"), 503),
    (OpenAIErrorBody(code="42"), 500),
    (OpenAIErrorBody(), 500),
])
def test_status_hint_of_stream_errors(error: OpenAIErrorBody, status: int) -> None:
    assert error.status_hint() == status


def test_failure_carries_fields() -> None:
    failure = OpenAIErrorBody("m", "t", "p", "c").failure(429, retry_after=1.0)
    assert (failure.status, failure.message, failure.param, failure.code, failure.retry_after) == (
        429, "m", "p", "c", 1.0)


def test_usage_with_details() -> None:
    usage = usage_to_proto({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                            "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0,
                                                          "accepted_prediction_tokens": 1,
                                                          "rejected_prediction_tokens": 0}})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 5, 15)
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details.reasoning_tokens == 2
    assert usage.completion_tokens_details.accepted_prediction_tokens == 1


def test_usage_with_nulls_and_missing_total() -> None:
    usage = usage_to_proto({"prompt_tokens": 3, "completion_tokens": None, "prompt_tokens_details": None})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 0, 3)
    assert not usage.HasField("prompt_tokens_details")


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'"s"'])
def test_parse_object_refuses_non_objects(raw: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        parse_object(raw)
    assert info.value.reason is Reason.UPSTREAM_ERROR


def test_a_bare_status_code_is_not_passed_on_as_an_error_code() -> None:
    assert OpenAIErrorBody("m", code="400").failure(400).code is None
