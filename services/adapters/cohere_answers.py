"""Cohere's API v2 answers read back into OpenAI shapes: pure functions, no I/O.

`completion()` reads a whole `V2ChatResponse`, `StreamTranslator` the stream's events one at a
time, `embedding_list()` an embed answer; all build through `openai_shapes`, and the adapter hands
the results to `openai_translate.completion_event` / `chunk_event` / `embedding_event` for stamping
and usage. Cohere reports no model name, so the route's upstream model labels every answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.adapters import openai_shapes as shapes
from services.adapters.cohere_wire import UsageCounts, path, string
from services.core.errors import GatewayError, Reason

FINISH_REASONS: Mapping[str, str] = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length",
                                     "TOOL_CALL": "tool_calls"}
# Finish reasons that mean no complete answer: the call fails (in a stream, after its usage).
FAILED_FINISHES: Mapping[str, tuple[Reason, str]] = {
    "ERROR": (Reason.UPSTREAM_ERROR, "Provider '{provider}' failed while generating the answer."),
    "TIMEOUT": (Reason.UPSTREAM_TIMEOUT, "Provider '{provider}' timed out while generating the answer."),
}


def finish_reason(reason: Any, provider: str) -> str:
    """OpenAI's finish_reason for Cohere's; raises for a generation that failed upstream.
    An unknown (newer) reason is a normal end: "stop"."""
    failed = FAILED_FINISHES.get(reason) if isinstance(reason, str) else None
    if failed is not None:
        raise GatewayError(failed[0], failed[1].format(provider=provider))
    return FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def usage(obj: Any) -> dict[str, Any] | None:
    """OpenAI's usage from Cohere's (see `UsageCounts.decode` for which counts are taken)."""
    counts = UsageCounts.decode(obj)
    return None if counts is None else shapes.usage(counts.prompt, counts.completion,
                                                     cached_tokens=counts.cached)


def _content(items: Any) -> tuple[str, str]:
    """The text and the thinking of an answer's content blocks."""
    text, thinking = [], []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            text.append(item["text"])
        elif isinstance(item, dict) and isinstance(item.get("thinking"), str):
            thinking.append(item["thinking"])
    return "".join(text), "".join(thinking)


def _answer_call(call: Any) -> dict[str, Any]:
    return shapes.tool_call(string(path(call, "id")) or shapes.new_id("call"),
                            string(path(call, "function", "name")),
                            string(path(call, "function", "arguments"), "{}"))


def completion(obj: dict[str, Any], upstream_model: str, provider: str) -> dict[str, Any]:
    """The OpenAI `chat.completion` of a Cohere `V2ChatResponse`."""
    finish = finish_reason(obj.get("finish_reason"), provider)
    message = obj.get("message")
    message = message if isinstance(message, dict) else {}
    text, thinking = _content(message.get("content"))
    calls = [_answer_call(c) for c in message.get("tool_calls") or []]
    plan = string(message.get("tool_plan"))
    content: str | None = (text or plan or None) if calls else text
    answer = shapes.message(content, tool_calls=calls)
    if thinking:
        answer["reasoning_content"] = thinking
    completion_id = string(obj.get("id")) or shapes.new_id()
    return shapes.completion(completion_id, shapes.now(), upstream_model, [shapes.choice(0, answer, finish)],
                             usage(obj.get("usage")))


class StreamTranslator:
    """Turns Cohere's stream events, one at a time, into OpenAI chunks (no buffering).

    The first chunk, carrying `role`, is the first block's (text, plan or tool call): Cohere's
    `message-start` says nothing else. Tool calls are numbered 0, 1, ... in the order they start;
    a plan (`tool-plan-delta`) streams as content, as in a non-streamed answer. `message-end`
    gives the finish chunk and the usage chunk; a failed generation gives only the usage chunk
    and sets `error`. Citations, block ends and debug events carry nothing OpenAI has."""

    def __init__(self, upstream_model: str, provider: str) -> None:
        self.upstream_model, self.provider = upstream_model, provider
        self.completion_id, self.created = shapes.new_id(), shapes.now()
        self.finished = False  # message-end was seen
        self.error: GatewayError | None = None  # the generation failed upstream (after its usage)
        self._opened = False  # the role chunk was sent
        self._tool_index = -1
        self._handlers: Mapping[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "message-start": self._message_start, "content-start": self._content,
            "content-delta": self._content, "tool-plan-delta": self._plan,
            "tool-call-start": self._call_start, "tool-call-delta": self._call_delta,
            "message-end": self._message_end}

    def feed(self, event: Any) -> list[dict[str, Any]]:
        """The OpenAI chunks of one event's parsed `data` (often one, sometimes none)."""
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str):
            raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent an untyped stream event.")
        handler = self._handlers.get(kind)
        return handler(event) if handler is not None else []  # ends, citations, newer event types

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self._opened:
            self._opened = True
            delta = {"role": "assistant", **delta}
        return shapes.chunk(self.completion_id, self.created, self.upstream_model, delta,
                            finish_reason=finish)

    def _message_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(event.get("id"), str) and event["id"]:
            self.completion_id = event["id"]
        return []

    def _content(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        content = path(event, "delta", "message", "content")
        thinking = path(content, "thinking")
        if isinstance(thinking, str) and (thinking or path(content, "type") == "thinking"):
            delta = {"reasoning_content": thinking}
        else:
            text = path(content, "text")
            delta = {"content": text if isinstance(text, str) else ""}
        # An empty block opening still opens the message (the role chunk); later, it says nothing.
        return [self._chunk(delta)] if any(delta.values()) or not self._opened else []

    def _plan(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        plan = path(event, "delta", "message", "tool_plan")
        return [self._chunk({"content": plan})] if isinstance(plan, str) and plan else []

    def _call_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        call = path(event, "delta", "message", "tool_calls")
        whole = _answer_call(call)
        self._tool_index += 1
        fragment = shapes.tool_call_delta(self._tool_index, call_id=whole["id"],
                                          name=whole["function"]["name"],
                                          arguments=string(path(call, "function", "arguments")))
        return [self._chunk({"tool_calls": [fragment]})]

    def _call_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        arguments = path(event, "delta", "message", "tool_calls", "function", "arguments")
        if self._tool_index < 0:
            raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider continued an unknown tool call.")
        if not isinstance(arguments, str) or not arguments:
            return []
        return [self._chunk({"tool_calls": [shapes.tool_call_delta(self._tool_index, arguments=arguments)]})]

    def _message_end(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        counts = usage(path(event, "delta", "usage")) or shapes.usage(0, 0)
        usage_chunk = shapes.usage_chunk(self.completion_id, self.created, self.upstream_model, counts)
        try:
            finish = finish_reason(path(event, "delta", "finish_reason"), self.provider)
        except GatewayError as exc:
            self.error = exc
            return [usage_chunk]  # what was generated is still billed
        return [self._chunk({}, finish), usage_chunk]


def embedding_list(obj: dict[str, Any], upstream_model: str, *, as_base64: bool) -> dict[str, Any]:
    """OpenAI's embedding `list` of a Cohere `EmbedByTypeResponse` (or the older float-only shape)."""
    embeddings = obj.get("embeddings")
    vectors = embeddings.get("float") if isinstance(embeddings, dict) else embeddings
    if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent no float embeddings.")
    counts = UsageCounts.decode(obj.get("meta"))  # `meta` has the chat usage's shape
    used = counts.prompt if counts is not None else 0
    return shapes.embedding_list(vectors, upstream_model, used, as_base64=as_base64)
