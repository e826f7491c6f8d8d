"""Deterministic OpenAI payloads for the fake upstream, in OpenAI's real wire format.

What the fake "generates":
- text: the last user message's text, echoed (plus " [N image(s)]" when it carried images);
  after a tool result (last message role "tool"): "Tool result: <content>";
- with `response_format` json_object/json_schema: the JSON text `{"echo": <text>}`;
- a tool call when tools are given, `tool_choice` is not "none", the last message is the user's,
  and either `tool_choice` demands a tool or the user's text names one; arguments fill each
  required (else every) parameter of the schema: strings with the user's text, numbers 42,
  booleans true;
- `stop` cuts the text before the first stop sequence; `max_tokens` / `max_completion_tokens`
  keep that many tokens (finish_reason "length").
Tokens are whitespace-delimited pieces (`TOKEN_RE`); usage counts them, 3 more per prompt message.

Legacy completions (`text_completion`): each prompt (a string, a list of strings, token ids read
as the ids joined by spaces, or lists of those) "completes" to " <prompt>" (" Hello!" when empty),
plus " [before <suffix>]" when `suffix` is set; `stop` cuts that generated text, `max_tokens`
(OpenAI's default: 16) keeps that many tokens; `echo` puts the prompt in front; `n` choices per
prompt (index = prompt * n + j); `logprobs: k` gives each token a deterministic logprob and k top
entries. Usage: prompt tokens of every prompt, completion tokens of every choice (echo excluded).

Images: a 1x1 PNG per image (`n`), as `b64_json` (GPT image models always; DALL·E when asked) or
a `url`; DALL·E 3 adds `revised_prompt`; GPT image models report `usage` (text tokens of the
prompt plus IMAGE_INPUT_TOKENS per uploaded image in, OUTPUT_TOKENS[quality] per image out) and
echo `background`, `output_format`, `quality`, `size` as OpenAI does.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

TOKEN_RE = re.compile(r"\S+\s*|\s+")
FINGERPRINT = "fp_fake0001"
ARGUMENT_FRAGMENT = 6  # characters of tool-call arguments per streamed chunk


def tokens(text: str) -> list[str]:
    """The pieces of `text`, which concatenate back to it exactly."""
    return TOKEN_RE.findall(text)


def content_text(content: Any) -> tuple[str, int]:
    """The text of a message's content (string or parts) and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    images = sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return " ".join(texts), images


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Deterministic prompt size: tokens of every message's text, plus 3 per message."""
    return sum(len(tokens(content_text(m.get("content"))[0])) + 3 for m in messages)


@dataclass(slots=True)
class Reply:
    """What one choice says: text or tool calls, and why it stopped."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def completion_tokens(self) -> int:
        if self.tool_calls:
            return sum(len(tokens(c["function"]["arguments"])) + 1 for c in self.tool_calls)
        return len(tokens(self.content or ""))


def _chosen_tool(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"]["name"] == name), tools[0])
    named = next((t for t in tools if t["function"]["name"] in text), None)
    return named or (tools[0] if choice == "required" else None)


def sample_arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """Deterministic arguments for a JSON schema (every fake's tool calls): the user's text for
    strings, 42 for numbers, true for booleans; the required properties, else all of them."""
    props: dict[str, Any] = schema.get("properties") or {}
    names = schema.get("required") or list(props)
    samples = {"string": text, "integer": 42, "number": 42, "boolean": True}
    return {n: samples.get(str((props.get(n) or {}).get("type", "string")).lower()) for n in names}


def tool_arguments(tool: dict[str, Any], text: str) -> str:
    """The JSON arguments string of a call of an OpenAI-shaped function tool (Cohere's too)."""
    return orjson.dumps(sample_arguments(tool["function"].get("parameters") or {}, text)).decode()


def reply_for(body: dict[str, Any], call_id: str) -> Reply:
    """The deterministic answer to a chat request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return _shape_text(body, "Tool result: " + content_text(last.get("content"))[0])
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text, images = content_text(user.get("content"))
    tool = _chosen_tool(body, text) if last.get("role") == "user" else None
    if tool is not None:
        call = {"id": call_id, "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": tool_arguments(tool, text)}}
        return Reply(content=None, tool_calls=[call], finish_reason="tool_calls")
    if images:
        text += f" [{images} image{'s' if images > 1 else ''}]"
    return _shape_text(body, text or "Hello!")


def _shape_text(body: dict[str, Any], text: str) -> Reply:
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        return Reply(content=orjson.dumps({"echo": text}).decode())
    stop = body.get("stop")
    for seq in [stop] if isinstance(stop, str) else stop or []:
        if seq and seq in text:
            text = text[: text.index(seq)]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    pieces = tokens(text)
    if limit and len(pieces) > limit:
        return Reply(content="".join(pieces[:limit]), finish_reason="length")
    return Reply(content=text)


def usage(prompt: int, completion: int) -> dict[str, Any]:
    """OpenAI's usage object, details included."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def completion(body: dict[str, Any], *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    """A whole `chat.completion`."""
    replies = [reply_for(body, f"call_{completion_id[-8:]}{i}") for i in range(body.get("n") or 1)]
    choices = []
    for i, r in enumerate(replies):
        message: dict[str, Any] = {"role": "assistant", "content": r.content, "refusal": None,
                                   "annotations": []}
        if r.tool_calls:
            message["tool_calls"] = r.tool_calls
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": r.finish_reason})
    used = sum(r.completion_tokens for r in replies)
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage(prompt_tokens(body.get("messages") or []), used),
            "service_tier": "default", "system_fingerprint": FINGERPRINT}


def _choice_deltas(reply: Reply) -> list[tuple[dict[str, Any], str | None]]:
    if reply.tool_calls:
        call = reply.tool_calls[0]
        args = call["function"]["arguments"]
        # As OpenAI streams a call: id, type and name first with empty arguments, then fragments.
        first = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"index": 0, "id": call["id"], "type": "function",
             "function": {"name": call["function"]["name"], "arguments": ""}}]}
        deltas: list[tuple[dict[str, Any], str | None]] = [(first, None)]
        for start in range(0, len(args), ARGUMENT_FRAGMENT):
            fragment = args[start:start + ARGUMENT_FRAGMENT]
            deltas.append(({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}, None))
    else:
        deltas = [({"role": "assistant", "content": "", "refusal": None}, None)]
        deltas += [({"content": piece}, None) for piece in tokens(reply.content or "")]
    deltas.append(({}, reply.finish_reason))
    return deltas


def chunks(body: dict[str, Any], *, completion_id: str, created: int, model: str) -> list[dict[str, Any]]:
    """Every `chat.completion.chunk` of a stream, in order (the usage chunk last when asked for)."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    replies = [reply_for(body, f"call_{completion_id[-8:]}{i}") for i in range(body.get("n") or 1)]
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": FINGERPRINT}
    out = []
    for index, reply in enumerate(replies):
        for delta, finish in _choice_deltas(reply):
            chunk = {**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}]}
            if include_usage:
                chunk["usage"] = None  # OpenAI: every chunk but the last has "usage": null
            out.append(chunk)
    if include_usage:
        used = sum(r.completion_tokens for r in replies)
        out.append({**head, "choices": [], "usage": usage(prompt_tokens(body.get("messages") or []), used)})
    return out


def _vector(item: Any, dimensions: int) -> list[float]:
    # json, not orjson: a token id past 64 bits (valid JSON, and an integer as the spec asks) is
    # embedded like any other input instead of failing the fake. Same bytes as orjson otherwise.
    return _cached_vector(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode(), dimensions)


@functools.lru_cache(maxsize=64)
def _cached_vector(item: bytes, dimensions: int) -> list[float]:
    # Cached: a test of large answers sends one input thousands of times at 3,072 dimensions.
    seed = hashlib.blake2b(item, digest_size=8).digest()
    state = int.from_bytes(seed, "little")
    values = []
    for _ in range(dimensions):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        values.append(round((state >> 40) / 2**24 * 2 - 1, 6))
    return values


def embeddings(body: dict[str, Any], *, model: str, default_dimensions: int = 16) -> dict[str, Any]:
    """A `list` of embeddings: one deterministic vector per input (float or base64 float32)."""
    raw = body.get("input")
    items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    dimensions = body.get("dimensions") or default_dimensions
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vector = _vector(item, dimensions)
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    used = sum(len(item) if isinstance(item, list) else len(tokens(str(item))) for item in items)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": used, "total_tokens": used}}


def models_list(models: list[str], created: int) -> dict[str, Any]:
    """`GET /v1/models`."""
    return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "system"}
                                       for m in models]}


def error(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- legacy completions ---------------------------------------------------------------------------
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(slots=True)
class TextReply:
    """One `text_completion` choice: the echoed prompt (if asked), the generated pieces, the reason."""

    echo: str
    pieces: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return self.echo + "".join(self.pieces)


def prompt_texts(prompt: Any) -> list[tuple[str, int]]:
    """Each prompt of a completions body as (text, prompt tokens)."""
    if isinstance(prompt, str):
        return [(prompt, len(tokens(prompt)))]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [(" ".join(map(str, prompt)), len(prompt))]
    if isinstance(prompt, list) and prompt:
        return [item for p in prompt for item in prompt_texts(p)]
    return [("", 1)]  # no prompt: OpenAI completes "<|endoftext|>", one token


def _text_reply(body: dict[str, Any], prompt: str) -> TextReply:
    generated = f" {prompt}" if prompt else " Hello!"
    if body.get("suffix"):
        generated += f" [before {body['suffix']}]"
    stop = body.get("stop")
    for seq in [stop] if isinstance(stop, str) else stop or []:
        if seq and seq in generated:
            generated = generated[: generated.index(seq)]
    limit = body.get("max_tokens")
    limit = DEFAULT_COMPLETION_MAX_TOKENS if limit is None else limit
    pieces, finish = tokens(generated), "stop"
    if len(pieces) > limit:
        pieces, finish = pieces[:limit], "length"
    return TextReply(prompt if body.get("echo") else "", pieces, finish)


def text_replies(body: dict[str, Any]) -> tuple[list[TextReply], int]:
    """Every choice of a completions request, in index order, and the prompt tokens."""
    prompts = prompt_texts(body.get("prompt"))
    n = body.get("n") or 1
    replies = [_text_reply(body, text) for text, _ in prompts for _ in range(n)]
    return replies, sum(count for _, count in prompts)


def text_logprobs(pieces: list[str], top: int, offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` object over `pieces`, starting at character `offset`."""
    values = [-round(len(p) / 100, 4) for p in pieces]
    offsets = [offset + sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    tops = [{piece: value, **{f"{piece.strip() or '_'}~{m}": round(value - m, 4) for m in range(1, top)}}
            if top else {} for piece, value in zip(pieces, values, strict=True)]
    return {"tokens": pieces, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def text_usage(prompt: int, completion: int) -> dict[str, Any]:
    """The usage of a legacy completion (no details)."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def text_completion(body: dict[str, Any], *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    """A whole `text_completion`."""
    replies, prompt = text_replies(body)
    top = body.get("logprobs")
    choices = [{"text": r.text, "index": i, "finish_reason": r.finish_reason,
                "logprobs": None if top is None else text_logprobs(tokens(r.echo) + r.pieces, top)}
               for i, r in enumerate(replies)]
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": text_usage(prompt, sum(len(r.pieces) for r in replies))}


def text_completion_chunks(body: dict[str, Any], *, completion_id: str, created: int,
                           model: str) -> list[dict[str, Any]]:
    """Every chunk of a streamed `text_completion`: the echo first, one chunk per token, an empty
    chunk with the finish reason per choice, and the usage chunk last when asked for."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    replies, prompt = text_replies(body)
    top = body.get("logprobs")
    head = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    out = []
    for index, reply in enumerate(replies):
        offset = 0
        for piece in ([reply.echo] if reply.echo else []) + reply.pieces:
            logprobs = None if top is None else text_logprobs(tokens(piece), top, offset)
            out.append({**head, "choices": [{"text": piece, "index": index, "logprobs": logprobs,
                                             "finish_reason": None}]})
            offset += len(piece)
        out.append({**head, "choices": [{"text": "", "index": index, "logprobs": None,
                                         "finish_reason": reply.finish_reason}]})
    if include_usage:
        for chunk in out:
            chunk["usage"] = None
        out.append({**head, "choices": [], "usage": text_usage(prompt, sum(len(r.pieces) for r in replies))})
    return out


# -- images -------------------------------------------------------------------------------------------
OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}  # gpt-image-1, 1024x1024, per image
IMAGE_INPUT_TOKENS = 194  # per uploaded image


def png(rgb: tuple[int, int, int] = (0, 128, 255)) -> bytes:
    """A valid 1x1 RGB PNG."""
    def chunk_(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk_(b"IHDR", header) + chunk_(b"IDAT", zlib.compress(bytes([0, *rgb])))
            + chunk_(b"IEND", b""))


def images(body: dict[str, Any], *, created: int, input_images: int = 0) -> dict[str, Any]:
    """An images response for a generation, edit or variation request (`body`: its fields)."""
    model = str(body.get("model") or "dall-e-2")
    n = int(body.get("n") or 1)
    gpt = model.startswith("gpt-image")
    as_b64 = gpt or body.get("response_format") == "b64_json"
    data: list[dict[str, Any]] = []
    for i in range(n):
        item: dict[str, Any] = ({"b64_json": base64.b64encode(png((i, 128, 255))).decode()} if as_b64
                                else {"url": f"https://images.fake-openai.test/{created}-{i}.png"})
        if model == "dall-e-3":
            item["revised_prompt"] = f"A picture of {body.get('prompt', '')}"
        data.append(item)
    out: dict[str, Any] = {"created": created, "data": data}
    if gpt:
        quality = str(body.get("quality")) if body.get("quality") in OUTPUT_TOKENS else "medium"
        size = body.get("size") if body.get("size") not in (None, "auto") else "1024x1024"
        background = body.get("background") if body.get("background") == "transparent" else "opaque"
        text = len(tokens(str(body.get("prompt") or "")))
        image = IMAGE_INPUT_TOKENS * input_images
        out |= {"background": background, "output_format": body.get("output_format") or "png",
                "quality": quality, "size": size,
                "usage": {"input_tokens": text + image, "output_tokens": OUTPUT_TOKENS[quality] * n,
                          "total_tokens": text + image + OUTPUT_TOKENS[quality] * n,
                          "input_tokens_details": {"text_tokens": text, "image_tokens": image}}}
    return out
