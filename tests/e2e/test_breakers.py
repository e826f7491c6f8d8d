"""Shared circuit breakers and active health probes through Envoy with the official SDK
(docs/routing.md §5): a breaker opened by failures through one gateway replica holds for another
replica (separate worker processes sharing the stores), which then admits exactly one trial among
concurrent requests; and a provider whose health check fails shows its breaker open without any
chat request."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.core.config import Breakers, StoreUrls, load_config
from services.runtime.stores import free_port
from tests.e2e.harness import Gateway, gateway_config, start_gateway
from tests.fakes import openai_failures as failures
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say hello"}]
PRICE = {"input_per_1k": "0.001", "output_per_1k": "0.002"}
OPEN_S = 2.5  # breakers.open_s here: long enough for a few requests, short enough to wait out
THRESHOLD = 3


@pytest.fixture(scope="module")
async def flaky() -> AsyncIterator[FakeOpenAI]:
    """The first route of `flaky-then-steady`: scripted to fail."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def steady() -> AsyncIterator[FakeOpenAI]:
    """The second route: always answers."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
async def gateway(store_urls: StoreUrls, flaky: FakeOpenAI, steady: FakeOpenAI,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """One gateway (every service in one process); `probed` is down and health-checked every second."""
    down = f"http://127.0.0.1:{free_port()}/v1"
    providers = [
        {"name": "flaky", "kind": "openai_compatible", "base_url": flaky.base_url},
        {"name": "steady", "kind": "openai_compatible", "base_url": steady.base_url},
        {"name": "probed", "kind": "openai_compatible", "base_url": down,
         "health_check": {"interval_s": 1, "timeout_s": 0.5}},
    ]
    models = [
        {"id": "flaky-then-steady", "type": "chat",
         "routes": [{"provider": p, "model": "gpt-4o-mini", **PRICE} for p in ("flaky", "steady")]},
        {"id": "probed-chat", "type": "chat", "routes": [{"provider": "probed", "model": "m", **PRICE}]},
    ]
    config = dataclasses.replace(
        gateway_config(steady.base_url, steady.base_url, down, providers, models),
        breakers=Breakers(failure_threshold=THRESHOLD, open_s=OPEN_S))
    running = await start_gateway("all", store_urls, tmp_path_factory.mktemp("gateway-breakers"), config)
    try:
        yield running
    finally:
        running.stop()


def sdk(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.admin_key, max_retries=0,
                              timeout=30)


async def served_by(client: openai.AsyncOpenAI) -> str:
    """One chat through `client`: the provider that answered (x-aggregator-provider); it answered 200."""
    raw = await client.chat.completions.with_raw_response.create(model="flaky-then-steady",
                                                                 messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.status_code == 200 and raw.parse().choices[0].message.content
    return raw.headers["x-aggregator-provider"]


async def provider_circuit(gateway: Gateway, name: str) -> str:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {gateway.admin_key}"}) as http:
        body = (await http.get("/v1/providers")).json()
    return next(p["health"]["circuit"] for p in body["data"] if p["id"] == name)


async def poll(check: Callable[[], Awaitable[Any]], deadline_s: float = 30.0) -> None:
    """Returns once `check()` is true; fails at the deadline."""
    end = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < end, "condition not met before the deadline"
        await asyncio.sleep(0.1)


async def test_a_breaker_opened_through_one_replica_holds_for_another_which_admits_one_trial(
        gateway: Gateway, store_urls: StoreUrls, flaky: FakeOpenAI, steady: FakeOpenAI,
        tmp_path: Path) -> None:
    replica = await start_gateway("all", store_urls, tmp_path / "replica",
                                  load_config(gateway.data_dir / "aggregator.yaml"), secret=gateway.secret)
    a, b = sdk(gateway), sdk(replica)
    flaky.reset()
    steady.reset()
    try:
        # Three failures through replica A: each fails over to steady, invisibly to the client.
        flaky.fail_next(failures.server_error(503), times=THRESHOLD)
        for _ in range(THRESHOLD):
            assert await served_by(a) == "steady"
        opened = time.monotonic()
        assert len(flaky.requests) == THRESHOLD
        # Replica B never saw flaky fail, yet routes around it: the breaker is shared.
        for _ in range(5):
            assert await served_by(b) == "steady"
        assert time.monotonic() - opened < OPEN_S, "too slow to observe the open breaker; raise OPEN_S"
        assert len(flaky.requests) == THRESHOLD  # nothing more reached flaky
        # The pause ends (measured, not slept): both replicas show the endpoint half-open, after
        # breakers.open_s rather than the default 30 s.
        await poll(lambda: _is(provider_circuit(gateway, "flaky"), "half_open"), deadline_s=OPEN_S + 10)
        await poll(lambda: _is(provider_circuit(replica, "flaky"), "half_open"), deadline_s=OPEN_S + 10)
        assert OPEN_S * 0.9 <= time.monotonic() - opened < OPEN_S + 10
        # 20 concurrent requests over A and B: exactly one is the trial; the trial is slow, so the
        # others are routed while it holds the endpoint.
        flaky.first_byte_delay_s = 2.0
        providers = await asyncio.gather(*(served_by(a if i % 2 else b) for i in range(20)))
        assert len(flaky.requests) == THRESHOLD + 1
        assert sorted(providers) == ["flaky"] + ["steady"] * 19
        await poll(lambda: _is(provider_circuit(replica, "flaky"), "closed"))  # the trial closed it
    finally:
        await a.close()
        await b.close()
        replica.stop()


async def _is(value: Awaitable[str], wanted: str) -> bool:
    return await value == wanted


async def test_a_failing_health_check_opens_the_breaker_without_a_request(gateway: Gateway) -> None:
    # `probed` is down and no request names its model: only the probes can open its breaker.
    await poll(lambda: _is(provider_circuit(gateway, "probed"), "open"))
    async with httpx.AsyncClient(timeout=30) as http:
        metrics = (await http.get(gateway.ops_url + "/metrics")).text.splitlines()
    failed = [line for line in metrics if line.startswith("aggregator_provider_probes_total{")
              and 'provider="probed"' in line and 'outcome="failed"' in line]
    assert failed and float(failed[0].rsplit(" ", 1)[1]) >= THRESHOLD
    # No user attempt ever reached it (those would count here).
    assert not [line for line in metrics if line.startswith("aggregator_upstream_failures_total{")
                and 'provider="probed"' in line]
