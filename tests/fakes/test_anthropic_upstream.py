"""The fake speaks Anthropic's real Messages API: every payload it produces is validated with the
official `anthropic` package's types, the official client itself talks to it, and its scripting
(failures, holds, disconnects) does what it says."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from tests.fakes import anthropic_failures as failures
from tests.fakes.anthropic_upstream import Failure, FakeAnthropic

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-fake-test-key"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
WEATHER = {"name": "get_weather", "description": "Current weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"]}}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY, model_aliases={"claude-x": "claude-x-20250101"}) as server:
        yield server


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 256, "messages": list(messages), **fields}


async def post(http: aiohttp.ClientSession, fake: FakeAnthropic, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(f"{fake.base_url}/v1/messages", json=body,
                         headers=HEADERS if headers is None else headers) as response:
        return response.status, orjson.loads(await response.read())


async def message(http: aiohttp.ClientSession, fake: FakeAnthropic, body: dict[str, Any]) -> Message:
    status, answer = await post(http, fake, body)
    assert status == 200, answer
    return Message.model_validate(answer)


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """`event:`/`data:` pairs; every event's name is its data's type."""
    events = []
    for block in raw.split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
            assert name == data["type"]
            events.append((name, data))
    return events


async def stream(http: aiohttp.ClientSession, fake: FakeAnthropic, body: dict[str, Any]) -> list[Any]:
    """Posts a stream, validates every event with the SDK's types and the event order."""
    async with http.post(f"{fake.base_url}/v1/messages", json={**body, "stream": True}, headers=HEADERS) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = parse_sse(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("ping") == 1 and names[2] == "ping"
    return [STREAM_EVENT.validate_python(data) for name, data in events if name != "ping"]


def text_of(events: list[Any]) -> str:
    return "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")


async def test_message_echoes_and_validates(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    answer = await message(http, fake, request(user("Hello there, fake"), system="Be brief."))
    assert answer.model == "claude-x-20250101" and answer.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in answer.content] == [("text", "Hello there, fake")]
    assert answer.stop_reason == "end_turn" and answer.stop_sequence is None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (3 + 3 + 2 + 3, 3)
    assert fake.requests[-1].headers["x-api-key"] == KEY and fake.requests[-1].json["system"] == "Be brief."


async def test_stream_of_text(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    events = await stream(http, fake, request(user("one two three")))
    assert events[0].message.usage.input_tokens == 6 and events[0].message.stop_reason is None
    assert text_of(events) == "one two three"
    assert len([e for e in events if e.type == "content_block_delta"]) == 3
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 3


async def test_cached_prompt_tokens_are_cache_reads(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.cached_prompt_tokens = 4
    usage = (await message(http, fake, request(user("one two three")))).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (2, 4, 0)


async def test_tool_use_whole_and_streamed(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    answer = await message(http, fake, request(user("get_weather for Paris"), tools=[WEATHER]))
    assert answer.stop_reason == "tool_use"
    [block] = answer.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    assert block.input == {"city": "get_weather for Paris", "days": 42}
    events = await stream(http, fake, request(user("what now?"), tools=[WEATHER],
                                              tool_choice={"type": "any"}))
    start = events[1]
    assert start.content_block.type == "tool_use" and start.content_block.input == {}
    fragments = [e.delta.partial_json for e in events
                 if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert fragments[0] == "" and len(fragments) > 3
    assert json.loads("".join(fragments)) == {"city": "what now?", "days": 42}
    assert events[-2].delta.stop_reason == "tool_use"


async def test_parallel_tool_use_and_its_controls(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    both = user("get_weather and get_time")
    answer = await message(http, fake, request(both, tools=[WEATHER, TIME]))
    assert [b.name for b in answer.content if b.type == "tool_use"] == ["get_weather", "get_time"]
    events = await stream(http, fake, request(both, tools=[WEATHER, TIME]))
    assert [e.index for e in events if e.type == "content_block_start"] == [0, 1]
    one = await message(http, fake, request(both, tools=[WEATHER, TIME],
                                            tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert len(one.content) == 1
    named = await message(http, fake, request(user("hi"), tools=[WEATHER, TIME],
                                              tool_choice={"type": "tool", "name": "get_time"}))
    assert [b.name for b in named.content if b.type == "tool_use"] == ["get_time"]
    none = await message(http, fake, request(both, tools=[WEATHER], tool_choice={"type": "none"}))
    assert none.content[0].type == "text"


async def test_free_form_tool_input_echoes(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    tool = {"name": "json_object", "input_schema": {"type": "object"}}
    answer = await message(http, fake, request(user("json please"), tools=[tool],
                                               tool_choice={"type": "tool", "name": "json_object"}))
    assert answer.content[0].type == "tool_use" and answer.content[0].input == {"echo": "json please"}


async def test_tool_result_images_stop_and_max_tokens(fake: FakeAnthropic,
                                                      http: aiohttp.ClientSession) -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}
    answer = await message(http, fake, request(user("weather?"), {"role": "assistant", "content": [call]},
                                               user([result])))
    assert answer.content[0].type == "text" and answer.content[0].text == "Tool result: sunny"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    answer = await message(http, fake, request(user([{"type": "text", "text": "describe"}, image, image])))
    assert answer.content[0].type == "text" and answer.content[0].text == "describe [2 images]"
    answer = await message(http, fake, request(user("alpha beta STOP gamma END"),
                                               stop_sequences=["END", "STOP"]))
    assert answer.content[0].type == "text" and answer.content[0].text == "alpha beta "
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "STOP")
    answer = await message(http, fake, {**request(user("a b c d e")), "max_tokens": 2})
    assert answer.content[0].type == "text" and answer.content[0].text == "a b "
    assert answer.stop_reason == "max_tokens"


@pytest.mark.parametrize("body, words", [
    ({"model": "claude-x", "messages": [user("x")]}, "max_tokens: Field required"),
    (request(user("x"), response_format={"type": "json_object"}), "response_format: Extra inputs"),
    (request(user("x"), temperature=1.5), "temperature"),
    (request({"role": "system", "content": "x"}), "messages.0.role"),
    (request(user([{"type": "text", "text": ""}])), "text content blocks must be non-empty"),
    (request(user([{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}])), "toolu_9"),
    (request(user("x"), tools=[{"name": "t"}]), "tools.0.custom.input_schema"),
])
async def test_requests_anthropic_would_refuse(fake: FakeAnthropic, http: aiohttp.ClientSession,
                                               body: dict[str, Any], words: str) -> None:
    status, answer = await post(http, fake, body)
    error = ErrorResponse.model_validate(answer)
    assert status == 400 and error.error.type == "invalid_request_error" and words in error.error.message


async def test_credentials_version_and_models() -> None:
    async with FakeAnthropic(api_key=KEY, known_models={"claude-x"}) as fake, aiohttp.ClientSession() as http:
        body = request(user("x"))
        for headers in ({"anthropic-version": "2023-06-01"}, {**HEADERS, "x-api-key": "wrong"}):
            status, answer = await post(http, fake, body, headers)
            assert status == 401 and ErrorResponse.model_validate(answer).error.type == "authentication_error"
        status, answer = await post(http, fake, body, {"x-api-key": KEY})
        assert status == 400 and "anthropic-version" in answer["error"]["message"]
        status, answer = await post(http, fake, {**body, "model": "claude-nope"})
        assert status == 404 and ErrorResponse.model_validate(answer).error.type == "not_found_error"
        assert (await post(http, fake, body))[0] == 200


@pytest.mark.parametrize("failure, status, error_type, retry_after", [
    (failures.unauthorized(), 401, "authentication_error", None),
    (failures.forbidden(), 403, "permission_error", None),
    (failures.billing(), 402, "billing_error", None),
    (failures.rate_limited(3), 429, "rate_limit_error", "3"),
    (failures.bad_request(), 400, "invalid_request_error", None),
    (failures.context_length_exceeded(), 400, "invalid_request_error", None),
    (failures.request_too_large(), 413, "request_too_large", None),
    (failures.model_not_found(), 404, "not_found_error", None),
    (failures.server_error(), 500, "api_error", None),
    (failures.unavailable(), 503, "api_error", "1"),
    (failures.overloaded(), 529, "overloaded_error", None),
    (failures.timeout(), 504, "timeout_error", None),
])
async def test_scripted_failures(fake: FakeAnthropic, http: aiohttp.ClientSession, failure: Failure,
                                 status: int, error_type: str, retry_after: str | None) -> None:
    fake.fail_next(failure, times=2)
    for _ in range(2):
        async with http.post(f"{fake.base_url}/v1/messages", json=request(user("x")), headers=HEADERS) as r:
            assert r.status == status and r.headers.get("retry-after") == retry_after
            body = await r.json()
        if error_type != "request_too_large":  # documented by Anthropic, not in the SDK's ErrorObject union
            assert ErrorResponse.model_validate(body).error.type == error_type
        assert body["type"] == "error" and body["error"]["type"] == error_type
    assert (await post(http, fake, request(user("x"))))[0] == 200


async def test_in_stream_error_event(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.in_stream(after_chunks=2, type_="server_error"))
    async with http.post(f"{fake.base_url}/v1/messages", json=request(user("a b c d"), stream=True),
                         headers=HEADERS) as response:
        events = parse_sse((await response.read()).decode())
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping",
                                            "content_block_delta", "error"]
    assert ErrorResponse.model_validate(events[-1][1]).error.type == "api_error"


async def test_official_client_reads_the_fake(fake: FakeAnthropic) -> None:
    # SDK 2.x sends its key as `Authorization: Bearer` and a newer API version by default; the
    # gateway (and so the fake) speaks x-api-key and version 2023-06-01.
    headers: dict[str, Any] = {**HEADERS, "Authorization": anthropic.omit}
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.base_url, max_retries=0,
                                      default_headers=headers)
    try:
        answer = await client.messages.create(model="claude-x", max_tokens=64,
                                              messages=[{"role": "user", "content": "hi there"}])
        assert answer.content[0].type == "text" and answer.content[0].text == "hi there"
        sent = fake.requests[-1].headers
        assert sent["anthropic-version"] == "2023-06-01" and "authorization" not in sent
        async with client.messages.stream(model="claude-x", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "get_weather in Oslo"}]) as s:
            final = await s.get_final_message()
        assert final.stop_reason == "tool_use" and final.content[0].type == "tool_use"
        assert final.content[0].input == {"city": "get_weather in Oslo", "days": 42}
        fake.fail_next(failures.overloaded())
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model="claude-x", max_tokens=8,
                                         messages=[{"role": "user", "content": "x"}])
        fake.fail_next(failures.in_stream(1))
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(model="claude-x", max_tokens=8,
                                              messages=[{"role": "user", "content": "a b"}]) as s:
                await s.get_final_message()
        with pytest.raises(anthropic.AuthenticationError):
            await client.with_options(default_headers={"x-api-key": "sk-ant-wrong"}).messages.create(
                model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    finally:
        await client.close()


async def test_hold_and_disconnect_are_seen(fake: FakeAnthropic) -> None:
    fake.hold_streams()
    session = aiohttp.ClientSession()
    response = await session.post(f"{fake.base_url}/v1/messages", json=request(user("a b c"), stream=True),
                                  headers=HEADERS)
    first = await response.content.readuntil(b"\n\n")
    second = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"event: message_start") and second.startswith(b"event: content_block_start")
    response.close()  # the client leaves while the stream is held
    await fake.wait_for_disconnect()
    assert fake.disconnects == 1
    await session.close()


async def test_chunk_delay_spaces_events(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.chunk_delay_s = 0.02
    loop = asyncio.get_running_loop()
    arrivals = []
    async with http.post(f"{fake.base_url}/v1/messages", json=request(user("a b c"), stream=True),
                         headers=HEADERS) as response:
        async for _ in response.content.iter_any():
            arrivals.append(loop.time())
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] >= 0.04


async def test_reset_forgets_everything(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.fail_next(failures.overloaded(), times=3)
    fake.hold_streams()
    fake.cached_prompt_tokens = 2
    fake.reset()
    assert (await post(http, fake, request(user("x"))))[1]["usage"]["cache_read_input_tokens"] == 0
    assert len(fake.requests) == 1 and fake.disconnects == 0


def test_standalone_process_prints_port_and_serves() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.anthropic_upstream", "--port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())

        async def ask() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{port}/v1/messages", json=request(user("ping")),
                                     headers={"anthropic-version": "2023-06-01"}) as response:
                    return orjson.loads(await response.read())  # type: ignore[no-any-return]

        reply = asyncio.run(ask())
        assert Message.model_validate(reply).content[0].text == "ping"  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()
