"""Default provider preferences through Envoy with the official SDK (docs/routing.md §2): an
organization's defaults apply to its requests, a key's win over them, the request's own fields
win over both, a default nothing could satisfy is refused when it is set, and `{}` removes it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from services.auth import admin
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
HI = [{"role": "user", "content": "hi"}]


async def served_by(client: openai.AsyncOpenAI, provider: dict[str, Any] | None = None) -> str:
    body = {"provider": provider} if provider is not None else {}
    completion = await client.chat.completions.create(model="claude-then-gpt", messages=HI, extra_body=body)
    return str(completion.model_extra["provider"]["name"])


async def eventually_served_by(client: openai.AsyncOpenAI, expected: str, within_s: float = 10) -> str:
    """Every process learns of an organization's change over NATS within a few seconds."""
    deadline = time.monotonic() + within_s
    while True:
        name = await served_by(client)
        if name == expected or time.monotonic() > deadline:
            return name


async def test_defaults_of_the_organization_then_the_key_then_the_request(
        gateway: Gateway, http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    org_id = await admin.create_org(pool, f"defaults-{uuid.uuid4().hex[:8]}")
    org_admin = (await http.post("/v1/api-keys", json={"name": "a", "organization_id": org_id,
                                                       "role": "admin"})).json()["key"]
    headers = {"authorization": f"Bearer {org_admin}"}
    plain = (await http.post("/v1/api-keys", json={"name": "plain", "organization_id": org_id})).json()
    keyed = (await http.post("/v1/api-keys", json={"name": "keyed", "organization_id": org_id,
                                                   "provider": {"only": ["anthropic"]}})).json()
    assert keyed["provider"] == {"only": ["anthropic"]} and "provider" not in plain
    clients = [openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=k["key"], max_retries=0)
               for k in (plain, keyed)]
    try:
        assert await served_by(clients[0]) == "anthropic"  # the configured order
        changed = await http.patch(f"/v1/organizations/{org_id}", json={"provider": {"order": ["fakeai"]}},
                                   headers=headers)
        assert changed.status_code == 200 and changed.json()["provider"] == {"order": ["fakeai"]}
        assert await eventually_served_by(clients[0], "fakeai") == "fakeai"
        # The key's `only` wins over the organization's `order`; the request's own fields win over both.
        assert await served_by(clients[1]) == "anthropic"
        assert await served_by(clients[1], {"only": ["fakeai"]}) == "fakeai"
        cleared = await http.patch(f"/v1/organizations/{org_id}", json={"provider": {}}, headers=headers)
        assert cleared.status_code == 200 and "provider" not in cleared.json()
        assert await eventually_served_by(clients[0], "anthropic") == "anthropic"
    finally:
        for client in clients:
            await client.close()


async def test_a_default_nothing_could_satisfy_is_refused_when_set(
        http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    org_id = await admin.create_org(pool, f"defaults-{uuid.uuid4().hex[:8]}")
    refused = await http.patch(f"/v1/organizations/{org_id}", json={"provider": {"sort": "fastest"}})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "provider.sort must be one of price, latency, throughput."
    key = await http.post("/v1/api-keys", json={"name": "k", "organization_id": org_id,
                                                "provider": {"colour": "blue"}})
    assert key.status_code == 400 and key.json()["error"]["param"] == "provider.colour"
    created = (await http.post("/v1/api-keys", json={"name": "k",
                                                     "provider": {"ignore": ["anthropic"]}})).json()
    assert created["provider"] == {"ignore": ["anthropic"]}
    updated = await http.put(f"/v1/api-keys/{created['id']}", json={"provider": {}})
    assert updated.status_code == 200 and "provider" not in updated.json()
