"""Translation of our typed OpenAI-shaped requests into the Gemini API's JSON: pure functions, no I/O
(answers are read back in `google_answers`).

Chat: system/developer messages become `systemInstruction`; user, assistant ("model") and
tool turns become `contents`, consecutive turns of one role merged into one (so the results of
parallel calls share one turn, as Gemini expects); tool results are `functionResponse` parts
named after the assistant call they answer. Tool and output schemas go as JSON Schema
(`parametersJsonSchema`, `responseJsonSchema`), which the API accepts natively, so no schema
keyword is converted or lost on our side; a keyword Gemini cannot honour is refused by Gemini
itself with a 400 that names it.

Tool-call ids: Gemini (before Gemini 3) gives none, so answers get fresh `call_<hex>` ids. Gemini 3
attaches a `thoughtSignature` to a function call and requires it back in the next turn; OpenAI's
tool call has no field for it, so it travels inside the id, after `THOUGHT_SEPARATOR`, and is
split off again when the client sends the call back.

Embeddings: one text goes to embedContent, a list to batchEmbedContents (`embedding_body`).
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from aggregator.openai.v1 import chat_pb2, embedding_pb2
from services.adapters.capabilities import unsupported_parameter
from services.adapters.data_urls import split_data_url
from services.adapters.google_wire import (
    Content,
    FunctionCallingConfig,
    FunctionDeclaration,
    GenerateContentRequest,
    GenerationConfig,
    Part,
)
from services.adapters.json_values import plain
from services.core.errors import GatewayError, Reason, quote

THOUGHT_SEPARATOR = "__thought__"
# What Gemini reads from a URL's extension: it needs a MIME type for every fileData part.
IMAGE_TYPES: Mapping[str, str] = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".heic": "image/heic", ".heif": "image/heif"}
AUDIO_TYPES: Mapping[str, str] = {
    "wav": "audio/wav", "mp3": "audio/mp3", "aiff": "audio/aiff", "aac": "audio/aac", "ogg": "audio/ogg",
    "flac": "audio/flac"}
TOOL_CHOICE_MODES: Mapping[str, str] = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
THINKING_LEVELS: Mapping[str, str] = {
    "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH", "xhigh": "XHIGH"}


def unsupported(param: str, what: str) -> GatewayError:
    """The 400 that lets routing try a provider that can honour `param`."""
    return unsupported_parameter(param, f"{what} is not supported by provider kind 'google'.")


def invalid(param: str, message: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """An OpenAI tool-call id as (Gemini's call id, thought signature or None)."""
    base, sep, signature = call_id.partition(THOUGHT_SEPARATOR)
    return base, (signature if sep and signature else None)


# -- content parts ----------------------------------------------------------------------------
def _data_url(url: str, param: str) -> tuple[str, str]:
    """(MIME type, base64 data) of a `data:<mime>[;...];base64,<data>` URL. The data is passed on
    undecoded (Gemini wants base64 too, and refuses bad base64 itself with a 400)."""
    parsed = split_data_url(url)
    if parsed is None:
        raise invalid(param, f"{param} must be a base64 data URL (data:<mime type>;base64,...).")
    return parsed


def _image_part(url: str, param: str) -> Part:
    if url.startswith("data:"):
        mime, data = _data_url(url, param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https"):
        raise invalid(param, f"{param} must be an http(s) URL or a data URL.")
    known = IMAGE_TYPES.get(posixpath.splitext(parsed.path)[1].lower())
    if known is None:
        raise unsupported(param, "An image URL without a known image file extension "
                                 f"({', '.join(sorted(IMAGE_TYPES))})")
    # Gemini fetches the URL itself (public URLs only); we never fetch client-named URLs.
    return {"fileData": {"mimeType": known, "fileUri": url}}


def _file_part(file: dict[str, Any], param: str) -> Part:
    data = file.get("file_data")
    if not isinstance(data, str) or not data.startswith("data:"):
        raise unsupported(param, "A file part without a data URL in file_data (file ids)")
    mime, encoded = _data_url(data, param)
    return {"inlineData": {"mimeType": mime, "data": encoded}}


def _user_part(part: dict[str, Any], param: str) -> Part:
    kind = part.get("type")
    if kind == "text":
        return {"text": str(part.get("text", ""))}
    if kind == "image_url":
        # `detail` is a hint only: Gemini chooses the resolution of each image itself.
        return _image_part(str((part.get("image_url") or {}).get("url", "")), param)
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        mime = AUDIO_TYPES.get(str(audio.get("format", "")))
        if mime is None:
            raise unsupported(param, f"Audio format {quote(str(audio.get('format')))}")
        return {"inlineData": {"mimeType": mime, "data": str(audio.get("data", ""))}}
    if kind == "file":
        return _file_part(part.get("file") or {}, param)
    raise unsupported(param, f"The content part type {quote(str(kind))}")


def _parts(content: Any, param: str, *, text_only: bool) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise invalid(param, f"{param} must be a string, a list of parts or null.")
    parts = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise invalid(where, f"{where} must be an object.")
        if text_only and part.get("type") not in ("text", "refusal"):
            raise invalid(where, f"{where} must be a text part.")
        text = part.get("text", part.get("refusal")) if text_only else None
        parts.append({"text": str(text or "")} if text_only else _user_part(part, where))
    return [p for p in parts if p.get("text") != ""]


def _response_object(text: str) -> dict[str, Any]:
    """A tool's output as the object Gemini requires: JSON objects as they are, any other JSON value
    or plain text wrapped as {"content": ...}."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": value}


# -- messages ---------------------------------------------------------------------------------
def _assistant_parts(message: chat_pb2.ChatMessage, param: str, names: dict[str, str]) -> list[Part]:
    if message.HasField("audio") or message.HasField("function_call"):
        raise unsupported(param, "An assistant message with audio or function_call")
    content = plain(message.content) if message.HasField("content") else None
    parts = _parts(content, f"{param}.content", text_only=True)
    if message.HasField("refusal") and message.refusal:
        parts.append({"text": message.refusal})
    for j, call in enumerate(message.tool_calls):
        where = f"{param}.tool_calls[{j}]"
        if call.type not in ("", "function"):
            raise unsupported(where, f"A tool call of type {quote(call.type)}")
        try:
            args = orjson.loads(call.function.arguments or "{}")
        except orjson.JSONDecodeError as exc:
            raise invalid(where, f"{where}.function.arguments must be a JSON object.") from exc
        if not isinstance(args, dict):
            raise invalid(where, f"{where}.function.arguments must be a JSON object.")
        names[call.id] = call.function.name
        call_id, signature = split_call_id(call.id)
        part: Part = {"functionCall": {"name": call.function.name, "args": args, "id": call_id}}
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _tool_part(message: chat_pb2.ChatMessage, param: str, names: dict[str, str]) -> Part:
    name = names.get(message.tool_call_id)
    if name is None:
        raise invalid(param, f"{param}.tool_call_id {quote(message.tool_call_id)} answers no earlier "
                             "assistant tool call.")
    content = plain(message.content) if message.HasField("content") else ""
    text = "".join(p.get("text", "") for p in _parts(content, f"{param}.content", text_only=True))
    return {"functionResponse": {"name": name, "response": _response_object(text),
                                 "id": split_call_id(message.tool_call_id)[0]}}


def _append(contents: list[Content], role: str, parts: list[Part]) -> None:
    if not parts:
        return  # a turn with nothing in it (an empty assistant message) tells Gemini nothing
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def contents_of(messages: Iterable[chat_pb2.ChatMessage]) -> tuple[list[Content], list[Part]]:
    """The `contents` turns and the `systemInstruction` parts of a conversation."""
    contents: list[Content] = []
    system: list[Part] = []
    names: dict[str, str] = {}  # tool_call_id -> the function it called
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        content = plain(message.content) if message.HasField("content") else None
        if message.role in ("system", "developer"):
            system.extend(_parts(content, f"{param}.content", text_only=True))
            continue
        if message.HasField("name"):
            raise unsupported(f"{param}.name", "A participant name")
        if message.role == "user":
            _append(contents, "user", _parts(content, f"{param}.content", text_only=False))
        elif message.role == "assistant":
            _append(contents, "model", _assistant_parts(message, param, names))
        elif message.role == "tool":
            _append(contents, "user", [_tool_part(message, param, names)])
        else:
            raise unsupported(f"{param}.role", f"The message role {quote(message.role)}")
    if not contents:
        raise invalid("messages", "messages must hold at least one user, assistant or tool message.")
    return contents, system


# -- generation options -----------------------------------------------------------------------
def _response_format(request: chat_pb2.ChatCompletionRequest, config: GenerationConfig) -> None:
    fmt = plain(request.response_format)
    kind = fmt.get("type")
    if kind in (None, "text"):
        return
    if kind not in ("json_object", "json_schema"):
        raise unsupported("response_format", f"response_format type {quote(kind)}")
    config["responseMimeType"] = "application/json"
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise invalid("response_format", "response_format.json_schema.schema must be an object.")
        config["responseJsonSchema"] = schema


def generation_config(request: chat_pb2.ChatCompletionRequest) -> GenerationConfig:
    """`generationConfig` from the request's sampling and output options."""
    config: GenerationConfig = {}
    if request.HasField("temperature"):
        config["temperature"] = request.temperature
    if request.HasField("top_p"):
        config["topP"] = request.top_p
    if request.HasField("n"):
        config["candidateCount"] = request.n
    if request.HasField("max_completion_tokens") or request.HasField("max_tokens"):
        has_new = request.HasField("max_completion_tokens")
        config["maxOutputTokens"] = request.max_completion_tokens if has_new else request.max_tokens
    if request.HasField("stop"):
        stop = plain(request.stop)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if stops:
            config["stopSequences"] = [str(s) for s in stops]
    if request.HasField("presence_penalty"):
        config["presencePenalty"] = request.presence_penalty
    if request.HasField("frequency_penalty"):
        config["frequencyPenalty"] = request.frequency_penalty
    if request.HasField("seed"):
        config["seed"] = request.seed
    if request.logprobs:
        config["responseLogprobs"] = True
    if request.HasField("top_logprobs"):
        config["logprobs"] = request.top_logprobs
    if request.HasField("reasoning_effort"):
        effort = request.reasoning_effort
        if effort != "none" and effort not in THINKING_LEVELS:
            raise invalid("reasoning_effort", f"Unknown reasoning_effort '{effort}'.")
        config["thinkingConfig"] = ({"thinkingBudget": 0} if effort == "none"
                                    else {"thinkingLevel": THINKING_LEVELS[effort]})
    _response_format(request, config)
    return config


def _tool_config(request: chat_pb2.ChatCompletionRequest, strict: bool) -> FunctionCallingConfig | None:
    choice = plain(request.tool_choice) if request.HasField("tool_choice") else None
    if choice is None:
        # Gemini documents VALIDATED as AUTO that also holds calls to the declared schema: `strict`.
        return {"mode": "VALIDATED"} if strict else None
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        mode = TOOL_CHOICE_MODES[choice]
        return {"mode": "VALIDATED" if strict and mode == "AUTO" else mode}
    name = ((choice.get("function") or {}).get("name") if isinstance(choice, dict)
            and choice.get("type") == "function" else None)
    if not isinstance(name, str) or not name:
        raise invalid("tool_choice", "tool_choice must be none, auto, required or a named function.")
    return {"mode": "ANY", "allowedFunctionNames": [name]}


def add_tools(request: chat_pb2.ChatCompletionRequest, body: GenerateContentRequest) -> None:
    """`tools` as function declarations and `tool_choice` as `toolConfig`."""
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        raise unsupported("parallel_tool_calls", "Turning off parallel tool calls")
    declarations: list[FunctionDeclaration] = []
    for i, tool in enumerate(request.tools):
        if tool.type != "function":
            raise unsupported(f"tools[{i}]", f"A tool of type '{tool.type}'")
        declaration: FunctionDeclaration = {"name": tool.function.name}
        if tool.function.HasField("description"):
            declaration["description"] = tool.function.description
        if tool.function.HasField("parameters"):
            declaration["parametersJsonSchema"] = plain(tool.function.parameters)
        declarations.append(declaration)
    config = _tool_config(request, any(t.function.strict for t in request.tools))
    if not declarations:
        if config is not None and config["mode"] != "NONE":
            raise invalid("tool_choice", "tool_choice needs tools.")
        return
    body["tools"] = [{"functionDeclarations": declarations}]
    if config is not None:
        body["toolConfig"] = {"functionCallingConfig": config}


def chat_request_body(request: chat_pb2.ChatCompletionRequest) -> GenerateContentRequest:
    """The generateContent body of a ChatCompletionRequest (the model goes in the URL)."""
    if any(m != "text" for m in request.modalities):
        raise unsupported("modalities", "An output modality other than text")
    if request.store:  # `store: false` (OpenAI's default) asks for nothing
        raise unsupported("store", "Storing completions")
    contents, system = contents_of(request.messages)
    body: GenerateContentRequest = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config = generation_config(request)
    if config:
        body["generationConfig"] = config
    add_tools(request, body)
    return body


# -- embeddings -------------------------------------------------------------------------------
def embedding_texts(request: embedding_pb2.EmbeddingRequest) -> str | list[str]:
    """The text (one) or texts (a batch) to embed; Gemini embeds text, not token ids."""
    value = plain(request.input)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    if isinstance(value, list) and value and all(isinstance(item, int | list) for item in value):
        raise unsupported("input", "Token-id input")
    raise invalid("input", "input must be a string or a non-empty list of strings.")


def embedding_body(texts: str | list[str], resource: str, dimensions: int | None) -> dict[str, Any]:
    """The embedContent body of one text, or the batchEmbedContents body of several."""
    def one(text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"model": resource, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            item["outputDimensionality"] = dimensions
        return item

    return one(texts) if isinstance(texts, str) else {"requests": [one(text) for text in texts]}
