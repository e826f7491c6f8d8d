"""The model-metadata cache: every routing process serves the catalog from memory and reloads it
when `up` announces a change on NATS (`catalog.changed`), so a model added to the config file is
served by two processes within 2 s, and one removed is gone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from aggregator.routing.v1 import routing_service_pb2 as pb
from services.core.config import StoreUrls, parse_config
from services.core.db import create_pool
from services.core.migrate import apply_migrations
from services.core.nats import connect_nats
from services.routing.repository import sync_catalog
from services.routing.servicer import CATALOG_CHANGED_SUBJECT, RoutingServicer
from tests.support.stores import create_database, drop_database

pytestmark = pytest.mark.asyncio(loop_scope="session")


def config(*model_ids: str) -> object:
    return parse_config({
        "providers": [{"name": "catalog-fake", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "models": [{"id": m, "routes": [{"provider": "catalog-fake", "model": m, "input_per_1k": "0.001",
                                          "output_per_1k": "0.002"}]} for m in model_ids]})


@pytest.fixture(scope="module")
async def pool(store_urls: StoreUrls) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: syncing a catalog disables every model it does not name."""
    url = await create_database(store_urls.database_url)
    await apply_migrations(url)
    created = await create_pool(url, max_size=4)
    yield created
    await created.close()
    await drop_database(url)


async def ids(servicer: RoutingServicer) -> set[str]:
    answer = await servicer.ListCatalogModels(pb.ListCatalogModelsRequest(), None)
    return {m.id for m in answer.models}


async def test_a_catalog_change_reaches_every_process_within_two_seconds(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    first, second = f"cat-{uuid.uuid4().hex[:8]}", f"cat-{uuid.uuid4().hex[:8]}"
    await sync_catalog(pool, config(first))  # type: ignore[arg-type]
    connections = [await connect_nats(store_urls.nats_url, f"catalog-{i}") for i in range(3)]
    servicers = [RoutingServicer(pool, nc) for nc in connections[:2]]
    try:
        for servicer in servicers:
            await servicer.start()
            assert first in await ids(servicer) and second not in await ids(servicer)
        await sync_catalog(pool, config(second))  # type: ignore[arg-type]
        await connections[2].publish(CATALOG_CHANGED_SUBJECT, b"")
        await connections[2].flush()
        started = time.monotonic()
        for servicer in servicers:
            while not (second in await ids(servicer) and first not in await ids(servicer)):
                assert time.monotonic() - started < 2.0, "a process still serves the old catalog"
                await asyncio.sleep(0.02)
    finally:
        for servicer in servicers:
            await servicer.close()
        for nc in connections:
            await nc.close()
