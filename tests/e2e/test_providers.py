"""Anthropic, Gemini and Cohere behind the same OpenAI endpoint, through Envoy, with the official
openai SDK as the client and fakes speaking each provider's real wire format."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e
MODELS = {"anthropic": "claude", "google": "gemini", "cohere": "command"}
TOOLS = [
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


@pytest.mark.parametrize("kind", list(MODELS))
async def test_chat_text_and_usage(client: openai.AsyncOpenAI, kind: str) -> None:
    completion = await client.chat.completions.create(
        model=MODELS[kind],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
    )
    assert completion.model == MODELS[kind] and completion.object == "chat.completion"
    assert "Say hello" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert (
        completion.usage
        and completion.usage.total_tokens
        == (completion.usage.prompt_tokens + completion.usage.completion_tokens)
        > 0
    )
    assert completion.model_extra["provider"]["name"] == kind


@pytest.mark.parametrize("kind", list(MODELS))
async def test_streamed_tool_call_arguments_assemble(client: openai.AsyncOpenAI, kind: str) -> None:
    stream = await client.chat.completions.create(
        model=MODELS[kind],
        messages=[{"role": "user", "content": "Call get_weather for Paris."}],
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    name, arguments, finish, usage = "", "", None, None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function:
                    name += delta.function.name or ""
                    arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert name == "get_weather" and finish == "tool_calls"
    assert isinstance(json.loads(arguments), dict)
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("kind", list(MODELS))
async def test_unsupported_parameter_is_a_400_naming_it(http: httpx.AsyncClient, kind: str) -> None:
    body = {
        "model": MODELS[kind],
        "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"50256": -100},
    }
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == "logit_bias" and error["code"] == "unsupported_parameter"
    assert kind in error["message"]


async def test_a_later_candidate_serves_what_the_first_cannot(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="claude-then-gpt", messages=[{"role": "user", "content": "hi"}], logprobs=True
    )
    assert completion.model_extra["provider"]["name"] == "fakeai"


async def test_models_list_supported_parameters_per_provider(client: openai.AsyncOpenAI) -> None:
    claude = await client.models.retrieve("claude")
    supported = claude.model_extra["supported_parameters"]
    assert "tools" in supported and "logprobs" not in supported and "logit_bias" not in supported
    gpt = await client.models.retrieve("gpt-4o-mini")
    assert "logprobs" in gpt.model_extra["supported_parameters"]


@pytest.mark.parametrize("model", ["gemini-embed", "cohere-embed"])
async def test_embeddings(client: openai.AsyncOpenAI, model: str) -> None:
    result = await client.embeddings.create(model=model, input=["hello", "world"])
    assert len(result.data) == 2 and [d.index for d in result.data] == [0, 1]
    assert result.model == model and all(isinstance(d.embedding[0], float) for d in result.data)
