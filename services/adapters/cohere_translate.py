"""Translation between OpenAI's JSON and Cohere's API v2: pure functions, no I/O.

Requests start from the OpenAI JSON of the typed request (`openai_translate.chat_request_body`:
presence kept, schema integers kept integers, our extensions removed) and become Cohere's body.
Whatever Cohere cannot honour exactly raises UNSUPPORTED_PARAMETER (routing may then try the next
candidate); docs/providers/cohere.md lists every mapping and refusal.

Answers become OpenAI dicts through `openai_shapes`; the adapter hands them to
`openai_translate.completion_event` / `chunk_event` / `embedding_event` for stamping and usage.
Cohere reports no model name, so the route's upstream model labels every answer.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format

from aggregator.openai.v1 import chat_pb2, embedding_pb2
from services.adapters import openai_shapes as shapes
from services.adapters import openai_translate
from services.adapters.capabilities import reject_unsupported
from services.adapters.cohere_wire import (
    CohereChatRequest,
    CohereEmbedRequest,
    CohereMessage,
    CohereTool,
    CohereToolCall,
    UsageCounts,
    path,
    string,
)
from services.core.errors import GatewayError, Reason

FINISH_REASONS: Mapping[str, str] = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length",
                                     "TOOL_CALL": "tool_calls"}
# Finish reasons that mean no complete answer: the call fails (in a stream, after its usage).
FAILED_FINISHES: Mapping[str, tuple[Reason, str]] = {
    "ERROR": (Reason.UPSTREAM_ERROR, "Provider '{provider}' failed while generating the answer."),
    "TIMEOUT": (Reason.UPSTREAM_TIMEOUT, "Provider '{provider}' timed out while generating the answer."),
}
TOOL_CHOICES: Mapping[str, str | None] = {"auto": None, "required": "REQUIRED", "none": "NONE"}
# Cohere's `p` must lie in [0.01, 0.99]: OpenAI's top_p 1 (no filtering) becomes 0.99, 0 (greedy) 0.01.
P_RANGE = (0.01, 0.99)
PENALTY_RANGE = (0.0, 1.0)  # Cohere's range for both penalties; OpenAI allows -2..2
SAME_NAME_FIELDS = ("temperature", "seed", "frequency_penalty", "presence_penalty")
EMBED_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
EMBED_TRUNCATE = frozenset({"NONE", "START", "END"})
DEFAULT_INPUT_TYPE = "search_document"
DEFAULT_TRUNCATE = "NONE"  # an input too long fails, as on OpenAI, instead of being cut silently
EMBED_PARAMETERS = frozenset({"dimensions", "encoding_format"})


def unsupported(param: str, provider: str, detail: str = "") -> GatewayError:
    """The 400 for a parameter (or value) provider `provider` cannot honour."""
    message = f"The parameter '{param}' is not supported by provider '{provider}'"
    return GatewayError(Reason.UNSUPPORTED_PARAMETER, message + (f": {detail}." if detail else "."),
                        param=param, code="unsupported_parameter")


# ---------------------------------------------------------------------------------------------
# Chat requests


def _parts(content: Any, provider: str, *, images: bool) -> str | list[dict[str, Any]]:
    """A message's content as Cohere's: a string, or text blocks (and images where `images`)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else [content]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url" and images:
            blocks.append({"type": "image_url", "image_url": part.get("image_url") or {}})
        else:
            raise unsupported("messages", provider, f"content parts of type '{kind}' cannot be sent")
    return blocks


def _text(content: Any, provider: str) -> str:
    parts = _parts(content, provider, images=False)
    return parts if isinstance(parts, str) else "".join(p["text"] for p in parts)


def _system(message: dict[str, Any], provider: str) -> CohereMessage:
    return {"role": "system", "content": _parts(message.get("content"), provider, images=False)}


def _user(message: dict[str, Any], provider: str) -> CohereMessage:
    return {"role": "user", "content": _parts(message.get("content"), provider, images=True)}


def _tool_call(call: dict[str, Any], provider: str) -> CohereToolCall:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise unsupported("messages", provider, "only function tool calls can be sent")
    return {"id": call.get("id", ""), "type": "function",
            "function": {"name": function.get("name", ""), "arguments": function.get("arguments", "")}}


def _assistant(message: dict[str, Any], provider: str) -> CohereMessage:
    if message.get("audio") or message.get("function_call"):
        raise unsupported("messages", provider, "assistant audio and function_call cannot be sent")
    calls = message.get("tool_calls")
    if not calls:
        return {"role": "assistant", "content": _parts(message.get("content"), provider, images=False)}
    result: CohereMessage = {"role": "assistant", "tool_calls": [_tool_call(c, provider) for c in calls]}
    plan = _text(message.get("content"), provider)
    if plan:  # Cohere carries the text said beside tool calls as the call's plan
        result["tool_plan"] = plan
    return result


def _tool(message: dict[str, Any], provider: str) -> CohereMessage:
    return {"role": "tool", "tool_call_id": message.get("tool_call_id", ""),
            "content": _parts(message.get("content"), provider, images=False)}


MESSAGE_BUILDERS: Mapping[str, Callable[[dict[str, Any], str], CohereMessage]] = {
    "system": _system, "developer": _system, "user": _user, "assistant": _assistant, "tool": _tool}


def _messages(messages: list[dict[str, Any]], provider: str) -> list[CohereMessage]:
    result = []
    for message in messages:
        build = MESSAGE_BUILDERS.get(message.get("role", ""))
        if build is None:
            raise unsupported("messages", provider, f"role '{message.get('role')}' cannot be sent")
        result.append(build(message, provider))
    return result


def _tools(body: dict[str, Any], provider: str) -> tuple[list[CohereTool], bool]:
    """Cohere's tools, and whether any asks for strict arguments (Cohere's switch is request-wide)."""
    tools: list[CohereTool] = []
    strict = False
    for tool in body.get("tools") or []:
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise unsupported("tools", provider, "only function tools are supported")
        spec: dict[str, Any] = {"name": function.get("name", "")}
        if "description" in function:
            spec["description"] = function["description"]
        # Cohere requires a schema; OpenAI's absent one means "no arguments".
        spec["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        strict = strict or bool(function.get("strict"))
        tools.append({"type": "function", "function": spec})
    return tools, strict


def _tool_choice(body: dict[str, Any], provider: str) -> str | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return TOOL_CHOICES[choice]
    named = path(choice, "function", "name")
    tools = body.get("tools") or []
    # Cohere can force "some tool", not a named one: the same thing when it is the only tool.
    if named is not None and len(tools) == 1 and path(tools[0], "function", "name") == named:
        return "REQUIRED"
    raise unsupported("tool_choice", provider, "Cohere cannot force one named tool among several")


def _response_format(body: dict[str, Any], provider: str) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    schema = path(fmt, "json_schema", "schema")
    if kind == "json_schema" and isinstance(schema, dict):
        return {"type": "json_object", "json_schema": schema}
    raise unsupported("response_format", provider, f"response format '{kind}' without a schema")


def _check_choices(body: dict[str, Any], provider: str) -> None:
    if body.get("n", 1) != 1:
        raise unsupported("n", provider, "Cohere generates one choice")
    if body.get("parallel_tool_calls") is False:
        raise unsupported("parallel_tool_calls", provider, "Cohere may always call several tools")
    for name in ("frequency_penalty", "presence_penalty"):
        value = body.get(name)
        if value is not None and not PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1]:
            raise unsupported(name, provider, "Cohere accepts values from 0 to 1")


def _sampling(body: dict[str, Any], out: CohereChatRequest) -> None:
    fields: dict[str, Any] = {name: body[name] for name in SAME_NAME_FIELDS if name in body}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        fields["max_tokens"] = limit
    stop = body.get("stop")
    if stop is not None:
        fields["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if "top_p" in body:
        fields["p"] = min(max(float(body["top_p"]), P_RANGE[0]), P_RANGE[1])
    out.update(fields)  # type: ignore[typeddict-item]


def chat_body(body: dict[str, Any], provider: str) -> CohereChatRequest:
    """Cohere's `/v2/chat` body for an OpenAI chat request body (`model` already upstream's)."""
    _check_choices(body, provider)
    messages = _messages(body.get("messages") or [], provider)
    out: CohereChatRequest = {"model": body["model"], "messages": messages}
    tools, strict = _tools(body, provider)
    optional = {"stream": body.get("stream") or None, "tools": tools or None, "strict_tools": strict or None,
                "tool_choice": _tool_choice(body, provider),
                "response_format": _response_format(body, provider)}
    out.update({k: v for k, v in optional.items() if v is not None})  # type: ignore[typeddict-item]
    _sampling(body, out)
    return out


def chat_request_body(request: chat_pb2.ChatCompletionRequest, upstream_model: str, provider: str,
                      ) -> CohereChatRequest:
    """Cohere's `/v2/chat` body for a ChatCompletionRequest."""
    return chat_body(openai_translate.chat_request_body(request, upstream_model), provider)


# ---------------------------------------------------------------------------------------------
# Chat answers


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


# ---------------------------------------------------------------------------------------------
# Embeddings


def _texts(value: Any, provider: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise GatewayError(Reason.INVALID_REQUEST, "'input' must not be empty.", param="input")
    if not all(isinstance(item, str) for item in items):
        raise unsupported("input", provider, "Cohere embeds text, not token ids")
    return items


def _preference(preferences: dict[str, Any], key: str, allowed: frozenset[str], default: str) -> str:
    value = preferences.get(key, default)
    if value not in allowed:
        choices = ", ".join(sorted(allowed))
        raise GatewayError(Reason.INVALID_REQUEST, f"'provider.{key}' must be one of {choices}.",
                           param=f"provider.{key}")
    return str(value)


def embed_request_body(request: embedding_pb2.EmbeddingRequest, upstream_model: str, provider: str,
                       ) -> CohereEmbedRequest:
    """Cohere's `/v2/embed` body for an EmbeddingRequest. `input_type` and `truncate` come from the
    request's `provider` preferences (OpenAI's request has no such fields)."""
    reject_unsupported(request, EMBED_PARAMETERS, provider)
    body = openai_translate.embedding_request_body(request, upstream_model)
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise GatewayError(Reason.INVALID_REQUEST, "'encoding_format' must be 'float' or 'base64'.",
                           param="encoding_format")
    preferences = json_format.MessageToDict(request.provider)
    out: CohereEmbedRequest = {
        "model": upstream_model, "texts": _texts(body.get("input"), provider),
        "input_type": _preference(preferences, "input_type", EMBED_INPUT_TYPES, DEFAULT_INPUT_TYPE),
        "embedding_types": ["float"],
        "truncate": _preference(preferences, "truncate", EMBED_TRUNCATE, DEFAULT_TRUNCATE)}
    if "dimensions" in body:
        out["output_dimension"] = body["dimensions"]
    return out


def _encoded(vector: list[float], as_base64: bool) -> Any:
    # OpenAI's base64 is the float32 little-endian bytes of the vector.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector


def embedding_list(obj: dict[str, Any], upstream_model: str, *, as_base64: bool) -> dict[str, Any]:
    """OpenAI's embedding `list` of a Cohere `EmbedByTypeResponse` (or the older float-only shape)."""
    embeddings = obj.get("embeddings")
    vectors = embeddings.get("float") if isinstance(embeddings, dict) else embeddings
    if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent no float embeddings.")
    counts = UsageCounts.decode(obj.get("meta"))  # `meta` has the chat usage's shape
    used = counts.prompt if counts is not None else 0
    data = [{"object": "embedding", "index": i, "embedding": _encoded(v, as_base64)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": upstream_model,
            "usage": {"prompt_tokens": used, "total_tokens": used}}
