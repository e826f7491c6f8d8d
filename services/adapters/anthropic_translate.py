"""Translation of our typed OpenAI-shaped chat request into Anthropic's Messages API request:
pure functions, no I/O (answers are read back in `anthropic_answers`).

Requests (`messages_request`): `system`/`developer` messages become the top-level `system`;
`tool` messages become `tool_result` blocks of a `user` turn; consecutive turns of one role merge
(Anthropic wants strict alternation); assistant `tool_calls` become `tool_use` blocks with the
arguments parsed. `max_tokens` is required upstream: the client's, else the catalog's output
limit, else 4096. `response_format` json_object/json_schema is served by one forced tool whose
input schema is the wanted schema (Anthropic's documented JSON-output technique); its input is
the answer's content (`json_tool`).

Refusals: a parameter Anthropic cannot honour by value (temperature above 1, a custom tool, an
image type it does not read) is UNSUPPORTED_PARAMETER naming it, so routing may try the next
candidate; a malformed request (tool-call arguments that are not a JSON object) is INVALID_REQUEST.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from aggregator.openai.v1 import chat_pb2
from aggregator.routing.v1 import route_pb2
from services.adapters.anthropic_wire import MessageParam, MessagesRequest, Role, ToolParam
from services.adapters.capabilities import unsupported_parameter
from services.adapters.data_urls import split_data_url
from services.adapters.json_values import plain
from services.core.errors import GatewayError, Reason, quote

DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1 (OpenAI's 0..2)
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
JSON_OBJECT_TOOL = "json_object"
JSON_TOOL_DESCRIPTION = "Respond with this tool: its input is your whole answer, as a JSON object."


@dataclass(frozen=True, slots=True)
class MessagesCall:
    """The upstream body, and the name of the forced tool carrying a JSON answer (None if none)."""

    body: MessagesRequest
    json_tool: str | None = None


def _unsupported(param: str, what: str, provider: str) -> GatewayError:
    return unsupported_parameter(param, f"{what} is not supported by provider '{provider}'.")


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


# -- content -----------------------------------------------------------------------------------
def _data_url(url: str, param: str) -> tuple[str, str]:
    """The media type and base64 data of a `data:<type>;base64,<data>` URL."""
    parsed = split_data_url(url)
    if parsed is None:
        raise _invalid(param, "A data URL must look like data:<media type>;base64,<data>.")
    media_type, data = parsed
    return media_type.lower(), data


def _text_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    text = part.get("text")
    if not isinstance(text, str):
        raise _invalid(param, "A text content part needs a string 'text'.")
    return {"type": "text", "text": text}


def _image_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    url = (part.get("image_url") or {}).get("url")
    if not isinstance(url, str):
        raise _invalid(param, "An image_url content part needs 'image_url.url'.")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise _invalid(param, "An image URL must be http(s) or a base64 data URL.")
    media_type, data = _data_url(url, param)
    if media_type not in IMAGE_MEDIA_TYPES:
        raise _unsupported(param, f"The image type {quote(media_type)}", provider)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _file_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    data_url = (part.get("file") or {}).get("file_data")
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise _unsupported(param, "A file part without inline PDF data (file_data)", provider)
    media_type, data = _data_url(data_url, param)
    if media_type != "application/pdf":
        raise _unsupported(param, f"The file type {quote(media_type)}", provider)
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _refusal_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    return _text_part({"text": part.get("refusal")}, param, provider)  # what the assistant said


PartTranslator = Callable[[dict[str, Any], str, str], dict[str, Any]]
USER_PARTS: Mapping[str, PartTranslator] = MappingProxyType(
    {"text": _text_part, "image_url": _image_part, "file": _file_part})
ASSISTANT_PARTS: Mapping[str, PartTranslator] = MappingProxyType(
    {"text": _text_part, "refusal": _refusal_part})
TEXT_PARTS: Mapping[str, PartTranslator] = MappingProxyType({"text": _text_part})


def _blocks(content: Any, parts: Mapping[str, PartTranslator], param: str, provider: str,
            ) -> list[dict[str, Any]]:
    """The blocks of a message's content (a string, a list of parts, or null); empty text says
    nothing, and Anthropic refuses empty text blocks, so it is left out."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(param, "Message content must be a string, a list of content parts, or null.")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        translate = parts.get(kind) if isinstance(kind, str) else None
        if translate is None:
            raise _unsupported(f"{param}[{j}]", f"The content part type {quote(str(kind))} here", provider)
        block = translate(part, f"{param}[{j}]", provider)
        if block.get("type") != "text" or block["text"]:
            blocks.append(block)
    return blocks


# -- messages ----------------------------------------------------------------------------------
def _content(message: chat_pb2.ChatMessage) -> Any:
    return plain(message.content) if message.HasField("content") else None


def _tool_use(call: chat_pb2.ToolCall, param: str, provider: str) -> dict[str, Any]:
    if call.type not in ("", "function"):
        raise _unsupported(f"{param}.type", f"The tool call type {quote(call.type)}", provider)
    if not call.id:
        raise _invalid(f"{param}.id", "An assistant tool call needs an id.")
    arguments = call.function.arguments
    try:
        parsed = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(f"{param}.function.arguments",
                       f"The arguments of tool call {quote(call.id)} must be a JSON object.")
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": parsed}


def _user_turn(message: chat_pb2.ChatMessage, param: str, provider: str) -> list[dict[str, Any]]:
    return _blocks(_content(message), USER_PARTS, f"{param}.content", provider)


def _assistant_turn(message: chat_pb2.ChatMessage, param: str, provider: str) -> list[dict[str, Any]]:
    for name in ("function_call", "audio"):
        if message.HasField(name):
            raise _unsupported(f"{param}.{name}", f"An assistant message's '{name}'", provider)
    blocks = _blocks(_content(message), ASSISTANT_PARTS, f"{param}.content", provider)
    if message.HasField("refusal") and message.refusal:
        blocks.append({"type": "text", "text": message.refusal})
    blocks += [_tool_use(call, f"{param}.tool_calls[{j}]", provider)
               for j, call in enumerate(message.tool_calls)]
    return blocks


def _tool_turn(message: chat_pb2.ChatMessage, param: str, provider: str) -> list[dict[str, Any]]:
    if not message.tool_call_id:
        raise _invalid(f"{param}.tool_call_id", "A tool message needs the tool_call_id it answers.")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = _content(message)
    if isinstance(content, str):
        if content:
            result["content"] = content
    else:
        blocks = _blocks(content, TEXT_PARTS, f"{param}.content", provider)
        if blocks:
            result["content"] = blocks
    return [result]


TurnTranslator = Callable[[chat_pb2.ChatMessage, str, str], list[dict[str, Any]]]
# OpenAI role -> (Anthropic role, translator).
TURNS: Mapping[str, tuple[Role, TurnTranslator]] = MappingProxyType({
    "user": ("user", _user_turn),
    "assistant": ("assistant", _assistant_turn),
    "tool": ("user", _tool_turn),
})
SYSTEM_ROLES = frozenset({"system", "developer"})


def _message_param(role: Role, blocks: list[dict[str, Any]]) -> MessageParam:
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": role, "content": blocks[0]["text"]}
    return {"role": role, "content": blocks}


def conversation(messages: Any, provider: str) -> tuple[list[dict[str, Any]], list[MessageParam]]:
    """The system text blocks (every system/developer message, in order) and the alternating turns."""
    system: list[dict[str, Any]] = []
    turns: list[tuple[Role, list[dict[str, Any]]]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if message.role in SYSTEM_ROLES:
            system += _blocks(_content(message), TEXT_PARTS, f"{param}.content", provider)
            continue
        entry = TURNS.get(message.role)
        if entry is None:
            raise _unsupported(f"{param}.role", f"The message role {quote(message.role)}", provider)
        role, translate = entry
        blocks = translate(message, param, provider)
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)  # strict alternation: one turn per run of a role
        else:
            turns.append((role, blocks))
    return system, [_message_param(role, blocks) for role, blocks in turns]


# -- parameters --------------------------------------------------------------------------------
def _stop_sequences(request: chat_pb2.ChatCompletionRequest) -> list[str] | None:
    stop = plain(request.stop) if request.HasField("stop") else None
    if stop is None:
        return None
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise _invalid("stop", "'stop' must be a string or a list of strings.")
    return sequences


def _max_tokens(request: chat_pb2.ChatCompletionRequest, candidate: route_pb2.RouteCandidate) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        if request.HasField(name):
            return int(getattr(request, name))
    return candidate.max_output_tokens or DEFAULT_MAX_TOKENS


def _end_user(request: chat_pb2.ChatCompletionRequest) -> str | None:
    ids = {request.safety_identifier if request.HasField("safety_identifier") else None,
           request.user if request.HasField("user") else None} - {None}
    if len(ids) > 1:
        raise _invalid("safety_identifier", "'user' and 'safety_identifier' name different end users.")
    return ids.pop() if ids else None


def _tools(request: chat_pb2.ChatCompletionRequest, provider: str) -> list[ToolParam]:
    tools: list[ToolParam] = []
    for i, tool in enumerate(request.tools):
        if tool.type not in ("", "function"):
            raise _unsupported(f"tools[{i}].type", f"The tool type {quote(tool.type)}", provider)
        function = tool.function
        # Never dropped: a function without parameters takes an empty object.
        schema = (plain(function.parameters) if function.HasField("parameters")
                  else {"type": "object", "properties": {}})
        param: ToolParam = {"name": function.name, "input_schema": schema}
        if function.HasField("description"):
            param["description"] = function.description
        if function.strict:
            param["strict"] = True
        tools.append(param)
    return tools


_CHOICE_MODES: Mapping[str, str] = MappingProxyType({"auto": "auto", "none": "none", "required": "any"})


def _tool_choice(request: chat_pb2.ChatCompletionRequest, has_tools: bool,
                 provider: str) -> dict[str, Any] | None:
    value = plain(request.tool_choice) if request.HasField("tool_choice") else None
    choice: dict[str, Any] | None = None
    if isinstance(value, str):
        if value not in _CHOICE_MODES:
            raise _invalid("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or a named tool.")
        choice = {"type": _CHOICE_MODES[value]}
    elif isinstance(value, dict):
        name = (value.get("function") or {}).get("name") if value.get("type") == "function" else None
        if not isinstance(name, str):
            kind = quote(str(value.get("type")))
            raise _unsupported("tool_choice", f"The tool_choice type {kind}", provider)
        choice = {"type": "tool", "name": name}
    if not has_tools:
        if choice is None or choice["type"] in ("auto", "none"):
            return None  # nothing to choose from: the same answer either way
        raise _invalid("tool_choice", "'tool_choice' requires 'tools'.")
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return choice


def _json_tool(request: chat_pb2.ChatCompletionRequest, provider: str) -> ToolParam | None:
    """The forced tool that carries a `response_format` JSON answer; None for text."""
    if not request.HasField("response_format"):
        return None
    fmt = plain(request.response_format)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == JSON_OBJECT_TOOL:
        return {"name": JSON_OBJECT_TOOL, "description": JSON_TOOL_DESCRIPTION,
                "input_schema": {"type": "object"}}
    if kind != "json_schema":
        raise _invalid("response_format.type",
                       "'response_format.type' must be text, json_object or json_schema.")
    spec = fmt.get("json_schema") or {}
    name, schema = spec.get("name"), spec.get("schema", {"type": "object"})
    if not isinstance(name, str) or not name:
        raise _invalid("response_format.json_schema.name", "'response_format.json_schema.name' is required.")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _unsupported("response_format.json_schema.schema", "A JSON schema whose root is not an object",
                           provider)
    tool: ToolParam = {"name": name, "description": spec.get("description") or JSON_TOOL_DESCRIPTION,
                       "input_schema": schema}
    if spec.get("strict") is True:
        tool["strict"] = True
    return tool


def _check_sampling(request: chat_pb2.ChatCompletionRequest, provider: str) -> None:
    if request.HasField("temperature") and request.temperature > MAX_TEMPERATURE:
        raise unsupported_parameter("temperature", f"Provider '{provider}' accepts a temperature between 0 "
                                                   f"and {MAX_TEMPERATURE:g}; got {request.temperature:g}.")


def messages_request(request: chat_pb2.ChatCompletionRequest,
                     candidate: route_pb2.RouteCandidate) -> MessagesCall:
    """The `POST /v1/messages` body of a chat request (parameters already checked by name)."""
    provider = candidate.endpoint.provider
    _check_sampling(request, provider)
    system, messages = conversation(request.messages, provider)
    body: MessagesRequest = {"model": candidate.upstream_model,
                             "max_tokens": _max_tokens(request, candidate), "messages": messages}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    if request.HasField("top_p"):
        body["top_p"] = request.top_p
    stop = _stop_sequences(request)
    if stop is not None:
        body["stop_sequences"] = stop
    end_user = _end_user(request)
    if end_user is not None:
        body["metadata"] = {"user_id": end_user}
    tools, json_tool = _tools(request, provider), _json_tool(request, provider)
    choice = _tool_choice(request, bool(tools), provider)
    if json_tool is not None:
        if tools:
            raise _unsupported("response_format", "A JSON response_format together with tools", provider)
        body["tools"] = [json_tool]
        body["tool_choice"] = {"type": "tool", "name": json_tool["name"], "disable_parallel_tool_use": True}
    elif tools:
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
    if request.stream:
        body["stream"] = True
    return MessagesCall(body, json_tool["name"] if json_tool is not None else None)
