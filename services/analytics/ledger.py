"""The usage ledger: stream USAGE written to `api_requests`, `api_responses` and
`request_analytics` (migrations/0003_create_request_log.sql), in batches, by a durable pull
consumer (`ledger-writer`) shared by every analytics process, acknowledged only after the commit.

Idempotent by request id: the tables' unique `(request_id, created_at)` turns a replayed or
duplicated event into nothing (`ON CONFLICT DO NOTHING`). An event of a month without a partition
(a replay after a long outage, or a clock far ahead) creates the partitions it needs, then is
written. An event that cannot be decoded is logged and acknowledged: it could never be written.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from aggregator.events.v1 import usage_event_pb2 as ev
from services.core import telemetry
from services.core.consumer import PullConsumer
from services.core.nats import USAGE_STREAM, USAGE_SUBJECT_PREFIX

log = logging.getLogger(__name__)

LEDGER_CONSUMER = "ledger-writer"
# Between batches smaller than a full one: a request reaches the ledger at most about this much
# later, and each transaction carries many requests rather than one (docs/architecture.md §4).
LINGER_S = 1.0
TABLES = ("api_requests", "api_responses", "request_analytics")
_STATUS = {ev.REQUEST_STATUS_SUCCEEDED: "succeeded", ev.REQUEST_STATUS_FAILED: "failed",
           ev.REQUEST_STATUS_CANCELLED: "cancelled"}

_REQUESTS = (
    "INSERT INTO api_requests (request_id, organization_id, api_key_id, endpoint, public_model, stream, "
    "created_at) SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], "
    "$6::boolean[], $7::timestamptz[]) ON CONFLICT (request_id, created_at) DO NOTHING")
_RESPONSE_COLUMNS = (
    "request_id, organization_id, provider, upstream_model, status, http_status, error_reason, "
    "prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cache_creation_tokens, cost_usd, "
    "latency_ms, time_to_first_token_ms, attempts, created_at")
_RESPONSE_TYPES = ("$1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[], "
                   "$8::int[], $9::int[], $10::int[], $11::int[], $12::int[], $13::numeric[], $14::int[], "
                   "$15::int[], $16::int[], $17::timestamptz[]")
_RESPONSES = (f"INSERT INTO api_responses ({_RESPONSE_COLUMNS}) SELECT * FROM unnest({_RESPONSE_TYPES}) "
              "ON CONFLICT (request_id, created_at) DO NOTHING")
_ANALYTICS = (
    f"INSERT INTO request_analytics ({_RESPONSE_COLUMNS}, api_key_id, endpoint, public_model, stream, "
    f"cache_hit) SELECT * FROM unnest({_RESPONSE_TYPES}, $18::uuid[], $19::text[], $20::text[], "
    "$21::boolean[], $22::boolean[]) ON CONFLICT (request_id, created_at) DO NOTHING")


def _uuid(value: str) -> str | None:
    return value or None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _cost(value: str) -> Decimal:
    try:
        cost = Decimal(value or "0")
    except InvalidOperation:
        return Decimal(0)
    return cost if cost.is_finite() else Decimal(0)


def columns(events: list[ev.UsageEvent]) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    """The column arrays of the three tables for a batch of events."""
    created = [e.created_at.ToDatetime(tzinfo=UTC) if e.HasField("created_at") else datetime.now(UTC)
               for e in events]
    requests = [[e.request_id for e in events], [e.organization_id for e in events],
                [_uuid(e.api_key_id) for e in events], [e.endpoint for e in events],
                [e.public_model for e in events], [e.stream for e in events], created]
    responses = [[e.request_id for e in events], [e.organization_id for e in events],
                 [e.provider for e in events], [e.upstream_model for e in events],
                 [_STATUS.get(e.status, "failed") for e in events], [e.http_status for e in events],
                 [e.error_reason or None for e in events], [e.prompt_tokens for e in events],
                 [e.completion_tokens for e in events], [e.cached_tokens for e in events],
                 [e.reasoning_tokens for e in events], [e.cache_creation_tokens for e in events],
                 [_cost(e.cost_usd) for e in events], [e.latency_ms for e in events],
                 [e.time_to_first_token_ms or None for e in events], [max(e.attempts, 1) for e in events],
                 created]
    analytics = [*responses, [_uuid(e.api_key_id) for e in events], [e.endpoint for e in events],
                 [e.public_model for e in events], [e.stream for e in events], [e.cache_hit for e in events]]
    return requests, responses, analytics


async def write_events(pool: asyncpg.Pool, events: list[ev.UsageEvent]) -> None:
    """Writes a batch to the three tables in one transaction; creates missing month partitions."""
    requests, responses, analytics = columns(events)
    for attempt in range(2):
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_REQUESTS, *requests)
                await conn.execute(_RESPONSES, *responses)
                await conn.execute(_ANALYTICS, *analytics)
            return
        except asyncpg.CheckViolationError:  # "no partition of relation ... found for row"
            if attempt:
                raise
            months_behind = max(0, max((datetime.now(UTC) - c).days // 28 + 1 for c in requests[6]))
            async with pool.acquire() as conn:
                for table in TABLES:
                    await conn.execute("SELECT ensure_monthly_partitions($1, 3, $2)", table, months_behind)


class Ledger(PullConsumer):
    """Writes stream USAGE to the request log, `batch` events per transaction."""

    name = "usage-ledger"

    def __init__(self, nc: Client, pool: asyncpg.Pool, *, batch: int = 500, wait_s: float = 1.0,
                 linger_s: float = LINGER_S, durable: str = LEDGER_CONSUMER,
                 subject: str = USAGE_SUBJECT_PREFIX + ">") -> None:
        super().__init__(batch=batch, wait_s=wait_s, linger_s=linger_s)
        self._nc = nc
        self._pool = pool
        self._durable = durable
        self._subject = subject
        self.ack_wait = 30  # seconds before JetStream delivers an unacknowledged batch again

    async def _subscribe(self) -> Any:
        return await self._nc.jetstream().pull_subscribe(
            self._subject, durable=self._durable, stream=USAGE_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                  max_ack_pending=20_000))

    async def write(self, messages: list[Any]) -> int:
        """Writes a batch, then acknowledges every message of it; answers the events written."""
        events = []
        for message in messages:
            try:
                event = ev.UsageEvent.FromString(message.data)
            except Exception:
                log.error("usage ledger: undecodable event dropped (%d bytes)", len(message.data))
                continue
            if event.request_id and _is_uuid(event.organization_id) and (
                    not event.api_key_id or _is_uuid(event.api_key_id)):
                events.append(event)
            else:
                log.error("usage ledger: event %s without a valid organization dropped",
                          event.request_id[:64])
        if events:
            await write_events(self._pool, events)
            observe_lag(events)
        for message in messages:
            await message.ack()
        if messages:
            telemetry.LEDGER_PENDING.set(pending_after(messages[-1]))
        return len(events)

    def idle(self) -> None:
        telemetry.LEDGER_PENDING.set(0)


def observe_lag(events: list[ev.UsageEvent]) -> None:
    """Each committed event's lag, from its creation to now (docs/observability.md §2 "LedgerLag")."""
    now = datetime.now(UTC).timestamp()
    for event in events:
        if event.HasField("created_at"):
            telemetry.LEDGER_LAG.observe(max(0.0, now - event.created_at.ToNanoseconds() / 1e9))


def pending_after(message: Any) -> int:
    """How many messages JetStream still held for the consumer when it delivered `message`."""
    try:
        return int(message.metadata.num_pending)
    except Exception:  # noqa: BLE001 - a message without JetStream metadata: nothing known
        return 0
