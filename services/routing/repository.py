"""SQL of the catalog: sync from the config file, load for serving."""

from __future__ import annotations

from typing import Any

import asyncpg

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2
from services.core.config import Config
from services.core.money import decimal_str
from services.routing.catalog import Catalog, CatalogModel


async def sync_catalog(pool: asyncpg.Pool, config: Config) -> None:
    """Makes the catalog tables match the config file, in one transaction.

    Providers and models absent from the file are disabled, not deleted: request logs and bills
    keep pointing at them.
    """
    async with pool.acquire() as conn, conn.transaction():
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
                   (model_id, provider_id, upstream_model, input_per_1k, output_per_1k, per_image, position)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                [
                    (model_id, provider_ids[r.provider], r.model, r.input_per_1k, r.output_per_1k,
                     r.per_image, i)
                    for i, r in enumerate(m.routes)
                ],
            )


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
                      e.upstream_model, e.input_per_1k, e.output_per_1k
               FROM models m
               JOIN provider_endpoints e ON e.model_id = m.id AND e.enabled
               JOIN providers p ON p.id = e.provider_id AND p.enabled
               WHERE m.enabled
               ORDER BY m.created_at, m.public_id, e.position"""
        )
    grouped: dict[str, list[Any]] = {}
    for row in rows:
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
            )
            for r in routes
        )
        models.append(
            CatalogModel(public_id, first["type"], first["context_window"], first["created"], candidates)
        )
    return Catalog(
        models, [model_pb2.Provider(id=p["name"], object="provider", kind=p["kind"]) for p in providers]
    )
