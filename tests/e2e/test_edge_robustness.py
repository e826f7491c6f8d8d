"""Regressions of what fuzzing the edge from outside found (docs/edge.md): long values echoed in
errors, answers larger than a message limit, lenient JSON and content types, and spec-valid
requests refused before the upstream saw them."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.e2e.test_errors import assert_openai_error
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


# --- 1. an error message quotes at most a short prefix of what the client sent ---------------------

@pytest.mark.parametrize("model", ["m" * 19_000, "é" * 6_000, "😀" * 3_000, "x" * 200_000])
async def test_unknown_long_model_is_404_with_a_short_quote(http: httpx.AsyncClient, model: str) -> None:
    response = await http.post("/v1/chat/completions", json={**CHAT, "model": model})
    error = assert_openai_error(response, 404, code="model_not_found")
    assert model[:64] in error["message"] and len(error["message"]) < 300


async def test_long_role_is_400_naming_the_param(http: httpx.AsyncClient) -> None:
    messages = [{"role": "r" * 65_536, "content": "hi"}]
    response = await http.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    error = assert_openai_error(response, 400)
    assert error["param"] == "messages[0].role" and len(error["message"]) < 300


# --- 2/3. answers as large as providers legitimately send -------------------------------------------

@pytest.mark.parametrize("count", [900, 2048])
async def test_embeddings_as_large_as_openai_allows(http: httpx.AsyncClient, upstream: FakeOpenAI,
                                                    count: int) -> None:
    # 2,048 inputs of 3,072 dimensions: about 60 MB of JSON here, far over any gRPC default.
    body = {"model": "text-embedding-3-small", "input": ["hello world"] * count, "dimensions": 3072}
    response = await http.post("/v1/embeddings", json=body, timeout=120)
    assert response.status_code == 200, response.text[:500]
    answer = orjson.loads(response.content)
    assert [item["index"] for item in answer["data"]] == list(range(count))
    assert all(len(item["embedding"]) == 3072 for item in answer["data"])
    assert answer["data"][0]["embedding"] == answer["data"][-1]["embedding"]
    assert len(upstream.requests) == 1


# --- 4. strict JSON, and only JSON, as OpenAI reads a body ------------------------------------------

VALID = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
NOT_JSON = "We could not parse the JSON body of your request."


@pytest.mark.parametrize("body", [
    b"{'model':'gpt-4o-mini','messages':[{'role':'user','content':'hi'}]}",  # single quotes
    b'{model:"gpt-4o-mini",messages:[{role:"user",content:"hi"}]}',  # bare keys
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"},],}',  # trailing commas
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"h\ti\x01"}]}',  # raw control chars
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]} trailing',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]',  # cut short
], ids=["single-quotes", "bare-keys", "trailing-commas", "control-chars", "trailing-text", "truncated"])
async def test_lenient_json_is_400_with_openais_message(http: httpx.AsyncClient, upstream: FakeOpenAI,
                                                       body: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/completions"):
        response = await http.post(path, content=body, headers={"content-type": "application/json"})
        error = assert_openai_error(response, 400, error_type="invalid_request_error")
        assert error["message"].startswith(NOT_JSON) and error["code"] is None and error["param"] is None
    assert not upstream.requests


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml",
                                          "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_json_body_under_another_content_type_is_400(http: httpx.AsyncClient, upstream: FakeOpenAI,
                                                             content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = http.build_request("POST", "/v1/chat/completions", content=VALID, headers=headers)
    assert request.headers.get("content-type") == content_type
    error = assert_openai_error(await http.send(request), 400)
    assert error["message"].startswith(NOT_JSON)
    assert not upstream.requests


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON"])
async def test_json_content_types_are_served(http: httpx.AsyncClient, content_type: str) -> None:
    response = await http.post("/v1/chat/completions", content=VALID, headers={"content-type": content_type})
    assert response.status_code == 200, response.text


async def test_bodyless_requests_need_no_content_type(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/models")).status_code == 200
    assert (await http.delete("/v1/api-keys/no-such-key")).status_code == 404


# --- 5. what OpenAI's spec allows reaches the provider; what OpenAI refuses, we refuse ------------

async def test_a_null_prompt_reaches_the_provider(http: httpx.AsyncClient, upstream: FakeOpenAI) -> None:
    response = await http.post("/v1/completions", json={"model": "gpt-4o-mini", "prompt": None})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "text_completion"
    assert upstream.requests[-1].json["prompt"] is None


async def test_an_empty_tool_call_id_reaches_the_provider(http: httpx.AsyncClient,
                                                          upstream: FakeOpenAI) -> None:
    call = {"id": "", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "", "content": "sunny"}]
    response = await http.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].json["messages"][2]["tool_call_id"] == ""


@pytest.mark.parametrize("value", ["", ["one", ""]])
async def test_an_empty_input_is_refused_as_openai_does(http: httpx.AsyncClient, upstream: FakeOpenAI,
                                                        value: object) -> None:
    response = await http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": value})
    error = assert_openai_error(response, 400, code="invalid_value")
    assert error["param"] == "input" and "empty string" in error["message"]
    assert not upstream.requests
