"""The usage ledger: stream USAGE written to `api_requests`, `api_responses` and
`request_analytics` (migrations/0003_create_request_log.sql), in batches, by a durable pull
consumer (`ledger-writer`) shared by every analytics process, acknowledged only after the commit.

Idempotent by request id: the tables' unique `(request_id, created_at)` turns a replayed or
duplicated event into nothing (`ON CONFLICT DO NOTHING`). An event of a month without a partition
(a replay after a long outage, or a clock far ahead) creates the partitions it needs, then is
written. An event that cannot be decoded is logged and acknowledged: it could never be written.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
from nats.aio.client import Client

from aggregator.events.v1 import usage_event_pb2 as ev
from services.analytics import bodies
from services.analytics.bodies import Redact
from services.core import telemetry
from services.core.consumer import PullConsumer
from services.core.nats import (
    LEDGER_ACK_WAIT_S,
    LEDGER_CONSUMER,
    USAGE_STREAM,
    USAGE_SUBJECT_PREFIX,
    ledger_consumer_config,
)

log = logging.getLogger(__name__)

# Between batches smaller than a full one: a request reaches the ledger at most about this much
# later, and each transaction carries many requests rather than one (docs/architecture.md §4).
LINGER_S = 1.0
TABLES = ("api_requests", "api_responses", "request_analytics")
_STATUS = {ev.REQUEST_STATUS_SUCCEEDED: "succeeded", ev.REQUEST_STATUS_FAILED: "failed",
           ev.REQUEST_STATUS_CANCELLED: "cancelled"}


def _insert(table: str, columns: list[tuple[str, str]]) -> str:
    """One INSERT of a whole batch: a column array per parameter, unnested into rows; a replayed
    request changes nothing. Bodies travel as text and become jsonb in SQL, since asyncpg would
    read a JSON array inside a jsonb[] parameter as one more dimension."""
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::{'text' if kind == 'jsonb' else kind}[]"
                       for i, (_, kind) in enumerate(columns, start=1))
    values = ", ".join(f"{name}::jsonb" if kind == "jsonb" else name for name, kind in columns)
    return (f"INSERT INTO {table} ({names}) SELECT {values} FROM unnest({arrays}) AS batch({names}) "
            "ON CONFLICT (request_id, created_at) DO NOTHING")


_RESPONSE = [("request_id", "text"), ("organization_id", "uuid"), ("provider", "text"),
             ("upstream_model", "text"), ("status", "text"), ("http_status", "int"), ("error_reason", "text"),
             ("prompt_tokens", "int"), ("completion_tokens", "int"), ("cached_tokens", "int"),
             ("reasoning_tokens", "int"), ("cache_creation_tokens", "int"), ("cost_usd", "numeric"),
             ("latency_ms", "int"), ("time_to_first_token_ms", "int"), ("attempts", "int"),
             ("created_at", "timestamptz"), ("finish_reason", "text"), ("images", "int")]
_REQUESTS = _insert("api_requests", [
    ("request_id", "text"), ("organization_id", "uuid"), ("api_key_id", "uuid"), ("endpoint", "text"),
    ("public_model", "text"), ("stream", "boolean"), ("created_at", "timestamptz"), ("user_id", "uuid"),
    ("client_ip", "inet"), ("user_agent", "text"), ("body", "jsonb")])
_RESPONSES = _insert("api_responses", [*_RESPONSE, ("body", "jsonb")])
_ANALYTICS = _insert("request_analytics", [
    *_RESPONSE, ("api_key_id", "uuid"), ("endpoint", "text"), ("public_model", "text"), ("stream", "boolean"),
    ("cache_hit", "boolean"), ("user_id", "uuid")])


def _without_nul(event: ev.UsageEvent) -> None:
    """Removes NUL characters from the event's text, which PostgreSQL's text cannot hold (a
    client's model name may carry one: the edge records what it was sent)."""
    for field, value in event.ListFields():
        if field.type == field.TYPE_STRING and "\x00" in value:
            setattr(event, field.name, value.replace("\x00", ""))


def _uuid(value: str) -> str | None:
    return value if value and _is_uuid(value) else None


_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def _is_uuid(value: str) -> bool:
    """Whether PostgreSQL's uuid type takes `value` (the hyphenated or plain 32-digit form our ids
    use); a regular expression, not uuid.UUID, on the ledger's per-event path."""
    return _UUID.fullmatch(value) is not None


def _ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def _cost(value: str) -> Decimal:
    try:
        cost = Decimal(value or "0")
    except InvalidOperation:
        return Decimal(0)
    return cost if cost.is_finite() else Decimal(0)


def columns(events: list[ev.UsageEvent], redact: Redact = bodies.redact
            ) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    """The column arrays of the three tables for a batch of events; bodies pass through `redact`."""
    created = [e.created_at.ToDatetime(tzinfo=UTC) if e.HasField("created_at") else datetime.now(UTC)
               for e in events]
    users = [_uuid(e.user_id) for e in events]
    requests = [[e.request_id for e in events], [e.organization_id for e in events],
                [_uuid(e.api_key_id) for e in events], [e.endpoint for e in events],
                [e.public_model for e in events], [e.stream for e in events], created, users,
                [_ip(e.client_ip) for e in events], [e.user_agent[:512] or None for e in events],
                [bodies.stored_json(e.request_body, redact) for e in events]]
    responses = [[e.request_id for e in events], [e.organization_id for e in events],
                 [e.provider for e in events], [e.upstream_model for e in events],
                 [_STATUS.get(e.status, "failed") for e in events], [e.http_status for e in events],
                 [e.error_reason or None for e in events], [e.prompt_tokens for e in events],
                 [e.completion_tokens for e in events], [e.cached_tokens for e in events],
                 [e.reasoning_tokens for e in events], [e.cache_creation_tokens for e in events],
                 [_cost(e.cost_usd) for e in events], [e.latency_ms for e in events],
                 [e.time_to_first_token_ms or None for e in events], [max(e.attempts, 1) for e in events],
                 created, [e.finish_reason or None for e in events], [e.images for e in events]]
    analytics = [*responses, [_uuid(e.api_key_id) for e in events], [e.endpoint for e in events],
                 [e.public_model for e in events], [e.stream for e in events], [e.cache_hit for e in events],
                 users]
    responses = [*responses, [bodies.stored_json(e.response_body, redact) for e in events]]
    return requests, responses, analytics


async def write_events(pool: asyncpg.Pool, events: list[ev.UsageEvent],
                       redact: Redact = bodies.redact) -> None:
    """Writes a batch to the three tables in one transaction; creates missing month partitions."""
    requests, responses, analytics = columns(events, redact)
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
                 subject: str = USAGE_SUBJECT_PREFIX + ">", redact: Redact = bodies.redact) -> None:
        super().__init__(batch=batch, wait_s=wait_s, linger_s=linger_s)
        self._nc = nc
        self._pool = pool
        self._durable = durable
        self._subject = subject
        self._redact = redact  # applied to stored bodies (services/analytics/bodies.py)
        self.ack_wait = LEDGER_ACK_WAIT_S  # seconds before JetStream delivers an unacked batch again

    async def _subscribe(self) -> Any:
        return await self._nc.jetstream().pull_subscribe(
            self._subject, durable=self._durable, stream=USAGE_STREAM,
            config=ledger_consumer_config(self._durable, self._subject, self.ack_wait))

    async def write(self, messages: list[Any]) -> int:
        """Writes a batch, then acknowledges every message of it; answers the events written."""
        events = []
        for message in messages:
            try:
                event = ev.UsageEvent.FromString(message.data)
            except Exception:
                log.error("usage ledger: undecodable event dropped (%d bytes)", len(message.data))
                continue
            _without_nul(event)
            if event.request_id and _is_uuid(event.organization_id) and (
                    not event.api_key_id or _is_uuid(event.api_key_id)):
                events.append(event)
            else:
                log.error("usage ledger: event %s without a valid organization dropped",
                          event.request_id[:64])
        if events:
            try:
                await write_events(self._pool, events, self._redact)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
                # Values the tables refuse: written one by one, so one such event never holds
                # back the rest of its batch (a failing batch is delivered again, whole).
                events = await self._one_by_one(events)
            observe_lag(events)
        for message in messages:
            await message.ack()
        if messages:
            telemetry.LEDGER_PENDING.set(pending_after(messages[-1]))
        return len(events)

    async def _one_by_one(self, events: list[ev.UsageEvent]) -> list[ev.UsageEvent]:
        written = []
        for event in events:
            try:
                await write_events(self._pool, [event], self._redact)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                log.error("usage ledger: event %s refused by PostgreSQL (%s); dropped",
                          event.request_id[:64], type(exc).__name__)
                continue
            written.append(event)
        return written

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
