"""Cohere's API v2 wire types and their decoding, apart from translation.

The shapes follow the official `cohere` SDK (7.3) types: `cohere.v2.types.V2ChatResponse`, the
stream event union `cohere.v2.types.V2ChatStreamResponse` (alias `StreamedChatResponseV2`),
`cohere.types.ChatMessageV2` / `ToolV2` / `ResponseFormatV2` for requests and
`cohere.types.EmbedByTypeResponse` for `/v2/embed`.

Errors: every failed call answers `{"message": str}` (sometimes with an `id`), whatever the
status. Cohere has statuses of its own beside the standard ones; `STATUS_MEANING` says which
standard status each stands for, so the one table in `upstream_errors` decides what clients see.
A stream has no error event: it ends with `message-end` whose `finish_reason` is `ERROR` (with
`delta.error`, a message) or `TIMEOUT`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from services.adapters.json_values import loads_or_none
from services.adapters.upstream_errors import UpstreamFailure

# ---------------------------------------------------------------------------------------------
# Requests (`POST /v2/chat`, `POST /v2/embed`)


class CohereFunction(TypedDict):
    """The function of a tool call (`ToolCallV2Function`); `arguments` is a JSON string."""

    name: str
    arguments: str


class CohereToolCall(TypedDict):
    """`ToolCallV2`: the same shape as OpenAI's tool call."""

    id: str
    type: Literal["function"]
    function: CohereFunction


class CohereMessage(TypedDict, total=False):
    """One of `ChatMessageV2` (roles system, user, assistant, tool); `content` is a string or a
    list of content blocks (`{"type": "text"}`, `{"type": "image_url"}` for users)."""

    role: str
    content: str | list[dict[str, Any]]
    tool_calls: list[CohereToolCall]
    tool_plan: str
    tool_call_id: str


class CohereTool(TypedDict):
    """`ToolV2`: `{"type": "function", "function": {"name", "description"?, "parameters"}}`."""

    type: Literal["function"]
    function: dict[str, Any]


class CohereChatRequest(TypedDict, total=False):
    """The body of `POST /v2/chat` (only the fields the gateway sends)."""

    model: str
    messages: list[CohereMessage]
    stream: bool
    tools: list[CohereTool]
    strict_tools: bool
    tool_choice: Literal["REQUIRED", "NONE"]
    response_format: dict[str, Any]
    max_tokens: int
    stop_sequences: list[str]
    temperature: float
    seed: int
    frequency_penalty: float
    presence_penalty: float
    p: float


class CohereEmbedRequest(TypedDict):
    """The body of `POST /v2/embed`."""

    model: str
    texts: list[str]
    input_type: str
    embedding_types: list[str]
    truncate: str
    output_dimension: NotRequired[int]


# ---------------------------------------------------------------------------------------------
# Responses

FinishReason = Literal["COMPLETE", "STOP_SEQUENCE", "MAX_TOKENS", "TOOL_CALL", "ERROR", "TIMEOUT"]


class CohereCounts(TypedDict, total=False):
    """`UsageBilledUnits` / `UsageTokens` (the SDK types them as numbers)."""

    input_tokens: float
    output_tokens: float
    search_units: float
    classifications: float


class CohereUsage(TypedDict, total=False):
    """`Usage`: what Cohere bills (`billed_units`) and what the model processed (`tokens`)."""

    billed_units: CohereCounts
    tokens: CohereCounts
    cached_tokens: float


class CohereChatResponse(TypedDict, total=False):
    """`V2ChatResponse`; `message.content` items are `{"type": "text", "text"}` or
    `{"type": "thinking", "thinking"}`."""

    id: str
    finish_reason: str
    message: dict[str, Any]
    usage: CohereUsage


class CohereStreamEvent(TypedDict, total=False):
    """One `data:` payload of the v2 stream; `type` names the event (`message-start`,
    `content-start`, `content-delta`, `content-end`, `tool-plan-delta`, `tool-call-start`,
    `tool-call-delta`, `tool-call-end`, `citation-start`, `citation-end`, `message-end`, `debug`)."""

    type: str
    id: str
    index: int
    delta: dict[str, Any]


def count(counts: Any, key: str) -> int | None:
    """A token count of `billed_units` or `tokens`; None when absent. The SDK types counts as
    numbers: a fraction would be rounded up, so nothing billed is ever dropped."""
    if not isinstance(counts, dict):
        return None
    value = counts.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
        return None
    return math.ceil(value)


def string(value: Any, default: str = "") -> str:
    """`value` if it is a string, else `default`."""
    return value if isinstance(value, str) else default


def path(obj: Any, *keys: str) -> Any:
    """`obj[k1][k2]...`, or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """The counts the gateway reports and bills for one Cohere answer.

    Cohere gives two pairs: `billed_units` (what Cohere charges; it leaves out the preamble
    Cohere adds to every prompt) and `tokens` (what the model processed, preamble included).
    The customer pays Cohere for `billed_units`, so those are taken where given, each count
    falling back to `tokens` where billed_units lacks it. `cached` (prompt tokens served from
    Cohere's cache) is a breakdown of `prompt`, never more than it."""

    prompt: int
    completion: int
    cached: int = 0

    @classmethod
    def decode(cls, usage: Any) -> UsageCounts | None:
        """The counts of a `Usage` object; None when there is none."""
        if not isinstance(usage, dict):
            return None
        billed, processed = usage.get("billed_units"), usage.get("tokens")
        values = []
        for key in ("input_tokens", "output_tokens"):
            value = count(billed, key)
            values.append(value if value is not None else count(processed, key) or 0)
        prompt, completion = values
        return cls(prompt, completion, min(count(usage, "cached_tokens") or 0, prompt))


# ---------------------------------------------------------------------------------------------
# Errors

# Cohere's own statuses, by the standard status that means the same to the error table:
# 402 (payment required: the account cannot be billed) is an account problem like 403;
# 498 (invalid token) is 401; 499 (the request was cancelled upstream) is Cohere failing, 500.
STATUS_MEANING: Mapping[int, int] = {498: 401, 499: 500}


@dataclass(frozen=True, slots=True)
class CohereErrorBody:
    """Cohere's error body `{"message": str, "id"?: str}`."""

    message: str | None = None
    id: str | None = None

    @classmethod
    def from_object(cls, obj: Any) -> CohereErrorBody:
        if not isinstance(obj, dict):
            return cls()
        message, error_id = obj.get("message"), obj.get("id")
        return cls(message=message if isinstance(message, str) else None,
                   id=error_id if isinstance(error_id, str) else None)

    @classmethod
    def decode(cls, raw: bytes) -> CohereErrorBody:
        """Decodes an error response body; an undecodable body (a proxy's HTML) yields an empty error."""
        return cls.from_object(loads_or_none(raw))

    def failure(self, status: int, retry_after: float | None = None) -> UpstreamFailure:
        """The provider-neutral failure for the error table. Cohere's bodies carry no parameter
        name and no error code, so neither is guessed from the message."""
        return UpstreamFailure(status=STATUS_MEANING.get(status, status), message=self.message,
                               retry_after=retry_after)
