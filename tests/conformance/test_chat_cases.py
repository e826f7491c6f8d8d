"""Chat conformance: what a client sends arrives upstream, what the upstream says comes back."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from tests.conformance.checks import WEATHER_TOOL, chunks, completion, streamed_text, usage_of, user
from tests.conformance.conftest import Harness
from tests.conformance.providers import same_json


@pytest.mark.conformance("text")
async def test_text(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("Hello, gateway")], "temperature": 0})
    answer = completion(harness, events)
    assert answer.choices[0].message.content == "Hello, gateway"
    assert answer.choices[0].finish_reason == "stop"
    assert events[0].has_content
    assert (events[0].usage.prompt_tokens, events[0].usage.completion_tokens) == (5, 2)
    assert events[0].usage.total_tokens == 7
    sent = harness.sent()
    assert sent.upstream_model() == "gpt-4o-mini" and sent.temperature() == 0


@pytest.mark.conformance("system_prompt")
async def test_system_prompt(harness: Harness) -> None:
    events = await harness.chat({"messages": [{"role": "system", "content": "You are terse."}, user("hi")]})
    assert completion(harness, events).choices[0].message.content == "hi"
    assert harness.sent().system_text() == "You are terse."


@pytest.mark.conformance("multi_turn")
async def test_multi_turn(harness: Harness) -> None:
    turns = [user("first"), {"role": "assistant", "content": "reply one"}, user("second question")]
    events = await harness.chat({"messages": turns})
    assert completion(harness, events).choices[0].message.content == "second question"
    assert harness.sent().roles() == ["user", "assistant", "user"]


@pytest.mark.conformance("stop")
async def test_stop(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("count one two STOP three")], "stop": ["STOP", "END"]})
    choice = completion(harness, events).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("count one two ", "stop")
    assert harness.sent().stop() == ["STOP", "END"]


@pytest.mark.conformance("streaming")
async def test_streaming(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("stream these four words")], "stream": True})
    parsed = chunks(harness, events)
    assert streamed_text(parsed) == "stream these four words"
    assert parsed[0].choices[0].delta.role == "assistant"
    assert parsed[-1].choices[0].finish_reason == "stop"
    assert [e.has_content for e in events if e.body] == [False, True, True, True, True, False]
    assert len({c.id for c in parsed}) == 1
    # Usage was asked upstream for billing, and reached us, though the client did not ask.
    assert usage_of(events).usage.completion_tokens == 4


@pytest.mark.conformance("stream_incremental")
async def test_chunks_arrive_while_the_upstream_is_still_generating(harness: Harness) -> None:
    harness.fake.hold_streams()
    events = harness.stream(harness.chat_request({"messages": [user("a b c")], "stream": True}))
    first = await anext(events)
    # The upstream is blocked after its first chunk: this event crossed before the stream ended.
    assert orjson.loads(first.body)["choices"][0]["delta"]["role"] == "assistant"
    harness.fake.release_streams()
    rest = [event async for event in events]
    assert streamed_text(chunks(harness, [first, *rest])) == "a b c"


@pytest.mark.conformance("tool_call")
async def test_tool_call(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("use get_weather for Oslo")], "tools": [WEATHER_TOOL],
                                 "tool_choice": "auto"})
    choice = completion(harness, events).choices[0]
    assert choice.finish_reason == "tool_calls" and events[0].has_content
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "use get_weather for Oslo"}  # type: ignore[union-attr]
    assert same_json(harness.sent().tools(), [WEATHER_TOOL])


@pytest.mark.conformance("tool_call_stream")
async def test_tool_call_streamed(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("weather in Rome?")], "tools": [WEATHER_TOOL],
                                 "tool_choice": "required", "stream": True})
    parsed = chunks(harness, events)
    calls = [c.choices[0].delta.tool_calls[0] for c in parsed if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].id and calls[0].type == "function" and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    arguments = "".join(c.function.arguments or "" for c in calls)  # type: ignore[union-attr]
    assert json.loads(arguments) == {"city": "weather in Rome?"}
    # OpenAI-style providers stream the arguments in fragments; some send a call whole, in one delta.
    assert len(calls) > 2 if harness.profile.streams_tool_arguments else len(calls) == 1
    assert parsed[-1].choices[0].finish_reason == "tool_calls"
    assert events[0].has_content  # the call's first fragment is the first token


@pytest.mark.conformance("tool_result")
async def test_tool_result_turn(harness: Harness) -> None:
    call = {"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    events = await harness.chat({"messages": [
        user("weather in Oslo?"), {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "12 degrees"}], "tools": [WEATHER_TOOL]})
    assert completion(harness, events).choices[0].message.content == "Tool result: 12 degrees"
    sent = harness.sent()
    assert sent.tool_result_ids() == ["call_abc"]
    assert sent.assistant_tool_calls() == [call]


@pytest.mark.conformance("image_input")
async def test_image_input(harness: Harness) -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    parts = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]
    events = await harness.chat({"messages": [user(parts)]})
    assert completion(harness, events).choices[0].message.content == "what is this [1 image]"
    assert harness.sent().image_urls() == [url]


@pytest.mark.conformance("json_output")
@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "echo", "strict": True, "schema": {
        "type": "object", "properties": {"echo": {"type": "string", "maxLength": 100}}, "required": ["echo"],
        "additionalProperties": False}}},
])
async def test_json_output(harness: Harness, response_format: dict[str, Any]) -> None:
    events = await harness.chat({"messages": [user("json please")], "response_format": response_format})
    content = completion(harness, events).choices[0].message.content
    assert json.loads(content or "") == {"echo": "json please"}
    asked, schema = harness.sent().json_output()
    # Schema integers stay integers on the upstream wire (same_json tells 100 from 100.0).
    assert asked and same_json(schema, response_format.get("json_schema", {}).get("schema"))


@pytest.mark.conformance("usage_in_stream")
async def test_usage_in_stream_when_asked(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("two words")], "stream": True,
                                 "stream_options": {"include_usage": True}})
    parsed = chunks(harness, events)
    assert parsed[-1].choices == [] and parsed[-1].usage is not None
    assert parsed[-1].usage.total_tokens == usage_of(events).usage.total_tokens == 5 + 2
    assert all(c.usage is None for c in parsed[:-1])


@pytest.mark.conformance("usage_in_stream")
async def test_usage_hidden_when_not_asked(harness: Harness) -> None:
    events = await harness.chat({"messages": [user("two words")], "stream": True})
    assert all(b'"usage"' not in e.body for e in events)
    billed = usage_of(events)
    assert billed.body == b"" and (billed.usage.prompt_tokens, billed.usage.completion_tokens) == (5, 2)
    assert harness.sent().asks_stream_usage()
