"""Catalog listing and API-key management through the HTTP face."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    ids = {m.id async for m in client.models.list()}
    assert {
        "gpt-4o-mini",
        "fallback-chat",
        "text-embedding-3-small",
        "fakeai/gpt-4o-mini",
        "backup/gpt-4o-mini",
    } <= ids
    model = await client.models.retrieve("fakeai/gpt-4o-mini")
    assert model.id == "fakeai/gpt-4o-mini" and model.object == "model" and model.owned_by == "fakeai"
    raw = (await http.get("/v1/models")).json()
    assert raw["object"] == "list"
    mini = next(m for m in raw["data"] if m["id"] == "gpt-4o-mini")
    assert isinstance(mini["created"], int) and mini["created"] > 1_600_000_000  # a JSON number
    assert mini["pricing"]["input_per_1k"] == "0.0015" and mini["context_window"] == 128000
    assert "per_image" not in mini["pricing"]  # only image models priced by the image carry it
    assert "tools" in mini["supported_parameters"] and "temperature" in mini["supported_parameters"]
    dalle = next(m for m in raw["data"] if m["id"] == "dall-e-3")
    assert dalle["type"] == "image" and dalle["pricing"]["per_image"] == "0.04"


async def test_providers_list(http: httpx.AsyncClient) -> None:
    body = (await http.get("/v1/providers")).json()
    assert body["object"] == "list"
    backup = next(p for p in body["data"] if p["id"] == "backup")
    assert {k: backup[k] for k in ("object", "kind")} == {"object": "provider", "kind": "openai_compatible"}
    assert backup["health"]["circuit"] in ("closed", "open", "half_open")  # docs/routing.md §4


async def test_key_create_use_delete_then_401(gateway: Gateway, http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/api-keys", json={"name": "ci", "allowed_models": ["gpt-4o-mini"], "rate_limit_per_minute": 100}
    )
    assert created.status_code == 200, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("sk_live_") and len(key) >= 8 + 32
    assert body["name"] == "ci" and body["role"] == "member" and body["allowed_models"] == ["gpt-4o-mini"]
    assert body["rate_limit_per_minute"] == 100 and body["object"] == "api_key"

    listed = (await http.get("/v1/api-keys")).json()
    mine = [k for k in listed["data"] if k["id"] == body["id"]]
    assert mine and "key" not in mine[0]

    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}
    ) as user:
        assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
        other_model = await user.post("/v1/chat/completions", json={**CHAT, "model": "fallback-chat"})
        assert other_model.status_code == 403
        assert (await user.get("/v1/api-keys")).status_code == 403  # a member cannot manage keys

        deleted = await http.delete(f"/v1/api-keys/{body['id']}")
        assert deleted.json() == {"id": body["id"], "object": "api_key", "deleted": True}
        deadline = time.monotonic() + 2.0
        while (await user.post("/v1/chat/completions", json=CHAT)).status_code != 401:
            assert time.monotonic() < deadline, "a deleted key still works after 2 s"
            await asyncio.sleep(0.1)


async def test_key_validation_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/api-keys", json={"name": "x", "role": "owner"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "role"
