"""Route health on a real Valkey (services/routing/health.py, docs/routing.md §4, §5): two
processes' breakers (own clients) share one state, a half-open endpoint admits exactly one trial
however many requests race for it, failures after the first byte count, the figures are blended
from batched outcomes, the distribution of times to first token is shared and windowed, and the
pipeline stops leading with a dead provider."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from aggregator.routing.v1 import route_pb2
from edge.health import CircuitBreakers
from services.auth.permissions import INFERENCE
from services.core.config import StoreUrls
from services.core.errors import GatewayError, Reason
from services.core.redis import create_redis
from services.core.rpc import declared_permission
from services.routing import ttft_distribution as dist
from services.routing.health import CLOSED, HALF_OPEN, OPEN, PREFIX, RouteHealth, endpoint_id
from services.routing.servicer import shown_health
from tests.unit.edge.test_pipeline import Script, event, make, new_record, run_chat

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clients(store_urls: StoreUrls) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    first, second = create_redis(store_urls.redis_url), create_redis(store_urls.redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def inference_rpc() -> AsyncIterator[None]:
    """The pipeline runs as an inference RPC would (tests/unit/edge/conftest.py)."""
    token = declared_permission.set(INFERENCE)
    yield
    with contextlib.suppress(ValueError):
        declared_permission.reset(token)


def candidate(provider: str) -> route_pb2.RouteCandidate:
    return route_pb2.RouteCandidate(endpoint=route_pb2.Endpoint(provider=provider, base_url="http://x"))


def unique(name: str) -> route_pb2.RouteCandidate:
    return candidate(f"{name}-{uuid.uuid4().hex[:8]}")


def two(clients: tuple[aioredis.Redis, ...], clock: Clock, **kw: float) -> list[RouteHealth]:
    return [RouteHealth(c, clock=clock, cache_seconds=0, **kw) for c in clients]  # type: ignore[arg-type]


async def circuit(health: RouteHealth, c: route_pb2.RouteCandidate) -> str:
    return (await health.snapshot([endpoint_id(c)]))[endpoint_id(c)].circuit


async def test_failures_in_two_processes_open_one_shared_breaker(clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    first, second = two(clients, clock, failure_threshold=3)
    a, b = unique("a"), unique("b")
    await first.failed(a)
    await second.failed(a)
    assert await circuit(first, a) == CLOSED and await second.order([a, b]) == [a, b]
    await first.failed(a)  # the third in a row, counted across both processes
    for health in (first, second):
        assert await circuit(health, a) == OPEN
        assert await health.order([a, b]) == [b, a]  # open: behind the healthy, a last resort
    labels = {"provider": a.endpoint.provider}
    assert REGISTRY.get_sample_value("aggregator_provider_circuit_open", labels) == 1
    await second.succeeded(a)
    assert REGISTRY.get_sample_value("aggregator_provider_circuit_open", labels) == 0


async def test_a_success_in_one_process_resets_the_count_for_all(clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    first, second = two(clients, clock, failure_threshold=2)
    a = unique("a")
    await first.failed(a)
    await second.succeeded(a)  # second reads nothing yet: it writes only what it saw failing
    await second.snapshot([endpoint_id(a)])
    await second.succeeded(a)
    await first.failed(a)
    assert await circuit(first, a) == CLOSED


async def test_a_success_closes_a_breaker_opened_since_this_process_last_read(
        clients: tuple[aioredis.Redis, ...]) -> None:
    """This process read the endpoint healthy a moment ago (a fresh cache entry), but a failure of
    its own waits in the buffer and another process opened the breaker since: its success must
    close it, not be skipped as a healthy endpoint's would."""
    clock = Clock()
    first = RouteHealth(clients[0], clock=clock, cache_seconds=60, failure_threshold=3)
    second = RouteHealth(clients[1], clock=clock, cache_seconds=0, failure_threshold=3)
    a = unique("a")
    assert await circuit(first, a) == CLOSED  # fresh for a minute in `first`
    first.record(a, ok=False, ttft_s=0.1, output_tokens=1, duration_s=0.2)  # a late failure, buffered
    for _ in range(3):
        await second.failed(a)
    assert await circuit(second, a) == OPEN
    await first.succeeded(a)
    assert await circuit(second, a) == CLOSED
    await first.close()


async def test_a_fresh_healthy_reading_costs_no_write_on_success(clients: tuple[aioredis.Redis, ...]) -> None:
    """The hot path: a success on an endpoint read healthy within the cache period writes nothing."""
    clock = Clock()
    first = RouteHealth(clients[0], clock=clock, cache_seconds=60, failure_threshold=3)
    second = RouteHealth(clients[1], clock=clock, cache_seconds=0, failure_threshold=3)
    a = unique("a")
    assert await circuit(first, a) == CLOSED
    for _ in range(3):
        await second.failed(a)
    await first.succeeded(a)  # nothing of its own failing, fresh: no write (closed within a second)
    assert await circuit(second, a) == OPEN


async def test_half_open_admits_exactly_one_trial_across_processes(
        clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    first, second = two(clients, clock, failure_threshold=1, open_seconds=30)
    a, b = unique("a"), unique("b")
    await first.failed(a)
    clock.now += 31  # the pause is over: half-open
    assert await circuit(second, a) == HALF_OPEN
    orders = await asyncio.gather(*((first, second)[i % 2].order([a, b]) for i in range(40)))
    trials = [o for o in orders if o[0] == a]
    assert len(trials) == 1 and all(o == [b, a] for o in orders if o[0] != a)
    # The trial fails: open again for everyone, for another pause.
    await second.failed(a)
    assert await circuit(first, a) == OPEN
    clock.now += 31
    orders = await asyncio.gather(*((first, second)[i % 2].order([a, b]) for i in range(40)))
    assert sum(o[0] == a for o in orders) == 1  # a new trial after the new pause
    # This one succeeds: closed everywhere, the error rate starts afresh.
    await first.snapshot([endpoint_id(a)])
    await first.succeeded(a)
    assert await circuit(second, a) == CLOSED
    assert all(o == [a, b] for o in await asyncio.gather(*(second.order([a, b]) for _ in range(5))))


async def test_failures_after_the_first_byte_count_through_record(
        clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    first, second = two(clients, clock, failure_threshold=2)
    a = unique("a")
    first.record(a, ok=False, ttft_s=0.2, output_tokens=5, duration_s=1.0)
    second.record(a, ok=False, ttft_s=0.3, output_tokens=5, duration_s=1.0)
    # Before its first byte: `failed` counted it already; record adds it to the error rate only.
    second.record(a, ok=False, ttft_s=None, output_tokens=0, duration_s=0.1)
    await asyncio.gather(first.flush(), second.flush())
    health = (await first.snapshot([endpoint_id(a)]))[endpoint_id(a)]
    assert health.circuit == OPEN and health.failures == 2 and health.samples == 3


async def test_figures_are_blended_moving_estimates(clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    first, second = two(clients, clock, alpha=0.5)
    a = unique("a")
    # 0.2 s to the first token, then 101 tokens in 2 s: 50 tokens/s.
    first.record(a, ok=True, ttft_s=0.2, output_tokens=101, duration_s=2.2)
    await first.flush()
    health = (await second.snapshot([endpoint_id(a)]))[endpoint_id(a)]
    assert health.ttft_s == pytest.approx(0.2) and health.tokens_per_s == pytest.approx(50.0)
    assert health.error_rate == 0 and health.samples == 1
    second.record(a, ok=True, ttft_s=0.6, output_tokens=201, duration_s=2.6)  # 100 tokens/s
    second.record(a, ok=False, ttft_s=None, output_tokens=0, duration_s=0.1)
    await second.flush()
    health = (await first.snapshot([endpoint_id(a)]))[endpoint_id(a)]
    # Two samples at alpha 0.5 keep a quarter of the old estimate: 0.25*0.2 + 0.75*0.6.
    assert health.ttft_s == pytest.approx(0.5) and health.tokens_per_s == pytest.approx(87.5)
    assert health.error_rate == pytest.approx(0.375) and health.samples == 3 and health.circuit == CLOSED


async def test_a_high_error_rate_opens_the_breaker(clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    (health, _) = two(clients, clock, min_samples=10, error_rate_threshold=0.5, failure_threshold=100)
    a = unique("a")
    for i in range(12):
        health.record(a, ok=i % 3 == 0, ttft_s=None, output_tokens=0, duration_s=0.1)
    await health.flush()
    assert await circuit(health, a) == OPEN


async def test_reads_are_cached_and_writes_batched(clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    cached = RouteHealth(clients[0], clock=clock, cache_seconds=1.0)
    writer = RouteHealth(clients[1], clock=clock, cache_seconds=0, failure_threshold=1)
    a = unique("a")
    assert await circuit(cached, a) == CLOSED
    await writer.failed(a)
    assert await circuit(cached, a) == CLOSED  # read less than a second ago: not read again
    clock.now += 1.0
    assert await circuit(cached, a) == OPEN
    for _ in range(50):
        writer.record(a, ok=True, ttft_s=0.1, output_tokens=2, duration_s=0.2)
    assert await clients[0].hget(PREFIX + endpoint_id(a), "n") is None  # buffered, nothing written yet
    await writer.flush()
    assert await clients[0].hget(PREFIX + endpoint_id(a), "n") == b"50"


async def test_the_flush_happens_on_its_own(clients: tuple[aioredis.Redis, ...]) -> None:
    health = RouteHealth(clients[0], flush_seconds=0.05)
    a = unique("a")
    health.record(a, ok=True, ttft_s=0.1, output_tokens=2, duration_s=0.2)
    for _ in range(400):  # polled: a busy machine may be slow to run the flush
        if await clients[0].hget(PREFIX + endpoint_id(a), "n") == b"1":
            break
        await asyncio.sleep(0.025)
    assert await clients[0].hget(PREFIX + endpoint_id(a), "n") == b"1"
    await health.close()


@pytest.mark.usefixtures("inference_rpc")
async def test_pipeline_stops_leading_with_a_dead_provider(clients: tuple[aioredis.Redis, ...]) -> None:
    p1, p2 = f"p1-{uuid.uuid4().hex[:8]}", f"p2-{uuid.uuid4().hex[:8]}"
    pipeline, fakes = make({p1: Script(error=GatewayError(Reason.UPSTREAM_UNAVAILABLE, "p1 down")),
                            p2: Script([event("ok")])}, breakers=CircuitBreakers(RouteHealth(clients[0])))
    for _ in range(3):
        assert await run_chat(pipeline, new_record()) == [b"ok"]
    fakes.adapter.calls.clear()
    assert await run_chat(pipeline, new_record()) == [b"ok"]
    assert [c.candidate.endpoint.provider for c in fakes.adapter.calls] == [p2]  # p1 went last


@pytest.mark.usefixtures("inference_rpc")
async def test_refused_parameters_do_not_count_against_health(clients: tuple[aioredis.Redis, ...]) -> None:
    p1, p2 = f"p1-{uuid.uuid4().hex[:8]}", f"p2-{uuid.uuid4().hex[:8]}"
    refused = GatewayError(Reason.UNSUPPORTED_PARAMETER, "no logprobs here", param="logprobs")
    pipeline, fakes = make({p1: Script(error=refused), p2: Script([event("ok")])},
                           breakers=CircuitBreakers(RouteHealth(clients[0])))
    for _ in range(5):
        assert await run_chat(pipeline, new_record()) == [b"ok"]
    fakes.adapter.calls.clear()
    await run_chat(pipeline, new_record())
    assert [c.candidate.endpoint.provider for c in fakes.adapter.calls] == [p1, p2]


async def test_redis_away_never_fails_a_request() -> None:
    from services.runtime.stores import free_port

    away = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        health = RouteHealth(away, failure_threshold=1)
        a, b = unique("a"), unique("b")
        assert await health.order([a, b]) == [a, b]  # as configured
        await health.failed(a)  # not counted, not raised
        await health.succeeded(a)
        health.record(a, ok=True, ttft_s=0.1, output_tokens=2, duration_s=0.2)
        await health.close()  # the flush fails quietly
        assert await health.order([a, b]) == [a, b]
    finally:
        await away.aclose()


async def test_a_lost_trial_costs_one_round_trip_per_cache_period(
        clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    writer = RouteHealth(clients[0], clock=clock, cache_seconds=0, failure_threshold=1)
    reader = RouteHealth(clients[1], clock=clock, cache_seconds=1.0)
    a, b = unique("a"), unique("b")
    await writer.failed(a)
    clock.now += 31
    assert await writer.order([a, b]) == [a, b]  # the writer holds the trial
    calls = 0
    admit = reader.admit

    async def counted(endpoint: str) -> bool:
        nonlocal calls
        calls += 1
        return await admit(endpoint)

    reader.admit = counted  # type: ignore[method-assign]
    for _ in range(10):
        assert await reader.order([a, b]) == [b, a]
    assert calls == 1


# --- the distribution of times to first token (docs/routing.md §4) ---------------------------------

class Counted:
    """A Redis client that counts round trips: pipelines, and any other command called directly."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self.round_trips = 0

    def pipeline(self, **kw: Any) -> Any:
        self.round_trips += 1
        return self._redis.pipeline(**kw)

    def __getattr__(self, name: str) -> Any:
        self.round_trips += 1
        return getattr(self._redis, name)


def nearest_rank(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


async def test_two_processes_share_one_ttft_distribution(clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    first, second = (Counted(c) for c in clients)
    writers = [RouteHealth(first, clock=clock), RouteHealth(second, clock=clock)]  # type: ignore[arg-type]
    reader = RouteHealth(second, clock=clock, cache_seconds=0)  # type: ignore[arg-type]
    a = unique("a")
    fast = [0.05 + 0.004 * i for i in range(60)]  # 50..286 ms
    slow = [0.8 + 0.05 * i for i in range(40)]  # 0.8..2.75 s
    for ttft in fast:
        writers[0].record(a, ok=True, ttft_s=ttft, output_tokens=5, duration_s=ttft + 0.1)
    for ttft in slow:
        writers[1].record(a, ok=True, ttft_s=ttft, output_tokens=5, duration_s=ttft + 0.1)
    writers[1].record(a, ok=False, ttft_s=None, output_tokens=0, duration_s=0.1)  # no first token: no time
    await asyncio.gather(*(w.flush() for w in writers))
    assert (first.round_trips, second.round_trips) == (1, 1)  # one pipeline each: figures and counts
    health = (await reader.snapshot([endpoint_id(a)]))[endpoint_id(a)]
    assert second.round_trips == 2  # the hash and both windows in one pipelined read
    assert sum(health.ttft_counts) == 100 and health.samples == 101
    true_p95 = nearest_rank(fast + slow, 95)
    assert health.ttft_p95_s is not None and true_p95 / 1.2 <= health.ttft_p95_s <= true_p95 * 1.2
    p50, true_p50 = health.ttft_percentile_s(50), nearest_rank(fast + slow, 50)
    assert p50 is not None and true_p50 / 1.2 <= p50 <= true_p50 * 1.2
    assert shown_health(health).time_to_first_token_p95_ms == round(health.ttft_p95_s * 1000, 1)


async def test_the_distribution_reads_two_windows_and_they_expire(
        clients: tuple[aioredis.Redis, ...]) -> None:
    clock = Clock()
    writer = RouteHealth(clients[0], clock=clock)
    reader = RouteHealth(clients[1], clock=clock, cache_seconds=0)
    a = unique("a")
    for _ in range(30):
        writer.record(a, ok=True, ttft_s=0.2, output_tokens=5, duration_s=0.3)
    await writer.flush()
    assert (await reader.snapshot([endpoint_id(a)]))[endpoint_id(a)].ttft_p95_s == pytest.approx(0.2, rel=0.2)
    clock.now += dist.WINDOW_S  # the previous window still counts
    assert (await reader.snapshot([endpoint_id(a)]))[endpoint_id(a)].ttft_p95_s == pytest.approx(0.2, rel=0.2)
    clock.now += dist.WINDOW_S  # two windows on: no longer read
    gone = (await reader.snapshot([endpoint_id(a)]))[endpoint_id(a)]
    assert gone.ttft_p95_s is None and gone.ttft_counts == () and gone.samples == 30
    # On the real clock, with short windows: the hash expires by its TTL.
    short = RouteHealth(clients[0])
    short.ttft_window_s = 0.5
    b = unique("b")
    short.record(b, ok=True, ttft_s=0.2, output_tokens=5, duration_s=0.3)
    await short.flush()
    [key] = await clients[0].keys(f"{dist.KEY_PREFIX}*:{endpoint_id(b)}")
    assert 0 < await clients[0].pttl(key) <= 1500  # at most until the end of the next window + one
    for _ in range(300):  # polled, 15 s at most: a busy machine may expire it late
        if not await clients[0].exists(key):
            break
        await asyncio.sleep(0.05)
    assert not await clients[0].exists(key)
