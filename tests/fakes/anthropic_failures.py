"""Scripted failures in Anthropic's real error format, for `FakeAnthropic.fail_next()`.

The same function names as `openai_failures` where Anthropic has the error class; bodies are
`{"type": "error", "error": {"type", "message"}, "request_id"}` with Anthropic's documented
types and statuses (400, 401, 402, 403, 404, 413, 429, 500, 504, 529).

Differences from OpenAI, declared in the conformance profile (`profile_anthropic.ERROR_OUTCOMES`):
- no `param` or `code` in any error, so a 400 carries only the upstream message;
- a too-long prompt is an ordinary 400 invalid_request_error ("prompt is too long: ..."), told
  apart only by its wording, which we never match: it stays UPSTREAM_BAD_REQUEST;
- no 422 at all (`unprocessable` does not exist here).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import orjson

from tests.fakes import anthropic_payloads as payloads
from tests.fakes.base import Failure

# The conformance suite's vocabulary -> Anthropic's error types.
_TYPES: Mapping[str, str] = MappingProxyType({"server_error": "api_error"})

BAD_REQUEST_MESSAGE = "temperature: Input should be less than or equal to 1"
PROMPT_TOO_LONG_MESSAGE = "prompt is too long: 208310 tokens > 200000 maximum"



def _failure(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> Failure:
    return Failure(status=status, body=orjson.dumps(payloads.error(type_, message)),
                   headers={"request-id": "req_fake0001", **(headers or {})})


def unauthorized() -> Failure:
    return _failure(401, "authentication_error", "invalid x-api-key")


def forbidden() -> Failure:
    return _failure(403, "permission_error", "Your API key does not have permission to use the specified "
                                             "resource.")


def billing() -> Failure:
    return _failure(402, "billing_error", "Your credit balance is too low to access the Anthropic API.")


def rate_limited(retry_after_s: int = 2, retry_after_ms: int | None = None) -> Failure:
    """429 with `retry-after` (seconds) and Anthropic's rate-limit headers; `retry_after_ms` adds the
    `retry-after-ms` header that Anthropic's SDKs also honour (Anthropic itself documents only
    `retry-after`)."""
    headers = {"retry-after": str(retry_after_s), "anthropic-ratelimit-requests-remaining": "0",
               "anthropic-ratelimit-requests-limit": "50"}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    message = ("This request would exceed your organization's (org-secret) rate limit of 50 requests per "
               "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.")
    return _failure(429, "rate_limit_error", message, headers)


def bad_request(message: str = BAD_REQUEST_MESSAGE) -> Failure:
    return _failure(400, "invalid_request_error", message)


def context_length_exceeded() -> Failure:
    """What Anthropic sends for a prompt over the context window: a plain invalid_request_error."""
    return _failure(400, "invalid_request_error", PROMPT_TOO_LONG_MESSAGE)


def request_too_large() -> Failure:
    return _failure(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")


def model_not_found(model: str = "claude-unknown") -> Failure:
    return _failure(404, "not_found_error", f"model: {model}")


def server_error(status: int = 500) -> Failure:
    """500 (and any other 5xx an edge may answer) with Anthropic's api_error body."""
    return _failure(status, "api_error", "Internal server error")


def unavailable() -> Failure:
    """503 from Anthropic's edge, with `retry-after`."""
    return _failure(503, "api_error", "Service unavailable", {"retry-after": "1"})


def overloaded() -> Failure:
    """529: Anthropic is overloaded (no retry-after)."""
    return _failure(529, "overloaded_error", "Overloaded")


def timeout(status: int = 504) -> Failure:
    """504 timeout_error (the SDK's GatewayTimeoutError); 408 the same body, as a proxy may."""
    return _failure(status, "timeout_error", "Request timed out")


def in_stream(after_chunks: int = 1, type_: str = "overloaded_error") -> Failure:
    """A stream that sends its events until `after_chunks` content_block_start/delta events went out,
    then an `event: error` (Anthropic's mid-stream failure; the status stays 200)."""
    kind = _TYPES.get(type_, type_)
    body = payloads.error(kind, "Overloaded" if kind == "overloaded_error" else "Internal server error")
    return Failure(status=200, body=orjson.dumps(body), after_chunks=after_chunks)
