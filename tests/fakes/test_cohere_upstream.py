"""The fake speaks Cohere's real API v2 format: every payload it produces is validated with the
official `cohere` SDK's types (no field the SDK does not know), the SDK's own client talks to it,
and its scripting (failures, holds, disconnects) does what it says."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import cohere
import httpx
import orjson
import pydantic
import pytest
from cohere.types import EmbedByTypeResponse, UserChatMessageV2
from cohere.v2.types import V2ChatResponse, V2ChatStreamResponse
from pydantic import TypeAdapter

from tests.fakes import cohere_failures as failures
from tests.fakes.client import post
from tests.fakes.cohere_upstream import FakeCohere

ROOT = Path(__file__).resolve().parents[2]
KEY = "co-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}
STREAM_EVENT = TypeAdapter(V2ChatStreamResponse)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCohere]:
    async with FakeCohere(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


def exact(model: pydantic.BaseModel) -> None:
    """No field anywhere in `model` that the SDK type does not declare (its models allow extras)."""
    assert not model.model_extra, f"{type(model).__name__}: unknown {sorted(model.model_extra or {})}"
    for name in type(model).model_fields:
        values = getattr(model, name)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, pydantic.BaseModel):
                exact(value)


def chat_response(raw: bytes) -> V2ChatResponse:
    parsed = V2ChatResponse.model_validate_json(raw)
    exact(parsed)
    return parsed


def parse_stream(raw: str) -> tuple[list[Any], bool]:
    """The validated events of an SSE body, and whether it ended with `data: [DONE]`."""
    blocks = [block for block in raw.split("\n\n") if block]
    done = bool(blocks) and blocks[-1] == "data: [DONE]"
    events = []
    for block in blocks[:-1] if done else blocks:
        name_line, data_line = block.split("\n")
        name, data = name_line.removeprefix("event: "), data_line.removeprefix("data: ")
        event = STREAM_EVENT.validate_json(data)
        exact(event)
        assert event.type == name == json.loads(data)["type"]
        events.append(event)
    return events, done


async def stream(http: aiohttp.ClientSession, fake: FakeCohere, body: dict[str, Any]) -> list[Any]:
    url, body = f"{fake.base_url}/v2/chat", {"model": "command-a", **body, "stream": True}
    async with http.post(url, json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events, done = parse_stream((await r.read()).decode())
    assert done
    return events


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def test_chat_echoes_and_validates(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    status, raw = await post(http, f"{fake.base_url}/v2/chat", {"model": "command-a", "messages": [
        {"role": "system", "content": "Be brief."}, user("Hello there, fake")]})
    assert status == 200
    answer = chat_response(raw)
    assert answer.finish_reason == "COMPLETE" and answer.message.content is not None
    assert answer.message.content[0].type == "text" and answer.message.content[0].text == "Hello there, fake"
    assert answer.usage is not None and answer.usage.billed_units and answer.usage.tokens
    assert (answer.usage.billed_units.input_tokens, answer.usage.billed_units.output_tokens) == (11, 3)
    assert answer.usage.tokens.input_tokens == 11 + 7  # Cohere's preamble is processed, not billed
    sent = fake.requests[-1]
    assert sent.path == "/v2/chat" and sent.headers["authorization"] == AUTH["Authorization"]


async def test_stream_text(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    events = await stream(http, fake, {"messages": [user("one two three")]})
    assert [e.type for e in events] == ["message-start", "content-start", "content-delta", "content-delta",
                                        "content-delta", "content-end", "message-end"]
    assert events[0].id and events[0].delta.message.role == "assistant"
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert text == "one two three"
    end = events[-1].delta
    assert end.finish_reason == "COMPLETE" and end.usage.billed_units.output_tokens == 3


async def test_tool_call_whole_and_streamed(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    body = {"model": "command-a", "messages": [user("get_weather for Paris")], "tools": [WEATHER_TOOL]}
    answer = chat_response((await post(http, f"{fake.base_url}/v2/chat", body))[1])
    assert answer.finish_reason == "TOOL_CALL" and answer.message.content is None
    assert answer.message.tool_plan == "I will use get_weather to answer."
    [call] = answer.message.tool_calls or []
    assert call.function is not None and call.function.name == "get_weather"
    assert call.id.startswith("get_weather_")
    assert json.loads(call.function.arguments or "") == {"city": "get_weather for Paris", "days": 42}
    events = await stream(http, fake, {"messages": [user("what is the weather?")], "tools": [WEATHER_TOOL],
                                       "tool_choice": "REQUIRED"})
    kinds = [e.type for e in events]
    assert kinds[1] == "tool-plan-delta" and kinds[-2:] == ["tool-call-end", "message-end"]
    start = next(e for e in events if e.type == "tool-call-start").delta.message.tool_calls
    assert start.id and start.function.name == "get_weather" and start.function.arguments == ""
    fragments = [e.delta.message.tool_calls.function.arguments for e in events if e.type == "tool-call-delta"]
    assert len(fragments) > 2
    assert json.loads("".join(fragments)) == {"city": "what is the weather?", "days": 42}
    assert events[-1].delta.finish_reason == "TOOL_CALL"


async def test_no_tool_call_without_being_asked_or_when_refused(fake: FakeCohere,
                                                                 http: aiohttp.ClientSession) -> None:
    for extra in ({}, {"tool_choice": "NONE"}):
        body = {"model": "m", "messages": [user("get_weather? just chat")], "tools": [WEATHER_TOOL], **extra}
        answer = chat_response((await post(http, f"{fake.base_url}/v2/chat", body))[1])
        assert (answer.finish_reason == "TOOL_CALL") is (extra == {})


async def test_tool_result_images_json_stop_and_max_tokens(fake: FakeCohere,
                                                           http: aiohttp.ClientSession) -> None:
    call = {"id": "get_weather_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    json_format = {"type": "json_object", "json_schema": {"type": "object"}}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"messages": [user("weather?"), {"role": "assistant", "tool_plan": "Look.", "tool_calls": [call]},
                       {"role": "tool", "tool_call_id": "get_weather_1",
                        "content": [{"type": "text", "text": "sunny"}]}]}, "Tool result: sunny", "COMPLETE"),
        ({"messages": [user([{"type": "text", "text": "describe"},
                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])]},
         "describe [1 image]", "COMPLETE"),
        ({"messages": [user("hi")], "response_format": json_format}, '{"echo":"hi"}', "COMPLETE"),
        ({"messages": [user("alpha beta STOP gamma")], "stop_sequences": ["STOP"]}, "alpha beta ",
         "STOP_SEQUENCE"),
        ({"messages": [user("a b c d e")], "max_tokens": 2}, "a b ", "MAX_TOKENS"),
    ]
    for body, text, finish in cases:
        answer = chat_response((await post(http, f"{fake.base_url}/v2/chat", {"model": "m", **body}))[1])
        assert answer.message.content is not None
        assert (answer.message.content[0].text, answer.finish_reason) == (text, finish)  # type: ignore[union-attr]


async def test_embed_float_and_base64(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    body = {"model": "embed-v4.0", "texts": ["one", "two words"], "input_type": "search_document",
            "embedding_types": ["float", "base64"], "output_dimension": 8, "truncate": "NONE"}
    status, raw = await post(http, f"{fake.base_url}/v2/embed", body)
    assert status == 200
    answer = EmbedByTypeResponse.model_validate_json(raw)
    exact(answer)
    assert answer.embeddings.float_ is not None and [len(v) for v in answer.embeddings.float_] == [8, 8]
    assert answer.embeddings.base64 is not None
    assert len(base64.b64decode(answer.embeddings.base64[0])) == 8 * 4
    assert answer.meta is not None and answer.meta.billed_units is not None
    assert answer.meta.billed_units.input_tokens == 3 and answer.texts == ["one", "two words"]


@pytest.mark.parametrize("failure, status, retry_after", [
    (failures.rate_limited(3), 429, "3"), (failures.server_error(), 500, None),
    (failures.unavailable(), 503, "1"), (failures.unauthorized(), 401, None),
    (failures.forbidden(), 403, None), (failures.payment_required(), 402, None),
    (failures.invalid_token(), 498, None), (failures.client_closed(), 499, None),
    (failures.bad_request(), 400, None), (failures.unprocessable(), 422, None),
    (failures.context_length_exceeded(), 400, None), (failures.model_not_found(), 404, None),
])
async def test_scripted_failures(fake: FakeCohere, http: aiohttp.ClientSession, failure: Any, status: int,
                                 retry_after: str | None) -> None:
    fake.fail_next(failure, times=2)
    for path in ("/v2/chat", "/v2/embed"):
        async with http.post(f"{fake.base_url}{path}", json={"model": "m", "messages": []}) as response:
            assert response.status == status and response.headers.get("Retry-After") == retry_after
            assert set(await response.json()) == {"id", "message"}
    assert (await post(http, f"{fake.base_url}/v2/chat", {"model": "m", "messages": [user("x")]}))[0] == 200


async def test_timeout_preset_is_a_proxy_page(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.timeout(408))
    async with http.post(f"{fake.base_url}/v2/chat", json={}) as response:
        assert response.status == 408 and response.content_type == "text/html"


async def test_key_fields_and_models_are_checked() -> None:
    async with FakeCohere(api_key=KEY, known_models={"command-a"}) as fake, aiohttp.ClientSession() as http:
        body = {"model": "command-a", "messages": [user("x")]}
        for headers, message in (({}, "no api key supplied"), ({"Authorization": "Bearer wrong"},
                                                                "invalid api token")):
            status, raw = await post(http, f"{fake.base_url}/v2/chat", body, headers)
            assert (status, orjson.loads(raw)) == (401, {"message": message})
        assert (await post(http, f"{fake.base_url}/v2/chat", body, AUTH))[0] == 200
        status, raw = await post(http, f"{fake.base_url}/v2/chat", {**body, "model": "nope"}, AUTH)
        assert status == 404 and "nope" in orjson.loads(raw)["message"]
        for wrong, problem in (({**body, "stop": ["x"]}, "unknown field: stop"),
                               ({"model": "command-a"}, "missing required field: messages")):
            status, raw = await post(http, f"{fake.base_url}/v2/chat", wrong, AUTH)
            assert (status, orjson.loads(raw)["message"]) == (400, f"invalid request: {problem}")
        status, raw = await post(http, f"{fake.base_url}/v2/embed", {"model": "e", "texts": ["x"]}, AUTH)
        assert status == 400
        assert orjson.loads(raw)["message"] == "invalid request: missing required field: input_type"


async def test_failed_generation_in_stream_and_whole(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.in_stream(after_chunks=3))
    async with http.post(f"{fake.base_url}/v2/chat", json={"model": "m", "stream": True,
                                                          "messages": [user("a b c d")]}) as response:
        events, done = parse_stream((await response.read()).decode())
    assert [e.type for e in events] == ["message-start", "content-start", "content-delta", "message-end"]
    assert done and events[-1].delta.finish_reason == "ERROR" and events[-1].delta.error
    fake.fail_next(failures.in_stream(finish_reason="TIMEOUT"))
    answer = chat_response((await post(http, f"{fake.base_url}/v2/chat", {"model": "m",
                                                                           "messages": [user("a")]}))[1])
    assert answer.finish_reason == "TIMEOUT" and answer.message.content == []


async def test_cut_stream_has_no_end(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.cut_stream(after_chunks=2))
    async with http.post(f"{fake.base_url}/v2/chat", json={"model": "m", "stream": True,
                                                          "messages": [user("a b c d")]}) as response:
        events, done = parse_stream((await response.read()).decode())
    assert [e.type for e in events] == ["message-start", "content-start"] and not done


async def test_hold_and_disconnect_are_seen(fake: FakeCohere) -> None:
    fake.hold_streams()
    session = aiohttp.ClientSession(headers=AUTH)
    response = await session.post(f"{fake.base_url}/v2/chat",
                                  json={"model": "m", "stream": True, "messages": [user("a b c")]})
    opening = [await response.content.readuntil(b"\n\n") for _ in range(2)]
    assert [block.split(b"\n")[0] for block in opening] == [b"event: message-start", b"event: content-start"]
    response.close()  # the client leaves while the stream is held
    await fake.wait_for_disconnect()
    assert fake.disconnects == 1
    await session.close()


async def test_chunk_delay_spaces_events(fake: FakeCohere, http: aiohttp.ClientSession) -> None:
    fake.chunk_delay_s = 0.02
    loop = asyncio.get_running_loop()
    arrivals = []
    async with http.post(f"{fake.base_url}/v2/chat",
                         json={"model": "m", "stream": True, "messages": [user("a b c")]}) as response:
        async for _ in response.content.iter_any():
            arrivals.append(loop.time())
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] >= 0.04


@pytest.mark.filterwarnings("ignore:The `__fields__` attribute is deprecated")  # inside the SDK
async def test_the_official_sdk_talks_to_the_fake(fake: FakeCohere) -> None:
    async with httpx.AsyncClient(trust_env=False) as transport:
        client = cohere.AsyncClientV2(api_key=KEY, base_url=fake.base_url, httpx_client=transport)
        answer = await client.chat(model="command-a", messages=[UserChatMessageV2(content="hello sdk")])
        assert answer.message.content is not None and answer.message.content[0].text == "hello sdk"  # type: ignore[union-attr]
        kinds = [event.type async for event in client.chat_stream(
            model="command-a", messages=[UserChatMessageV2(content="a b")])]
        assert kinds[0] == "message-start" and kinds[-1] == "message-end"
        embedded = await client.embed(model="embed-v4.0", texts=["x"], input_type="search_query",
                                      embedding_types=["float"])
        assert embedded.embeddings.float_ is not None and len(embedded.embeddings.float_[0]) == 16
        fake.fail_next(failures.rate_limited(2))
        with pytest.raises(cohere.errors.TooManyRequestsError):  # the SDK retries 429 unless told not to
            await client.chat(model="command-a", messages=[UserChatMessageV2(content="x")],
                              request_options={"max_retries": 0})
        stranger = cohere.AsyncClientV2(api_key="wrong", base_url=fake.base_url, httpx_client=transport)
        with pytest.raises(cohere.errors.UnauthorizedError) as info:
            await stranger.chat(model="command-a", messages=[UserChatMessageV2(content="x")])
        assert info.value.body == {"message": "invalid api token"}


def test_standalone_process_prints_port_and_serves() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.cohere_upstream", "--port", "0"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())

        async def ask() -> bytes:
            async with aiohttp.ClientSession() as http:
                return (await post(http, f"http://127.0.0.1:{port}/v2/chat",
                                   {"model": "m", "messages": [user("ping")]}))[1]

        answer = chat_response(asyncio.run(ask()))
        assert answer.message.content is not None and answer.message.content[0].text == "ping"  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()
