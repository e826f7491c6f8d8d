"""Data stores for a test session, as pytest fixtures (import them into a conftest.py).

By default the three embedded servers start in a temporary directory on free ports, once per
session. With AGGREGATOR_TEST_EXTERNAL_STORES=1 the servers named by DATABASE_URL, REDIS_URL and
NATS_URL are used instead, without touching their data: the session gets a fresh database
(dropped at the end) and a Redis database index of its own (claimed in db 0, flushed, released).
NATS is shared as it is: tests use subjects of their own (a fresh organization id).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.core.config import StoreUrls
from services.core.migrate import apply_migrations
from services.runtime.stores import EmbeddedNats, EmbeddedPostgres, EmbeddedValkey, free_port, remove_data

EXTERNAL_ENV = "AGGREGATOR_TEST_EXTERNAL_STORES"
_REDIS_CLAIM = "aggregator-test:db-claim:{}"
_REDIS_CLAIM_TTL_S = 6 * 3600


def external_stores() -> bool:
    """True when the tests run against the machine's servers rather than embedded ones."""
    return os.environ.get(EXTERNAL_ENV) == "1"


def with_path(url: str, path: str) -> str:
    """`url` with its path (database name or index) replaced, query and credentials kept."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path, parts.query, parts.fragment))


async def create_database(server_url: str) -> str:
    """Creates a uniquely named empty database on the server of `server_url`; returns its URL."""
    name = f"aggregator_test_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_path(server_url, name)


async def drop_database(database_url: str) -> None:
    """Drops the database of `database_url`, closing whatever connections it still has."""
    name = urlsplit(database_url).path.lstrip("/")
    conn = await asyncpg.connect(with_path(database_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.contextmanager
def embedded_stores(root: Path) -> Iterator[StoreUrls]:
    """Starts PostgreSQL, Valkey and NATS under `root`; stops every one of them on exit."""
    with contextlib.ExitStack() as stack:
        urls = []
        for server_type in (EmbeddedPostgres, EmbeddedValkey, EmbeddedNats):
            server = server_type(root / server_type.name, free_port())
            urls.append(server.start())
            stack.callback(server.stop)
        yield StoreUrls(*urls)


@contextlib.asynccontextmanager
async def _claimed_redis_db(redis_url: str) -> AsyncIterator[str]:
    """A Redis database index no other test session uses, empty, as a URL."""
    token = uuid.uuid4().hex
    base_index = int(urlsplit(redis_url).path.lstrip("/") or 0)
    claims = aioredis.Redis.from_url(with_path(redis_url, "0"))
    try:
        index = None
        for candidate in range(1, 16):
            if candidate != base_index and await claims.set(
                    _REDIS_CLAIM.format(candidate), token, nx=True, ex=_REDIS_CLAIM_TTL_S):
                index = candidate
                break
        if index is None:
            raise RuntimeError("every Redis database index 1-15 is claimed by another test session")
        url = with_path(redis_url, str(index))
        own = aioredis.Redis.from_url(url)
        try:
            await own.flushdb()
            yield url
            await own.flushdb()
        finally:
            await own.aclose()
            if await claims.get(_REDIS_CLAIM.format(index)) == token.encode():
                await claims.delete(_REDIS_CLAIM.format(index))
    finally:
        await claims.aclose()


@contextlib.asynccontextmanager
async def external_store_urls() -> AsyncIterator[StoreUrls]:
    """The machine's servers, with a fresh database and a Redis index of this session's own."""
    base = StoreUrls.from_env()
    database_url = await create_database(base.database_url)
    try:
        async with _claimed_redis_db(base.redis_url) as redis_url:
            yield StoreUrls(database_url, redis_url, base.nats_url)
    finally:
        await drop_database(database_url)


@contextlib.asynccontextmanager
async def session_stores() -> AsyncIterator[StoreUrls]:
    """Embedded or external stores, as the environment says."""
    if external_stores():
        async with external_store_urls() as urls:
            yield urls
        return
    root = Path(tempfile.mkdtemp(prefix="aggregator-test-stores-"))
    try:
        with embedded_stores(root) as urls:
            yield urls
    finally:
        remove_data(root)  # and, as root, the PostgreSQL cluster it links to (docs/embedded-stores.md)


@pytest.fixture(scope="session")
async def store_urls() -> AsyncIterator[StoreUrls]:
    """The data stores of this test session (started once, stopped or cleaned at the end)."""
    async with session_stores() as urls:
        yield urls


@pytest.fixture(scope="session")
async def migrated_database_url(store_urls: StoreUrls) -> str:
    """The session's database with every migration applied."""
    await apply_migrations(store_urls.database_url)
    return store_urls.database_url
