"""Gemini's answers read back into OpenAI shapes: pure functions, no I/O.

`completion()` turns a GenerateContentResponse into a `chat.completion`, and `StreamTranslator`
each stream event into `chat.completion.chunk`s, both through the shared `openai_shapes`
builders; finish reasons and usage map as `FINISH_REASONS` and `usage_of` say. A function call
whose part carries a `thoughtSignature` gets it inside its id (see `google_translate`).
`embedding_list()` reads embedContent and batchEmbedContents answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.adapters import openai_shapes as shapes
from services.adapters.google_translate import THOUGHT_SEPARATOR
from services.adapters.google_wire import Candidate, GenerateContentResponse
from services.adapters.upstream_errors import incomplete_stream
from services.core.errors import GatewayError, Reason

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
            raise incomplete_stream()
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


def embedding_list(obj: dict[str, Any], count: int, upstream_model: str, as_base64: bool) -> dict[str, Any]:
    """OpenAI's embedding `list`; base64 is little-endian float32, as OpenAI encodes it. Gemini's
    embedding API reports no token counts (usage is 0) unless a `usageMetadata` is present."""
    items = obj.get("embeddings") if "embeddings" in obj else [obj.get("embedding")]
    vectors: list[Any] = [item.get("values") for item in items or [] if isinstance(item, dict)]
    if len(vectors) != count or not all(isinstance(v, list) for v in vectors):
        raise GatewayError(Reason.UPSTREAM_ERROR,
                           "The upstream provider sent an unexpected embedding answer.")
    meta = obj.get("usageMetadata")
    tokens = meta.get("promptTokenCount", 0) if isinstance(meta, dict) else 0
    return shapes.embedding_list(vectors, upstream_model, tokens, as_base64=as_base64)
