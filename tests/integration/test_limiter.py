"""The rate limiter on a real Valkey (docs/limits.md): two processes' limiters (own clients) share
every window, each request is one script call, exactly N pass per window, a refusal counts nothing
and names its limit, token windows are settled to the true amount, and Redis being away fails open
or closed as configured."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.core.config import StoreUrls
from services.core.errors import GatewayError, Reason
from services.core.redis import create_redis
from services.limits import scripts
from services.limits.limiter import REQUESTS, TOKENS, Limiter, Window

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def clients(store_urls: StoreUrls) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    first, second = create_redis(store_urls.redis_url), create_redis(store_urls.redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


def window(kind: str = REQUESTS, limit: int = 5, seconds: int = 60) -> Window:
    return Window.of("key", uuid.uuid4().hex, None, kind, limit, seconds,
                     "requests per minute of this API key")


async def counted(client: aioredis.Redis, key: str) -> int:
    """What a window's buckets hold; the sum the window keeps beside them must agree."""
    fields = await client.hgetall(key)
    buckets = {int(k): int(v) for k, v in fields.items() if k not in (b"s", b"lo")}
    assert int(fields.get(b"s", 0)) == sum(buckets.values())
    assert (int(fields[b"lo"]) if b"lo" in fields else None) == (min(buckets) if buckets else None)
    return sum(buckets.values())


async def bucket_now(client: aioredis.Redis, step_ms: int) -> int:
    seconds, micros = await client.time()
    return (seconds * 1000 + micros // 1000) // step_ms


async def test_a_window_written_before_its_sum_was_kept_is_recounted(
        clients: tuple[aioredis.Redis, ...]) -> None:
    """A hash of buckets alone (as an older gateway wrote it) is recounted once, its buckets that
    left the window dropped; from then on its sum and oldest bucket are kept."""
    hourly = window(limit=100, seconds=3600)
    cur = await bucket_now(clients[0], 60_000)
    await clients[0].hset(hourly.key, mapping={cur - 70: 40, cur - 30: 5, cur - 2: 7})
    admission = await Limiter(clients[0]).admit([hourly], [1])
    assert admission.used == [13]
    assert await counted(clients[0], hourly.key) == 13
    assert await clients[0].hexists(hourly.key, str(cur - 70)) is False


async def test_buckets_leaving_the_window_leave_its_sum(clients: tuple[aioredis.Redis, ...]) -> None:
    hourly = window(limit=20, seconds=3600)
    cur = await bucket_now(clients[0], 60_000)
    await clients[0].hset(hourly.key,
                          mapping={cur - 61: 9, cur - 60: 4, cur - 20: 6, "s": 19, "lo": cur - 61})
    limiter = Limiter(clients[0])
    assert (await limiter.admit([hourly], [1])).used == [7]  # the two oldest buckets left
    assert await counted(clients[0], hourly.key) == 7
    refused = await _refusal(limiter.admit([hourly], [14]))  # 7 + 14 > 20: the bucket of cur - 20 must go
    assert refused.retry_after is not None and 39 * 60 <= refused.retry_after <= 41 * 60


async def test_a_settlement_to_nothing_moves_the_oldest_bucket(clients: tuple[aioredis.Redis, ...]) -> None:
    """A correction that empties the oldest bucket keeps the sum and the oldest bucket exact; one to a
    window that expired does not bring it back (it would have no TTL)."""
    tokens = window(TOKENS, limit=10_000, seconds=3600)
    limiter = Limiter(clients[0])
    cur = await bucket_now(clients[0], 60_000)
    await clients[0].hset(tokens.key, mapping={cur - 5: 30, "s": 30, "lo": cur - 5})
    admission = await limiter.admit([tokens], [100])
    settle = clients[0].register_script(scripts.SETTLE)
    await settle(keys=[tokens.key], args=[60_000, cur - 5, -30])  # the oldest bucket, emptied
    assert await counted(clients[0], tokens.key) == 100  # and the oldest is now the admission's
    limiter.settle_soon(admission, {TOKENS: 0})
    await limiter.drain()
    assert await counted(clients[0], tokens.key) == 0
    gone = window(TOKENS, limit=10_000)
    admission = await limiter.admit([gone], [100])
    await clients[0].delete(gone.key)
    limiter.settle_soon(admission, {TOKENS: 400})
    await limiter.drain()
    assert await clients[0].exists(gone.key) == 0


async def test_two_processes_let_exactly_n_through_per_window(clients: tuple[aioredis.Redis, ...]) -> None:
    limiters = [Limiter(client) for client in clients]
    limit = window(limit=10)
    results = await asyncio.gather(*(limiters[i % 2].admit([limit], [1]) for i in range(40)),
                                   return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, GatewayError)]
    assert len(admitted) == 10 and len(refused) == 30
    assert sorted(a.used[0] for a in admitted) == list(range(1, 11))
    error = refused[0]
    assert error.reason is Reason.RATE_LIMITED and error.http_status == 429
    assert "requests per minute of this API key" in error.message
    assert "10 requests per minute" in error.message
    assert error.retry_after is not None and 0 < error.retry_after <= 60
    # A refusal counts nothing: the window holds the ten that passed.
    assert await counted(clients[0], limit.key) == 10


async def test_every_window_is_checked_and_a_refusal_counts_in_none(
        clients: tuple[aioredis.Redis, ...]) -> None:
    limiter = Limiter(clients[0])
    roomy, tight = window(limit=100), window(limit=2, seconds=3600)
    for _ in range(2):
        admission = await limiter.admit([roomy, tight], [1, 1])
    assert admission.used == [2, 2]
    with pytest.raises(GatewayError) as caught:
        await limiter.admit([roomy, tight], [1, 1])
    assert "per hour" in caught.value.message
    assert await counted(clients[0], roomy.key) == 2
    headers = dict(admission.headers())
    # The tightest window is the hour's (nothing left), reported in both header families.
    assert headers["x-ratelimit-limit"] == "2" and headers["x-ratelimit-remaining"] == "0"
    assert headers["x-ratelimit-window"] == "3600" and 3500 <= int(headers["x-ratelimit-reset"]) <= 3600
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


async def test_token_windows_count_the_estimate_then_the_truth(clients: tuple[aioredis.Redis, ...]) -> None:
    limiter = Limiter(clients[0])
    tokens = window(TOKENS, limit=1000)
    admission = await limiter.admit([tokens], [600])
    with pytest.raises(GatewayError):
        await limiter.admit([tokens], [600])  # 1200 > 1000 on the estimate
    limiter.settle_soon(admission, {TOKENS: 150})
    await limiter.drain()
    assert await counted(clients[0], tokens.key) == 150
    assert (await limiter.admit([tokens], [600])).used == [750]
    too_big = await _refusal(limiter.admit([tokens], [5000]))
    assert too_big.retry_after is None and "more than the limit" in too_big.message
    assert dict(admission.headers())["x-ratelimit-limit-tokens"] == "1000"


async def test_redis_away_fails_open_or_closed() -> None:
    gone = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        assert (await Limiter(gone).admit([window()], [1])).headers() == ()
        closed = await _refusal(Limiter(gone, fail_open=False).admit([window()], [1]))
        assert closed.reason is Reason.UNAVAILABLE and closed.http_status == 503
    finally:
        await gone.aclose()


async def _refusal(call: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_a_request_costs_one_redis_round_trip(clients: tuple[aioredis.Redis, ...]) -> None:
    """Every window of a request is checked and counted by one EVALSHA (docs/limits.md)."""
    limiter = Limiter(clients[0])
    windows = [window(limit=1000), window(limit=1000, seconds=3600), window(TOKENS, limit=10**9)]
    await limiter.admit(windows, [1, 1, 10])  # loads the script once (NOSCRIPT, then EVALSHA)

    async def calls() -> int:
        stats = await clients[1].info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = await calls()
    for _ in range(20):
        await limiter.admit(windows, [1, 1, 10])
    assert await calls() - before == 20
