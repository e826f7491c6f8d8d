"""Rate limits through Envoy in both topologies, with the official SDK (docs/limits.md): a key's
per-minute limit lets exactly N requests through, every answer carries the rate-limit headers (JSON,
SSE and gRPC metadata), and the refusal is a 429 `rate_limit_exceeded` with Retry-After naming the
limit. A key without limits gets no headers (and costs no Redis call)."""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest

from aggregator.openai.v1 import chat_pb2, inference_service_pb2_grpc
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def limited_key(http: httpx.AsyncClient, **limits: int) -> str:
    created = await http.post("/v1/api-keys", json={"name": "limited", **limits})
    assert created.status_code == 200, created.text
    return str(created.json()["key"])


def sdk(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


async def test_a_per_minute_limit_lets_exactly_n_through_with_headers(gateway: Gateway,
                                                                       http: httpx.AsyncClient) -> None:
    key = await limited_key(http, rate_limit_per_minute=3, tokens_per_minute=100_000)
    async with sdk(gateway, key) as client:
        remaining = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(**CHAT)
            assert raw.parse().choices[0].message.content
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
            assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000
            assert raw.headers["x-ratelimit-limit"] == "3" and raw.headers["x-ratelimit-window"] == "60"
            assert 1 <= int(raw.headers["x-ratelimit-reset"]) <= 60
        assert remaining == ["2", "1"]
        # Streamed answers carry them too.
        async with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as streamed:
            assert streamed.headers["x-ratelimit-remaining-requests"] == "0"
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert [line async for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**CHAT)
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert "3 requests per minute" in error.message and "this API key" in error.message
    assert 1 <= int(error.response.headers["retry-after"]) <= 60


async def test_grpc_answers_carry_the_headers_as_metadata(gateway: Gateway, http: httpx.AsyncClient) -> None:
    key = await limited_key(http, rate_limit_per_hour=50)
    request = chat_pb2.ChatCompletionRequest(model="gpt-4o-mini",
                                             messages=[chat_pb2.ChatMessage(role="user")])
    request.messages[0].content.string_value = "hi"
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        call = stub.CreateChatCompletion(request, metadata=(("authorization", f"Bearer {key}"),))
        await call
        metadata = dict(await call.initial_metadata())
    assert metadata["x-ratelimit-limit-requests"] == "50"
    assert metadata["x-ratelimit-remaining-requests"] == "49"
    assert metadata["x-ratelimit-window"] == "3600"


async def test_a_key_without_limits_gets_no_rate_limit_headers(gateway: Gateway,
                                                                http: httpx.AsyncClient) -> None:
    answer = await http.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200
    assert not [name for name in answer.headers if name.startswith("x-ratelimit")]


async def test_a_rule_on_a_key_is_enforced_and_named(gateway: Gateway, http: httpx.AsyncClient) -> None:
    key = await limited_key(http)
    key_id = (await http.get("/v1/api-keys")).json()["data"][0]["id"]  # newest first
    rule = await http.post("/v1/rate-limit-rules", json={"scope": "key", "target_id": key_id,
                                                          "window": "hour", "max_requests": 2})
    assert rule.status_code == 200, rule.text
    async with sdk(gateway, key) as client:
        for left in ("1", "0"):
            raw = await client.chat.completions.with_raw_response.create(**CHAT)
            assert raw.headers["x-ratelimit-remaining-requests"] == left
            assert raw.headers["x-ratelimit-window"] == "3600"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**CHAT)
    assert rule.json()["id"] in caught.value.message and "per hour" in caught.value.message
    # Deleting the rule lifts it on every worker within 2 s.
    assert (await http.delete(f"/v1/rate-limit-rules/{rule.json()['id']}")).status_code == 200
