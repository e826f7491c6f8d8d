"""OpenAI response objects built from another provider's answer.

Adapters of non-OpenAI providers translate into these plain dicts, then hand them to
`openai_translate.completion_event` / `chunk_event`, which stamp the public model and the
`provider` extension and extract usage, exactly as for OpenAI itself. One builder, so every
provider's output has the same shape (the one the `openai` SDK types accept).

Usage follows OpenAI's convention: `prompt_tokens` counts every prompt token, cached ones
included; `prompt_tokens_details.cached_tokens` (read from cache) and `cache_creation_tokens`
(written to cache) are breakdowns of it, never additions (no double billing).
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")


def new_id(prefix: str = "chatcmpl") -> str:
    """An id in OpenAI's style for providers that give none."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int = 0,
    cache_creation_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """OpenAI's `usage` object; `prompt_tokens` must already include cached and cache-write tokens."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": cached_tokens,
            "cache_creation_tokens": cache_creation_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A whole function tool call of an assistant message (`arguments` is a JSON string)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_call_delta(
    index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = ""
) -> dict[str, Any]:
    """A streamed fragment of a tool call: the first carries id, type and name, later ones only
    argument fragments, as OpenAI streams them."""
    delta: dict[str, Any] = {"index": index}
    if call_id is not None:
        delta["id"] = call_id
        delta["type"] = "function"
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    delta["function"] = function
    return delta


def message(
    content: str | None, *, tool_calls: list[dict[str, Any]] | None = None, refusal: str | None = None
) -> dict[str, Any]:
    """An assistant message of a completion."""
    result: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        result["tool_calls"] = tool_calls
    return result


def completion(
    completion_id: str,
    created: int,
    upstream_model: str,
    choices: list[dict[str, Any]],
    usage_obj: dict[str, Any] | None,
) -> dict[str, Any]:
    """A `chat.completion`; `choices` are `choice(...)` dicts."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": upstream_model,
        "choices": choices,
        "usage": usage_obj,
    }


def choice(index: int, message_obj: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "message": message_obj, "finish_reason": finish_reason, "logprobs": None}


def chunk(
    completion_id: str,
    created: int,
    upstream_model: str,
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": upstream_model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(
    completion_id: str, created: int, upstream_model: str, usage_obj: dict[str, Any]
) -> dict[str, Any]:
    """The final chunk of `stream_options.include_usage`: no choices, the usage of the request."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": upstream_model,
        "choices": [],
        "usage": usage_obj,
    }


def float32_base64(vector: Sequence[float]) -> str:
    """A vector as OpenAI's base64 embedding: the little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embedding_list(vectors: Sequence[Sequence[float]], upstream_model: str, prompt_tokens: int, *,
                   as_base64: bool) -> dict[str, Any]:
    """An embeddings `list`, one `embedding` per vector in order (base64 when `as_base64`); an
    embedding call generates nothing, so its total is its prompt."""
    data = [{"object": "embedding", "index": index,
             "embedding": float32_base64(vector) if as_base64 else vector}
            for index, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": upstream_model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
