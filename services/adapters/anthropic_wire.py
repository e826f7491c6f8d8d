"""Anthropic Messages API wire types and their decoding, apart from translation.

The reference is Anthropic's API (version `2023-06-01`) as the official SDK types it
(`anthropic.types.MessageCreateParams`, `Message`, `RawMessageStreamEvent`, `ErrorResponse`):

    POST {base_url}/v1/messages      x-api-key: <key>   anthropic-version: 2023-06-01
    error body: {"type": "error", "error": {"type": "<error type>", "message": "..."}, "request_id"?}
    stream:     `event: <type>` / `data: {"type": "<type>", ...}` for message_start,
                content_block_start, content_block_delta, content_block_stop, message_delta,
                message_stop, ping and error.

An error's `type` is the typed value an in-stream error is mapped by (a stream has no status of
its own); its `message` is never matched on (Anthropic: "Its wording can change").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NotRequired, TypedDict

from services.adapters import openai_shapes as shapes
from services.adapters.credentials import AuthScheme
from services.adapters.json_values import as_text, loads_or_none
from services.adapters.upstream_errors import UpstreamFailure

API_VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"
API_KEY = AuthScheme("x-api-key")
VERSION_HEADER = "anthropic-version"

# The HTTP status each documented error type stands for (Anthropic's errors page and SDK).
ERROR_TYPE_STATUS: Mapping[str, int] = MappingProxyType({
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
})

# Anthropic `stop_reason` -> OpenAI `finish_reason`. `pause_turn` only follows server tools,
# which this adapter never sends; it ends the answer as it stands.
STOP_REASONS: Mapping[str, str] = MappingProxyType({
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
})


# -- request -----------------------------------------------------------------------------------
class TextBlock(TypedDict):
    """`{"type": "text", "text": ...}`."""

    type: Literal["text"]
    text: str


class ImageSource(TypedDict, total=False):
    """`{"type": "base64", "media_type", "data"}` or `{"type": "url", "url"}`."""

    type: Literal["base64", "url"]
    media_type: str
    data: str
    url: str


class ToolUseBlock(TypedDict):
    """A call the assistant made: `input` is the parsed arguments object."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(TypedDict):
    """The answer to one tool call, inside a `user` message."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: NotRequired[str | list[TextBlock]]


Role = Literal["user", "assistant"]


class MessageParam(TypedDict):
    """One turn; roles strictly alternate, starting with `user`."""

    role: Role
    content: str | list[dict[str, Any]]


class ToolParam(TypedDict):
    """A client tool: `input_schema` is the JSON Schema of its input (an object)."""

    name: str
    input_schema: dict[str, Any]
    description: NotRequired[str]
    strict: NotRequired[bool]


class MessagesRequest(TypedDict):
    """The body of `POST /v1/messages` (the fields this adapter sends)."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: NotRequired[str | list[dict[str, Any]]]  # text blocks
    stop_sequences: NotRequired[list[str]]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    metadata: NotRequired[dict[str, str]]
    tools: NotRequired[list[ToolParam]]
    tool_choice: NotRequired[dict[str, Any]]
    stream: NotRequired[bool]


# -- response ----------------------------------------------------------------------------------
_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@dataclass(slots=True)
class AnthropicUsage:
    """Token counts as Anthropic reports them. `input_tokens` excludes cache reads and writes;
    the three together are the whole prompt (Anthropic's `Usage` docstring)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    thinking_tokens: int = 0

    def update(self, usage: Any) -> None:
        """Takes every count present in a `usage` object (message_start, then message_delta's
        cumulative counts override); nulls and absent fields keep what is known."""
        if not isinstance(usage, dict):
            return
        for name in _COUNTS:
            value = usage.get(name)
            if isinstance(value, int):
                setattr(self, name, value)
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("thinking_tokens"), int):
            self.thinking_tokens = details["thinking_tokens"]

    @classmethod
    def decode(cls, usage: Any) -> AnthropicUsage:
        result = cls()
        result.update(usage)
        return result

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's usage: the prompt counts cache reads and writes once, as breakdowns of it."""
        prompt = self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
        return shapes.usage(prompt, self.output_tokens, cached_tokens=self.cache_read_input_tokens,
                            cache_creation_tokens=self.cache_creation_input_tokens,
                            reasoning_tokens=self.thinking_tokens)


def finish_reason(stop_reason: Any) -> str:
    """OpenAI's finish_reason for an Anthropic stop_reason; an unknown or missing one is "stop"."""
    return STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


# -- errors ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AnthropicErrorBody:
    """`{"type": "error", "error": {"type", "message"}}`, decoded; empty when the body is not that
    (an HTML page from a proxy, say)."""

    type: str | None = None
    message: str | None = None

    @classmethod
    def from_object(cls, obj: Any) -> AnthropicErrorBody:
        """Decodes an already parsed body or stream `error` event."""
        error = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(error, dict):
            return cls()
        return cls(type=as_text(error.get("type")), message=as_text(error.get("message")))

    @classmethod
    def decode(cls, raw: bytes) -> AnthropicErrorBody:
        """Decodes an error response body; an undecodable body yields an empty error."""
        return cls.from_object(loads_or_none(raw))

    def status_hint(self) -> int:
        """The HTTP status this error stands for when it arrived inside a stream."""
        return ERROR_TYPE_STATUS.get(self.type or "", 500)

    def failure(self, status: int, retry_after: float | None = None) -> UpstreamFailure:
        """The provider-neutral failure for the error table. Anthropic has no `param` or `code`."""
        return UpstreamFailure(status=status, message=self.message, retry_after=retry_after)
