"""Budgets on real Valkey and PostgreSQL (services/limits/budgets.py, docs/limits.md "Budgets"):
concurrent requests of two processes never hold more than the budget, holds settle to the true
cost, spend is durable in PostgreSQL and seeds a Redis that lost it, a request admitted before a
re-seeding is counted once, a dead worker's hold counts at its worst case, and Redis away fails
closed."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.auth import admin
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.errors import GatewayError, Reason
from services.core.redis import create_redis
from services.limits import limiter as limiter_module
from services.limits.budgets import Budget, SpendStore, period_end, period_start
from services.limits.limiter import REQUESTS, Limiter, Window
from services.limits.reconcile import Reconciler
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio(loop_scope="session")
BUDGET = 1_000_000  # $1 in micro-USD
HOLD = BUDGET // 10


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(migrated_database_url, max_size=4)
    yield created
    await created.close()


@pytest.fixture
async def clients(store_urls: StoreUrls) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    first, second = create_redis(store_urls.redis_url), create_redis(store_urls.redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def new_budget(pool: asyncpg.Pool, period: str = "daily") -> Budget:
    name = f"budget-{uuid.uuid4().hex[:10]}"
    org_id = await admin.create_org(pool, name)
    await admin.create_key(pool, os.urandom(32), name, "budgeted")
    key_id = await pool.fetchval("SELECT id::text FROM api_keys WHERE organization_id = $1::uuid", org_id)
    return Budget(org_id, key_id, period, period_start(period, datetime.now(UTC)), BUDGET, "the test budget")


async def refused(call: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_fifty_concurrent_requests_of_two_processes_never_hold_more_than_the_budget(
        pool: asyncpg.Pool, clients: tuple[aioredis.Redis, ...]) -> None:
    budget = await new_budget(pool)
    limiters = [Limiter(client, spend=SpendStore(pool)) for client in clients]
    results = await asyncio.gather(*(limiters[i % 2].admit([], [], [budget], [HOLD], f"r{i}")
                                     for i in range(50)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, GatewayError)]
    assert len(admitted) == 10 and len(errors) == 40
    assert errors[0].reason is Reason.QUOTA_EXCEEDED and errors[0].http_status == 429
    assert "the test budget" in errors[0].message and "$1" in errors[0].message
    # Each settles at its true cost (less than held); what was held comes back.
    for i, admission in enumerate(admitted):
        limiters[i % 2].settle_soon(admission, {}, Decimal("0.05"), 10)
    for limiter in limiters:
        await limiter.drain()
    assert await SpendStore(pool).spent(budget) == 10 * 50_000
    assert int(await clients[0].hget(budget.key, "spent")) == 500_000
    assert int(await clients[0].hget(budget.key, "held")) == 0
    more = await asyncio.gather(*(limiters[0].admit([], [], [budget], [HOLD], f"s{i}") for i in range(10)),
                                return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in more) == 5  # $0.50 left, $0.10 each


async def test_a_redis_that_lost_the_budget_is_seeded_from_postgresql(
        pool: asyncpg.Pool, clients: tuple[aioredis.Redis, ...]) -> None:
    budget = await new_budget(pool, "monthly")
    limiter = Limiter(clients[0], spend=SpendStore(pool))
    first = await limiter.admit([], [], [budget], [HOLD], "a")
    limiter.settle_soon(first, {}, Decimal("0.7"), 1)
    await limiter.drain()
    in_flight = await limiter.admit([], [], [budget], [HOLD], "b")
    await clients[0].delete(budget.key, budget.holds)  # Redis lost it (a restart, an eviction)
    # Re-seeded from PostgreSQL: $0.70 spent; the hold of "b" was lost with it.
    second = await limiter.admit([], [], [budget], [HOLD], "c")
    assert second.generations != in_flight.generations
    assert int(await clients[0].hget(budget.key, "spent")) == 700_000
    # "b" settles into the new hash by its true cost only; "c" releases its hold.
    limiter.settle_soon(in_flight, {}, Decimal("0.05"), 1)
    limiter.settle_soon(second, {}, Decimal("0.05"), 1)
    await limiter.drain()
    assert int(await clients[0].hget(budget.key, "spent")) == 800_000
    assert int(await clients[0].hget(budget.key, "held")) == 0
    assert await SpendStore(pool).spent(budget) == 800_000
    error = await refused(limiter.admit([], [], [budget], [300_000], "d"))
    assert error.reason is Reason.QUOTA_EXCEEDED
    end = period_end("monthly", budget.start)
    assert end is not None
    assert 0 < await clients[0].ttl(budget.key) <= (end - budget.start).total_seconds() + 86400


async def test_a_dead_workers_hold_counts_at_its_worst_case(
        pool: asyncpg.Pool, clients: tuple[aioredis.Redis, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    budget = await new_budget(pool)
    monkeypatch.setattr(limiter_module, "HOLD_S", 0.05)
    limiter = Limiter(clients[0], spend=SpendStore(pool))
    await limiter.admit([], [], [budget], [400_000], "dead")  # never settled: its worker died
    await asyncio.sleep(0.2)
    await limiter.admit([], [], [budget], [100_000], "next")
    assert int(await clients[0].hget(budget.key, "spent")) == 400_000
    assert int(await clients[0].hget(budget.key, "held")) == 100_000


async def test_redis_away_fails_closed_for_budgets(pool: asyncpg.Pool) -> None:
    budget = await new_budget(pool)
    gone = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        error = await refused(Limiter(gone, spend=SpendStore(pool)).admit([], [], [budget], [HOLD], "x"))
        assert error.reason is Reason.UNAVAILABLE and error.http_status == 503
        opened = Limiter(gone, spend=SpendStore(pool), budgets_fail_open=True)
        assert (await opened.admit([], [], [budget], [HOLD], "y")).generations == []
    finally:
        await gone.aclose()


async def test_redis_cut_mid_traffic_fails_as_documented_and_loses_no_spend(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    """Budget requests get 503 while Redis is unreachable, rate-limit-only ones pass uncounted;
    what settled before is still there after, and a Redis that lost it meanwhile is re-seeded."""
    target = urlsplit(store_urls.redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    port = await proxy.restore()
    client = create_redis(f"redis://127.0.0.1:{port}{target.path or '/0'}")
    direct = create_redis(store_urls.redis_url)
    budget = await new_budget(pool)
    limiter = Limiter(client, spend=SpendStore(pool))
    window = Window.of("key", uuid.uuid4().hex, None, REQUESTS, 100, 60, "requests per minute")
    try:
        admitted = await limiter.admit([window], [1], [budget], [HOLD], "before")
        limiter.settle_soon(admitted, {}, Decimal("0.3"), 1)
        await limiter.drain()
        await proxy.cut()
        error = await refused(limiter.admit([window], [1], [budget], [HOLD], "during"))
        assert error.reason is Reason.UNAVAILABLE and error.http_status == 503
        assert (await limiter.admit([window], [1])).used == []  # no budget: open, uncounted
        await direct.delete(budget.key, budget.holds)  # and the restart lost the hash
        await proxy.restore()
        again = await limiter.admit([window], [1], [budget], [HOLD], "after")
        assert int(await direct.hget(budget.key, "spent")) == 300_000 and again.used == [2]
    finally:
        await proxy.cut()
        await client.aclose()
        await direct.aclose()


async def expire(limiter: Limiter, budget: Budget, hold: int, request_id: str) -> None:
    """A hold whose worker dies, then expires on the next admission."""
    await limiter.admit([], [], [budget], [hold], request_id)
    await asyncio.sleep(0.2)
    nudge = await limiter.admit([], [], [budget], [1], f"nudge-{uuid.uuid4()}")
    limiter.settle_soon(nudge, {}, Decimal(0), 0)
    await limiter.drain()


async def ledger_row(pool: asyncpg.Pool, budget: Budget, request_id: str, cost: str) -> None:
    """The dead worker's usage event, as the ledger writes it once its outbox is replayed."""
    await pool.execute(
        "INSERT INTO request_analytics (request_id, organization_id, api_key_id, endpoint, public_model, "
        "status, http_status, prompt_tokens, completion_tokens, cost_usd) VALUES ($1, $2::uuid, $3::uuid, "
        "'chat.completions', 'gpt-4o-mini', 'succeeded', 200, 10, 20, $4)",
        request_id, budget.organization_id, budget.api_key_id, Decimal(cost))


async def test_a_dead_workers_hold_is_reconciled_with_the_ledger_once(
        pool: asyncpg.Pool, clients: tuple[aioredis.Redis, ...],
        monkeypatch: pytest.MonkeyPatch) -> None:
    budget = await new_budget(pool)
    monkeypatch.setattr(limiter_module, "HOLD_S", 0.05)
    limiter = Limiter(clients[0], spend=SpendStore(pool))
    reconciler = Reconciler(clients[0], pool)
    dead = f"dead-{uuid.uuid4()}"
    await expire(limiter, budget, 400_000, dead)
    assert int(await clients[0].hget(budget.key, "spent")) == 400_000  # its worst case, for now
    assert await reconciler.run_once() == 0  # the ledger does not have it yet
    await ledger_row(pool, budget, dead, "0.12")
    assert await reconciler.run_once() == 1
    assert int(await clients[0].hget(budget.key, "spent")) == 120_000  # the truth
    assert await SpendStore(pool).spent(budget) == 120_000
    assert await reconciler.run_once() == 0  # once only

    # A worker that was only slow settles after its hold expired: it corrects, the reconciler not.
    slow = await limiter.admit([], [], [budget], [300_000], f"slow-{uuid.uuid4()}")
    await asyncio.sleep(0.2)
    nudge = await limiter.admit([], [], [budget], [1], f"nudge-{uuid.uuid4()}")
    limiter.settle_soon(nudge, {}, Decimal(0), 0)
    limiter.settle_soon(slow, {}, Decimal("0.05"), 30)
    await limiter.drain()
    await ledger_row(pool, budget, slow.request_id, "0.05")
    assert await reconciler.run_once() == 0
    assert int(await clients[0].hget(budget.key, "spent")) == 170_000
