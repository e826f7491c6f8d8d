"""Price history on real PostgreSQL (services/routing/repository.py, migration 0017,
docs/pricing.md §2): the catalog sync keeps every price that took effect, replaces only prices
still to come, and makes a changed price take effect at the sync, never before; the routing
service answers the prices in effect at a request's instant; and the usage ledger stores
tokens x prices to the last decimal, per request and summed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from google.protobuf import timestamp_pb2

from aggregator.events.v1 import usage_event_pb2 as ev
from aggregator.routing.v1 import routing_service_pb2 as pb
from edge.accounting import price
from services.adapters.anthropic_wire import AnthropicUsage
from services.adapters.openai_wire import usage_to_proto
from services.analytics.ledger import write_events
from services.auth import admin
from services.core.config import Config, StoreUrls, parse_config
from services.core.db import create_pool
from services.core.migrate import apply_migrations
from services.core.money import decimal_str
from services.routing.repository import sync_catalog
from services.routing.servicer import RoutingServicer
from tests.support.stores import create_database, drop_database

pytestmark = pytest.mark.asyncio(loop_scope="session")
PAST, FUTURE = "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"
COLUMNS = ("input_per_1k", "output_per_1k", "cached_input_per_1k", "cache_write_per_1k", "reasoning_per_1k")


@pytest.fixture(scope="module")
async def pool(store_urls: StoreUrls) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: syncing a catalog disables every model it does not name."""
    url = await create_database(store_urls.database_url)
    await apply_migrations(url)
    created = await create_pool(url, max_size=4)
    yield created
    await created.close()
    await drop_database(url)


def config(model: str, *dated: dict[str, Any], base: str = "0.003") -> Config:
    route = {"provider": "prices-fake", "model": "claude-sonnet-4-5", "input_per_1k": base,
             "output_per_1k": "0.015", "cached_input_per_1k": "0.0003", "cache_write_per_1k": "0.00375",
             "prices": list(dated)}
    return parse_config({
        "providers": [{"name": "prices-fake", "kind": "anthropic", "base_url": "http://127.0.0.1:9"}],
        "models": [{"id": model, "routes": [route]}]})


def dated(at: str, input_price: str, **more: str) -> dict[str, Any]:
    """A dated price set; each set is complete (its omitted class prices are its own input and
    output prices), so the cache prices are given again."""
    return {"effective_from": at, "input_per_1k": input_price, "output_per_1k": "0.015",
            "cached_input_per_1k": "0.0003", "cache_write_per_1k": "0.00375", **more}


async def history(pool: asyncpg.Pool, model: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        f"""SELECT r.id, r.effective_from, {', '.join(COLUMNS)}, r.per_image
            FROM route_prices r JOIN models m ON m.id = r.model_id
            WHERE m.public_id = $1 ORDER BY r.effective_from""", model)
    return [tuple(row.values()) for row in rows]


async def test_a_resync_never_rewrites_past_prices(pool: asyncpg.Pool) -> None:
    model = f"priced-{uuid.uuid4().hex[:8]}"
    timeline = (dated(PAST, "0.002"), dated(FUTURE, "0.001", cached_input_per_1k=None))
    await sync_catalog(pool, config(model, *timeline))
    first = await history(pool, model)
    # A set's omitted class price is its own input price.
    assert first[2][4] == Decimal("0.001")
    # The first sync records the whole configured timeline, the undated price since 1970.
    assert [(row[1].year, row[2]) for row in first] == [
        (1970, Decimal("0.003")), (2020, Decimal("0.002")), (2999, Decimal("0.001"))]
    assert first[1][4:7] == (Decimal("0.0003"), Decimal("0.00375"), Decimal("0.015"))
    await sync_catalog(pool, config(model, *timeline))
    assert await history(pool, model) == first  # the same rows, untouched

    # The file now says the 2020 price was different, and the 2999 one too: the past stays, the
    # file's price takes effect at the sync, and the price still to come is replaced.
    before = datetime.now(UTC)
    await sync_catalog(pool, config(model, dated(PAST, "0.0025"), dated(FUTURE, "0.0005")))
    after = datetime.now(UTC)
    second = await history(pool, model)
    assert second[:2] == first[:2]
    assert second[2][2] == Decimal("0.0025") and before <= second[2][1] <= after
    assert second[3][1].year == 2999 and second[3][2] == Decimal("0.0005")
    await sync_catalog(pool, config(model, dated(PAST, "0.0025"), dated(FUTURE, "0.0005")))
    assert await history(pool, model) == second

    # A price still to come that leaves the file is gone; nothing that took effect is.
    await sync_catalog(pool, config(model, dated(PAST, "0.0025")))
    assert await history(pool, model) == second[:3]
    # A changed undated price with no dated one: in effect from this sync on.
    await sync_catalog(pool, config(model, base="0.0000001"))
    third = await history(pool, model)
    assert third[:3] == second[:3] and third[3][2] == Decimal("0.0000001") and len(third) == 4


async def test_the_routing_service_prices_a_request_at_its_instant(pool: asyncpg.Pool) -> None:
    model = f"priced-{uuid.uuid4().hex[:8]}"
    await sync_catalog(pool, config(model, dated(PAST, "0.002", reasoning_per_1k="0.06"),
                                    dated(FUTURE, "0.001")))
    servicer = RoutingServicer(pool)
    await servicer.reload()

    async def resolve(at: datetime | None) -> Any:
        request = pb.ResolveRouteRequest(model=model, model_type="chat")
        if at is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(at)
            request.at.CopyFrom(stamp)
        return (await servicer.ResolveRoute(request, None)).candidates[0]

    old = await resolve(datetime(2019, 6, 1, tzinfo=UTC))
    assert (old.input_per_1k, old.reasoning_per_1k) == ("0.003", "0.015")
    assert old.next_prices_from.ToDatetime(tzinfo=UTC) == datetime(2020, 1, 1, tzinfo=UTC)
    now = await resolve(None)
    assert (now.input_per_1k, now.cached_input_per_1k, now.cache_write_per_1k, now.reasoning_per_1k) == (
        "0.002", "0.0003", "0.00375", "0.06")
    assert now.next_prices_from.ToDatetime(tzinfo=UTC) == datetime(2999, 1, 1, tzinfo=UTC)


async def test_the_ledger_keeps_tokens_times_prices_to_the_last_decimal(pool: asyncpg.Pool) -> None:
    model = f"priced-{uuid.uuid4().hex[:8]}"
    await sync_catalog(pool, config(model, dated(PAST, "0.0030007", reasoning_per_1k="0.0600003")))
    servicer = RoutingServicer(pool)
    await servicer.reload()
    answer = await servicer.ResolveRoute(pb.ResolveRouteRequest(model=model, model_type="chat"), None)
    route = answer.candidates[0]
    org_id = await admin.create_org(pool, f"prices-{uuid.uuid4().hex[:8]}")
    # Anthropic-shaped usages: uncached input, cache reads, cache writes, output with thinking.
    usages = [(21 + 7 * i, 1200 * i, 188086 if i % 3 == 0 else 0, 393 + i, 100 * (i % 2)) for i in range(40)]
    events, expected = [], []
    for uncached, read, written, output, thinking in usages:
        usage = usage_to_proto(AnthropicUsage.decode({
            "input_tokens": uncached, "cache_read_input_tokens": read, "cache_creation_input_tokens": written,
            "output_tokens": output, "output_tokens_details": {"thinking_tokens": thinking}}).to_openai())
        cost = price(route, usage.prompt_tokens, usage.completion_tokens, 0, usage)
        by_hand = (uncached * Decimal("0.0030007") + read * Decimal("0.0003") + written * Decimal("0.00375")
                   + (output - thinking) * Decimal("0.015") + thinking * Decimal("0.0600003")) / 1000
        assert cost == by_hand
        expected.append(cost)
        events.append(ev.UsageEvent(
            request_id=f"req-{uuid.uuid4()}", organization_id=org_id, endpoint="chat.completions",
            public_model=model, provider="prices-fake", upstream_model=route.upstream_model,
            status=ev.REQUEST_STATUS_SUCCEEDED, http_status=200, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cached_tokens=read, cache_creation_tokens=written,
            reasoning_tokens=thinking, cost_usd=decimal_str(cost), created_at=timestamp_pb2.Timestamp(
                seconds=int(datetime.now(UTC).timestamp()))))
    await write_events(pool, events)
    stored = {row["request_id"]: row["cost_usd"] for row in await pool.fetch(
        "SELECT request_id, cost_usd FROM api_responses WHERE organization_id = $1", org_id)}
    assert [stored[e.request_id] for e in events] == expected  # per request, every decimal
    total = await pool.fetchval("SELECT sum(cost_usd) FROM request_analytics WHERE organization_id = $1",
                                org_id)
    assert total == sum(expected) and decimal_str(total) == decimal_str(sum(expected, Decimal(0)))
