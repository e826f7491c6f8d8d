"""Translation between our typed OpenAI-shaped messages and the Gemini API's JSON: pure functions,
no I/O.

Requests: system/developer messages become `systemInstruction`; user, assistant ("model") and
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

Answers: `completion()` turns a GenerateContentResponse into a `chat.completion`, and
`StreamTranslator` each stream event into `chat.completion.chunk`s, both through the shared
`openai_shapes` builders; finish reasons and usage map as `FINISH_REASONS` and `usage_of` say.
"""

from __future__ import annotations

import posixpath
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from aggregator.openai.v1 import chat_pb2
from services.adapters import openai_shapes as shapes
from services.adapters.google_wire import (
    Candidate,
    Content,
    FunctionCallingConfig,
    FunctionDeclaration,
    GenerateContentRequest,
    GenerateContentResponse,
    GenerationConfig,
    Part,
)
from services.core.errors import GatewayError, Reason

THOUGHT_SEPARATOR = "__thought__"
_MAX_EXACT_INT = 2**53
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
    return GatewayError(Reason.UNSUPPORTED_PARAMETER, f"{what} is not supported by provider kind 'google'.",
                        param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def plain(value: Any) -> Any:
    """JSON from a protobuf Struct/Value (whose numbers are all doubles) with integers restored:
    a schema's `minimum` or `maxLength` must reach Gemini as an integer."""
    if isinstance(value, Message):
        value = json_format.MessageToDict(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() and -_MAX_EXACT_INT < value < _MAX_EXACT_INT else value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """An OpenAI tool-call id as (Gemini's call id, thought signature or None)."""
    base, sep, signature = call_id.partition(THOUGHT_SEPARATOR)
    return base, (signature if sep and signature else None)


# -- content parts ----------------------------------------------------------------------------
def _data_url(url: str, param: str) -> tuple[str, str]:
    """(MIME type, base64 data) of a `data:<mime>[;...];base64,<data>` URL. The data is passed on
    undecoded (Gemini wants base64 too, and refuses bad base64 itself with a 400)."""
    head, comma, data = url.partition(",")
    mime, *options = head.removeprefix("data:").split(";")
    if not comma or "base64" not in options or not mime:
        raise invalid(param, f"{param} must be a base64 data URL (data:<mime type>;base64,...).")
    return mime, data


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
            raise unsupported(param, f"Audio format '{audio.get('format')}'")
        return {"inlineData": {"mimeType": mime, "data": str(audio.get("data", ""))}}
    if kind == "file":
        return _file_part(part.get("file") or {}, param)
    raise unsupported(param, f"The content part type '{kind}'")


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
            raise unsupported(where, f"A tool call of type '{call.type}'")
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
        raise invalid(param, f"{param}.tool_call_id '{message.tool_call_id}' answers no earlier assistant "
                             "tool call.")
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
            raise unsupported(f"{param}.role", f"The message role '{message.role}'")
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
        raise unsupported("response_format", f"response_format type '{kind}'")
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


# -- answers ----------------------------------------------------------------------------------
# Gemini's finish reasons as OpenAI's; STOP becomes "tool_calls" when the choice called a tool.
# Unlisted reasons (OTHER, FINISH_REASON_UNSPECIFIED, TOO_MANY_TOOL_CALLS, new ones) are "stop".
FINISH_REASONS: Mapping[str, str] = {
    "STOP": "stop", "MAX_TOKENS": "length", "CONTINUATION": "length"} | dict.fromkeys((
    "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "ESCALATION", "PUP_LIMITED_DISABLED", "MODEL_ARMOR"),
    "content_filter")
# Reasons that leave no usable answer: an error, so routing may still try another candidate.
FAILED_FINISHES = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "MALFORMED_RESPONSE"})


def finish_reason(reason: str, called_tools: bool) -> str:
    """OpenAI's finish_reason for a Gemini one; raises for the reasons that leave no answer."""
    if reason in FAILED_FINISHES:
        raise GatewayError(Reason.UPSTREAM_ERROR, f"The upstream model failed to answer ({reason}).")
    if reason == "MISSING_THOUGHT_SIGNATURE":
        raise GatewayError(Reason.UPSTREAM_BAD_REQUEST, "Gemini needs earlier tool calls sent back with the "
                                                        "ids the gateway gave them (they carry a signature).")
    mapped = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if mapped == "stop" and called_tools else mapped


def new_call_id() -> str:
    """A tool-call id for a Gemini call that came without one."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _count(obj: Any, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) else 0


def usage_of(meta: Any) -> dict[str, Any]:
    """OpenAI's usage from `usageMetadata`: thoughts are completion tokens (and reasoning tokens);
    `promptTokenCount` already counts cached tokens, so they are only a breakdown of it."""
    thoughts = _count(meta, "thoughtsTokenCount")
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    return shapes.usage(prompt, _count(meta, "candidatesTokenCount") + thoughts,
                        cached_tokens=_count(meta, "cachedContentTokenCount"), reasoning_tokens=thoughts)


def _token(candidate: Any) -> dict[str, Any]:
    token = str(candidate.get("token", "")) if isinstance(candidate, dict) else ""
    logprob = candidate.get("logProbability", 0.0) if isinstance(candidate, dict) else 0.0
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def logprobs_of(result: Any) -> dict[str, Any] | None:
    """OpenAI's `logprobs` from a candidate's `logprobsResult` (chosen tokens and their top rivals)."""
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result.get("chosenCandidates") or []):
        rivals = (tops[i].get("candidates") or []) if i < len(tops) and isinstance(tops[i], dict) else []
        content.append({**_token(chosen), "top_logprobs": [_token(r) for r in rivals]})
    return {"content": content, "refusal": None}


@dataclass(slots=True)
class Output:
    """What one candidate (or one stream event of it) carries, in OpenAI terms."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def output_of(candidate: Candidate) -> Output:
    """Text parts joined, `thought` parts as reasoning, function calls as OpenAI tool calls with
    their arguments re-encoded whole; other parts (code execution, media) are not asked for."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    content: Any = candidate.get("content") or {}
    for part in content.get("parts") or []:
        call = part.get("functionCall")
        if isinstance(call, dict):
            call_id = call.get("id") or new_call_id()
            signature = part.get("thoughtSignature")
            if signature:
                call_id = f"{call_id}{THOUGHT_SEPARATOR}{signature}"
            arguments = orjson.dumps(call.get("args") or {}).decode()
            calls.append(shapes.tool_call(call_id, str(call.get("name", "")), arguments))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
    return Output("".join(texts) if texts else None, "".join(thoughts) if thoughts else None, calls)


def _message(output: Output) -> dict[str, Any]:
    message = shapes.message(output.text, tool_calls=output.tool_calls)
    if output.reasoning is not None:
        message["reasoning_content"] = output.reasoning
    return message


def prompt_blocked(obj: GenerateContentResponse) -> bool:
    """Whether Gemini refused the prompt itself (no candidates, a `promptFeedback.blockReason`)."""
    return not obj.get("candidates") and bool((obj.get("promptFeedback") or {}).get("blockReason"))


def completion(obj: GenerateContentResponse, upstream_model: str, n: int) -> dict[str, Any]:
    """A `chat.completion` from a whole GenerateContentResponse. A blocked prompt is answered as
    OpenAI answers filtered content: `n` empty choices with finish_reason "content_filter"."""
    candidates = obj.get("candidates") or []
    # A zero index is left out of proto3 JSON; were indices missing altogether, positions stand in.
    indices = [candidate.get("index", 0) for candidate in candidates]
    if len(set(indices)) != len(indices):
        indices = list(range(len(candidates)))
    choices = []
    for index, candidate in zip(indices, candidates, strict=True):
        output = output_of(candidate)
        reason = finish_reason(candidate.get("finishReason", "STOP"), bool(output.tool_calls))
        choice = shapes.choice(index, _message(output), reason)
        choice["logprobs"] = logprobs_of(candidate.get("logprobsResult"))
        choices.append(choice)
    if prompt_blocked(obj):
        choices = [shapes.choice(i, shapes.message(None), "content_filter") for i in range(n)]
    elif not choices:
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider answered without candidates.")
    meta = obj.get("usageMetadata")
    choices.sort(key=lambda c: c["index"])
    return shapes.completion(obj.get("responseId") or shapes.new_id(), shapes.now(),
                             obj.get("modelVersion") or upstream_model, choices,
                             usage_of(meta) if isinstance(meta, dict) else None)


@dataclass(slots=True)
class _ChoiceState:
    started: bool = False  # the role went out
    tool_calls: int = 0  # calls streamed so far (the next call's `index`)
    finished: bool = False


class StreamTranslator:
    """Turns each streamGenerateContent event into OpenAI chunks as it arrives.

    A choice opens with `{"role": "assistant", "content": ""}` before its first text, or carries
    the role on its first tool-call delta (as OpenAI streams). Gemini sends a function call whole
    in one event: it goes out as one delta holding id, name and the complete arguments. Gemini
    ends a stream by closing it (no [DONE]); `end()` then checks every choice finished and gives
    the usage chunk, from the last `usageMetadata` seen (each event carries the running counts)."""

    def __init__(self, upstream_model: str, n: int) -> None:
        self._model = upstream_model
        self._n = max(1, n)
        self._id: str | None = None
        self._created = shapes.now()
        self._choices: dict[int, _ChoiceState] = {}
        self._usage: dict[str, Any] | None = None

    def feed(self, obj: GenerateContentResponse) -> list[dict[str, Any]]:
        """The chunks of one event (possibly none)."""
        self._id = self._id or obj.get("responseId") or shapes.new_id()
        self._model = obj.get("modelVersion") or self._model
        if isinstance(obj.get("usageMetadata"), dict):
            self._usage = usage_of(obj.get("usageMetadata"))
        out: list[dict[str, Any]] = []
        if prompt_blocked(obj):
            for index in range(self._n):
                out += self._finish(index, "content_filter")
        for candidate in obj.get("candidates") or []:
            out += self._candidate(candidate)
        return out

    def end(self) -> list[dict[str, Any]]:
        """The usage chunk still owed at the end of the HTTP stream; raises UPSTREAM_ERROR when a
        choice never finished (the stream was cut)."""
        if not self._choices or not all(state.finished for state in self._choices.values()):
            raise GatewayError(Reason.UPSTREAM_ERROR,
                               "The upstream stream ended before the answer was complete.")
        if self._usage is None:
            return []
        return [shapes.usage_chunk(self._id or "", self._created, self._model, self._usage)]

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return shapes.chunk(self._id or "", self._created, self._model, delta, finish_reason=finish,
                            index=index)

    def _start(self, index: int) -> list[dict[str, Any]]:
        state = self._choices.setdefault(index, _ChoiceState())
        if state.started:
            return []
        state.started = True
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def _candidate(self, candidate: Candidate) -> list[dict[str, Any]]:
        index = candidate.get("index", 0)
        state = self._choices.setdefault(index, _ChoiceState())
        if state.finished:
            return []
        output = output_of(candidate)
        out = self._start(index) if output.text or output.reasoning else []
        if output.reasoning:
            out.append(self._chunk(index, {"reasoning_content": output.reasoning}))
        if output.text:
            out.append(self._chunk(index, {"content": output.text}))
            out[-1]["choices"][0]["logprobs"] = logprobs_of(candidate.get("logprobsResult"))
        for call in output.tool_calls:
            function = call["function"]
            delta: dict[str, Any] = {"tool_calls": [shapes.tool_call_delta(
                state.tool_calls, call_id=call["id"], name=function["name"],
                arguments=function["arguments"])]}
            if not state.started:
                state.started = True
                delta = {"role": "assistant", "content": None} | delta
            state.tool_calls += 1
            out.append(self._chunk(index, delta))
        if candidate.get("finishReason"):
            out += self._finish(index, finish_reason(str(candidate["finishReason"]), state.tool_calls > 0))
        return out

    def _finish(self, index: int, reason: str) -> list[dict[str, Any]]:
        out = self._start(index)
        self._choices[index].finished = True
        out.append(self._chunk(index, {}, reason))
        return out
