"""End-to-end fixtures: the gateway in both topologies in front of fake providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from services.runtime.stores import free_port
from tests.e2e.harness import UPSTREAM_KEY, Gateway, gateway_config, start_gateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.google_upstream import FakeGoogle
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.stores import migrated_database_url, store_urls

__all__ = ["migrated_database_url", "store_urls"]


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[FakeOpenAI]:
    """The primary fake OpenAI (it checks the provider key the gateway must send)."""
    async with FakeOpenAI(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
async def backup() -> AsyncIterator[FakeOpenAI]:
    """A keyless OpenAI-compatible fake, the fallback of `fallback-chat`."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
async def vendors() -> AsyncIterator[dict[str, Any]]:
    """Fakes of the other providers, each speaking its own wire format."""
    async with (
        FakeAnthropic(api_key=UPSTREAM_KEY) as anthropic,
        FakeGoogle(api_key=UPSTREAM_KEY) as google,
        FakeCohere(api_key=UPSTREAM_KEY) as cohere,
    ):
        yield {"anthropic": anthropic, "google": google, "cohere": cohere}


def _vendor_catalog(vendors: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    providers = [
        {"name": kind, "kind": kind, "base_url": fake.base_url, "api_key_env": "FAKEAI_API_KEY"}
        for kind, fake in vendors.items()
    ]
    price = {"input_per_1k": "0.003", "output_per_1k": "0.015"}
    models = [
        {
            "id": "claude",
            "type": "chat",
            "max_output_tokens": 1024,
            "routes": [{"provider": "anthropic", "model": "claude-sonnet-4-5", **price}],
        },
        {
            # Every token class at its own price (tests/e2e/test_pricing.py), and a price to come.
            "id": "claude-cached",
            "type": "chat",
            "max_output_tokens": 1024,
            "routes": [{"provider": "anthropic", "model": "claude-haiku-4-5", **price,
                        "cached_input_per_1k": "0.0003", "cache_write_per_1k": "0.00375",
                        "prices": [{"effective_from": "2999-01-01T00:00:00Z", "input_per_1k": "1",
                                    "output_per_1k": "1"}]}],
        },
        {
            "id": "gemini",
            "type": "chat",
            "routes": [{"provider": "google", "model": "gemini-2.5-flash", **price}],
        },
        {
            "id": "command",
            "type": "chat",
            "routes": [{"provider": "cohere", "model": "command-a-03-2025", **price}],
        },
        {
            "id": "claude-then-gpt",
            "type": "chat",
            "routes": [
                {"provider": "anthropic", "model": "claude-sonnet-4-5", **price},
                {"provider": "fakeai", "model": "gpt-4o-mini", **price},
            ],
        },
        {
            # Load balanced 3:1 (tests/e2e/test_routing.py, docs/routing.md §3).
            "id": "weighted-chat",
            "type": "chat",
            "routes": [
                {"provider": "fakeai", "model": "gpt-4o-mini", **price, "weight": 3},
                {"provider": "backup", "model": "gpt-4o-mini", **price, "weight": 1},
            ],
        },
        {
            "id": "gemini-embed",
            "type": "embedding",
            "routes": [{"provider": "google", "model": "gemini-embedding-001", **price}],
        },
        {
            "id": "cohere-embed",
            "type": "embedding",
            "routes": [{"provider": "cohere", "model": "embed-v4.0", **price}],
        },
    ]
    return providers, models


@pytest.fixture(scope="session", params=["all", "split"])
async def gateway(
    request: pytest.FixtureRequest,
    store_urls,
    upstream: FakeOpenAI,
    backup: FakeOpenAI,
    vendors: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Gateway]:
    """The gateway, once with every service in one process and once with each in its own."""
    providers, models = _vendor_catalog(vendors)
    config = gateway_config(
        upstream.base_url, backup.base_url, f"http://127.0.0.1:{free_port()}/v1", providers, models
    )
    data_dir: Path = tmp_path_factory.mktemp(f"gateway-{request.param}")
    running = await start_gateway(request.param, store_urls, data_dir, config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(upstream: FakeOpenAI, backup: FakeOpenAI, vendors: dict[str, Any]) -> None:
    for fake in (upstream, backup, *vendors.values()):
        fake.reset()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK pointed at the gateway with the admin key."""
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url + "/v1", api_key=gateway.admin_key, max_retries=0, timeout=30
    ) as sdk:
        yield sdk


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A raw HTTP client for byte-level checks."""
    async with httpx.AsyncClient(
        base_url=gateway.base_url, timeout=30, headers={"authorization": f"Bearer {gateway.admin_key}"}
    ) as raw:
        yield raw


@pytest.fixture
async def pool(store_urls, gateway: Gateway) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the gateway's database, for checking what the API wrote."""
    connections = await asyncpg.create_pool(store_urls.database_url, min_size=1, max_size=2)
    yield connections
    await connections.close()
