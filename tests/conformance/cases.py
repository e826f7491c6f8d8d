"""The cases of the conformance suite: one row of the table each (docs/providers/conformance.md).

A case is small enough that a provider which truly cannot do one thing declares exactly that case
out (`ProviderProfile.cannot`). Error classes are cases of their own: each `ErrorCase` names the
case it belongs to, so "no 529" or "no typed context-length error" leaves only that row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from services.core.errors import Reason

# case -> what it proves. The order is the table's.
CASES: Mapping[str, str] = MappingProxyType({
    "text": "a plain answer, its usage; the upstream model and temperature sent",
    "system_prompt": "a system message reaches the upstream as its system instruction",
    "multi_turn": "user/assistant turns keep their roles and order",
    "stop": "stop sequences are sent; the answer ends at one",
    "streaming": "a streamed answer: role chunk, text deltas, finish chunk, one id, usage billed",
    "stream_incremental": "chunks reach the client while the upstream is still generating",
    "tool_call": "a tool is offered in the upstream's shape; its call comes back as an OpenAI tool call",
    "tool_call_stream": "a streamed tool call: id and name first, arguments assemble into valid JSON",
    "tool_result": "an assistant tool call and its tool result are sent back upstream",
    "image_input": "an image part reaches the upstream",
    "json_output": "JSON mode and a JSON schema (integers kept integers) are asked upstream",
    "usage_in_stream": "the usage chunk only when asked; usage is always billed",
    "error_auth": "401 and 403: UPSTREAM_AUTH_FAILED, the key never shown",
    "error_rate_limit": "429 with Retry-After: UPSTREAM_RATE_LIMITED and the wait",
    "error_rate_limit_ms": "429 whose wait has sub-second precision: kept exactly",
    "error_bad_request": "400: UPSTREAM_BAD_REQUEST with the upstream's message",
    "error_unprocessable": "422: UPSTREAM_BAD_REQUEST",
    "error_context_length": "a typed context-length error: CONTEXT_LENGTH_EXCEEDED",
    "error_not_found": "unknown model: UPSTREAM_BAD_REQUEST, code model_not_found",
    "error_5xx": "500 and 502: UPSTREAM_ERROR",
    "error_unavailable": "503: UPSTREAM_UNAVAILABLE",
    "error_overloaded": "529 overloaded: UPSTREAM_OVERLOADED",
    "error_timeout": "504 and 408: UPSTREAM_TIMEOUT",
    "error_in_stream": "a server error after content was streamed: UPSTREAM_ERROR",
    "error_in_stream_rate_limit": "a rate-limit error after content was streamed: UPSTREAM_RATE_LIMITED",
    "error_in_stream_overloaded": "an overloaded error after content was streamed: UPSTREAM_OVERLOADED",
    "timeout": "no first byte, or silence mid-stream, past the deadline: UPSTREAM_TIMEOUT",
    "connect_error": "an unreachable upstream: UPSTREAM_UNAVAILABLE, retriable",
    "cancellation": "the client leaving (closing or cancelling) closes the upstream request",
    "credentials": "the key sent where the provider wants it; missing or wrong: UPSTREAM_AUTH_FAILED",
    "request_id": "the request id is forwarded; gateway extensions are not",
    "embeddings": "text embeddings: vectors, usage, the model named; errors mapped",
    "embeddings_token_ids": "token-id embedding input stays integers",
    "embeddings_base64": "encoding_format base64",
    "completions": "legacy /v1/completions (tests/conformance/test_completion_cases.py)",
    "images": "image generation, edit and variation (tests/conformance/test_image_cases.py)",
})


@dataclass(frozen=True)
class ErrorCase:
    """A scripted upstream failure (by the failure-preset name every fake's failures module has)
    and the GatewayError attributes that must come out, as OpenAI's error model gives them."""

    case: str  # the conformance case (table row) this error class belongs to
    preset: str
    args: tuple[Any, ...]
    reason: Reason
    http_status: int
    expect: Mapping[str, Any] = field(default_factory=dict)  # more attributes of the GatewayError

    def expected(self, differs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every attribute to check, with a provider's declared differences applied."""
        return {"reason": self.reason, "http_status": self.http_status, **self.expect, **(differs or {})}


ERROR_CASES: Mapping[str, ErrorCase] = MappingProxyType({
    "auth": ErrorCase("error_auth", "unauthorized", (), Reason.UPSTREAM_AUTH_FAILED, 502),
    "forbidden": ErrorCase("error_auth", "forbidden", (), Reason.UPSTREAM_AUTH_FAILED, 502),
    "rate_limit": ErrorCase("error_rate_limit", "rate_limited", (2,), Reason.UPSTREAM_RATE_LIMITED, 429,
                            {"retry_after": 2.0}),
    "rate_limit_ms": ErrorCase("error_rate_limit_ms", "rate_limited", (2, 1500), Reason.UPSTREAM_RATE_LIMITED,
                               429, {"retry_after": 1.5}),
    "bad_request": ErrorCase("error_bad_request", "bad_request", (), Reason.UPSTREAM_BAD_REQUEST, 400,
                             {"param": "temperature", "code": "invalid_value",
                              "message": "Invalid value for 'temperature': must be between 0 and 2."}),
    "unprocessable": ErrorCase("error_unprocessable", "unprocessable", (), Reason.UPSTREAM_BAD_REQUEST, 400,
                               {"message": "Input should be a valid list"}),
    "context_length": ErrorCase("error_context_length", "context_length_exceeded", (),
                                Reason.CONTEXT_LENGTH_EXCEEDED, 400,
                                {"param": "messages", "code": "context_length_exceeded"}),
    "not_found": ErrorCase("error_not_found", "model_not_found", (), Reason.UPSTREAM_BAD_REQUEST, 400,
                           {"code": "model_not_found"}),
    "server_error": ErrorCase("error_5xx", "server_error", (500,), Reason.UPSTREAM_ERROR, 502),
    "bad_gateway": ErrorCase("error_5xx", "server_error", (502,), Reason.UPSTREAM_ERROR, 502),
    "unavailable": ErrorCase("error_unavailable", "unavailable", (), Reason.UPSTREAM_UNAVAILABLE, 503,
                             {"retry_after": 1.0}),
    "overloaded": ErrorCase("error_overloaded", "overloaded", (), Reason.UPSTREAM_OVERLOADED, 503),
    "gateway_timeout": ErrorCase("error_timeout", "timeout", (504,), Reason.UPSTREAM_TIMEOUT, 504),
    "request_timeout": ErrorCase("error_timeout", "timeout", (408,), Reason.UPSTREAM_TIMEOUT, 504),
})

# Failures inside a stream that already carried content: `failures.in_stream(after_chunks, type_)`
# with OpenAI's error type names. Names differ from ERROR_CASES': a profile's `error_outcomes` keys both.
STREAM_ERROR_CASES: Mapping[str, ErrorCase] = MappingProxyType({
    "stream_server_error": ErrorCase("error_in_stream", "in_stream", (2, "server_error"),
                                     Reason.UPSTREAM_ERROR, 502),
    "stream_rate_limit": ErrorCase("error_in_stream_rate_limit", "in_stream", (2, "rate_limit_error"),
                                  Reason.UPSTREAM_RATE_LIMITED, 429),
    "stream_overloaded": ErrorCase("error_in_stream_overloaded", "in_stream", (2, "overloaded_error"),
                                  Reason.UPSTREAM_OVERLOADED, 503),
})
