"""Scripted failures in OpenAI's real error format, for `FakeOpenAI.fail_next()`.

One function per error class the gateway must tell apart; bodies and headers are what OpenAI
sends (`x-request-id` aside), so the adapter's decoding is tested against the real shapes.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes import openai_payloads as payloads
from tests.fakes.base import Failure


def _failure(status: int, body: Any, headers: dict[str, str] | None = None) -> Failure:
    return Failure(status=status, body=orjson.dumps(body), headers=headers or {})


def unauthorized() -> Failure:
    """401 with OpenAI's message, which echoes part of the key."""
    return _failure(401, payloads.error("Incorrect API key provided: sk-pro************************cret.",
                                        "invalid_request_error", code="invalid_api_key"))


def forbidden() -> Failure:
    return _failure(403, payloads.error("You are not allowed to sample from this model",
                                        "invalid_request_error"))


def rate_limited(retry_after_s: int = 2, retry_after_ms: int | None = None) -> Failure:
    """429 with `Retry-After` (seconds) and, optionally, OpenAI's `retry-after-ms`."""
    headers = {"Retry-After": str(retry_after_s), "x-ratelimit-remaining-requests": "0"}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    body = payloads.error("Rate limit reached for gpt-4o-mini in organization org-secret on requests per min "
                          "(RPM): Limit 3, Used 3, Requested 1.", "requests", code="rate_limit_exceeded")
    return _failure(429, body, headers)


def bad_request(message: str = "Invalid value for 'temperature': must be between 0 and 2.",
                param: str | None = "temperature", code: str | None = "invalid_value") -> Failure:
    return _failure(400, payloads.error(message, "invalid_request_error", param=param, code=code))


def context_length_exceeded() -> Failure:
    return _failure(400, payloads.error(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 "
        "tokens. Please reduce the length of the messages.", "invalid_request_error", param="messages",
        code="context_length_exceeded"))


def unprocessable() -> Failure:
    """422 as FastAPI-based OpenAI-compatible servers send it."""
    return _failure(422, {"detail": "Input should be a valid list"})


def model_not_found(model: str = "gpt-unknown") -> Failure:
    message = f"The model `{model}` does not exist or you do not have access to it."
    return _failure(404, payloads.error(message, "invalid_request_error", code="model_not_found"))


def server_error(status: int = 500) -> Failure:
    """500/502 (and any 5xx): OpenAI's server_error body."""
    message = "The server had an error while processing your request. Sorry about that!"
    return _failure(status, payloads.error(message, "server_error"))


def unavailable() -> Failure:
    return _failure(503, payloads.error("The engine is currently overloaded, please try again later.",
                                        "server_error"), {"Retry-After": "1"})


def overloaded() -> Failure:
    return _failure(529, payloads.error("Overloaded", "overloaded_error"))


def timeout(status: int = 504) -> Failure:
    """408 or 504, with a proxy's HTML body (nothing typed to decode)."""
    return Failure(status=status, body=b"<html><body>Gateway Timeout</body></html>", content_type="text/html")


def in_stream(after_chunks: int = 1, type_: str = "server_error") -> Failure:
    """A stream that sends `after_chunks` chunks, then an in-band `{"error": ...}` event."""
    body = payloads.error("The server had an error while processing your request.", type_)
    return Failure(status=200, body=orjson.dumps(body), after_chunks=after_chunks)


def dropped(after_chunks: int = 1) -> Failure:
    """A stream whose connection dies after `after_chunks` chunks (1: right after the role chunk),
    with no error event and no `[DONE]`."""
    return Failure(status=200, body=b"", after_chunks=after_chunks, drop=True)
