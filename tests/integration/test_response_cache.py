"""The response cache's store on a real Valkey (services/limits/response_cache.py): entries round-trip the
adapter's events exactly, expire with their model's TTL, and invalidation by organization or model
removes only what it names (model ids with glob characters included)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from aggregator.adapter.v1 import adapter_service_pb2 as adapter_pb
from aggregator.openai.v1 import chat_pb2
from services.core.config import StoreUrls
from services.core.redis import create_redis
from services.limits.response_cache import ASK_HEADER, Filling, ResponseCache

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Context:
    def __init__(self, **metadata: str) -> None:
        self._metadata = tuple(metadata.items())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.fixture
async def redis(store_urls: StoreUrls) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(store_urls.redis_url)
    yield client
    await client.aclose()


def request(model: str = "gpt-4o-mini") -> chat_pb2.ChatCompletionRequest:
    message = chat_pb2.ChatCompletionRequest(model=model, messages=[chat_pb2.ChatMessage(role="user")])
    message.messages[0].content.string_value = f"hello {uuid.uuid4()}"
    return message


async def test_entries_round_trip_and_expire_with_the_models_ttl(redis: aioredis.Redis) -> None:
    cache = ResponseCache(redis, {"gpt-4o-mini": 7})
    principal = SimpleNamespace(organization_id=str(uuid.uuid4()), cache=False)
    assert cache.lookup(Context(), principal, request()) is None  # not asked
    lookup = cache.lookup(Context(**{ASK_HEADER: "use"}), principal, request())
    assert lookup is not None and lookup.ttl_s == 7
    filling = Filling(lookup)
    events = [adapter_pb.ChatResponse(body=b'{"a":1}', has_content=True),
              adapter_pb.ChatResponse(body=b"", usage=chat_pb2.Usage(prompt_tokens=3, total_tokens=5))]
    for event in events:
        filling.add(event)
    await cache.put(filling)
    assert await cache.get(lookup) == events
    assert 0 < await redis.ttl(lookup.key) <= 7
    keyed = cache.lookup(Context(), SimpleNamespace(organization_id=principal.organization_id, cache=True),
                         request())
    assert keyed is not None  # a key with `cache` on asks for every request


async def test_invalidation_removes_what_it_names_only(redis: aioredis.Redis) -> None:
    cache = ResponseCache(redis)
    org_a, org_b = str(uuid.uuid4()), str(uuid.uuid4())
    asked = Context(**{ASK_HEADER: "use"})
    lookups = {(org, model): cache.lookup(asked, SimpleNamespace(organization_id=org, cache=False),
                                          request(model))
               for org in (org_a, org_b) for model in ("gpt-4o-mini", "odd*model[1]")}
    for lookup in lookups.values():
        assert lookup is not None
        filling = Filling(lookup)
        filling.add(adapter_pb.ChatResponse(body=b"x"))
        await cache.put(filling)
    assert await cache.invalidate(organization_id=org_a, model="odd*model[1]") == 1
    assert await cache.get(lookups[(org_a, "odd*model[1]")]) is None  # type: ignore[arg-type]
    assert await cache.get(lookups[(org_a, "gpt-4o-mini")]) is not None  # type: ignore[arg-type]
    assert await cache.invalidate(organization_id=org_b) == 2
    assert await cache.get(lookups[(org_a, "gpt-4o-mini")]) is not None  # type: ignore[arg-type]
