"""PrincipalCache: TTLs, negative entries, single-flight, invalidation, bounds (fake loader and clock)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from aggregator.auth.v1 import auth_service_pb2
from services.auth import invalidation
from services.auth.cache import PrincipalCache
from services.auth.records import AuthRecord


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(key_id: str) -> AuthRecord:
    principal = auth_service_pb2.Principal(api_key_id=key_id, organization_id="org", role="member")
    return AuthRecord(principal, None)


@dataclass
class FakeStore:
    """The database behind the cache: key hash → record, counting lookups."""

    rows: dict[str, AuthRecord] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def load(self, key_hash: str) -> AuthRecord | None:
        self.calls.append(key_hash)
        answer = self.rows.get(key_hash)  # read first, answered after the gate: a slow query
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return answer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(rows={"h1": record("k1"), "h2": record("k2")})


def make(store: FakeStore, clock: FakeClock, **kwargs: Any) -> PrincipalCache:
    return PrincipalCache(store.load, ttl_s=60, negative_ttl_s=5, clock=clock, **kwargs)


async def test_hits_are_served_from_memory_until_the_ttl(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    first = await cache.get("h1")
    assert first is not None and first.principal.api_key_id == "k1"
    clock.now += 59.9
    assert await cache.get("h1") is first
    assert store.calls == ["h1"]
    clock.now += 0.2
    await cache.get("h1")
    assert store.calls == ["h1", "h1"]


async def test_unknown_keys_are_remembered_briefly(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    for _ in range(100):
        assert await cache.get("bad") is None
    assert store.calls == ["bad"]
    clock.now += 5.1
    assert await cache.get("bad") is None
    assert store.calls == ["bad", "bad"]


async def test_invalidation_clears_a_negative_entry_so_a_new_key_works_at_once(
        store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    assert await cache.get("h3") is None
    store.rows["h3"] = record("k3")
    assert await cache.get("h3") is None  # still negatively cached
    cache.invalidate("h3", "k3")
    found = await cache.get("h3")
    assert found is not None and found.principal.api_key_id == "k3"


async def test_invalidation_drops_a_positive_entry(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    assert await cache.get("h1") is not None
    del store.rows["h1"]  # revoked in the database
    assert await cache.get("h1") is not None  # cached
    cache.invalidate("h1")
    assert await cache.get("h1") is None


async def test_invalidation_by_key_id_alone(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    await cache.get("h1")
    await cache.get("h2")
    del store.rows["h1"]
    cache.invalidate(key_id="k1")
    assert await cache.get("h1") is None
    assert await cache.get("h2") is not None
    assert store.calls == ["h1", "h2", "h1"]


async def test_concurrent_misses_share_one_lookup(store: FakeStore, clock: FakeClock) -> None:
    store.gate = asyncio.Event()
    cache = make(store, clock)
    waiters = [asyncio.create_task(cache.get("h1")) for _ in range(50)]
    await store.entered.wait()
    store.gate.set()
    results = await asyncio.gather(*waiters)
    assert store.calls == ["h1"]
    assert all(r is results[0] and r is not None for r in results)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_lookup(
        store: FakeStore, clock: FakeClock) -> None:
    store.gate = asyncio.Event()
    cache = make(store, clock)
    first = asyncio.create_task(cache.get("h1"))
    second = asyncio.create_task(cache.get("h1"))
    await store.entered.wait()
    first.cancel()
    store.gate.set()
    assert (await second) is not None
    assert first.cancelled()
    assert store.calls == ["h1"]


async def test_invalidation_during_a_lookup_keeps_its_answer_out_of_the_cache(
        store: FakeStore, clock: FakeClock) -> None:
    store.gate = asyncio.Event()
    cache = make(store, clock)
    stale_read = asyncio.create_task(cache.get("h1"))
    await store.entered.wait()
    assert store.calls == ["h1"]
    del store.rows["h1"]  # revoked while the read was in flight...
    cache.invalidate("h1")  # ...and its event arrives before the read completes
    store.gate.set()
    assert (await stale_read) is not None  # that request started before the revocation
    assert await cache.get("h1") is None  # but the stale answer was not cached
    assert store.calls == ["h1", "h1"]


async def test_loader_errors_reach_every_waiter_and_are_not_cached(clock: FakeClock) -> None:
    calls = 0

    async def failing(key_hash: str) -> AuthRecord | None:
        nonlocal calls
        calls += 1
        raise ConnectionError("database down")

    cache = PrincipalCache(failing, clock=clock)
    results = await asyncio.gather(cache.get("h"), cache.get("h"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == 1
    with pytest.raises(ConnectionError):
        await cache.get("h")
    assert calls == 2


async def test_both_maps_are_bounded_and_bad_keys_do_not_evict_good_ones(
        store: FakeStore, clock: FakeClock) -> None:
    store.rows.update({f"good{i}": record(f"g{i}") for i in range(10)})
    cache = make(store, clock, max_entries=3, max_negative_entries=2)
    for i in range(5):
        await cache.get(f"good{i}")
    for i in range(10):
        await cache.get(f"bad{i}")
    assert len(cache) == 3 + 2
    calls = len(store.calls)
    for i in (2, 3, 4):  # the three most recent good keys survived the bad-key flood
        await cache.get(f"good{i}")
    assert len(store.calls) == calls
    await cache.get("good0")
    assert len(store.calls) == calls + 1


async def test_clear_forgets_everything(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    await cache.get("h1")
    await cache.get("nope")
    cache.clear()
    assert len(cache) == 0


@dataclass
class FakeMsg:
    data: bytes


async def test_invalidation_events_are_decoded_and_applied(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    await cache.get("h1")
    del store.rows["h1"]
    await cache._on_event(FakeMsg(b"\xff\xff not protobuf"))  # ignored, logged
    assert await cache.get("h1") is not None
    await cache._on_event(FakeMsg(invalidation.encode("k1", "h1")))
    assert await cache.get("h1") is None


class RecordingNats:
    """Stands in for a NATS client: records what is published and subscribed."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[tuple[str, bytes]] = []
        self.subscriptions: list[tuple[str, Any]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.fail:
            raise ConnectionError("nats down")
        self.published.append((subject, payload))

    async def flush(self, **_: Any) -> None:
        return None

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.subscriptions.append((subject, cb))
        return self


async def test_publish_sends_an_api_key_invalidated_event_and_degrades_when_nats_fails() -> None:
    nc = RecordingNats()
    assert await invalidation.publish(nc, "k1", "h1") is True
    [(subject, payload)] = nc.published
    assert subject == "auth.keys.invalidate"
    event = invalidation.decode(payload)
    assert event is not None and (event.api_key_id, event.key_hash) == ("k1", "h1")
    assert await invalidation.publish(RecordingNats(fail=True), "k1", "h1") is False
    assert await invalidation.publish(None, "k1", "h1") is False


async def test_subscribe_listens_on_the_invalidation_subject(store: FakeStore, clock: FakeClock) -> None:
    cache = make(store, clock)
    nc = RecordingNats()
    await cache.subscribe(nc)
    assert [s for s, _ in nc.subscriptions] == ["auth.keys.invalidate"]
