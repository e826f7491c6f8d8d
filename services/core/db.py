"""The PostgreSQL connection pool (asyncpg). Repositories take a pool; nothing else opens one."""

from __future__ import annotations

import asyncpg
import orjson


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb and json columns come back as Python values and accept them as parameters.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(type_name, schema="pg_catalog", encoder=_dumps, decoder=orjson.loads,
                                  format="text")


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A connection pool whose connections decode json/jsonb and run each statement in UTC."""
    pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, init=_init_connection,
        # Timestamps are UTC everywhere; the session zone only affects text output, but make it certain.
        server_settings={"timezone": "UTC", "application_name": "aggregator"},
        command_timeout=60, max_inactive_connection_lifetime=300)
    assert pool is not None
    return pool
