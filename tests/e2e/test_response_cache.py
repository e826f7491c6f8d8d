"""The response cache through Envoy in both topologies (docs/limits.md, "Response cache"): only
when asked, a hit is byte-identical to the miss (streamed and not) and asks nothing upstream,
`Cache-Control: no-cache` / `no-store` bypass, entries never cross organizations, and a hit is
recorded as one (cost 0)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from aggregator.events.v1 import usage_event_pb2 as ev
from services.auth import admin
from services.core.config import StoreUrls
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.usage_watch import UsageWatch

pytestmark = pytest.mark.e2e
USE = {"x-aggregator-cache": "use"}


def chat(**extra: object) -> dict[str, object]:
    # A fresh prompt per test: entries from other tests (or runs) never answer it.
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"cache me {uuid.uuid4()}"}],
            **extra}


async def test_a_hit_replays_the_miss_byte_for_byte(http: httpx.AsyncClient, upstream: FakeOpenAI,
                                                     store_urls: StoreUrls) -> None:
    body = chat(temperature=0.7)
    async with UsageWatch(store_urls) as watch:
        miss = await http.post("/v1/chat/completions", json=body, headers=USE)
        assert miss.status_code == 200 and miss.headers["x-cache"] == "MISS"
        asked = len(upstream.requests)
        hit = await http.post("/v1/chat/completions", json=body, headers=USE)
        assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
        assert hit.content == miss.content and len(upstream.requests) == asked
        # The same request with its keys in another order and other spacing is the same entry.
        reordered = httpx.Request("POST", "/", json={k: body[k] for k in reversed(list(body))}).content
        again = await http.post("/v1/chat/completions", content=reordered + b"  ",
                                headers={**USE, "content-type": "application/json"})
        assert again.headers["x-cache"] == "HIT" and again.content == miss.content
        events = await watch.events_for(hit.headers["x-request-id"])
        missed = await watch.events_for(miss.headers["x-request-id"])
    assert len(events) == 1 and events[0].cache_hit and events[0].cost_usd == "0"
    assert events[0].status == ev.REQUEST_STATUS_SUCCEEDED
    assert missed[0].cost_usd != "0"


async def test_a_streamed_hit_replays_the_same_events(http: httpx.AsyncClient, upstream: FakeOpenAI) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    miss = await http.post("/v1/chat/completions", json=body, headers=USE)
    assert miss.headers["x-cache"] == "MISS" and miss.headers["content-type"].startswith("text/event-stream")
    asked = len(upstream.requests)
    hit = await http.post("/v1/chat/completions", json=body, headers=USE)
    assert hit.headers["x-cache"] == "HIT" and hit.content == miss.content
    assert hit.content.endswith(b"data: [DONE]\n\n") and len(upstream.requests) == asked
    # Streamed and not are different entries.
    whole = await http.post("/v1/chat/completions", json={**body, "stream": False}, headers=USE)
    assert whole.headers["x-cache"] == "MISS"


async def test_nothing_is_cached_unless_asked_and_cache_control_bypasses(
        http: httpx.AsyncClient, upstream: FakeOpenAI) -> None:
    body = chat()
    unasked = await http.post("/v1/chat/completions", json=body)
    assert "x-cache" not in unasked.headers
    assert (await http.post("/v1/chat/completions", json=body, headers=USE)).headers["x-cache"] == "MISS"
    asked = len(upstream.requests)
    fresh = await http.post("/v1/chat/completions", json=body, headers={**USE, "cache-control": "no-cache"})
    assert fresh.headers["x-cache"] == "MISS" and len(upstream.requests) == asked + 1
    body = chat()
    for _ in range(2):
        unstored = await http.post("/v1/chat/completions", json=body,
                                   headers={**USE, "cache-control": "no-store"})
        assert unstored.headers["x-cache"] == "MISS"
    assert (await http.post("/v1/chat/completions", json=body, headers=USE)).headers["x-cache"] == "MISS"


async def test_organizations_never_share_entries(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    body = chat()
    assert (await http.post("/v1/chat/completions", json=body, headers=USE)).headers["x-cache"] == "MISS"
    assert (await http.post("/v1/chat/completions", json=body, headers=USE)).headers["x-cache"] == "HIT"
    org_id = await admin.create_org(pool, f"cache-org-{uuid.uuid4().hex[:8]}")
    other = await http.post("/v1/api-keys", json={"name": "other org", "organization_id": org_id})
    assert other.status_code == 200, other.text
    foreign = await http.post("/v1/chat/completions", json=body,
                              headers={**USE, "authorization": f"Bearer {other.json()['key']}"})
    assert foreign.status_code == 200 and foreign.headers["x-cache"] == "MISS"


async def test_a_key_with_cache_on_uses_it_without_asking(http: httpx.AsyncClient) -> None:
    created = await http.post("/v1/api-keys", json={"name": "cached", "cache": True})
    assert created.status_code == 200 and created.json()["cache"] is True, created.text
    headers = {"authorization": f"Bearer {created.json()['key']}"}
    body = chat()
    assert (await http.post("/v1/chat/completions", json=body, headers=headers)).headers["x-cache"] == "MISS"
    assert (await http.post("/v1/chat/completions", json=body, headers=headers)).headers["x-cache"] == "HIT"
    changed = await http.put(f"/v1/api-keys/{created.json()['id']}", json={"cache": False})
    assert changed.status_code == 200 and changed.json()["cache"] is False
    deadline = asyncio.get_running_loop().time() + 2.0
    while True:  # every worker applies a key change within 2 s
        sent = asyncio.get_running_loop().time()
        answer = await http.post("/v1/chat/completions", json=body, headers=headers)
        if "x-cache" not in answer.headers:
            break
        assert sent < deadline, "the key's cache setting still applies after 2 s"
        await asyncio.sleep(0.05)


async def test_admins_invalidate_their_organizations_entries(http: httpx.AsyncClient,
                                                             pool: asyncpg.Pool) -> None:
    body = chat()
    assert (await http.post("/v1/chat/completions", json=body, headers=USE)).headers["x-cache"] == "MISS"
    org_id = await admin.create_org(pool, f"cache-inv-{uuid.uuid4().hex[:8]}")
    other = (await http.post("/v1/api-keys", json={"name": "admin b", "role": "admin",
                                                   "organization_id": org_id})).json()["key"]
    theirs = {**USE, "authorization": f"Bearer {other}"}
    assert (await http.post("/v1/chat/completions", json=body, headers=theirs)).headers["x-cache"] == "MISS"
    # Their admin forgets their organization's answers only.
    gone = await http.post("/v1/cache/invalidate", json={"model": "gpt-4o-mini"},
                           headers={"authorization": f"Bearer {other}"})
    assert gone.status_code == 200 and gone.json()["object"] == "cache.invalidation"
    assert gone.json()["deleted"] >= 1
    assert (await http.post("/v1/chat/completions", json=body, headers=theirs)).headers["x-cache"] == "MISS"
    assert (await http.post("/v1/chat/completions", json=body, headers=USE)).headers["x-cache"] == "HIT"
    # Another organization needs admin:platform; a member key may not invalidate at all.
    denied = await http.post("/v1/cache/invalidate", json={"organization_id": str(uuid.uuid4())},
                             headers={"authorization": f"Bearer {other}"})
    assert denied.status_code == 403 and "admin:platform" in denied.json()["error"]["message"]
    member = (await http.post("/v1/api-keys", json={"name": "m"})).json()["key"]
    refused = await http.post("/v1/cache/invalidate", json={}, headers={"authorization": f"Bearer {member}"})
    assert refused.status_code == 403 and "write:cache" in refused.json()["error"]["message"]
