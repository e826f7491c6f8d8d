"""Active health probes on a real Valkey against fakes over real HTTP (services/routing/probes.py,
docs/routing.md §5): probe failures open the shared breaker with no user request, a 2xx closes it,
two probers (own Redis clients, as two processes) send one probe per interval between them, and
each provider kind's probe reads its model list with its own auth header."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from services.core.config import HealthCheck, ProviderConfig, StoreUrls
from services.core.redis import create_redis
from services.routing.health import CLOSED, OPEN, RouteHealth
from services.routing.probes import PROBE_PREFIX, Prober
from tests.fakes import openai_failures
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.base import FakeUpstream
from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.google_upstream import FakeGoogle
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHECK = HealthCheck(interval_s=1.0, timeout_s=1.0)


@pytest.fixture
async def clients(store_urls: StoreUrls) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    first, second = create_redis(store_urls.redis_url), create_redis(store_urls.redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-probe") as server:
        yield server


def provider(fake: FakeUpstream, kind: str = "openai", key_env: str = "PROBE_KEY",
             check: HealthCheck = CHECK) -> ProviderConfig:
    """A provider of its own name (breakers are per name and URL), probed every second."""
    return ProviderConfig(f"{kind}-{uuid.uuid4().hex[:8]}", kind, fake.base_url, key_env, health_check=check)


def endpoint(p: ProviderConfig) -> str:
    return f"{p.name}|{p.base_url}"


async def circuit(health: RouteHealth, p: ProviderConfig) -> tuple[str, int]:
    h = (await health.snapshot([endpoint(p)]))[endpoint(p)]
    return h.circuit, h.failures


async def one_round(redis: aioredis.Redis, prober: Prober, *providers: ProviderConfig) -> None:
    """One probe round now: the interval's lock is released first, as if the interval had passed."""
    await redis.delete(*(PROBE_PREFIX + endpoint(p) for p in providers))
    await prober.run_once()
    await prober.settle()


def probes(p: ProviderConfig, outcome: str) -> float:
    return REGISTRY.get_sample_value("aggregator_provider_probes_total",
                                     {"provider": p.name, "outcome": outcome}) or 0.0


async def poll(condition: Callable[[], Any], deadline_s: float = 15.0) -> None:
    """Returns once `condition()` (awaited when it is a coroutine) is true; fails at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < end, "condition not met before the deadline"
        await asyncio.sleep(0.05)


async def test_failing_probes_open_the_breaker_and_a_2xx_closes_it(
        clients: tuple[aioredis.Redis, ...], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_KEY", "sk-probe")
    p = provider(fake)
    health = RouteHealth(clients[0], failure_threshold=3, cache_seconds=0)
    prober = Prober(clients[0], health, [p], key_envs=frozenset({"PROBE_KEY"}))
    fake.models_failure = openai_failures.server_error(503)
    try:
        for round_ in (1, 2):
            await one_round(clients[0], prober, p)
            assert await circuit(health, p) == (CLOSED, round_)
        await one_round(clients[0], prober, p)
        assert (await circuit(health, p))[0] == OPEN  # `failure_threshold` probes, no user request
        assert [(r.method, r.path) for r in fake.requests] == [("GET", "/v1/models")] * 3
        assert probes(p, "failed") == 3
        fake.models_failure = None
        await one_round(clients[0], prober, p)
        assert await circuit(health, p) == (CLOSED, 0)  # closed at once, before its pause ended
        assert probes(p, "ok") == 1
    finally:
        await prober.stop()


@pytest.mark.parametrize(("status", "effect"), [
    (429, "failed"), (500, "failed"), (401, "failed"), (403, "failed"), (404, None), (400, None)])
async def test_what_a_probe_answer_counts_as(
        clients: tuple[aioredis.Redis, ...], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, status: int, effect: str | None) -> None:
    monkeypatch.setenv("PROBE_KEY", "sk-probe")
    p = provider(fake)
    health = RouteHealth(clients[0], cache_seconds=0)
    prober = Prober(clients[0], health, [p], key_envs=frozenset({"PROBE_KEY"}))
    fake.models_failure = openai_failures.server_error(status)
    try:
        with caplog.at_level(logging.WARNING, logger="services.routing.probes"):
            await one_round(clients[0], prober, p)
        assert await circuit(health, p) == (CLOSED, 1 if effect == "failed" else 0)
        assert probes(p, "failed") == (1 if effect == "failed" else 0) and probes(p, "ok") == 0
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert refused == ([f"health probe of provider {p.name}: refused with {status} (check its key)"]
                           if status in (401, 403) else [])
        assert all("sk-probe" not in r.getMessage() for r in caplog.records)  # the key is never logged
    finally:
        await prober.stop()


async def test_connect_errors_and_timeouts_are_failures(clients: tuple[aioredis.Redis, ...],
                                                        fake: FakeOpenAI) -> None:
    fake.first_byte_delay_s = 5.0  # the list does not answer within the probe's timeout
    hung = provider(fake, "openai_compatible", key_env="", check=HealthCheck(1.0, 0.2))
    gone = ProviderConfig(f"gone-{uuid.uuid4().hex[:8]}", "openai_compatible", "http://127.0.0.1:9/v1",
                          health_check=CHECK)  # the discard port: connection refused
    health = RouteHealth(clients[0], cache_seconds=0)
    prober = Prober(clients[0], health, [gone, hung])
    try:
        started = time.monotonic()
        await one_round(clients[0], prober, gone, hung)
        elapsed = time.monotonic() - started
    finally:
        await prober.stop()
    assert [r.path for r in fake.requests] == ["/v1/models"]  # it was sent, and timed out
    assert await circuit(health, gone) == (CLOSED, 1) and await circuit(health, hung) == (CLOSED, 1)
    assert probes(gone, "failed") == 1 and probes(hung, "failed") == 1
    assert elapsed < 4.0  # bounded by timeout_s (0.2 s), not the fake's 5 s; loosely: the machine is busy


async def test_two_probers_send_one_probe_per_interval(
        clients: tuple[aioredis.Redis, ...], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_KEY", "sk-probe")
    p = provider(fake)
    probers = [Prober(c, RouteHealth(c), [p], key_envs=frozenset({"PROBE_KEY"})) for c in clients]
    started = time.monotonic()
    for prober in probers:
        await prober.start()
    try:
        await poll(lambda: len(fake.requests) >= 4)
        elapsed = time.monotonic() - started
    finally:
        for prober in probers:
            await prober.stop()
    # Four probes take three intervals whoever sends them; two unsynchronised probers would have sent
    # four in about one.
    assert elapsed >= 3 * CHECK.interval_s * 0.95
    assert len(fake.requests) <= elapsed / CHECK.interval_s + 1
    assert all(r.path == "/v1/models" for r in fake.requests)


async def test_each_kind_probes_its_model_list_with_its_auth_header(
        clients: tuple[aioredis.Redis, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    fakes: dict[str, FakeUpstream] = {
        "openai": FakeOpenAI(api_key="k-openai"), "openai_compatible": FakeOpenAI(api_key="k-compatible"),
        "anthropic": FakeAnthropic(api_key="k-anthropic"), "google": FakeGoogle(api_key="k-google"),
        "cohere": FakeCohere(api_key="k-cohere")}
    providers = []
    for kind, server in fakes.items():
        await server.start()
        monkeypatch.setenv(f"KEY_{kind.upper()}", f"k-{kind.removeprefix('openai_')}")
        providers.append(provider(server, kind, key_env=f"KEY_{kind.upper()}"))
    health = RouteHealth(clients[0], cache_seconds=0)
    prober = Prober(clients[0], health, providers, key_envs=frozenset(p.api_key_env for p in providers))
    try:
        await one_round(clients[0], prober, *providers)
        seen = {kind: [(r.method, r.path) for r in server.requests] for kind, server in fakes.items()}
        headers = {kind: server.requests[-1].headers for kind, server in fakes.items()}
    finally:
        await prober.stop()
        for server in fakes.values():
            await server.stop()
    assert seen == {"openai": [("GET", "/v1/models")], "openai_compatible": [("GET", "/v1/models")],
                    "anthropic": [("GET", "/v1/models")], "google": [("GET", "/v1beta/models")],
                    "cohere": [("GET", "/v1/models")]}
    assert headers["openai"]["authorization"] == "Bearer k-openai"
    assert headers["openai_compatible"]["authorization"] == "Bearer k-compatible"
    assert headers["anthropic"]["x-api-key"] == "k-anthropic"
    assert headers["anthropic"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers["anthropic"]
    assert headers["google"]["x-goog-api-key"] == "k-google" and "authorization" not in headers["google"]
    assert headers["cohere"]["authorization"] == "Bearer k-cohere"
    for p in providers:  # every fake accepted its key: each probe was a success
        assert probes(p, "ok") == 1 and probes(p, "failed") == 0


async def test_a_configured_path_is_probed_instead(clients: tuple[aioredis.Redis, ...]) -> None:
    # A server whose list is not where its kind's default says: `/v1beta/models` under its bare host.
    async with FakeGoogle() as server:
        p = ProviderConfig(f"custom-{uuid.uuid4().hex[:8]}", "openai_compatible", server.base_url,
                           health_check=HealthCheck(1.0, 1.0, "/v1beta/models"))
        prober = Prober(clients[0], RouteHealth(clients[0]), [p])
        try:
            await one_round(clients[0], prober, p)
        finally:
            await prober.stop()
        assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1beta/models")]
    assert probes(p, "ok") == 1
