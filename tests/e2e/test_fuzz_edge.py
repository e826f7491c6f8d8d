"""Property-based fuzzing of the HTTP edge with requests generated from OpenAI's own OpenAPI spec.

The request schemas of `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` come from
`tests/fuzz/openai_schemas.json` (extracted by `tools/openai_schemas.py`; its `source` names the
openai-openapi commit). Hypothesis with `hypothesis-jsonschema` generates bodies from them; each goes
through Envoy to the gateway in front of the fake OpenAI, and every answer must hold:

- no 5xx (the fake upstream is healthy here, so nothing may fail on the gateway's side);
- an error is OpenAI-shaped (`{"error": {message, type, param, code}}`, strings or null), 400..499,
  with no gRPC or Envoy text, and a 429 carries `Retry-After`;
- a 200 matches the spec's response schema (each streamed chunk its chunk schema, and the stream
  ends with `data: [DONE]`), validated with `jsonschema`; our extra top-level `provider` is allowed.

Bounded and reproducible: derandomized, FUZZ_EXAMPLES examples per test (default 200), no example
database. Generation is constrained to what our catalog can route and to small sizes: `model` is
fixed to a model the e2e gateway serves, lists hold at most 3 items, strings at most 24 characters,
objects are closed to the properties the spec names (OpenAI refuses unknown ones), `n` is at most 3
and `dimensions` at most 64 (answers stay small). Objects with named properties are assembled here
(`strategy()`), each property's strategy built once, and everything else comes from
`hypothesis_jsonschema.from_schema`: its own object strategy rebuilds nested strategies on each
draw, which made OpenAI's chat schema cost about 0.3 s per example.
"""

from __future__ import annotations

import collections
import copy
import json
import os
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from tests.e2e.test_errors import LEAKS
from tests.fakes.openai_upstream import FakeOpenAI

# One topology is enough to fuzz the edge: Envoy and the edge servicer are the same in both.
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("gateway", ["all"], indirect=True)]

DOCUMENT = json.loads((Path(__file__).resolve().parents[1] / "fuzz" / "openai_schemas.json").read_text())
SCHEMAS: dict[str, Any] = DOCUMENT["schemas"]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
LOG = os.environ.get("FUZZ_LOG")  # a file: every non-200 answer and its request, one JSON line each
FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
CHAT_MODEL, COMPLETION_MODEL, EMBEDDING_MODEL = "gpt-4o-mini", "gpt-4o-mini", "text-embedding-3-small"
MAX_ITEMS, MAX_LENGTH, MAX_FREE_PROPERTIES, MAX_OPTIONAL = 3, 24, 3, 5
KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
TALLY: collections.Counter[tuple[str, int, str]] = collections.Counter()  # (path, status, error code)


# --- request strategies --------------------------------------------------------------------------

def _kinds(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    return [kind] if isinstance(kind, str) else list(kind or [])


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """An `allOf` of plain object schemas (how the spec composes request bodies) as one object."""
    parts = [_merge_all_of(p) if "allOf" in p else p for p in schema["allOf"]]
    if rest := {k: v for k, v in schema.items() if k != "allOf"}:
        parts.append(rest)
    if not all(set(p) <= {"type", "properties", "required"} and _kinds(p) in ([], ["object"]) for p in parts):
        return {"allOf": parts}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in parts:
        for name, sub in part.get("properties", {}).items():
            properties[name] = sub if name not in properties else {"allOf": [properties[name], sub]}
        required += [name for name in part.get("required", []) if name not in required]
    return {"type": "object", "properties": properties, "required": required}


def bounded(node: Any) -> Any:
    """A request schema narrowed to small values: short lists and strings, closed objects (as OpenAI
    treats unknown parameters), few free-form keys. `oneOf` becomes `anyOf`: the spec's unions are
    disjoint (by `role`, `type` or JSON type), and anyOf spares the generator a validation each."""
    if isinstance(node, list):
        return [bounded(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "allOf" in node:
        node = _merge_all_of(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: bounded(sub) for name, sub in value.items()}
        elif key in ("enum", "const", "required"):
            out[key] = value
        else:
            out["anyOf" if key == "oneOf" else key] = bounded(value)
    kinds = _kinds(out)
    if "array" in kinds or "items" in out:
        out["maxItems"] = max(out.get("minItems", 0), min(out.get("maxItems", MAX_ITEMS), MAX_ITEMS))
    if "string" in kinds and "enum" not in out:
        out["maxLength"] = max(out.get("minLength", 0), min(out.get("maxLength", MAX_LENGTH), MAX_LENGTH))
    if "object" in kinds and "properties" in out:
        out.setdefault("additionalProperties", False)
    elif "object" in kinds:
        limit = min(out.get("maxProperties", MAX_FREE_PROPERTIES), MAX_FREE_PROPERTIES)
        out["maxProperties"] = max(len(out.get("required", [])), limit)
    return out


def strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a bounded schema: unions, closed objects and plain arrays are assembled here (an
    object takes its required properties and up to MAX_OPTIONAL optional ones), the rest is
    `from_schema`'s."""
    kinds = _kinds(schema)
    if set(schema) == {"anyOf"}:
        return st.one_of([strategy(s) for s in schema["anyOf"]])
    shape = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems"}
    if len(kinds) == 2 and "null" in kinds and set(schema) <= shape:
        return st.none() | strategy({**schema, "type": next(k for k in kinds if k != "null")})
    if kinds == ["object"] and schema.get("additionalProperties") is False and set(schema) <= shape:
        properties = {name: strategy(sub) for name, sub in schema.get("properties", {}).items()}
        required = list(schema.get("required", []))
        optional = sorted(set(properties) - set(required))
        names = st.lists(st.sampled_from(optional), unique=True, max_size=min(len(optional), MAX_OPTIONAL))

        @st.composite
        def closed_object(draw: st.DrawFn) -> dict[str, Any]:
            out = {name: draw(properties[name]) for name in required}
            for name in draw(names) if optional else []:
                out[name] = draw(properties[name])
            return out

        return closed_object()
    if kinds == ["array"] and set(schema) <= {"type", "items", "minItems", "maxItems"}:
        return st.lists(strategy(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems"))
    return from_schema(schema)


def request_strategy(name: str, model: str, **caps: int) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies of the spec's request schema `name` for our `model`; `caps` bound integer properties."""
    schema = bounded(copy.deepcopy(SCHEMAS[name]))
    schema["properties"]["model"] = {"const": model}
    for prop, maximum in caps.items():
        schema["properties"][prop] = {"allOf": [schema["properties"][prop], {"maximum": maximum}]}
    return strategy(schema)


CHAT = request_strategy("CreateChatCompletionRequest", CHAT_MODEL, n=3)
COMPLETION = request_strategy("CreateCompletionRequest", COMPLETION_MODEL, n=3, best_of=3)
EMBEDDING = request_strategy("CreateEmbeddingRequest", EMBEDDING_MODEL, dimensions=64)


# --- what every answer must be -------------------------------------------------------------------

def _validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _completion_chunk_schema() -> dict[str, Any]:
    """The spec has no schema for a legacy completions stream chunk; OpenAI documents the chunks as
    `CreateCompletionResponse` objects, but a chunk's `finish_reason` is null until the last one and
    its `usage` is null when `stream_options.include_usage` is set. The same schema, with those two
    nullable."""
    schema = copy.deepcopy(SCHEMAS["CreateCompletionResponse"])
    choice = schema["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    schema["properties"]["usage"] = {"anyOf": [schema["properties"]["usage"], {"type": "null"}]}
    return schema


def _base64_embedding_schema() -> dict[str, Any]:
    """The spec types `embedding` as an array of floats only; with `encoding_format: "base64"` OpenAI
    answers a base64 string of little-endian float32s (the official SDKs decode it)."""
    schema = copy.deepcopy(SCHEMAS["CreateEmbeddingResponse"])
    schema["properties"]["data"]["items"]["properties"]["embedding"] = {"type": "string"}
    return schema


VALIDATORS = {
    "chat": _validator(SCHEMAS["CreateChatCompletionResponse"]),
    "chat-chunk": _validator(SCHEMAS["CreateChatCompletionStreamResponse"]),
    "completion": _validator(SCHEMAS["CreateCompletionResponse"]),
    "completion-chunk": _validator(_completion_chunk_schema()),
    "embedding": _validator(SCHEMAS["CreateEmbeddingResponse"]),
    "embedding-base64": _validator(_base64_embedding_schema()),
}


def _matches(kind: str, document: Any, context: str) -> None:
    assert isinstance(document, dict), f"not a JSON object: {document!r:.300}\n{context}"
    provider = document.get("provider")
    assert provider is None or isinstance(provider, dict), f"`provider` is {provider!r:.200}\n{context}"
    openai_part = {k: v for k, v in document.items() if k != "provider"}
    error = jsonschema.exceptions.best_match(VALIDATORS[kind].iter_errors(openai_part))
    where = "/" + "/".join(map(str, error.absolute_path)) if error else ""
    assert error is None, f"the answer does not match the spec at {where}: {error.message:.300}\n{context}"


def assert_error_shape(response: httpx.Response, context: str) -> dict[str, Any]:
    """An OpenAI-shaped 4xx; returns its `error` object."""
    assert 400 <= response.status_code <= 499, f"an error status outside 400..499\n{context}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), f"an error as {content_type!r}\n{context}"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"the error body is not JSON\n{context}") from None
    shaped = isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
    error = body["error"] if shaped else {}
    fields = {"message", "type", "param", "code"}
    assert shaped and set(error) == fields, f"not OpenAI's error shape\n{context}"
    assert isinstance(error["message"], str) and error["message"], f"no message\n{context}"
    assert isinstance(error["type"], str) and error["type"], f"no type\n{context}"
    assert error["param"] is None or isinstance(error["param"], str), f"param not a string or null\n{context}"
    assert error["code"] is None or isinstance(error["code"], str), f"code not a string or null\n{context}"
    leaks = [leak for leak in LEAKS if leak.lower() in error["message"].lower()]
    assert not leaks, f"the message leaks {leaks}\n{context}"
    if response.status_code == 429:
        assert "retry-after" in response.headers, f"a 429 without Retry-After\n{context}"
    return error


def _sse_payloads(response: httpx.Response, context: str) -> list[str]:
    """The `data:` payloads of a stream that ends with `data: [DONE]` (the sentinel left out)."""
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("text/event-stream"), f"a stream as {content_type!r}\n{context}"
    events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events and events[-1] == "data: [DONE]", f"the stream does not end with data: [DONE]\n{context}"
    payloads = []
    for event in events[:-1]:
        data = [line.removeprefix("data:").lstrip() for line in event.split("\n") if line.startswith("data:")]
        assert data, f"an event without data: {event!r:.300}\n{context}"
        payloads.append("\n".join(data))
    return payloads


def check_answer(path: str, body: Any, response: httpx.Response) -> None:
    """Every invariant of an answer to `body` sent to `path` (module docstring)."""
    status = response.status_code
    request = repr(body[:300]) if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False)[:2000]
    context = f"POST {path} -> {status} {response.text[:1500]}\nrequest: {request}"
    if status != 200:
        assert status < 500, f"a {status} from a healthy upstream\n{context}"
        TALLY[(path, status, str(assert_error_shape(response, context)["code"]))] += 1
        return
    TALLY[(path, status, "")] += 1
    kind = KINDS[path]
    if kind != "embedding" and isinstance(body, dict) and body.get("stream") is True:
        for i, payload in enumerate(_sse_payloads(response, context)):
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise AssertionError(f"chunk {i} is not JSON: {payload[:300]}\n{context}") from None
            assert "error" not in chunk, f"an in-band error (chunk {i}) from a healthy upstream\n{context}"
            _matches(f"{kind}-chunk", chunk, f"chunk {i}; {context}")
        return
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), f"an answer as {content_type!r}\n{context}"
    if kind == "embedding" and isinstance(body, dict) and body.get("encoding_format") == "base64":
        kind = "embedding-base64"
    _matches(kind, response.json(), context)


async def send(http: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    """Posts `body` (JSON, or raw bytes as application/json) and checks the answer."""
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        response = await http.post(path, content=body, headers=headers, timeout=60)
    else:
        response = await http.post(path, json=body, timeout=60)
    if LOG and response.status_code != 200:
        with open(LOG, "a") as log:  # noqa: ASYNC230 - a debugging aid, off by default
            request = body.decode(errors="replace")[:2000] if isinstance(body, bytes) else body
            log.write(json.dumps({"path": path, "request": request, "status": response.status_code,
                                  "answer": response.text[:2000]}, ensure_ascii=False) + "\n")
    check_answer(path, body, response)
    return response


# --- generated requests --------------------------------------------------------------------------

@FUZZ
@given(body=CHAT)
async def test_fuzz_chat_completions(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await send(http, "/v1/chat/completions", body)


@FUZZ
@given(body=CHAT)
async def test_fuzz_chat_completions_streamed(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await send(http, "/v1/chat/completions", {**body, "stream": True})


@FUZZ
@given(body=COMPLETION)
async def test_fuzz_completions(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await send(http, "/v1/completions", body)


@FUZZ
@given(body=EMBEDDING)
async def test_fuzz_embeddings(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await send(http, "/v1/embeddings", body)


# --- hand-made hostile requests ------------------------------------------------------------------

def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def _say(content: Any = "x", role: str = "user") -> dict[str, Any]:
    return _chat(messages=[{"role": role, "content": content}])


def _arrays(depth: int, leaf: str = '"x"') -> str:
    return "[" * depth + leaf + "]" * depth


def _schema(depth: int) -> str:
    """A JSON schema `depth` objects deep (a valid, if unusual, function `parameters`)."""
    value = '{"type":"string"}'
    for _ in range(depth):
        value = '{"type":"object","properties":{"p":' + value + "}}"
    return value


def _raw(template: str, value: str) -> bytes:
    """A body json= cannot send (too deep for Python's encoder, or exact numbers): `template`'s
    `@` replaced by the JSON text `value`."""
    return template.replace("@", value).encode()


CHAT_WITH = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":@}]}'
TOOL_WITH = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
             '"tools":[{"type":"function","function":{"name":"f","parameters":@}}]}')
SEED_WITH = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"seed":@}'
EMBED_WITH = '{"model":"text-embedding-3-small","input":@}'
PROMPT_WITH = '{"model":"gpt-4o-mini","prompt":@}'

# (id, path, body, the status it must get; None: any answer that keeps the invariants)
HOSTILE: list[tuple[str, str, Any, int | None]] = [
    ("chat-model-19000", "/v1/chat/completions", _chat(model="m" * 19_000), 404),
    ("completion-model-19000", "/v1/completions", {"model": "m" * 19_000, "prompt": "hi"}, 404),
    ("embedding-model-19000", "/v1/embeddings", {"model": "m" * 19_000, "input": "hi"}, 404),
    ("chat-model-emoji", "/v1/chat/completions", _chat(model="模型-ü-😀" * 2_000), 404),
    ("chat-model-nul", "/v1/chat/completions", _chat(model="gpt-4o-mini\u0000"), 404),
    ("chat-role-65536", "/v1/chat/completions", _say(role="r" * 65_536), 400),
    ("chat-role-non-ascii", "/v1/chat/completions", _say(role="usér😀"), 400),
    ("chat-content-non-ascii", "/v1/chat/completions", _say("héllo 世界 😀 \u202e\u0000 \U0010ffff"), 200),
    ("chat-unknown-parameter", "/v1/chat/completions", _chat(not_a_parameter=1), None),
    ("chat-temperature-1e308", "/v1/chat/completions", _chat(temperature=1e308), 400),
    ("chat-n-2**64", "/v1/chat/completions", _chat(n=2**64), 400),
    ("chat-stop-1000", "/v1/chat/completions", _chat(stop=["s"] * 1_000), 400),
    ("chat-messages-2000", "/v1/chat/completions", _chat(messages=_say()["messages"] * 2000), 200),
    # Out of int64 (the spec's format for seed): refused, never clamped to the nearest int64.
    ("chat-seed-2**63", "/v1/chat/completions", _raw(SEED_WITH, str(2**63)), 400),
    ("chat-seed-below-int64", "/v1/chat/completions",
     _raw(SEED_WITH, str(-(2**63) - 1)), 400),
    # Nesting: content, input and prompt arrays nested this deep are not what the spec allows (400);
    # a deep JSON schema as function parameters is (the provider judges it).
    ("chat-content-arrays-64", "/v1/chat/completions", _raw(CHAT_WITH, _arrays(64)), 400),
    ("chat-content-arrays-5000", "/v1/chat/completions", _raw(CHAT_WITH, _arrays(5_000)), 400),
    ("embedding-input-arrays-64", "/v1/embeddings", _raw(EMBED_WITH, _arrays(64)), 400),
    ("completion-prompt-arrays-64", "/v1/completions", _raw(PROMPT_WITH, _arrays(64, "1")), 400),
    ("chat-tool-parameters-16", "/v1/chat/completions", _raw(TOOL_WITH, _schema(16)), None),
    ("chat-tool-parameters-40", "/v1/chat/completions", _raw(TOOL_WITH, _schema(40)), None),
    ("chat-tool-parameters-5000", "/v1/chat/completions", _raw(TOOL_WITH, _schema(5_000)), None),
    ("deep-array-100000", "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, 400),
    ("deep-object-100000", "/v1/chat/completions", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400),
    # Bytes no JSON encoder sends.
    ("lone-surrogate", "/v1/chat/completions", _raw(CHAT_WITH, '"\\ud800"'), None),
    ("number-1e400", "/v1/chat/completions",
     b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":1e400}', 400),
    ("duplicate-keys", "/v1/chat/completions",
     b'{"model":"nope","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}', None),
    ("byte-order-mark", "/v1/chat/completions", b"\xef\xbb\xbf" + _raw(CHAT_WITH, '"hi"'), None),
    ("invalid-utf8", "/v1/chat/completions", _raw(CHAT_WITH, '"@"').replace(b"@", b"\xff\xfe"), 400),
    ("top-level-array", "/v1/embeddings", b'[{"model":"text-embedding-3-small","input":"hi"}]', 400),
    ("top-level-null", "/v1/completions", b"null", 400),
]


@pytest.mark.parametrize(("path", "body", "status"), [pytest.param(*c[1:], id=c[0]) for c in HOSTILE])
async def test_hostile_request(http: httpx.AsyncClient, path: str, body: Any, status: int | None) -> None:
    response = await send(http, path, body)
    if status is not None:
        assert response.status_code == status, f"{response.status_code} {response.text[:500]}"


# Token ids are JSON integers; the provider must get the integer the client sent, not a double.
@pytest.mark.parametrize("token", [2**53 + 1, 2**63 - 1, 2**64, -(2**63) - 1],
                         ids=["2**53+1", "2**63-1", "2**64", "-2**63-1"])
@pytest.mark.parametrize(("path", "template", "field"), [
    pytest.param("/v1/embeddings", EMBED_WITH, "input", id="embeddings"),
    pytest.param("/v1/completions", PROMPT_WITH, "prompt", id="completions"),
])
async def test_token_ids_reach_the_provider_exactly(http: httpx.AsyncClient, upstream: FakeOpenAI, path: str,
                                                    template: str, field: str, token: int) -> None:
    response = await send(http, path, _raw(template, f"[{token}]"))
    if response.status_code == 200:
        sent = upstream.requests[-1].json[field]
        assert sent == [token] and isinstance(sent[0], int), f"the provider got {sent!r} for [{token}]"


# --- and afterwards ------------------------------------------------------------------------------

async def test_the_gateway_still_serves_after_fuzzing(http: httpx.AsyncClient) -> None:
    for path, body in [
        ("/v1/chat/completions", _chat()),
        ("/v1/chat/completions", _chat(stream=True)),
        ("/v1/completions", {"model": COMPLETION_MODEL, "prompt": "hi"}),
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "hi"}),
    ]:
        response = await send(http, path, body)
        assert response.status_code == 200, response.text
    # What the fuzzing saw, per path, status and error code (shown with `pytest -rP` or `-s`).
    for (path, status, code), count in sorted(TALLY.items()):
        print(f"{path:24} {status} {code or '-':32} {count}")
