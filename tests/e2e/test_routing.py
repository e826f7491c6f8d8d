"""Routing through Envoy with the official SDK (docs/routing.md): provider preferences and the model-id
suffixes choose the serving provider, a preference nothing satisfies is a 400 that says why, weights
share the traffic, and `/v1/providers` and `/v1/models/{id}` show each provider's breaker and the
figures every process shares in Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from aggregator.routing.v1 import route_pb2
from services.core.config import StoreUrls
from services.core.redis import create_redis
from services.routing.health import PREFIX, RouteHealth
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hi"}]


async def served_by(client: openai.AsyncOpenAI, model: str, provider: dict[str, Any] | None = None,
                    **extra: Any) -> str:
    body = {"provider": provider} if provider is not None else {}
    completion = await client.chat.completions.create(model=model, messages=HI, extra_body=body, **extra)
    return str(completion.model_extra["provider"]["name"])


async def test_preferences_choose_the_provider(client: openai.AsyncOpenAI) -> None:
    assert await served_by(client, "claude-then-gpt") == "anthropic"
    assert await served_by(client, "claude-then-gpt", {"order": ["fakeai"]}) == "fakeai"
    assert await served_by(client, "claude-then-gpt", {"ignore": ["anthropic"]}) == "fakeai"
    assert await served_by(client, "claude-then-gpt", {"only": ["fakeai", "anthropic"]}) == "anthropic"
    # logprobs: only fakeai's kind supports it, so anthropic is not even asked.
    assert await served_by(client, "claude-then-gpt", {"require_parameters": True}, logprobs=True) == "fakeai"
    # Equal prices: the configured order.
    assert await served_by(client, "claude-then-gpt:floor") == "anthropic"


async def test_unsatisfiable_preferences_are_400s(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await served_by(client, "claude-then-gpt", {"max_price": {"prompt": 1}})
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "provider.max_price"
    assert error["message"] == ("No provider of the model `claude-then-gpt` is priced within "
                                "provider.max_price; the cheapest charges $3 prompt and $15 completion per "
                                "million tokens.")
    with pytest.raises(openai.BadRequestError) as caught:
        await served_by(client, "claude-then-gpt", {"order": ["google"], "allow_fallbacks": False})
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "provider.order"
    with pytest.raises(openai.BadRequestError) as caught:
        await served_by(client, "claude-then-gpt", {"sort": "fastest"})
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == (
        "provider.sort must be one of price, latency, throughput.")


async def test_weights_share_the_traffic(client: openai.AsyncOpenAI, store_urls: StoreUrls,
                                        upstream: FakeOpenAI, backup: FakeOpenAI) -> None:
    # Earlier tests may have opened a breaker (shared in Redis): start from closed ones, and wait
    # until the gateway's second-long cache has seen it.
    redis = create_redis(store_urls.redis_url)
    try:
        await redis.delete(*(PREFIX + f"{name}|{fake.base_url.rstrip('/')}"
                             for name, fake in (("fakeai", upstream), ("backup", backup))))
    finally:
        await redis.aclose()
    for _ in range(100):
        if "fakeai" in await asyncio.gather(*(served_by(client, "weighted-chat") for _ in range(8))):
            break
    served: Counter[str] = Counter()
    for _ in range(10):
        served.update(await asyncio.gather(*(served_by(client, "weighted-chat") for _ in range(20))))
    # 3:1 over 200 requests: 150 expected, a standard deviation of about 6.
    assert 125 <= served["fakeai"] <= 175 and served["fakeai"] + served["backup"] == 200


async def test_providers_show_their_breaker_and_shared_figures(
        http: httpx.AsyncClient, store_urls: StoreUrls, backup: FakeOpenAI) -> None:
    redis = create_redis(store_urls.redis_url)
    try:
        # Another process's measures (as the edge's record() writes them), through Redis only.
        health = RouteHealth(redis)
        backup_route = route_pb2.RouteCandidate(endpoint=route_pb2.Endpoint(
            provider="backup", base_url=backup.base_url.rstrip("/")))
        for _ in range(5):
            health.record(backup_route, ok=True, ttft_s=0.25, output_tokens=101, duration_s=2.25)
        await health.flush()
        await health.close()
        shown: dict[str, Any] = {}
        for _ in range(200):  # the routing service reads Redis at most once a second: poll
            body = (await http.get("/v1/providers")).json()
            shown = {p["id"]: p.get("health", {}) for p in body["data"]}
            if "time_to_first_token_ms" in shown.get("backup", {}):
                break
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    figures = shown["backup"]
    assert figures["circuit"] in ("closed", "open", "half_open")
    # Blended with whatever the gateway measured itself: present and positive.
    assert 0 < figures["time_to_first_token_ms"] and 0 < figures["tokens_per_second"]
    assert 0 <= figures["error_rate"] <= 1
    assert all(h.get("circuit") in ("closed", "open", "half_open") for h in shown.values())
    # The same figures per route of a model.
    model = (await http.get("/v1/models/weighted-chat")).json()
    endpoints = {e["provider"]: e for e in model["endpoints"]}
    assert endpoints["fakeai"]["weight"] == 3 and endpoints["backup"]["weight"] == 1
    assert endpoints["backup"]["health"]["time_to_first_token_ms"] == figures["time_to_first_token_ms"]
    assert endpoints["backup"]["pricing"]["input_per_1k"] == "0.003"
    assert not (await http.get("/v1/models")).json()["data"][0].get("endpoints")
