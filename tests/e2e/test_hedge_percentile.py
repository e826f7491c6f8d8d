"""Hedging after a provider's observed p95 time to first token, through Envoy with the official SDK
(docs/resilience.md §4, docs/routing.md §4): fast streams fill the first provider's shared
distribution, `/v1/providers` and `/v1/models/{id}` show its p95, and when that provider then stalls
the next candidate starts after the p95 rather than never (`hedge_after_ms: 0`).

A module of its own, with its own fake providers: figures are kept per provider endpoint, so
other modules' stalls must not reach this distribution. One topology: hedging is the edge's
(test_resilience.py runs the fixed threshold in both)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.core.config import Resilience
from services.runtime.stores import free_port
from tests.e2e.harness import Gateway, gateway_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say hello"}]
PRICE = {"input_per_1k": "0.001", "output_per_1k": "0.002"}
FAST_S = 0.075  # the first provider's delay while the distribution fills
STALL_S = 2.5  # then it keeps quiet this long
WARM_STREAMS = 30  # over the 20 samples a percentile needs


@pytest.fixture(scope="module")
async def quick() -> AsyncIterator[FakeOpenAI]:
    """The first candidate: fast at first, then stalling."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def spare() -> AsyncIterator[FakeOpenAI]:
    """The second candidate: always answers at once."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def gateway(store_urls, quick: FakeOpenAI, spare: FakeOpenAI,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    providers = [{"name": "quick", "kind": "openai_compatible", "base_url": quick.base_url},
                 {"name": "spare", "kind": "openai_compatible", "base_url": spare.base_url}]
    routes = [{"provider": p, "model": "gpt-4o-mini", **PRICE} for p in ("quick", "spare")]
    models = [
        # Hedge after quick's observed p95; no hedging at all until it has data.
        {"id": "observed", "type": "chat", "routes": routes,
         "resilience": {"hedge_percentile": 95, "hedge_after_ms": 0, "first_token_timeout_s": 30}},
        # No hedging of its own: only a request's `x-aggregator-hedge-ms: p95` asks for it.
        {"id": "unhedged", "type": "chat", "routes": routes, "resilience": {"first_token_timeout_s": 30}},
    ]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = dataclasses.replace(gateway_config(spare.base_url, spare.base_url, dead, providers, models),
                                 resilience=Resilience(idle_timeout_s=10.0))
    data_dir: Path = tmp_path_factory.mktemp("gateway-hedge-percentile")
    running = await start_gateway("all", store_urls, data_dir, config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.admin_key,
                                  max_retries=0, timeout=30) as sdk:
        yield sdk


@pytest.fixture(scope="module")
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {gateway.admin_key}"}) as session:
        yield session


async def _stream(client: openai.AsyncOpenAI, model: str,
                  headers: dict[str, str] | None = None) -> tuple[httpx.Headers, float]:
    """Streams a chat: the response headers and the client's seconds to the first content."""
    started = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, extra_headers=headers)  # type: ignore[arg-type]
    ttft = None
    async for chunk in raw.parse():
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.monotonic() - started
    assert ttft is not None
    return raw.headers, ttft


async def _quick_p95_ms(http: httpx.AsyncClient) -> Any:
    """quick's p95 as `/v1/providers` shows it (None while absent)."""
    body = (await http.get("/v1/providers")).json()
    return {p["id"]: p.get("health", {}) for p in body["data"]}["quick"].get("time_to_first_token_p95_ms")


async def test_hedging_after_the_observed_p95(client: openai.AsyncOpenAI, http: httpx.AsyncClient,
                                              quick: FakeOpenAI, spare: FakeOpenAI) -> None:
    assert await _quick_p95_ms(http) is None  # unmeasured: absent
    quick.first_byte_delay_s = FAST_S
    for _ in range(WARM_STREAMS // 6):
        served = await asyncio.gather(*(_stream(client, "observed") for _ in range(6)))
        assert all(h["x-aggregator-provider"] == "quick" for h, _ in served)  # no data: no hedge
    p95 = None
    for _ in range(300):  # flushed within a second, read by the routing service within another: poll
        p95 = await _quick_p95_ms(http)
        if p95 is not None:
            break
        await asyncio.sleep(0.05)
    # The fake's delay plus the gateway's own path (read from 20 %-wide buckets); loosely, on a
    # busy machine.
    assert p95 is not None and FAST_S * 1000 / 1.2 <= p95 < 1000
    model = (await http.get("/v1/models/observed")).json()
    endpoints = {e["provider"]: e["health"] for e in model["endpoints"]}
    assert endpoints["quick"]["time_to_first_token_p95_ms"] >= FAST_S * 1000 / 1.2
    assert "time_to_first_token_p95_ms" not in endpoints["spare"]  # never served: unmeasured

    quick.first_byte_delay_s = STALL_S
    headers, hedged = await _stream(client, "observed")
    assert (headers["x-aggregator-provider"], headers["x-aggregator-attempts"]) == ("spare", "2")
    assert hedged < 1.5  # the hedge started after quick's p95, not after its 2.5 s stall
    # A request's own `p95` on a model that does not hedge.
    headers, asked = await _stream(client, "unhedged", {"x-aggregator-hedge-ms": "p95"})
    assert headers["x-aggregator-provider"] == "spare" and asked < 1.5
    # The header turns it off: the stall is the client's.
    headers, unhedged = await _stream(client, "observed", {"x-aggregator-hedge-ms": "0"})
    assert (headers["x-aggregator-provider"], headers["x-aggregator-attempts"]) == ("quick", "1")
    assert unhedged >= STALL_S


async def test_a_bad_percentile_in_the_header_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await _stream(client, "observed", {"x-aggregator-hedge-ms": "p100"})
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "x-aggregator-hedge-ms"
