"""Deterministic Anthropic Messages API payloads for the fake upstream, in Anthropic's real wire
format (the `anthropic` SDK's `Message`, `RawMessageStreamEvent` and `ErrorResponse` types).

What the fake "generates" (as the OpenAI fake does, see openai_payloads.py):
- text: the last user turn's text blocks, echoed and joined by " " (plus " [N image(s)]" when it
  carried image blocks); after a tool result (the last user turn holds `tool_result` blocks):
  "Tool result: <content>";
- `tool_use` blocks when tools are given, `tool_choice` is not `none`, the last turn is the
  user's, and either `tool_choice` demands a tool (`any`, `tool`) or the user's text names tools:
  one block per named tool (parallel calls) unless `disable_parallel_tool_use`; the input fills
  each required (else every) property of the schema: strings with the user's text, numbers 42,
  booleans true; a schema without properties (a free-form object) gets `{"echo": <text>}`;
- `stop_sequences` cut the text before the earliest one (stop_reason "stop_sequence");
  `max_tokens` keeps that many tokens (stop_reason "max_tokens").
Tokens are whitespace-delimited pieces; input tokens count every turn's text plus 3 per turn
(and the system prompt's, plus 3); `cached` of them are reported as cache reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.fakes.openai_payloads import sample_arguments, tokens

ARGUMENT_FRAGMENT = 6  # characters of tool input JSON per input_json_delta
REQUEST_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
    "metadata", "tools", "tool_choice", "stream", "thinking", "service_tier", "container", "output_config",
    "inference_geo", "cache_control",
})


def block_text(content: Any) -> tuple[str, int]:
    """The text of a turn's content (a string or blocks) and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    images = sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image")
    return " ".join(texts), images


def _tool_results(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return [block_text(b.get("content", ""))[0] for b in content
            if isinstance(b, dict) and b.get("type") == "tool_result"]


def prompt_tokens(body: dict[str, Any]) -> int:
    """Deterministic prompt size: every turn's text plus 3 per turn, and the system prompt's."""
    turns = [m.get("content") for m in body.get("messages") or []]
    if body.get("system"):
        turns.append(body["system"])
    total = 0
    for content in turns:
        text = block_text(content)[0] + "".join(_tool_results(content))
        total += len(tokens(text)) + 3
    return total


@dataclass(slots=True)
class Reply:
    """What the model says: text or tool_use blocks, and why it stopped."""

    text: str | None
    tool_uses: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None

    @property
    def output_tokens(self) -> int:
        if self.tool_uses:
            return sum(len(tokens(orjson.dumps(t["input"]).decode())) + 1 for t in self.tool_uses)
        return len(tokens(self.text or ""))


def _chosen_tools(body: dict[str, Any], text: str) -> list[dict[str, Any]]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t]
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return []
    if choice.get("type") == "tool":
        return [t for t in tools if t["name"] == choice.get("name")][:1]
    chosen = [t for t in tools if t["name"] in text]
    if not chosen and choice.get("type") == "any":
        chosen = tools[:1]
    return chosen[:1] if choice.get("disable_parallel_tool_use") else chosen


def _input(tool: dict[str, Any], text: str) -> dict[str, Any]:
    schema = tool.get("input_schema") or {}
    if not schema.get("properties"):
        return {"echo": text}
    return sample_arguments(schema, text)


def reply_for(body: dict[str, Any], id_prefix: str) -> Reply:
    """The deterministic answer to a Messages request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    results = _tool_results(last.get("content")) if last.get("role") == "user" else []
    if results:
        return _shape_text(body, "Tool result: " + " ".join(results))
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text, images = block_text(user.get("content"))
    chosen = _chosen_tools(body, text) if last.get("role") == "user" else []
    if chosen:
        uses = [{"type": "tool_use", "id": f"toolu_{id_prefix}{i}", "name": t["name"],
                 "input": _input(t, text)} for i, t in enumerate(chosen)]
        return Reply(text=None, tool_uses=uses, stop_reason="tool_use")
    if images:
        text += f" [{images} image{'s' if images > 1 else ''}]"
    return _shape_text(body, text or "Hello!")


def _shape_text(body: dict[str, Any], text: str) -> Reply:
    found = [(text.index(s), s) for s in body.get("stop_sequences") or [] if s and s in text]
    if found:
        position, sequence = min(found)
        return Reply(text=text[:position], stop_reason="stop_sequence", stop_sequence=sequence)
    pieces = tokens(text)
    limit = body.get("max_tokens")
    if isinstance(limit, int) and len(pieces) > limit:
        return Reply(text="".join(pieces[:limit]), stop_reason="max_tokens")
    return Reply(text=text)


def usage(input_tokens: int, output_tokens: int, *, cached: int = 0) -> dict[str, Any]:
    """Anthropic's `Usage`: `input_tokens` excludes the `cached` tokens read from the cache."""
    cached = min(cached, input_tokens)
    return {"input_tokens": input_tokens - cached, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard"}


def _content(reply: Reply) -> list[dict[str, Any]]:
    return reply.tool_uses if reply.tool_uses else [{"type": "text", "text": reply.text or ""}]


def message(body: dict[str, Any], *, message_id: str, model: str, cached: int = 0) -> dict[str, Any]:
    """A whole `Message` (the non-streamed answer)."""
    reply = reply_for(body, message_id[-8:])
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": _content(reply), "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": usage(prompt_tokens(body), reply.output_tokens, cached=cached)}


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    if block["type"] == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in tokens(block["text"])]
    else:
        start = {**block, "input": {}}
        arguments = orjson.dumps(block["input"]).decode()
        # As Anthropic streams tool input: an empty fragment first, then pieces of the JSON text.
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [{"type": "input_json_delta", "partial_json": arguments[i:i + ARGUMENT_FRAGMENT]}
                   for i in range(0, len(arguments), ARGUMENT_FRAGMENT)]
    events = [{"type": "content_block_start", "index": index, "content_block": start}]
    events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
    events.append({"type": "content_block_stop", "index": index})
    return events


def events(body: dict[str, Any], *, message_id: str, model: str, cached: int = 0) -> list[dict[str, Any]]:
    """Every stream event, in order: message_start, the blocks (a `ping` after the first block
    starts, as Anthropic sends one early), message_delta, message_stop."""
    reply = reply_for(body, message_id[-8:])
    start_usage = usage(prompt_tokens(body), 1, cached=cached)
    out: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}}]
    for index, block in enumerate(_content(reply)):
        out += _block_events(index, block)
        if index == 0:
            out.insert(2, {"type": "ping"})
    out.append({"type": "message_delta", "delta": {"stop_reason": reply.stop_reason,
                                                   "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": reply.output_tokens}})
    out.append({"type": "message_stop"})
    return out


def error(type_: str, message: str, request_id: str = "req_fake0001") -> dict[str, Any]:
    """Anthropic's error body (`ErrorResponse`)."""
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}


def _tool_use_ids(turn: dict[str, Any]) -> set[Any]:
    content = turn.get("content")
    if turn.get("role") != "assistant" or not isinstance(content, list):
        return set()
    return {b.get("id") for b in content if isinstance(b, dict) and b.get("type") == "tool_use"}


def _turn_problem(i: int, turn: Any, previous: dict[str, Any]) -> str | None:
    if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
        return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    content = turn.get("content")
    blocks = content if isinstance(content, list) else []
    if any(isinstance(b, dict) and b.get("type") == "text" and not b.get("text") for b in blocks):
        return "messages: text content blocks must be non-empty"
    calls = _tool_use_ids(previous)
    for j, block in enumerate(blocks):
        orphan = (isinstance(block, dict) and block.get("type") == "tool_result"
                  and block.get("tool_use_id") not in calls)
        if orphan:
            return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.")
    return None


def problem(body: Any) -> str | None:
    """What Anthropic's request validation would say about `body` (None: nothing)."""
    if not isinstance(body, dict):
        return "Input should be a valid dictionary"
    for name in sorted(set(body) - REQUEST_FIELDS):
        return f"{name}: Extra inputs are not permitted"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    for i, tool in enumerate(body.get("tools") or []):
        if (tool.get("input_schema") or {}).get("type") != "object":
            return f"tools.{i}.custom.input_schema: Field required"
    previous: dict[str, Any] = {}
    for i, turn in enumerate(messages):
        found = _turn_problem(i, turn, previous)
        if found:
            return found
        previous = turn
    return None


def models_list(models: list[str]) -> dict[str, Any]:
    """`GET /v1/models`: one page of Anthropic's model list."""
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
            for m in models]
    return {"data": data, "has_more": False, "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None}
