"""Readiness probes run at most once a second per process (edge/readiness.py)."""

from __future__ import annotations

import asyncio

import pytest

from edge.readiness import CachedProbe, cached_probes, failing


class Store:
    def __init__(self) -> None:
        self.probes = 0
        self.up = True
        self.delay_s = 0.0

    async def __call__(self) -> None:
        self.probes += 1
        await asyncio.sleep(self.delay_s)
        if not self.up:
            raise ConnectionError("down")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_store_is_probed_at_most_once_a_second() -> None:
    store, clock = Store(), Clock()
    probe = CachedProbe(store, clock=clock)
    for _ in range(50):
        await probe()
    assert store.probes == 1
    clock.now += 0.99
    await probe()
    assert store.probes == 1
    clock.now += 0.02
    await probe()
    assert store.probes == 2


async def test_concurrent_callers_share_one_probe() -> None:
    store = Store()
    store.delay_s = 0.05
    probe = CachedProbe(store)
    await asyncio.gather(*(probe() for _ in range(100)))
    assert store.probes == 1


async def test_a_failure_is_kept_for_the_second_too() -> None:
    store, clock = Store(), Clock()
    store.up = False
    probes = cached_probes({"postgres": store, "redis": Store()}, clock=clock)
    assert await failing(probes) == ["postgres"]
    store.up = True
    assert await failing(probes) == ["postgres"] and store.probes == 1
    clock.now += 1.0
    assert await failing(probes) == [] and store.probes == 2


async def test_a_slow_store_fails_and_a_caller_giving_up_cancels_nothing() -> None:
    store = Store()
    store.delay_s = 0.2
    probe = CachedProbe(store, timeout_s=0.05)
    with pytest.raises(ConnectionError):
        await probe()
    store.delay_s = 0.0
    quick = CachedProbe(store)
    store.delay_s = 0.1
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(quick(), 0.01)  # this caller gives up; the shared run goes on
    await quick()
    assert store.probes == 2
