"""The fake speaks OpenAI's real format: every payload it produces is validated with the official
`openai` package's types, and its scripting (failures, holds, disconnects) does what it says. Its
legacy completions and image endpoints are tested in test_openai_upstream_endpoints.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bench.loadgen import transit_s
from tests.fakes import openai_failures as failures
from tests.fakes.client import post
from tests.fakes.openai_upstream import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}


async def stream(http: aiohttp.ClientSession, fake: FakeOpenAI,
                 body: dict[str, Any]) -> list[ChatCompletionChunk]:
    """Posts a stream and validates every event; asserts the `[DONE]` ending."""
    async with http.post(f"{fake.base_url}/chat/completions", json={**body, "stream": True}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block]
    assert events[-1] == "[DONE]"
    return [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_completion_echoes_and_validates(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, f"{fake.base_url}/chat/completions",
                             {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                                                   user("Hello there, fake")]})
    assert status == 200
    completion = ChatCompletion.model_validate_json(raw)
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].message.content == "Hello there, fake"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2 + 3 + 3 + 3, 3)
    assert fake.requests[-1].json["messages"][0]["content"] == "Be brief."


async def test_stream_text_with_usage(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    chunks = await stream(http, fake, {"model": "gpt-4o-mini", "messages": [user("one two three")],
                                       "stream_options": {"include_usage": True}})
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_usage_has_no_usage_field(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{fake.base_url}/chat/completions",
                         json={"model": "m", "stream": True, "messages": [user("hi")]}) as response:
        raw = await response.read()
    assert b'"usage"' not in raw


async def test_tool_call_non_stream(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, f"{fake.base_url}/chat/completions",
                        {"model": "m", "messages": [user("get_weather for Paris")], "tools": [WEATHER_TOOL]})
    choice = ChatCompletion.model_validate_json(raw).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "get_weather for Paris", "days": 42}  # type: ignore[union-attr]


async def test_tool_call_streams_like_openai(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    chunks = await stream(http, fake, {"model": "m", "messages": [user("what is the weather?")],
                                       "tools": [WEATHER_TOOL], "tool_choice": "required"})
    first = chunks[0].choices[0].delta.tool_calls[0]  # type: ignore[index]
    assert first.id and first.type == "function" and first.function.name == "get_weather"  # type: ignore[union-attr]
    assert first.function.arguments == ""  # type: ignore[union-attr]
    fragments = [c.choices[0].delta.tool_calls[0].function.arguments  # type: ignore[index, union-attr]
                 for c in chunks[1:] if c.choices[0].delta.tool_calls]
    assert len(fragments) > 2
    assert json.loads("".join(fragments)) == {"city": "what is the weather?", "days": 42}  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_no_tool_call_without_being_asked(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, f"{fake.base_url}/chat/completions",
                        {"model": "m", "messages": [user("just chat")], "tools": [WEATHER_TOOL]})
    assert ChatCompletion.model_validate_json(raw).choices[0].message.content == "just chat"


async def test_tool_result_and_images_and_json(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    _, raw = await post(http, f"{fake.base_url}/chat/completions", {"model": "m", "messages": [
        user("weather?"), {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]})
    assert ChatCompletion.model_validate_json(raw).choices[0].message.content == "Tool result: sunny"
    parts = [{"type": "text", "text": "describe"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    _, raw = await post(http, f"{fake.base_url}/chat/completions", {"model": "m", "messages": [user(parts)]})
    assert ChatCompletion.model_validate_json(raw).choices[0].message.content == "describe [1 image]"
    _, raw = await post(http, f"{fake.base_url}/chat/completions",
                        {"model": "m", "messages": [user("hi")], "response_format": {"type": "json_object"}})
    content = ChatCompletion.model_validate_json(raw).choices[0].message.content
    assert json.loads(content or "") == {"echo": "hi"}


async def test_stop_max_tokens_and_n(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, f"{fake.base_url}/chat/completions",
                        {"model": "m", "messages": [user("alpha beta STOP gamma")], "stop": ["STOP"], "n": 2})
    completion = ChatCompletion.model_validate_json(raw)
    assert [c.message.content for c in completion.choices] == ["alpha beta ", "alpha beta "]
    _, raw = await post(http, f"{fake.base_url}/chat/completions",
                        {"model": "m", "messages": [user("a b c d e")], "max_tokens": 2})
    choice = ChatCompletion.model_validate_json(raw).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("a b ", "length")


async def test_embeddings_float_and_base64(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    body = {"model": "text-embedding-3-small", "input": ["one", "two words"], "dimensions": 8}
    _, raw = await post(http, f"{fake.base_url}/embeddings", body)
    floats = CreateEmbeddingResponse.model_validate_json(raw)
    assert [len(d.embedding) for d in floats.data] == [8, 8]
    assert floats.usage.prompt_tokens == 3
    _, raw = await post(http, f"{fake.base_url}/embeddings", {**body, "encoding_format": "base64"})
    encoded = orjson.loads(raw)
    CreateEmbeddingResponse.model_validate(encoded | {"data": []})  # the SDK types base64 data as floats
    decoded = base64.b64decode(encoded["data"][0]["embedding"])
    assert len(decoded) == 8 * 4
    _, raw = await post(http, f"{fake.base_url}/embeddings", {"model": "e", "input": [1, 2, 3]})
    assert CreateEmbeddingResponse.model_validate_json(raw).usage.prompt_tokens == 3


async def test_models(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake.base_url}/models") as response:
        listing = await response.json()
    assert listing["object"] == "list"
    models = [Model.model_validate(m) for m in listing["data"]]
    assert {m.id for m in models} == {"gpt-4o-mini", "text-embedding-3-small"}


@pytest.mark.parametrize("failure, status, retry_after", [
    (failures.rate_limited(3), 429, "3"),
    (failures.server_error(), 500, None),
    (failures.unavailable(), 503, "1"),
    (failures.unauthorized(), 401, None),
    (failures.context_length_exceeded(), 400, None),
])
async def test_scripted_failures(fake: FakeOpenAI, http: aiohttp.ClientSession, failure: Any, status: int,
                                 retry_after: str | None) -> None:
    fake.fail_next(failure, times=2)
    for _ in range(2):
        async with http.post(f"{fake.base_url}/chat/completions", json={"model": "m", "messages": []}) as r:
            assert r.status == status
            assert r.headers.get("Retry-After") == retry_after
            assert "message" in (await r.json())["error"]
    status_ok, _ = await post(http, f"{fake.base_url}/chat/completions",
                              {"model": "m", "messages": [user("x")]})
    assert status_ok == 200


async def test_api_key_and_known_models() -> None:
    async with FakeOpenAI(api_key="sk-test-secret-key", known_models={"gpt-4o-mini"}) as fake, \
            aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o-mini", "messages": [user("x")]}
        wrong = {"Authorization": "Bearer wrong-key"}
        status, raw = await post(http, f"{fake.base_url}/chat/completions", body, wrong)
        assert status == 401 and orjson.loads(raw)["error"]["code"] == "invalid_api_key"
        good = {"Authorization": "Bearer sk-test-secret-key"}
        assert (await post(http, f"{fake.base_url}/chat/completions", body, good))[0] == 200
        status, _ = await post(http, f"{fake.base_url}/chat/completions", {**body, "model": "nope"}, good)
        assert status == 404


async def test_in_stream_error_event(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.in_stream(after_chunks=2))
    async with http.post(f"{fake.base_url}/chat/completions",
                         json={"model": "m", "stream": True, "messages": [user("a b c d")]}) as response:
        raw = (await response.read()).decode()
    events = [b.removeprefix("data: ") for b in raw.split("\n\n") if b]
    assert len(events) == 3 and "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "server_error"


async def test_hold_and_disconnect_are_seen(fake: FakeOpenAI) -> None:
    fake.hold_streams()
    session = aiohttp.ClientSession()
    response = await session.post(f"{fake.base_url}/chat/completions",
                                  json={"model": "m", "stream": True, "messages": [user("a b c")]})
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: {")
    response.close()  # the client leaves while the stream is held
    await fake.wait_for_disconnect()
    assert fake.disconnects == 1
    await session.close()


async def test_chunk_delay_spaces_chunks(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.chunk_delay_s = 0.02
    loop = asyncio.get_running_loop()
    arrivals = []
    async with http.post(f"{fake.base_url}/chat/completions",
                         json={"model": "m", "stream": True, "messages": [user("a b c")]}) as response:
        async for _ in response.content.iter_any():
            arrivals.append(loop.time())
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] >= 0.04


def test_standalone_process_prints_port_and_serves() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", "0"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())

        async def ask() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http:
                _, raw = await post(http, f"http://127.0.0.1:{port}/v1/chat/completions",
                                    {"model": "m", "messages": [user("ping")]})
                return orjson.loads(raw)

        reply = asyncio.run(ask())
        assert ChatCompletion.model_validate(reply).choices[0].message.content == "ping"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


async def test_paced_stamped_stream_times_each_chunk(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    """The benchmark's paced upstream (bench.run --pace): the first frame after a model's time to
    first token, each frame stamped with the time it was written, which the load generator turns
    into a chunk's transit time; the chunks stay valid OpenAI chunks."""
    fake.first_frame_delay_s, fake.chunk_delay_s, fake.stamp_frames = 0.05, 0.01, True
    started = asyncio.get_running_loop().time()
    chunks = await stream(http, fake, {"model": "gpt-4o-mini", "messages": [user("one two three")]})
    assert asyncio.get_running_loop().time() - started >= 0.05 + 0.01 * (len(chunks) - 1)
    stamps = [int(c.system_fingerprint.removeprefix("fp_t")) for c in chunks if c.system_fingerprint]
    assert len(stamps) == len(chunks) and stamps == sorted(stamps)
    assert stamps[-1] - stamps[0] >= 10_000_000 * (len(chunks) - 1)  # 10 ms apart, in ns
    line = orjson.dumps(chunks[1].model_dump(exclude_unset=True))
    took = transit_s(line, stamps[1] + 2_500_000)
    assert took is not None and abs(took - 0.0025) < 1e-9
    assert transit_s(b'{"system_fingerprint":"fp_abc"}', 0) is None
