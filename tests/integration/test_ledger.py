"""The usage ledger on real NATS JetStream and PostgreSQL (services/analytics/ledger.py): events
published to stream USAGE land once in api_requests, api_responses and request_analytics with
their exact cost, a duplicate changes nothing, a batch is acknowledged only after its commit (a
PostgreSQL outage loses nothing), an event of a month without a partition creates it, and the
stream keeps an event only until the ledger acknowledged it (interest retention, on a NATS server
of the test's own)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy
from prometheus_client import REGISTRY

from aggregator.events.v1 import usage_event_pb2 as ev
from services.analytics.ledger import Ledger
from services.auth import admin
from services.core import telemetry
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.migrate import apply_migrations
from services.core.nats import (
    LEDGER_CONSUMER,
    USAGE_STREAM,
    USAGE_SUBJECT_PREFIX,
    connect_nats,
    ensure_streams,
    ledger_consumer_config,
    usage_stream_config,
)
from services.runtime.stores import EmbeddedNats, free_port
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
    await ensure_streams(js)
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


@pytest.fixture
async def own_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """A NATS server of this test's own: the session's stream has the e2e gateways' ledgers."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), free_port())
    url = await asyncio.to_thread(server.start)
    try:
        nc = await connect_nats(url, "ledger-retention-test")
        try:
            yield nc
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(server.stop)


async def stored(nc: Client) -> int:
    return int((await nc.jetstream().stream_info(USAGE_STREAM)).state.messages)


async def until_stored(nc: Client, count: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while (found := await stored(nc)) != count:
        assert time.monotonic() < deadline, f"the stream holds {found} events, not {count}"
        await asyncio.sleep(0.1)


async def test_the_stream_keeps_an_event_until_the_ledger_acknowledged_it(
        pool: asyncpg.Pool, migrated_database_url: str, own_nats: Client) -> None:
    """Events published before any ledger ran are kept (the ledger's consumer exists with the
    stream); a batch the ledger fetched but could not write stays; once written and acknowledged,
    every event leaves the stream."""
    nc = own_nats
    org_id = await admin.create_org(pool, f"ledger-{uuid.uuid4().hex[:8]}")
    early = [event(org_id) for _ in range(5)]
    await publish(nc, early)  # creates the stream with the ledger's consumer: no ledger runs yet
    info = await nc.jetstream().stream_info(USAGE_STREAM)
    assert info.config.retention == RetentionPolicy.INTEREST and info.state.messages == 5
    broken = await create_pool(migrated_database_url, max_size=1)
    await broken.close()  # PostgreSQL away for this ledger: every batch is handed back (nak)
    failing = Ledger(nc, broken, wait_s=0.2)
    await failing.start()
    try:
        deadline = time.monotonic() + 15
        while (await nc.jetstream().consumer_info(USAGE_STREAM, LEDGER_CONSUMER)).num_redelivered == 0:
            assert time.monotonic() < deadline, "the failing ledger never fetched the events"
            await asyncio.sleep(0.1)
    finally:
        await failing.stop()
    assert await stored(nc) == 5  # delivered, not acknowledged: kept
    ledger = Ledger(nc, pool, wait_s=0.2)
    await ledger.start()
    try:
        # A batch the failing ledger fetched as it stopped comes back after the ack wait (30 s).
        assert len(await rows(pool, [e.request_id for e in early], within=60.0)) == 5
        await until_stored(nc, 0)
        late = [event(org_id) for _ in range(20)]
        await publish(nc, late)
        assert len(await rows(pool, [e.request_id for e in late])) == 20
        await until_stored(nc, 0)
    finally:
        await ledger.stop()
    state = (await nc.jetstream().stream_info(USAGE_STREAM)).state
    assert state.messages == 0 and state.last_seq == 25


async def test_a_limits_stream_of_an_older_release_migrates_in_place(
        pool: asyncpg.Pool, own_nats: Client) -> None:
    """A stream of an older release (limits retention) whose ledger acknowledged some events:
    ensure_streams switches it to interest in place; the acknowledged events leave, the others
    stay and are written afterwards."""
    nc = own_nats
    js = nc.jetstream()
    org_id = await admin.create_org(pool, f"ledger-{uuid.uuid4().hex[:8]}")
    await js.add_stream(replace(usage_stream_config(), retention=RetentionPolicy.LIMITS))
    subscription = await js.pull_subscribe(USAGE_SUBJECT_PREFIX + ">", durable=LEDGER_CONSUMER,
                                           stream=USAGE_STREAM, config=ledger_consumer_config())
    events = [event(org_id) for _ in range(10)]
    for message in events:
        await js.publish(USAGE_SUBJECT_PREFIX + org_id, message.SerializeToString(), stream=USAGE_STREAM,
                         headers={"Nats-Msg-Id": message.request_id})
    for message in await subscription.fetch(4, timeout=5):
        await message.ack_sync()  # as the old ledger did, after writing them (not here)
    await subscription.unsubscribe()
    assert await stored(nc) == 10  # limits retention: acknowledged events stay
    await ensure_streams(js)
    info = await js.stream_info(USAGE_STREAM)
    assert info.config.retention == RetentionPolicy.INTEREST
    await until_stored(nc, 6)
    ledger = Ledger(nc, pool, wait_s=0.2)
    await ledger.start()
    try:
        assert len(await rows(pool, [e.request_id for e in events[4:]])) == 6
        await until_stored(nc, 0)
    finally:
        await ledger.stop()
