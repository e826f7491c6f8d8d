"""The usage ledger under faults (docs/ledger.md §1), through Envoy with the official SDK, on a
gateway of this module's own whose PostgreSQL, Valkey and NATS are real servers the tests stop and
start, and whose ledger runs in a process of its own that a test kills:

* NATS stopped during traffic and started again;
* the ledger process killed (SIGKILL) in the middle of a batch's transaction;
* PostgreSQL stopped for 30 s during traffic.

After each, every request the clients made (answered or refused) is in each of the three request
log tables exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from services.auth import admin
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.runtime.embedded_postgres import EmbeddedPostgres
from services.runtime.embedded_server import EmbeddedServer
from services.runtime.stores import EmbeddedNats, EmbeddedValkey, free_port
from tests.e2e.harness import ADMIN_KEY, Gateway, gateway_config, start_gateway
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.e2e
MAIN = ("auth", "routing", "adapter", "billing", "analytics", "edge")
TABLES = ("api_requests", "api_responses", "request_analytics")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me once"}]}


@dataclass
class Faulty:
    """The module's gateway and the servers under it."""

    gateway: Gateway
    pool: asyncpg.Pool
    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    urls: StoreUrls


@pytest.fixture(scope="module")
async def faulty(upstream: FakeOpenAI, backup: FakeOpenAI,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Faulty]:
    root: Path = tmp_path_factory.mktemp("ledger-faults")
    postgres = EmbeddedPostgres(root / "postgres", free_port())
    valkey = EmbeddedValkey(root / "valkey", free_port())
    nats = EmbeddedNats(root / "nats", free_port())
    started: list[EmbeddedServer] = []
    try:
        found = []
        for server in (postgres, valkey, nats):
            started.append(server)
            found.append(await asyncio.to_thread(server.start))
        urls = StoreUrls(*found)
        dead = f"http://127.0.0.1:{free_port()}/v1"
        config = gateway_config(upstream.base_url, backup.base_url, dead, [], [])
        saved = os.environ.get("AGGREGATOR_SECRET")  # the session's gateways keep theirs
        try:
            gateway = await start_gateway("all", urls, root / "gateway", config,
                                          groups={"main": MAIN, "ledger": ("ledger",)})
        finally:
            if saved is not None:
                os.environ["AGGREGATOR_SECRET"] = saved
        pool = await create_pool(urls.database_url, max_size=4)
        try:
            yield Faulty(gateway, pool, postgres, nats, urls)
        finally:
            gateway.stop()
            await pool.close()
    finally:
        for server in reversed(started):
            await asyncio.to_thread(server.stop)


@dataclass
class Traffic:
    """One organization's client, and the id of every request it made, answered or not."""

    client: openai.AsyncOpenAI
    sent: list[str] = field(default_factory=list)
    refused: int = 0

    async def send(self, count: int, pause_s: float = 0.0) -> None:
        for _ in range(count):
            try:
                answer = await self.client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
                self.sent.append(answer.headers["x-request-id"])
            except openai.APIStatusError as error:  # refused: logged all the same
                self.sent.append(error.response.headers["x-request-id"])
                self.refused += 1
            if pause_s:
                await asyncio.sleep(pause_s)  # paces the traffic; waits for nothing


@pytest.fixture
async def traffic(faulty: Faulty) -> AsyncIterator[Traffic]:
    org_id = await admin.create_org(faulty.pool, f"faults-{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(base_url=faulty.gateway.base_url,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"}) as http:
        created = await http.post("/v1/api-keys", json={"name": "faults", "organization_id": org_id})
        key = created.json()["key"]
    async with openai.AsyncOpenAI(base_url=faulty.gateway.base_url + "/v1", api_key=key, max_retries=0,
                                  timeout=60) as client:
        yield Traffic(client)


async def counts(pool: asyncpg.Pool, request_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per table: (rows, distinct request ids) among `request_ids`."""
    found = {}
    for table in TABLES:
        row = await pool.fetchrow(f"SELECT count(*) AS rows, count(DISTINCT request_id) AS ids FROM {table} "
                                  "WHERE request_id = ANY($1::text[])", request_ids)
        found[table] = (row["rows"], row["ids"])
    return found


async def logged_once(pool: asyncpg.Pool, request_ids: list[str],
                      within_s: float) -> dict[str, tuple[int, int]]:
    """Polls until every request is in every table, then answers the counts (any duplicate shows)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            found = await counts(pool, request_ids)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            found = {}  # PostgreSQL still starting
        if all(ids == len(request_ids) for _, ids in found.values()) and found:
            await asyncio.sleep(1.5)  # a duplicate written late (a redelivered batch) would show now
            return await counts(pool, request_ids)
        if time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


def exactly_once(request_ids: list[str]) -> dict[str, tuple[int, int]]:
    return dict.fromkeys(TABLES, (len(request_ids), len(request_ids)))


async def test_nats_stopped_during_traffic_loses_nothing(faulty: Faulty, traffic: Traffic) -> None:
    await traffic.send(20)
    await asyncio.to_thread(faulty.nats.stop)
    await traffic.send(20)  # answered: their events wait in the workers' durable outbox
    await asyncio.to_thread(faulty.nats.start)
    await traffic.send(20)
    assert len(set(traffic.sent)) == 60 and traffic.refused == 0
    assert await logged_once(faulty.pool, traffic.sent, within_s=90) == exactly_once(traffic.sent)


async def _blocked_ledger_inserts(pool: asyncpg.Pool, within_s: float = 60) -> int:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'INSERT INTO request_analytics%'")
        if waiting:
            return int(waiting)
        await asyncio.sleep(0.1)
    return 0


async def test_the_ledger_killed_mid_batch_loses_nothing_and_writes_nothing_twice(
        faulty: Faulty, traffic: Traffic) -> None:
    ledger = faulty.gateway.processes["ledger"]
    async with faulty.pool.acquire() as conn:
        hold = conn.transaction()
        await hold.start()
        # The ledger's batch writes api_requests and api_responses, then waits here: mid-transaction.
        await conn.execute("LOCK TABLE request_analytics IN EXCLUSIVE MODE")
        await traffic.send(30)
        assert await _blocked_ledger_inserts(faulty.pool) >= 1, "the ledger never reached its third insert"
        ledger.send_signal(signal.SIGKILL)
        await asyncio.to_thread(ledger.wait, 30)
        await hold.rollback()
    # The killed transaction left nothing behind, not even its first two inserts.
    assert await counts(faulty.pool, traffic.sent) == dict.fromkeys(TABLES, (0, 0))
    faulty.gateway.respawn("ledger")
    # JetStream delivers the unacknowledged batch again after the consumer's ack wait (30 s).
    assert await logged_once(faulty.pool, traffic.sent, within_s=120) == exactly_once(traffic.sent)


async def test_postgresql_stopped_for_30_s_loses_nothing(faulty: Faulty, traffic: Traffic) -> None:
    await traffic.send(10)  # the key is in the workers' caches now
    assert await logged_once(faulty.pool, traffic.sent, within_s=60) == exactly_once(traffic.sent)
    await asyncio.to_thread(faulty.postgres.stop)
    outage_ends = time.monotonic() + 30
    during = 0
    while time.monotonic() < outage_ends:
        await traffic.send(1, pause_s=0.5)
        during += 1
    await asyncio.to_thread(faulty.postgres.start)
    await traffic.send(10)
    assert during >= 20 and len(set(traffic.sent)) == len(traffic.sent)
    assert await logged_once(faulty.pool, traffic.sent, within_s=120) == exactly_once(traffic.sent)
