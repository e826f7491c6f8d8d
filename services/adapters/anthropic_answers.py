"""Anthropic's answers read back into OpenAI shapes: pure functions, no I/O.

`completion()` turns a whole `Message` into a `chat.completion`; `StreamTranslator` turns the
event stream into `chat.completion.chunk`s, one per event that says something, as it arrives.
Both build through `openai_shapes`; the adapter hands the results to `openai_translate` for the
public model, the `provider` extension and usage. The forced JSON tool of a `response_format`
request (`anthropic_translate`) is read back as the answer's content, not as a tool call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from services.adapters import openai_shapes as shapes
from services.adapters.anthropic_wire import AnthropicUsage, finish_reason
from services.core.errors import GatewayError, Reason


def _answer(stop_reason: Any, json_tool: str | None) -> str:
    reason = finish_reason(stop_reason)
    # The forced JSON tool is how the answer arrives, not a call the client must run.
    return "stop" if json_tool is not None and reason == "tool_calls" else reason


def _json_text(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def completion(message: dict[str, Any], json_tool: str | None) -> dict[str, Any]:
    """The OpenAI `chat.completion` of an Anthropic `Message`."""
    blocks = message.get("content")
    if not isinstance(blocks, list):
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent a message without content.")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    json_answer: str | None = None
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use" and json_tool is not None and block.get("name") == json_tool:
            json_answer = _json_text(block.get("input"))
        elif kind == "tool_use":
            calls.append(shapes.tool_call(str(block.get("id")), str(block.get("name")),
                                          _json_text(block.get("input"))))
    content = json_answer if json_answer is not None else ("".join(texts) if texts else None)
    reply = shapes.message(content, tool_calls=calls)
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    choice = shapes.choice(0, reply, _answer(message.get("stop_reason"), json_tool))
    usage = AnthropicUsage.decode(message.get("usage")).to_openai()
    return shapes.completion(str(message.get("id") or shapes.new_id()), shapes.now(),
                             str(message.get("model")), [choice], usage)


# Anthropic text-like block type -> the OpenAI delta field its text goes to.
_TEXT_FIELDS: Mapping[str, str] = MappingProxyType({"text": "content", "thinking": "reasoning_content"})


@dataclass(slots=True)
class _Block:
    """A content block of the stream being translated."""

    kind: str  # "text", "thinking", "tool" (a client tool call), "json" (the forced JSON tool), "other"
    tool_index: int = -1  # among tool_use blocks only: OpenAI's tool_calls[].index
    start_input: Any = None
    streamed: bool = False  # whether an input fragment went out


class StreamTranslator:
    """Turns Anthropic stream events into OpenAI chunk dicts. Role "assistant" rides on the first
    chunk; tool indices count tool_use blocks (0, 1, ...), not content blocks; the usage chunk comes
    at `message_stop`, which is the stream's proper end (`finished`)."""

    def __init__(self, upstream_model: str, json_tool: str | None) -> None:
        self.completion_id = shapes.new_id()
        self.created = shapes.now()
        self.model = upstream_model
        self.usage = AnthropicUsage()
        self.finished = False
        self._json_tool = json_tool
        self._role_pending = True
        self._blocks: dict[Any, _Block] = {}
        self._tools = 0
        self._handlers: Mapping[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "message_start": self._message_start, "content_block_start": self._block_start,
            "content_block_delta": self._block_delta, "content_block_stop": self._block_stop,
            "message_delta": self._message_delta, "message_stop": self._message_stop}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event makes (often one, sometimes none: `ping`, unknown event types)."""
        handler = self._handlers.get(str(event.get("type")))
        return handler(event) if handler is not None else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self._role_pending:
            delta = {"role": "assistant", **delta}
            self._role_pending = False
        return shapes.chunk(self.completion_id, self.created, self.model, delta, finish_reason=finish)

    def _opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"content": ""})] if self._role_pending else []

    def _message_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        message = event.get("message") or {}
        self.completion_id = str(message.get("id") or self.completion_id)
        self.model = str(message.get("model") or self.model)
        self.usage.update(message.get("usage"))
        return []

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use" and self._json_tool is not None and block.get("name") == self._json_tool:
            self._blocks[event.get("index")] = _Block("json", start_input=block.get("input"))
            return self._opening()
        if kind == "tool_use":
            index, self._tools = self._tools, self._tools + 1
            self._blocks[event.get("index")] = _Block("tool", index, block.get("input"))
            first = shapes.tool_call_delta(index, call_id=str(block.get("id")), name=str(block.get("name")))
            return [self._chunk({"tool_calls": [first]})]
        text_field = _TEXT_FIELDS.get(str(kind))
        self._blocks[event.get("index")] = _Block(str(kind) if text_field else "other")
        text = block.get(text_field) if text_field else None
        return [self._chunk({text_field: text})] if text_field and text else self._opening()

    def _fragment(self, block: _Block, fragment: str) -> list[dict[str, Any]]:
        if not fragment:
            return []
        block.streamed = True
        if block.kind == "json":
            return [self._chunk({"content": fragment})]
        return [self._chunk({"tool_calls": [shapes.tool_call_delta(block.tool_index, arguments=fragment)]})]

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta":
            block = self._blocks.get(event.get("index"))
            if block is None or block.kind not in ("tool", "json"):
                raise GatewayError(Reason.UPSTREAM_ERROR,
                                   "The upstream stream sent tool input outside a tool.")
            return self._fragment(block, str(delta.get("partial_json") or ""))
        return []  # signatures, citations, empty text: nothing for an OpenAI client

    def _block_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(event.get("index"))
        if block is None or block.kind not in ("tool", "json") or block.streamed:
            return []
        # No fragment came (a tool without arguments): the assembled arguments must still be JSON.
        return self._fragment(block, _json_text(block.start_input))

    def _message_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.usage.update(event.get("usage"))
        delta = event.get("delta") or {}
        return [self._chunk({}, _answer(delta.get("stop_reason"), self._json_tool))]

    def _message_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        return [shapes.usage_chunk(self.completion_id, self.created, self.model, self.usage.to_openai())]
