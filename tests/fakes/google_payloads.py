"""Deterministic Gemini API payloads for the fake upstream, in the API's real wire format
(camelCase JSON, validated against `google.genai.types` in test_google_upstream.py).

What the fake "generates" (as openai_payloads does, read from a GenerateContentRequest):
- text: the last user turn's text parts joined by " ", echoed (plus " [N image(s)]" when it held
  inline or file images); after a tool result (a user turn of `functionResponse` parts):
  "Tool result: <response.content, or the response JSON>";
- with `responseMimeType: application/json`: the JSON text `{"echo": <text>}`;
- a function call when function declarations are given, the mode is not NONE, the last turn is
  the user's text, and either the mode is ANY or the text names a function; arguments fill each
  required (else every) property of `parametersJsonSchema` (or `parameters`): strings with the
  text, numbers 42, booleans true. The part carries a `thoughtSignature`, as Gemini 3 sends;
- `stopSequences` cut the text before the first one found; `maxOutputTokens` keeps that many
  tokens (finishReason MAX_TOKENS); `candidateCount` answers that many candidates;
- with `thinkingConfig`, `thoughtsTokenCount` is THOUGHT_TOKENS.
Tokens are whitespace-delimited pieces; the prompt counts each turn's text tokens plus 3 per turn
(the system instruction is a turn).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from tests.fakes.openai_payloads import sample_arguments, tokens

THOUGHT_TOKENS = 7
IMAGE_PREFIX = "image/"


def turn_text(content: Any) -> tuple[str, int]:
    """The text of a turn (text parts joined by " ") and how many images it holds."""
    parts = content.get("parts") or [] if isinstance(content, dict) else []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    images = sum(1 for p in parts for key in ("inlineData", "fileData")
                 if str((p.get(key) or {}).get("mimeType", "")).startswith(IMAGE_PREFIX))
    return " ".join(texts), images


def prompt_tokens(body: dict[str, Any]) -> int:
    turns = list(body.get("contents") or [])
    if body.get("systemInstruction"):
        turns.append(body["systemInstruction"])
    return sum(len(tokens(turn_text(turn)[0])) + 3 for turn in turns)


@dataclass(slots=True)
class Reply:
    """What one candidate says: text or a function call, and why it stopped."""

    text: str | None
    call: dict[str, Any] | None = None
    finish_reason: str = "STOP"

    @property
    def tokens(self) -> int:
        if self.call is not None:
            return len(tokens(orjson.dumps(self.call["args"]).decode())) + 1
        return len(tokens(self.text or ""))

    def part(self) -> dict[str, Any]:
        if self.call is None:
            return {"text": self.text or ""}
        signature = base64.b64encode(b"fake-thought:" + self.call["name"].encode()).decode()
        return {"functionCall": self.call, "thoughtSignature": signature}


def _declarations(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []]


def _chosen_function(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    declarations = _declarations(body)
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = config.get("mode", "AUTO")
    allowed = config.get("allowedFunctionNames")
    if allowed:
        declarations = [d for d in declarations if d["name"] in allowed]
    if not declarations or mode == "NONE":
        return None
    named = next((d for d in declarations if d["name"] in text), None)
    return named or (declarations[0] if mode == "ANY" else None)


def _arguments(declaration: dict[str, Any], text: str) -> dict[str, Any]:
    schema = declaration.get("parametersJsonSchema") or declaration.get("parameters") or {}
    return sample_arguments(schema, text)


def _tool_result(content: dict[str, Any]) -> str | None:
    responses = [p["functionResponse"] for p in content.get("parts") or [] if "functionResponse" in p]
    if not responses:
        return None
    response = responses[-1].get("response") or {}
    shown = response["content"] if set(response) == {"content"} else response
    return shown if isinstance(shown, str) else orjson.dumps(shown).decode()


def reply_for(body: dict[str, Any]) -> Reply:
    """The deterministic answer to a GenerateContentRequest."""
    contents = body.get("contents") or []
    last = contents[-1] if contents else {}
    result = _tool_result(last) if last.get("role") == "user" else None
    if result is not None:
        return _shape_text(body, "Tool result: " + result)
    user: dict[str, Any] = next((c for c in reversed(contents) if c.get("role") == "user"), {})
    text, images = turn_text(user)
    declaration = _chosen_function(body, text) if last.get("role") == "user" else None
    if declaration is not None:
        return Reply(text=None, call={"name": declaration["name"], "args": _arguments(declaration, text)})
    if images:
        text += f" [{images} image{'s' if images > 1 else ''}]"
    return _shape_text(body, text or "Hello!")


def _shape_text(body: dict[str, Any], text: str) -> Reply:
    config = body.get("generationConfig") or {}
    if config.get("responseMimeType") == "application/json":
        return Reply(text=orjson.dumps({"echo": text}).decode())
    for seq in config.get("stopSequences") or []:
        if seq and seq in text:
            text = text[: text.index(seq)]
    limit = config.get("maxOutputTokens")
    pieces = tokens(text)
    if limit and len(pieces) > limit:
        return Reply(text="".join(pieces[:limit]), finish_reason="MAX_TOKENS")
    return Reply(text=text)


def usage(body: dict[str, Any], completion: int | None) -> dict[str, Any]:
    """`usageMetadata`; `completion` None for a stream event before the last (no output count yet)."""
    prompt = prompt_tokens(body)
    meta: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt,
                            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if completion is not None:
        thoughts = THOUGHT_TOKENS if (body.get("generationConfig") or {}).get("thinkingConfig") else 0
        meta["candidatesTokenCount"] = completion
        meta["totalTokenCount"] = prompt + completion + thoughts
        if thoughts:
            meta["thoughtsTokenCount"] = thoughts
    return meta


def _candidate(index: int, parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    if index:
        candidate["index"] = index  # proto3 JSON leaves out a zero index, as Gemini does
    return candidate


def _replies(body: dict[str, Any]) -> list[Reply]:
    return [reply_for(body) for _ in range((body.get("generationConfig") or {}).get("candidateCount") or 1)]


def generate(body: dict[str, Any], *, model: str, response_id: str) -> dict[str, Any]:
    """A whole GenerateContentResponse."""
    replies = _replies(body)
    candidates = [_candidate(i, [r.part()], r.finish_reason) for i, r in enumerate(replies)]
    return {"candidates": candidates, "usageMetadata": usage(body, sum(r.tokens for r in replies)),
            "modelVersion": model, "responseId": response_id}


def stream_events(body: dict[str, Any], *, model: str, response_id: str) -> list[dict[str, Any]]:
    """Every event of a stream: one text piece per candidate per event (a function call whole, in
    one event); the last event carries each finishReason and the complete usage."""
    replies = _replies(body)
    pieces = [[r.part()] if r.call is not None else [{"text": t} for t in tokens(r.text or "")]
              for r in replies]
    pieces = [p or [{"text": ""}] for p in pieces]
    length = max(len(p) for p in pieces)
    events = []
    for k in range(length):
        last = k == length - 1
        candidates = [_candidate(i, [p[k]], replies[i].finish_reason if last else None)
                      for i, p in enumerate(pieces) if k < len(p)]
        meta = usage(body, sum(r.tokens for r in replies) if last else None)
        events.append({"candidates": candidates, "usageMetadata": meta, "modelVersion": model,
                       "responseId": response_id})
    return events


def vector(text: str, dimensions: int) -> list[float]:
    """A deterministic vector for `text`."""
    state = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    values = []
    for _ in range(dimensions):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        values.append(round((state >> 40) / 2**24 * 2 - 1, 6))
    return values


def embedding(request: dict[str, Any], default_dimensions: int = 16) -> dict[str, Any]:
    """One ContentEmbedding for an embedContent request (or one of a batch)."""
    text, _ = turn_text(request.get("content"))
    return {"values": vector(text, request.get("outputDimensionality") or default_dimensions)}


def embedding_tokens(request: dict[str, Any]) -> int:
    return len(tokens(turn_text(request.get("content"))[0]))


def error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    """A `google.rpc.Status` error body, as Google APIs send it."""
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = list(details)
    return {"error": body}


def error_info(reason: str, **metadata: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com", **metadata}}


def api_key_invalid() -> dict[str, Any]:
    """What Gemini answers a wrong key: 400 INVALID_ARGUMENT with ErrorInfo API_KEY_INVALID."""
    message = "API key not valid. Please pass a valid API key."
    return error(400, "INVALID_ARGUMENT", message, error_info("API_KEY_INVALID"),
                 {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                  "message": message})


def unregistered_caller() -> dict[str, Any]:
    """What Gemini answers a request without any key: 403 PERMISSION_DENIED."""
    return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                 "established identity). Please use API Key or other form of API consumer identity to call "
                 "this API.")


def model_not_found(resource: str, method: str) -> dict[str, Any]:
    return error(404, "NOT_FOUND", f"{resource} is not found for API version v1beta, or is not supported "
                 f"for {method}. Call ListModels to see the list of available models and their supported "
                 "methods.")


def models_list(models: list[str]) -> dict[str, Any]:
    """`GET /v1beta/models`: one page of the Gemini API's model list."""
    return {"models": [{"name": f"models/{m}", "version": "001", "displayName": m,
                        "inputTokenLimit": 1048576, "outputTokenLimit": 8192,
                        "supportedGenerationMethods": ["generateContent", "countTokens"]} for m in models]}
