"""UsagePublisher against a real NATS JetStream: deduplication and the durable outbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType
from prometheus_client import REGISTRY

from aggregator.events.v1 import usage_event_pb2
from services.core.config import StoreUrls
from services.core.events import UsagePublisher
from services.core.nats import (
    LEDGER_CONSUMER,
    USAGE_DUPLICATE_WINDOW_S,
    USAGE_STREAM,
    USAGE_STREAM_MAX_BYTES,
    connect_nats,
    ensure_streams,
    ledger_consumer_config,
)
from services.runtime.stores import free_port
from tests.support.tcp_proxy import TcpProxy


def _event(org: str, request_id: str | None = None) -> usage_event_pb2.UsageEvent:
    event = usage_event_pb2.UsageEvent(
        request_id=f"req_{uuid.uuid4().hex}" if request_id is None else request_id, organization_id=org,
        api_key_id=str(uuid.uuid4()), endpoint="chat.completions", public_model="gpt-4o-mini",
        provider="openai", upstream_model="gpt-4o-mini", status=usage_event_pb2.REQUEST_STATUS_SUCCEEDED,
        http_status=200, prompt_tokens=12, completion_tokens=30, cost_usd="0.0000198", latency_ms=420,
        attempts=1)
    event.created_at.GetCurrentTime()
    return event


async def _stored(js: JetStreamContext, org: str) -> int:
    """How many messages the USAGE stream holds for this organization."""
    subject = f"usage.{org}"
    info = await js.stream_info(USAGE_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def _until(condition: Callable[[], bool | Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"outbox": "usage"}) or 0.0


@pytest.fixture
async def nc(store_urls: StoreUrls) -> AsyncIterator[Client]:
    client = await connect_nats(store_urls.nats_url, "test-events")
    await ensure_streams(client.jetstream())
    yield client
    await client.close()


@pytest.fixture
async def org(nc: Client) -> AsyncIterator[str]:
    """A fresh organization id whose events stay in the stream for the test to count: a consumer
    of its own that never acknowledges keeps them there (an interest stream), whatever the ledgers
    of the e2e gateways alive in the same session acknowledge."""
    org_id = str(uuid.uuid4())
    js = nc.jetstream()
    holder = f"test-events-{org_id}"
    await js.add_consumer(USAGE_STREAM, ConsumerConfig(name=holder, durable_name=holder,
                                                       filter_subject=f"usage.{org_id}",
                                                       ack_policy=AckPolicy.EXPLICIT))
    yield org_id
    await js.delete_consumer(USAGE_STREAM, holder)


@pytest.fixture
async def proxy(store_urls: StoreUrls) -> AsyncIterator[TcpProxy]:
    target = urlsplit(store_urls.nats_url)
    tcp_proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 4222)
    await tcp_proxy.restore()
    yield tcp_proxy
    await tcp_proxy.cut()


async def test_ensure_streams_configures_usage(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)  # a second call (another worker starting) is harmless
    config = (await js.stream_info(USAGE_STREAM)).config
    assert config.subjects == ["usage.>"]
    assert config.storage == StorageType.FILE
    assert config.duplicate_window == USAGE_DUPLICATE_WINDOW_S == 60
    # Kept until acknowledged, with no age limit: an unread event never ages out while the ledger
    # is away; the size limit is a safety net (docs/ledger.md §1).
    assert config.max_age in (0, None) and config.max_bytes == USAGE_STREAM_MAX_BYTES
    # Interest retention where the server can switch a stream to it (2.10 and later: the embedded
    # one); an older server (a machine's own, in make integration-external) keeps limits retention.
    version = nc.connected_server_version
    expected_retention = RetentionPolicy.INTEREST if (version.major, version.minor) >= (2, 10) \
        else RetentionPolicy.LIMITS
    assert config.retention == expected_retention and config.discard == DiscardPolicy.OLD
    # The ledger's consumer exists with the stream, as the ledger defines it: an interest stream
    # would drop the events published before the first ledger process subscribed.
    consumer = (await js.consumer_info(USAGE_STREAM, LEDGER_CONSUMER)).config
    expected = ledger_consumer_config()
    assert (consumer.filter_subject, consumer.ack_policy, consumer.ack_wait, consumer.max_ack_pending) == (
        expected.filter_subject, expected.ack_policy, expected.ack_wait, expected.max_ack_pending)


async def test_same_request_id_is_stored_once(org: str, nc: Client, tmp_path: Path) -> None:
    publisher = UsagePublisher(nc, tmp_path / "outbox")
    event = _event(org)
    await publisher.publish(event)
    await publisher.publish(event)
    await publisher.publish(_event(org))  # another request: stored too
    js = nc.jetstream()
    assert await _stored(js, org) == 2
    assert publisher.pending() == 0
    first = await js.get_msg(USAGE_STREAM, seq=1, subject=f"usage.{org}", next=True)
    assert usage_event_pb2.UsageEvent.FromString(first.data) == event
    assert first.headers is not None and first.headers["Nats-Msg-Id"] == event.request_id


async def test_event_survives_an_outage_in_the_outbox(org: str, nc: Client, proxy: TcpProxy,
                                                      tmp_path: Path) -> None:
    reconnected = asyncio.Event()

    async def on_reconnected() -> None:
        reconnected.set()

    through_proxy = await connect_nats(f"nats://127.0.0.1:{proxy.port}", "test-outage",
                                       reconnected_cb=on_reconnected)
    try:
        publisher = UsagePublisher(through_proxy, tmp_path / "outbox", publish_timeout=1.0)
        await proxy.cut()
        await _until(lambda: not through_proxy.is_connected)
        event = _event(org)
        writes = _sample("aggregator_outbox_writes_total")
        started = time.monotonic()
        await publisher.publish(event)
        assert time.monotonic() - started < 1.0  # the request path is not held up
        assert publisher.pending() == 1
        assert _sample("aggregator_outbox_writes_total") == writes + 1
        assert (tmp_path / "outbox" / f"{event.request_id}.pb").read_bytes() == event.SerializeToString()
        assert await publisher.replay_outbox() == 0  # still down: kept
        assert _sample("aggregator_outbox_events") == 1  # the "outbox growing" alert's gauge

        await proxy.restore()
        await asyncio.wait_for(reconnected.wait(), 15)
        assert through_proxy.is_connected
        assert await publisher.replay_outbox() == 1
        assert publisher.pending() == 0
        assert _sample("aggregator_outbox_events") == 0
        assert await publisher.replay_outbox() == 0
        await publisher.publish(event)  # a late duplicate of the same request
        assert await _stored(nc.jetstream(), org) == 1
    finally:
        await through_proxy.close()


async def test_a_publish_that_times_out_goes_to_the_outbox(nc: Client, store_urls: StoreUrls,
                                                           tmp_path: Path) -> None:
    # Connected, but JetStream does not answer in time: a proxy that swallows every byte sent.
    org = str(uuid.uuid4())
    target = urlsplit(store_urls.nats_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 4222)
    await proxy.restore()
    client = await connect_nats(f"nats://127.0.0.1:{proxy.port}", "test-slow")
    try:
        publisher = UsagePublisher(client, tmp_path / "outbox", publish_timeout=0.3)
        proxy.stall_upstream = True
        started = time.monotonic()
        await publisher.publish(_event(org))
        assert time.monotonic() - started < 1.5
        assert publisher.pending() == 1
    finally:
        await client.close()
        await proxy.cut()


async def test_background_replay_and_drain_on_stop(org: str, nc: Client, proxy: TcpProxy,
                                                   tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    through_proxy = await connect_nats(f"nats://127.0.0.1:{proxy.port}", "test-replay")
    try:
        await proxy.cut()
        await _until(lambda: not through_proxy.is_connected)
        publisher = UsagePublisher(through_proxy, outbox, replay_interval=0.1)
        await publisher.start()
        for _ in range(3):
            await publisher.publish(_event(org))
        assert publisher.pending() == 3
        await proxy.restore()
        # The background task publishes them once NATS is back.
        await _until(lambda: publisher.pending() == 0)
        await publisher.stop()
        assert await _stored(nc.jetstream(), org) == 3
    finally:
        await through_proxy.close()

    # An event left by an earlier run is drained by stop() even when the loop never got to it.
    leftover = UsagePublisher(nc, outbox, replay_interval=3600)
    event = _event(org)
    leftover._write_outbox(event.request_id, event.SerializeToString())
    await leftover.stop()
    assert leftover.pending() == 0
    assert await _stored(nc.jetstream(), org) == 4


async def test_connect_nats_gives_up_on_an_unreachable_server() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="127.0.0.1"):
        await connect_nats(f"nats://127.0.0.1:{free_port()}", "test-unreachable", connect_timeout=1.0)
    assert time.monotonic() - started < 3.0


async def test_events_without_ids_are_refused(nc: Client, tmp_path: Path) -> None:
    publisher = UsagePublisher(nc, tmp_path / "outbox")
    with pytest.raises(ValueError, match="request_id"):
        await publisher.publish(_event(str(uuid.uuid4()), request_id=""))
    with pytest.raises(ValueError, match="organization_id"):
        await publisher.publish(_event("org.with.dots"))
