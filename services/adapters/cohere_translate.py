"""Translation of OpenAI's JSON into Cohere's API v2 requests: pure functions, no I/O (answers are
read back in `cohere_answers`).

Requests start from the OpenAI JSON of the typed request (`openai_translate.chat_request_body`:
presence kept, schema integers kept integers, our extensions removed) and become Cohere's body.
Whatever Cohere cannot honour exactly raises UNSUPPORTED_PARAMETER (routing may then try the next
candidate); docs/providers/cohere.md lists every mapping and refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aggregator.openai.v1 import chat_pb2, embedding_pb2
from services.adapters import openai_translate
from services.adapters.capabilities import reject_unsupported, unsupported_parameter
from services.adapters.cohere_wire import (
    CohereChatRequest,
    CohereEmbedRequest,
    CohereMessage,
    CohereTool,
    CohereToolCall,
    path,
)
from services.adapters.json_values import plain
from services.core.errors import GatewayError, Reason, quote

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
    return unsupported_parameter(param, message + (f": {detail}." if detail else "."))


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
            shown = quote(str(kind))
            raise unsupported("messages", provider, f"content parts of type {shown} cannot be sent")
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
            raise unsupported("messages", provider, f"role {quote(str(message.get('role')))} cannot be sent")
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
    raise unsupported("response_format", provider, f"response format {quote(kind)} without a schema")


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
    preferences = plain(request.provider)
    out: CohereEmbedRequest = {
        "model": upstream_model, "texts": _texts(body.get("input"), provider),
        "input_type": _preference(preferences, "input_type", EMBED_INPUT_TYPES, DEFAULT_INPUT_TYPE),
        "embedding_types": ["float"],
        "truncate": _preference(preferences, "truncate", EMBED_TRUNCATE, DEFAULT_TRUNCATE)}
    if "dimensions" in body:
        out["output_dimension"] = body["dimensions"]
    return out
