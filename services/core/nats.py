"""The NATS client (nats-py) and the JetStream streams this system owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

_log = logging.getLogger(__name__)

USAGE_STREAM = "USAGE"
USAGE_SUBJECT_PREFIX = "usage."


# The USAGE stream's size limit by default (`ledger.stream_max_bytes`): about 3 million events
# without bodies. A safety net: an event leaves the stream once every consumer acknowledged it
# (docs/ledger.md §1); the limit only bites when the ledger is away for that long.
USAGE_STREAM_MAX_BYTES = 1 << 30

# How long JetStream remembers a request id to store a republished event once. A republish is the
# outbox replaying an event whose publish timed out (every 5 s, services/core/events.py), so a
# minute covers it; past it the ledger's unique request id dedupes. nats-server keeps every id of
# the window in its heap, about a quarter of a KiB each: 10 minutes at 860 requests a second are
# 500,000 ids and over 100 MiB (docs/performance.md §Memory).
USAGE_DUPLICATE_WINDOW_S = 60

# JetStream's error code for a stream update that changes its retention (nats-server before 2.10).
RETENTION_FIXED = 10052

# The ledger's durable consumer (services/analytics/ledger.py), shared by every ledger process. It
# is created with the stream (ensure_streams): an interest stream keeps only what a consumer wants.
LEDGER_CONSUMER = "ledger-writer"
LEDGER_ACK_WAIT_S = 30  # seconds before JetStream delivers an unacknowledged batch again


def usage_stream_config(replicas: int = 1, max_bytes: int = USAGE_STREAM_MAX_BYTES) -> StreamConfig:
    """Usage events, deduplicated by request id (`Nats-Msg-Id`) for USAGE_DUPLICATE_WINDOW_S, kept
    until every consumer acknowledged them (interest retention), and at most `max_bytes` (then the
    oldest go first). No age limit: an event waits for the ledger however long the ledger is away,
    and the alert on the ledger's backlog fires long before the oldest unread event could be
    pushed out (docs/ledger.md §1)."""
    return StreamConfig(
        name=USAGE_STREAM, subjects=[USAGE_SUBJECT_PREFIX + ">"], storage=StorageType.FILE,
        retention=RetentionPolicy.INTEREST, discard=DiscardPolicy.OLD, num_replicas=replicas,
        duplicate_window=USAGE_DUPLICATE_WINDOW_S, max_age=0, max_bytes=max_bytes)


def ledger_consumer_config(durable: str = LEDGER_CONSUMER, subject: str = USAGE_SUBJECT_PREFIX + ">",
                           ack_wait: float = LEDGER_ACK_WAIT_S) -> ConsumerConfig:
    """The ledger's durable pull consumer: every event from the first, acknowledged one by one
    after its batch's commit."""
    return ConsumerConfig(name=durable, durable_name=durable, filter_subject=subject,
                          deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                          ack_wait=ack_wait, max_ack_pending=20_000)


async def connect_nats(url: str, name: str, *, connect_timeout: float = 30.0,
                       reconnected_cb: Callable[[], Awaitable[None]] | None = None) -> Client:
    """Connects to `url`, labelled `name`; once connected it reconnects forever, logging quietly.

    The first connection is retried until `connect_timeout`, then ConnectionError is raised
    (naming host and port only: a URL may carry credentials). `reconnected_cb` runs after each
    reconnection, for subscribers that must make up for messages missed while disconnected.
    """
    where = urlsplit(url)
    label = f"{where.hostname}:{where.port or 4222}"
    client = Client()
    outage = {"reported": False}

    async def on_error(exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt here; one line per outage is enough.
        if not outage["reported"]:
            _log.warning("nats %s: %s", label, type(exc).__name__)
            outage["reported"] = True

    async def on_disconnected() -> None:
        if not client.is_closed and not outage["reported"]:
            _log.warning("nats %s: disconnected; reconnecting", label)
            outage["reported"] = True

    async def on_reconnected() -> None:
        outage["reported"] = False
        _log.info("nats %s: reconnected", label)
        if reconnected_cb is not None:
            await reconnected_cb()

    try:
        await asyncio.wait_for(client.connect(
            servers=[url], name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
            connect_timeout=2, error_cb=on_error, disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected), connect_timeout)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise ConnectionError(f"cannot connect to NATS at {label}") from exc
    return client


async def upsert_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Creates a stream or brings its configuration up to date (safe for concurrent workers)."""
    try:
        await js.update_stream(config)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Another worker created it between our two calls.
            await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1,
                         usage_max_bytes: int = USAGE_STREAM_MAX_BYTES) -> None:
    """Creates the streams this system publishes to, or brings their configuration up to date.

    USAGE is an interest stream, which drops an event no consumer wants at the time it is
    published. So the ledger's consumer exists before the stream keeps events by interest: a new
    stream is created with limits retention, the consumer added, then the stream switched to
    interest. The switch is also how a stream of an older release (limits retention) migrates, in
    place (nats-server 2.10 or later): what the ledger already acknowledged leaves the stream,
    what it has not stays.
    """
    config = usage_stream_config(replicas, usage_max_bytes)
    try:
        await js.stream_info(USAGE_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(replace(config, retention=RetentionPolicy.LIMITS))
        except BadRequestError:
            pass  # another worker created it between our two calls
    await js.add_consumer(USAGE_STREAM, ledger_consumer_config())  # creates, or updates in place
    try:
        await upsert_stream(js, config)
    except APIError as exc:
        if exc.err_code != RETENTION_FIXED:
            raise
        # nats-server before 2.10 cannot change a stream's retention: USAGE keeps limits retention
        # there, so acknowledged events stay until the size limit. Nothing is lost; only the memory
        # interest retention saves is not.
        _log.warning("this nats-server cannot change a stream's retention (2.10 or later can): "
                     "stream %s keeps limits retention", USAGE_STREAM)
        await upsert_stream(js, replace(config, retention=RetentionPolicy.LIMITS))


async def unsubscribe_quietly(subscription: Any) -> None:
    """Ends a core NATS subscription; a connection that is already closed is no error here."""
    if subscription is None:
        return
    try:
        await subscription.unsubscribe()
    except Exception as exc:  # noqa: BLE001 - the connection may already be closed
        _log.debug("unsubscribe failed: %s", type(exc).__name__)
