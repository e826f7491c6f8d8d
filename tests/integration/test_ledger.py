"""The usage ledger on real NATS JetStream and PostgreSQL (services/analytics/ledger.py): events
published to stream USAGE land once in api_requests, api_responses and request_analytics with
their exact cost, a duplicate changes nothing, a batch is acknowledged only after its commit (a
PostgreSQL outage loses nothing), and an event of a month without a partition creates it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client import REGISTRY

from aggregator.events.v1 import usage_event_pb2 as ev
from services.analytics.ledger import Ledger
from services.auth import admin
from services.core import telemetry
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.migrate import apply_migrations
from services.core.nats import (
    USAGE_STREAM,
    USAGE_SUBJECT_PREFIX,
    connect_nats,
    upsert_stream,
    usage_stream_config,
)
from tests.support.stores import create_database, drop_database

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(migrated_database_url, max_size=4)
    yield created
    await created.close()


def event(org_id: str, cost: str = "0.0012345678", created: datetime | None = None) -> ev.UsageEvent:
    message = ev.UsageEvent(request_id=f"req-{uuid.uuid4()}", organization_id=org_id,
                            endpoint="chat.completions",
                            public_model="gpt-4o-mini", provider="fakeai", upstream_model="gpt-4o-mini",
                            status=ev.REQUEST_STATUS_SUCCEEDED, http_status=200, prompt_tokens=12,
                            completion_tokens=34, cost_usd=cost, latency_ms=80, attempts=1)
    message.created_at.FromDatetime(created or datetime.now(UTC))
    return message


async def publish(nc: object, events: list[ev.UsageEvent], *, msg_id: bool = True) -> None:
    js = nc.jetstream()  # type: ignore[attr-defined]
    await upsert_stream(js, usage_stream_config())
    for message in events:
        headers = {"Nats-Msg-Id": message.request_id} if msg_id else {"Nats-Msg-Id": str(uuid.uuid4())}
        await js.publish(USAGE_SUBJECT_PREFIX + message.organization_id, message.SerializeToString(),
                         stream=USAGE_STREAM, headers=headers)


async def rows(pool: asyncpg.Pool, request_ids: list[str], within: float = 15.0) -> list[asyncpg.Record]:
    deadline = time.monotonic() + within
    while True:
        found = await pool.fetch(
            "SELECT a.request_id, a.cost_usd, a.prompt_tokens, a.completion_tokens, "
            "(SELECT count(*) FROM api_requests r WHERE r.request_id = a.request_id) AS requests, "
            "(SELECT count(*) FROM api_responses s WHERE s.request_id = a.request_id) AS responses "
            "FROM request_analytics a WHERE a.request_id = ANY($1::text[])", request_ids)
        if len(found) >= len(request_ids) or time.monotonic() > deadline:
            return list(found)
        await asyncio.sleep(0.1)


async def test_events_land_once_in_every_table_with_their_exact_cost(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    org_id = await admin.create_org(pool, f"ledger-{uuid.uuid4().hex[:8]}")
    nc = await connect_nats(store_urls.nats_url, "ledger-test")
    ledger = own_ledger(nc, pool, org_id)
    lagged = REGISTRY.get_sample_value("aggregator_ledger_lag_seconds_count") or 0.0
    telemetry.LEDGER_PENDING.set(-1)  # a value only this test sets: the ledger must replace it
    await ledger.start()
    try:
        events = [event(org_id, cost=f"0.000{i:02d}12345") for i in range(30)]  # 10 decimals, as kept
        await publish(nc, events)
        await publish(nc, events[:10], msg_id=False)  # duplicates JetStream cannot recognise
        found = await rows(pool, [e.request_id for e in events])
        await asyncio.sleep(0.5)  # a duplicate written late would show now
        found = await rows(pool, [e.request_id for e in events])
        # Every committed event's lag is observed; once all is consumed, nothing is pending.
        assert (REGISTRY.get_sample_value("aggregator_ledger_lag_seconds_count") or 0.0) >= lagged + 30
        deadline = time.monotonic() + 15
        while REGISTRY.get_sample_value("aggregator_ledger_pending_events") != 0:
            assert time.monotonic() < deadline, "the ledger never reported an empty backlog"
            await asyncio.sleep(0.1)
    finally:
        await ledger.stop()
        await nc.close()
    assert len(found) == 30 and all(r["requests"] == 1 and r["responses"] == 1 for r in found)
    by_id = {r["request_id"]: r for r in found}
    for e in events:
        assert by_id[e.request_id]["cost_usd"] == Decimal(e.cost_usd)
    total = await pool.fetchval("SELECT sum(cost_usd) FROM request_analytics "
                                "WHERE organization_id = $1::uuid", org_id)
    assert total == sum(Decimal(e.cost_usd) for e in events)


async def test_a_postgresql_outage_loses_nothing_and_old_months_get_partitions(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    """A batch is acknowledged only after its commit: with PostgreSQL away nothing is written nor
    lost, and once it is back the events are written (an old month's partition created)."""
    org_id = await admin.create_org(pool, f"ledger-{uuid.uuid4().hex[:8]}")
    nc = await connect_nats(store_urls.nats_url, "ledger-test-2")
    url = await create_database(store_urls.database_url)  # this test's ledger writes here only
    await apply_migrations(url)
    own = await create_pool(url, max_size=2)
    broken = await create_pool(url, max_size=1)
    await broken.close()  # PostgreSQL away: every acquire fails
    events = [event(org_id), event(org_id, created=datetime.now(UTC) - timedelta(days=400))]
    durable = f"ledger-test-{uuid.uuid4().hex[:8]}"
    try:
        failing = own_ledger(nc, broken, org_id, durable=durable, ack_wait=2)
        await publish(nc, events)
        await failing.start()
        await asyncio.sleep(1.5)
        await failing.stop()
        assert await rows(own, [e.request_id for e in events], within=0.1) == []
        ledger = own_ledger(nc, own, org_id, durable=durable, ack_wait=2)
        await ledger.start()
        try:
            found = await rows(own, [e.request_id for e in events], within=30.0)  # redelivered
        finally:
            await ledger.stop()
        assert len(found) == 2 and all(r["requests"] == 1 for r in found)
    finally:
        await own.close()
        await nc.close()
        await drop_database(url)


def own_ledger(nc: object, pool: asyncpg.Pool, org_id: str, *, durable: str = "",
               ack_wait: int = 30) -> Ledger:
    """A ledger of this test's own (its durable consumer, its organization's subject): the
    gateways of the e2e tests, alive in the same session, consume the stream too."""
    ledger = Ledger(nc, pool, wait_s=0.2, durable=durable or f"ledger-test-{uuid.uuid4().hex[:8]}",  # type: ignore[arg-type]
                    subject=USAGE_SUBJECT_PREFIX + org_id)
    ledger.ack_wait = ack_wait
    return ledger


async def test_every_field_of_the_event_reaches_its_column_and_bodies_are_redacted(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    """finish_reason, client IP, user agent, user id and images land in their columns; an address
    that is not one is dropped, not the batch; stored bodies pass through the redaction hook."""
    org_id = await admin.create_org(pool, f"ledger-{uuid.uuid4().hex[:8]}")
    user = str(uuid.uuid4())
    full = event(org_id)
    full.finish_reason, full.client_ip, full.user_agent, full.user_id, full.images = (
        "length", "203.0.113.7", "OpenAI/Python 1.99.0", user, 2)
    full.request_body = b'{"messages":[{"role":"user","content":"I am carol@example.com"}]}'
    full.response_body = b'{"choices":[{"message":{"content":"hello carol@example.com"}}]}'
    odd = event(org_id)
    odd.client_ip, odd.user_id = "not-an-ip", "not-a-uuid"
    odd.response_body = b'[{"id": "c1"}, {"id": "c2"}]'  # a stream's chunks: a JSON array
    nc = await connect_nats(store_urls.nats_url, "ledger-test-3")
    ledger = own_ledger(nc, pool, org_id)
    await ledger.start()
    try:
        await publish(nc, [full, odd])
        assert len(await rows(pool, [full.request_id, odd.request_id])) == 2
    finally:
        await ledger.stop()
        await nc.close()
    request = await pool.fetchrow("SELECT user_id::text, host(client_ip) AS ip, user_agent, body::text "
                                  "FROM api_requests WHERE request_id = $1", full.request_id)
    assert (request["user_id"], request["ip"], request["user_agent"]) == (user, "203.0.113.7",
                                                                         "OpenAI/Python 1.99.0")
    assert "carol@example.com" not in request["body"] and "[REDACTED]" in request["body"]
    response = await pool.fetchrow("SELECT finish_reason, images, body::text FROM api_responses "
                                   "WHERE request_id = $1", full.request_id)
    assert (response["finish_reason"], response["images"]) == ("length", 2)
    assert "carol@example.com" not in response["body"] and "hello [REDACTED]" in response["body"]
    flat = await pool.fetchrow("SELECT user_id::text, finish_reason, images FROM request_analytics "
                               "WHERE request_id = $1", full.request_id)
    assert tuple(flat) == (user, "length", 2)
    kept = await pool.fetchrow("SELECT user_id, client_ip, body FROM api_requests WHERE request_id = $1",
                               odd.request_id)
    assert tuple(kept) == (None, None, None)
    chunks = await pool.fetchval("SELECT body FROM api_responses WHERE request_id = $1", odd.request_id)
    assert chunks == [{"id": "c1"}, {"id": "c2"}]


async def test_values_postgresql_refuses_never_hold_back_a_batch(
        pool: asyncpg.Pool, store_urls: StoreUrls) -> None:
    """NUL characters (a client's model name may carry one) are removed, from bodies too; an event
    PostgreSQL still refuses (a cost past numeric(20, 10)) is dropped alone, and the rest of its
    batch is written at once rather than redelivered for ever."""
    org_id = await admin.create_org(pool, f"ledger-{uuid.uuid4().hex[:8]}")
    nul = event(org_id)
    nul.public_model, nul.user_agent = "gpt\x00-4o", "agent\x00"
    nul.request_body = b'{"model": "gpt\\u0000-4o"}'
    huge = event(org_id, cost="123456789012.5")
    fine = [event(org_id) for _ in range(3)]
    nc = await connect_nats(store_urls.nats_url, "ledger-test-4")
    ledger = own_ledger(nc, pool, org_id)
    try:
        await publish(nc, [nul, huge, *fine])
        await ledger.start()  # all five in one batch
        found = await rows(pool, [e.request_id for e in (nul, *fine)])
    finally:
        await ledger.stop()
        await nc.close()
    assert len(found) == 4
    stored = await pool.fetchrow("SELECT public_model, user_agent, body FROM api_requests "
                                 "WHERE request_id = $1", nul.request_id)
    assert tuple(stored) == ("gpt-4o", "agent", {"model": "gpt-4o"})
    refused = await pool.fetchval("SELECT count(*) FROM api_requests WHERE request_id = $1", huge.request_id)
    assert refused == 0
