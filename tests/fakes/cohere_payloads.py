"""Deterministic Cohere API v2 payloads for the fake upstream, in Cohere's real wire format
(checked against the `cohere` SDK's types in test_cohere_upstream.py).

What the fake "generates" mirrors `openai_payloads`, so both fakes answer a conversation alike:
- text: the last user message's text, echoed (plus " [N image(s)]" when it carried images);
  after a tool result (last message role "tool"): "Tool result: <content>";
- with `response_format` json_object: the JSON text `{"echo": <text>}`;
- a tool call, with a plan, when tools are given, `tool_choice` is not "NONE", the last message
  is the user's, and either `tool_choice` is "REQUIRED" or the user's text names a tool;
- `stop_sequences` cut the text (finish STOP_SEQUENCE); `max_tokens` keeps that many tokens
  (finish MAX_TOKENS).
Usage: `billed_units` count tokens as `openai_payloads` does; `tokens` add Cohere's preamble.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.fakes.openai_payloads import (
    ARGUMENT_FRAGMENT,
    content_text,
    prompt_tokens,
    tokens,
    tool_arguments,
)

PREAMBLE_TOKENS = 7  # what Cohere adds to each prompt: processed, not billed
DEFAULT_DIMENSIONS = 16
API_VERSION = {"version": "2", "is_experimental": False}
StreamEvent = tuple[str, dict[str, Any]]  # the SSE `event:` name and its `data:` object


@dataclass(slots=True)
class Reply:
    """What the model says: text, or a plan with tool calls, and why it stopped."""

    text: str = ""
    tool_plan: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "COMPLETE"

    @property
    def output_tokens(self) -> int:
        if self.tool_calls:
            arguments = sum(len(tokens(c["function"]["arguments"])) + 1 for c in self.tool_calls)
            return arguments + len(tokens(self.tool_plan))
        return len(tokens(self.text))


def _chosen_tool(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice")
    if not tools or choice == "NONE":
        return None
    named = next((t for t in tools if t["function"]["name"] in text), None)
    return named or (tools[0] if choice == "REQUIRED" else None)


def reply_for(body: dict[str, Any], call_id: str) -> Reply:
    """The deterministic answer to a `/v2/chat` request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return _shape_text(body, "Tool result: " + content_text(last.get("content"))[0])
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text, images = content_text(user.get("content"))
    tool = _chosen_tool(body, text) if last.get("role") == "user" else None
    if tool is not None:
        name = tool["function"]["name"]
        call = {"id": f"{name}_{call_id}", "type": "function",
                "function": {"name": name, "arguments": tool_arguments(tool, text)}}
        return Reply(tool_plan=f"I will use {name} to answer.", tool_calls=[call], finish_reason="TOOL_CALL")
    if images:
        text += f" [{images} image{'s' if images > 1 else ''}]"
    return _shape_text(body, text or "Hello!")


def _shape_text(body: dict[str, Any], text: str) -> Reply:
    if (body.get("response_format") or {}).get("type") == "json_object":
        return Reply(text=orjson.dumps({"echo": text}).decode())
    for seq in body.get("stop_sequences") or []:
        if seq and seq in text:
            return Reply(text=text[: text.index(seq)], finish_reason="STOP_SEQUENCE")
    limit = body.get("max_tokens")
    pieces = tokens(text)
    if limit and len(pieces) > limit:
        return Reply(text="".join(pieces[:limit]), finish_reason="MAX_TOKENS")
    return Reply(text=text)


def usage(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """Cohere's `Usage`: billed units and processed tokens."""
    billed = prompt_tokens(body.get("messages") or [])
    return {"billed_units": {"input_tokens": billed, "output_tokens": reply.output_tokens},
            "tokens": {"input_tokens": billed + PREAMBLE_TOKENS, "output_tokens": reply.output_tokens}}


def chat_response(body: dict[str, Any], *, response_id: str) -> dict[str, Any]:
    """A whole `V2ChatResponse`."""
    reply = reply_for(body, response_id[-12:])
    message: dict[str, Any] = {"role": "assistant"}
    if reply.tool_calls:
        message.update(tool_plan=reply.tool_plan, tool_calls=reply.tool_calls)
    else:
        message["content"] = [{"type": "text", "text": reply.text}]
    return {"id": response_id, "message": message, "finish_reason": reply.finish_reason,
            "usage": usage(body, reply)}


def _tool_events(reply: Reply) -> list[StreamEvent]:
    events: list[StreamEvent] = [("tool-plan-delta", {"type": "tool-plan-delta",
                                                      "delta": {"message": {"tool_plan": piece}}})
                                 for piece in tokens(reply.tool_plan)]
    for index, call in enumerate(reply.tool_calls):
        start = {"id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                    "arguments": ""}}
        events.append(("tool-call-start", {"type": "tool-call-start", "index": index,
                                           "delta": {"message": {"tool_calls": start}}}))
        arguments = call["function"]["arguments"]
        for at in range(0, len(arguments), ARGUMENT_FRAGMENT):
            fragment = {"function": {"arguments": arguments[at:at + ARGUMENT_FRAGMENT]}}
            events.append(("tool-call-delta", {"type": "tool-call-delta", "index": index,
                                               "delta": {"message": {"tool_calls": fragment}}}))
        events.append(("tool-call-end", {"type": "tool-call-end", "index": index}))
    return events


def _text_events(reply: Reply) -> list[StreamEvent]:
    events: list[StreamEvent] = [("content-start", {"type": "content-start", "index": 0, "delta": {
        "message": {"content": {"type": "text", "text": ""}}}})]
    events += [("content-delta", {"type": "content-delta", "index": 0,
                                  "delta": {"message": {"content": {"text": piece}}}})
               for piece in tokens(reply.text)]
    events.append(("content-end", {"type": "content-end", "index": 0}))
    return events


def stream_events(body: dict[str, Any], *, response_id: str) -> list[StreamEvent]:
    """Every event of a `/v2/chat` stream, in order (`data: [DONE]` follows them on the wire)."""
    reply = reply_for(body, response_id[-12:])
    start = {"id": response_id, "type": "message-start", "delta": {"message": {"role": "assistant"}}}
    blocks = _tool_events(reply) if reply.tool_calls else _text_events(reply)
    end = {"type": "message-end",
           "delta": {"finish_reason": reply.finish_reason, "usage": usage(body, reply)}}
    return [("message-start", start), *blocks, ("message-end", end)]


def failed_end(message: str = "internal server error, please try again later",
               finish_reason: str = "ERROR", output_tokens: int = 1) -> dict[str, Any]:
    """The `message-end` of a generation that failed upstream (Cohere has no error event)."""
    return {"type": "message-end", "delta": {"error": message, "finish_reason": finish_reason, "usage": {
        "billed_units": {"input_tokens": 5, "output_tokens": output_tokens},
        "tokens": {"input_tokens": 5 + PREAMBLE_TOKENS, "output_tokens": output_tokens}}}}


def _vector(text: str, dimensions: int) -> list[float]:
    state = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    values = []
    for _ in range(dimensions):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        values.append(round((state >> 40) / 2**24 * 2 - 1, 6))
    return values


def embed_response(body: dict[str, Any], *, response_id: str) -> dict[str, Any]:
    """An `EmbedByTypeResponse` with one deterministic vector per text for each embedding type asked."""
    texts: list[str] = body.get("texts") or []
    dimensions = body.get("output_dimension") or DEFAULT_DIMENSIONS
    vectors = [_vector(text, dimensions) for text in texts]
    by_type: dict[str, Any] = {}
    for kind in body.get("embedding_types") or ["float"]:
        if kind == "float":
            by_type["float"] = vectors
        elif kind == "base64":
            by_type["base64"] = [base64.b64encode(struct.pack(f"<{dimensions}f", *v)).decode()
                                 for v in vectors]
    used = sum(len(tokens(text)) for text in texts)
    return {"id": response_id, "embeddings": by_type, "texts": texts, "response_type": "embeddings_by_type",
            "meta": {"api_version": API_VERSION, "billed_units": {"input_tokens": used}}}


def error(message: str, error_id: str | None = None) -> dict[str, Any]:
    """Cohere's error body."""
    return {"message": message} if error_id is None else {"id": error_id, "message": message}


def models_list(models: list[str]) -> dict[str, Any]:
    """`GET /v1/models`: one page of Cohere's model list."""
    return {"models": [{"name": m, "endpoints": ["chat"], "finetuned": False, "context_length": 128000,
                        "tokenizer_url": None, "default_endpoints": ["chat"]} for m in models]}
