"""OpenAI's wire types and their decoding, apart from translation.

The error body is `{"error": {"message", "type", "param", "code"}}`; OpenAI-compatible servers
vary (vLLM answers `{"object": "error", "message", "type", "code": 400}` at top level, FastAPI
servers `{"detail": ...}`, proxies plain text or HTML), so decoding accepts each of those and
never guesses from message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aggregator.openai.v1 import chat_pb2
from services.adapters.json_values import as_text, loads_or_none
from services.adapters.upstream_errors import UpstreamFailure

# The HTTP status an in-stream error means, by its OpenAI `type` (a stream has no status of its own).
ERROR_TYPE_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 529,
}


@dataclass(frozen=True, slots=True)
class OpenAIErrorBody:
    """An OpenAI error object, whichever of the known shapes it came in."""

    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | None = None

    @classmethod
    def from_object(cls, obj: Any) -> OpenAIErrorBody:
        """Decodes an already parsed body (e.g. an in-stream `{"error": ...}` event)."""
        if not isinstance(obj, dict):
            return cls()
        error = obj.get("error", obj)
        if isinstance(error, str):
            return cls(message=error)
        if not isinstance(error, dict):
            return cls()
        message = error.get("message")
        if message is None and "detail" in error:
            message = error["detail"]
        return cls(message=as_text(message), type=as_text(error.get("type")),
                   param=as_text(error.get("param")), code=as_text(error.get("code")))

    @classmethod
    def decode(cls, raw: bytes) -> OpenAIErrorBody:
        """Decodes an error response body; an undecodable body (HTML or text from a proxy: nothing
        typed to keep) yields an empty error."""
        return cls.from_object(loads_or_none(raw))

    def status_hint(self) -> int:
        """The HTTP status this error stands for when it arrived inside a stream."""
        if self.code is not None and self.code.isdigit() and 400 <= int(self.code) <= 599:
            return int(self.code)  # vLLM and others put the status in `code`
        return ERROR_TYPE_STATUS.get(self.type or "", 500)

    def failure(self, status: int, retry_after: float | None = None) -> UpstreamFailure:
        """The provider-neutral failure for the error table."""
        # A bare HTTP status in `code` (vLLM) is not an OpenAI error code: clients never see it.
        code = None if self.code is not None and self.code.isdigit() else self.code
        return UpstreamFailure(status=status, message=self.message, param=self.param, code=code,
                               retry_after=retry_after)


def _count(obj: Any, key: str) -> int:
    if not isinstance(obj, dict):
        return 0
    value = obj.get(key)
    return value if isinstance(value, int) else 0


def usage_to_proto(usage: Any) -> chat_pb2.Usage:
    """OpenAI's `usage` object (nulls and missing details tolerated) as our Usage message."""
    prompt, completion = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    result = chat_pb2.Usage(
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        total_tokens=_count(usage, "total_tokens"))
    if isinstance(prompt, dict):
        result.prompt_tokens_details.cached_tokens = _count(prompt, "cached_tokens")
        result.prompt_tokens_details.audio_tokens = _count(prompt, "audio_tokens")
        result.prompt_tokens_details.cache_creation_tokens = _count(prompt, "cache_creation_tokens")
    if isinstance(completion, dict):
        details = result.completion_tokens_details
        details.reasoning_tokens = _count(completion, "reasoning_tokens")
        details.audio_tokens = _count(completion, "audio_tokens")
        details.accepted_prediction_tokens = _count(completion, "accepted_prediction_tokens")
        details.rejected_prediction_tokens = _count(completion, "rejected_prediction_tokens")
    if not result.total_tokens:
        result.total_tokens = result.prompt_tokens + result.completion_tokens
    return result
