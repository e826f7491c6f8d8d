"""SQL of the catalog: sync from the config file, load for serving."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2
from services.core.config import Config, RouteConfig
from services.core.money import decimal_str
from services.core.prices import Prices, history_changes
from services.routing.catalog import Catalog, CatalogModel

log = logging.getLogger(__name__)
_PRICE_COLUMNS = ("input_per_1k, output_per_1k, cached_input_per_1k, cache_write_per_1k, reasoning_per_1k, "
                  "per_image")
_INSERT_PRICE = (
    f"INSERT INTO route_prices (model_id, provider_id, upstream_model, effective_from, {_PRICE_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
    "ON CONFLICT (model_id, provider_id, upstream_model, effective_from) DO NOTHING")


def _price_row(row: Any) -> Prices:
    return Prices(row["input_per_1k"], row["output_per_1k"], row["cached_input_per_1k"],
                  row["cache_write_per_1k"], row["reasoning_per_1k"], row["per_image"], row["effective_from"])


async def _sync_prices(conn: asyncpg.Connection, model_id: Any, provider_id: Any, route: RouteConfig,
                       now: datetime) -> None:
    """Brings a route's stored price history in line with the config file without rewriting the
    past (`history_changes`, docs/pricing.md §2)."""
    key = (model_id, provider_id, route.model)
    stored = [_price_row(r) for r in await conn.fetch(
        f"SELECT effective_from, {_PRICE_COLUMNS} FROM route_prices WHERE model_id = $1 AND provider_id = $2 "
        "AND upstream_model = $3 ORDER BY effective_from", *key)]
    stale, added = history_changes(stored, route.timeline(), now)
    if stale:
        await conn.execute("DELETE FROM route_prices WHERE model_id = $1 AND provider_id = $2 "
                           "AND upstream_model = $3 AND effective_from = ANY($4::timestamptz[])", *key, stale)
    await conn.executemany(_INSERT_PRICE, [
        (*key, p.effective_from, p.input_per_1k, p.output_per_1k, p.cached_input_per_1k, p.cache_write_per_1k,
         p.reasoning_per_1k, p.per_image) for p in added])


async def sync_catalog(pool: asyncpg.Pool, config: Config) -> None:
    """Makes the catalog tables match the config file, in one transaction.

    Providers and models absent from the file are disabled, not deleted: request logs and bills
    keep pointing at them. Prices are kept with their history (`_sync_prices`).
    """
    async with pool.acquire() as conn, conn.transaction():
        # Serializes concurrent syncs (several `up` on one database): each sees the other's rows.
        await conn.execute("LOCK TABLE route_prices IN SHARE ROW EXCLUSIVE MODE")
        # One instant for the whole sync, taken once the lock is held.
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        await conn.execute("UPDATE providers SET enabled = false, updated_at = now()")
        provider_ids: dict[str, Any] = {}
        for p in config.providers:
            provider_ids[p.name] = await conn.fetchval(
                """INSERT INTO providers (name, kind, base_url, api_key_env, enabled)
                   VALUES ($1, $2, $3, $4, true)
                   ON CONFLICT (name) DO UPDATE SET kind = $2, base_url = $3, api_key_env = $4,
                       enabled = true, updated_at = now()
                   RETURNING id""",
                p.name,
                p.kind,
                p.base_url,
                p.api_key_env,
            )
        await conn.execute("UPDATE models SET enabled = false, updated_at = now()")
        for m in config.models:
            model_id = await conn.fetchval(
                """INSERT INTO models (public_id, type, context_window, max_output_tokens, enabled)
                   VALUES ($1, $2, $3, $4, true)
                   ON CONFLICT (public_id) DO UPDATE SET type = $2, context_window = $3,
                       max_output_tokens = $4, enabled = true, updated_at = now()
                   RETURNING id""",
                m.id,
                m.type,
                m.context_window,
                m.max_output_tokens,
            )
            await conn.execute("DELETE FROM provider_endpoints WHERE model_id = $1", model_id)
            await conn.executemany(
                """INSERT INTO provider_endpoints
                   (model_id, provider_id, upstream_model, input_per_1k, output_per_1k, per_image, position,
                    weight)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                [
                    (model_id, provider_ids[r.provider], r.model, r.input_per_1k, r.output_per_1k,
                     r.per_image, i, r.weight)
                    for i, r in enumerate(m.routes)
                ],
            )
            # A route repeated in a model is served once, as its first occurrence (catalog.resolve),
            # and its price history is kept once, by model, provider and upstream model.
            first = {(r.provider, r.model): r for r in reversed(m.routes)}
            for r in first.values():
                await _sync_prices(conn, model_id, provider_ids[r.provider], r, now)


async def load_catalog(pool: asyncpg.Pool) -> Catalog:
    """Reads the enabled catalog."""
    async with pool.acquire() as conn:
        providers = await conn.fetch(
            "SELECT name, kind, base_url, api_key_env FROM providers WHERE enabled ORDER BY name"
        )
        rows = await conn.fetch(
            """SELECT m.public_id, m.type, m.context_window, m.max_output_tokens, e.per_image,
                      extract(epoch FROM m.created_at)::bigint AS created,
                      p.name, p.kind, p.base_url, p.api_key_env,
                      e.upstream_model, e.input_per_1k, e.output_per_1k, e.weight
               FROM models m
               JOIN provider_endpoints e ON e.model_id = m.id AND e.enabled
               JOIN providers p ON p.id = e.provider_id AND p.enabled
               WHERE m.enabled
               ORDER BY m.created_at, m.public_id, e.position"""
        )
        price_rows = await conn.fetch(
            f"""SELECT m.public_id, p.name, r.upstream_model, r.effective_from, {_PRICE_COLUMNS}
                FROM route_prices r
                JOIN models m ON m.id = r.model_id AND m.enabled
                JOIN providers p ON p.id = r.provider_id AND p.enabled
                ORDER BY r.effective_from"""
        )
    timelines: dict[tuple[str, str, str], list[Prices]] = {}
    for row in price_rows:
        route = (row["public_id"], row["name"], row["upstream_model"])
        timelines.setdefault(route, []).append(_price_row(row))
    grouped: dict[str, list[Any]] = {}
    for row in rows:
        if (row["public_id"], row["name"], row["upstream_model"]) not in timelines:
            # Never served free (docs/architecture.md §2.5): a route without a price is left out.
            log.error("catalog: route %s/%s of model %s has no price; not served", row["name"],
                      row["upstream_model"], row["public_id"])
            continue
        grouped.setdefault(row["public_id"], []).append(row)
    models = []
    for public_id, routes in grouped.items():
        first = routes[0]
        candidates = tuple(
            route_pb2.RouteCandidate(
                public_model=public_id,
                upstream_model=r["upstream_model"],
                endpoint=route_pb2.Endpoint(
                    provider=r["name"], kind=r["kind"], base_url=r["base_url"], api_key_env=r["api_key_env"]
                ),
                input_per_1k=decimal_str(r["input_per_1k"]),
                output_per_1k=decimal_str(r["output_per_1k"]),
                context_window=r["context_window"],
                model_type=r["type"],
                max_output_tokens=r["max_output_tokens"],
                per_image=decimal_str(r["per_image"]) if r["per_image"] is not None else "",
                weight=r["weight"],
            )
            for r in routes
        )
        models.append(CatalogModel(
            public_id, first["type"], first["context_window"], first["created"], candidates,
            tuple(tuple(timelines[(public_id, r["name"], r["upstream_model"])]) for r in routes)))
    return Catalog(
        models, [model_pb2.Provider(id=p["name"], object="provider", kind=p["kind"]) for p in providers]
    )
