"""Chat completions through Envoy with the official openai SDK, byte-checked where it matters."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.e2e.harness import Gateway
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "Say hello"}]


async def test_chat_non_stream(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert "Say hello" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert (
        completion.usage
        and completion.usage.total_tokens
        == (completion.usage.prompt_tokens + completion.usage.completion_tokens)
        > 0
    )
    provider = completion.model_extra["provider"]
    assert provider["name"] == "fakeai" and provider["model"] == "gpt-4o-mini"
    assert isinstance(provider["latency_ms"], int)
    request_id = raw.headers["x-request-id"]
    assert request_id
    assert not any(
        h.startswith(("grpc-", "x-envoy-", "x-openai-error", "x-http-status")) for h in raw.headers
    )
    received = upstream.requests[-1]
    assert received.headers.get("x-request-id") == request_id
    assert received.json["model"] == "gpt-4o-mini" and received.json["messages"] == HELLO


async def test_chat_stream_sdk_assembles_text(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, usage, chunks = "", None, 0
    async for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk" and chunk.model == "gpt-4o-mini"
        assert chunk.model_extra["provider"]["name"] == "fakeai"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert "Say hello" in text and chunks > 2
    assert usage is not None and usage.completion_tokens > 0


async def test_stream_bytes_end_with_done_and_usage_only_when_asked(http: httpx.AsyncClient) -> None:
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    # The gateway always asks upstream for usage (to bill), but the client did not ask for it.
    assert all(c.get("usage") is None for c in chunks)


async def test_stream_arrives_incrementally(http: httpx.AsyncClient, upstream: FakeOpenAI) -> None:
    upstream.hold_streams(after=1)  # after the first content: a role-only chunk is held
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.aiter_lines()
        first = await asyncio.wait_for(anext(lines), 10)
        assert first.startswith("data: {")  # arrived while upstream still holds the rest
        upstream.release_streams()
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]"


async def test_tool_calls_non_stream_and_stream(client: openai.AsyncOpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "Call get_weather for Paris."}]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)

    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=tools, stream=True
    )
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += delta.function.name or "" if delta.function else ""
                arguments += delta.function.arguments or "" if delta.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    assert json.loads(arguments) == json.loads(call.function.arguments)


async def test_fallback_to_next_candidate_before_first_byte(
    client: openai.AsyncOpenAI, backup: FakeOpenAI
) -> None:
    completion = await client.chat.completions.create(model="fallback-chat", messages=HELLO)
    assert completion.model_extra["provider"]["name"] == "backup"
    assert completion.model == "fallback-chat"
    assert len(backup.requests) == 1


async def test_provider_slash_model_id(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="backup/gpt-4o-mini", messages=HELLO)
    assert completion.model == "backup/gpt-4o-mini"
    assert completion.model_extra["provider"]["name"] == "backup"


async def test_client_disconnect_cancels_upstream(gateway: Gateway, upstream: FakeOpenAI) -> None:
    upstream.hold_streams(after=1)  # after the first content: a role-only chunk is held
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    async with httpx.AsyncClient(
        base_url=gateway.base_url, timeout=30, headers={"authorization": f"Bearer {gateway.admin_key}"}
    ) as raw:
        async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
            await anext(response.aiter_lines())
    # The client is gone: the upstream request must be cancelled within seconds.
    await upstream.wait_for_disconnect(within_s=5)


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert result.object == "list" and len(result.data) == 2
    assert result.model == "text-embedding-3-small"
    assert all(len(item.embedding) > 0 and isinstance(item.embedding[0], float) for item in result.data)
    assert result.usage.prompt_tokens > 0
