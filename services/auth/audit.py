"""The audit trail's off-hot-path half (docs/architecture.md §2.11): `AuditTrail.record(...)`
publishes an AuditEvent to the JetStream stream AUDIT (deduplicated by event id, with the durable
outbox of services/core/events.py when NATS is down or slow), and `AuditConsumer`, a durable pull
consumer in the auth service's process, writes the events to `audit_log` in batches,
acknowledging them only after the batch committed. A redelivered event inserts nothing (the
table's unique `event_id`), so each event is one row.

Changes (keys, users, organizations) do not come through here: their row is written in the
change's own transaction (repository._audit). This path is for what happens on a request's hot
path: permission denials, logins, logouts, OAuth grants.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.errors
import orjson
from google.protobuf import json_format, struct_pb2
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from aggregator.auth.v1 import auth_service_pb2
from aggregator.events.v1 import audit_event_pb2
from services.auth.audit_repository import (
    AuditEntry,
    AuditOrigin,
    actor_of,
    client_ip,
    current_origin,
    insert_batch,
    redact,
)
from services.auth.permissions import check
from services.core.consumer import PullConsumer
from services.core.errors import GatewayError, Reason
from services.core.events import UsagePublisher
from services.core.nats import upsert_stream
from services.core.rpc import declared_permission, metadata_value

log = logging.getLogger(__name__)

AUDIT_STREAM = "AUDIT"
AUDIT_SUBJECT_PREFIX = "audit."
AUDIT_CONSUMER = "audit-writer"
NO_ORGANIZATION = "none"  # the subject token of an event without an organization


def audit_stream_config(replicas: int = 1) -> StreamConfig:
    """Audit events, deduplicated by event id (`Nats-Msg-Id`) for 10 minutes, kept 7 days."""
    return StreamConfig(
        name=AUDIT_STREAM, subjects=[AUDIT_SUBJECT_PREFIX + ">"], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, num_replicas=replicas,
        duplicate_window=10 * 60, max_age=7 * 24 * 3600)


async def ensure_audit_stream(js: JetStreamContext) -> None:
    """Creates stream AUDIT or brings its configuration up to date (safe for concurrent workers)."""
    await upsert_stream(js, audit_stream_config())


def origin_of(context: Any) -> AuditOrigin:
    """The IP and request id of the RPC `context` serves (Envoy's x-forwarded-for, x-request-id)."""
    peer = context.peer() if hasattr(context, "peer") else None
    return AuditOrigin(ip=client_ip(metadata_value(context, "x-forwarded-for"), peer),
                       request_id=metadata_value(context, "x-request-id"))


def bind_origin(context: Any) -> AuditOrigin:
    """Binds the RPC's origin for the audit rows written while it runs (repository._audit)."""
    origin = origin_of(context)
    current_origin.set(origin)
    return origin


def request_target(context: Any) -> str | None:
    """What a refused request asked for: "POST /v1/api-keys" for a transcoded HTTP request (its
    path without the query string), None for native gRPC."""
    method = metadata_value(context, "x-envoy-original-method")
    path = metadata_value(context, "x-envoy-original-path")
    if not method or not path:
        return None
    return f"{method} {path.partition('?')[0][:256]}"


def audited_check(trail: AuditTrail | None, principal: auth_service_pb2.Principal, context: Any,
                  permission: str | None = None) -> None:
    """permissions.check, recording a refusal ("permission.denied") in the trail from a task the
    refused request does not wait for, then raising it (403)."""
    try:
        check(principal, permission)
    except GatewayError as error:
        if trail is not None and error.reason is Reason.PERMISSION_DENIED:
            trail.record_soon(action="permission.denied", actor=actor_of(principal),
                              organization_id=principal.organization_id, target=request_target(context),
                              origin=origin_of(context),
                              details={"permission": permission or declared_permission.get() or ""})
        raise


async def authorized(authenticator: Any, trail: AuditTrail | None,
                     context: Any) -> auth_service_pb2.Principal:
    """The caller of an RPC, holding the permission the RPC declares: binds the RPC's origin for
    its audit rows (docs/architecture.md §2.11), authenticates the `Authorization` metadata with
    `authenticator` (services/auth/authenticator.py) and checks, recording a refusal in `trail`."""
    bind_origin(context)
    principal: auth_service_pb2.Principal = await authenticator.authenticate(
        metadata_value(context, "authorization"))
    audited_check(trail, principal, context)
    return principal


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    cleaned = redact(values)
    if cleaned is None:
        return None
    message = struct_pb2.Struct()
    message.update(cleaned)
    return message


class AuditPublisher(UsagePublisher):
    """UsagePublisher's JetStream-or-outbox delivery, for AuditEvents on stream AUDIT."""

    outbox_name = "audit"

    async def publish(self, event: Any) -> None:
        """Publishes `event`, or keeps it in the outbox; raises only if neither is possible."""
        uuid.UUID(event.event_id)  # ValueError without a proper id (the deduplication key)
        payload = event.SerializeToString()
        try:
            if await self._send(event, payload):
                return
        except asyncio.CancelledError:
            self._write_outbox(event.event_id, payload)
            raise
        await asyncio.to_thread(self._write_outbox, event.event_id, payload)

    def _decode(self, payload: bytes) -> Any:
        return audit_event_pb2.AuditEvent.FromString(payload)

    async def _send(self, event: Any, payload: bytes) -> bool:
        if not self._nc.is_connected:
            return False
        subject = AUDIT_SUBJECT_PREFIX + (event.organization_id or NO_ORGANIZATION)
        try:
            await self._js.publish(subject, payload, timeout=self._publish_timeout, stream=AUDIT_STREAM,
                                   headers={"Nats-Msg-Id": event.event_id})
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("audit event %s not published (%s); kept in the outbox", event.event_id,
                        type(exc).__name__)
            return False
        return True


class AuditTrail:
    """The one API for audit entries of hot-path events (docs/architecture.md §2.11).

    `await trail.record(action=..., actor=..., ...)` returns once the event is durable (in
    JetStream or the local outbox) without touching PostgreSQL; `record_soon(...)` does the same
    from a task the request does not wait for (a refusal is answered at once, and the entry
    survives the request's failure or cancellation). Without a publisher (no NATS: tests, tools)
    entries are logged and dropped.
    """

    def __init__(self, publisher: AuditPublisher | None) -> None:
        self._publisher = publisher
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def event(*, action: str, actor: str, organization_id: str | None = None, target: str | None = None,
              origin: AuditOrigin | None = None, before: Mapping[str, Any] | None = None,
              after: Mapping[str, Any] | None = None,
              details: Mapping[str, Any] | None = None) -> audit_event_pb2.AuditEvent:
        """The AuditEvent of an entry; `origin` defaults to the one bound for the running RPC."""
        origin = origin or current_origin.get() or AuditOrigin()
        event = audit_event_pb2.AuditEvent(
            event_id=str(uuid.uuid4()), organization_id=organization_id or "", actor=actor, action=action,
            target=target or "", ip=origin.ip or "", request_id=origin.request_id or "")
        for name, values in (("before", before), ("after", after), ("details", details)):
            message = _struct(values)
            if message is not None:
                getattr(event, name).CopyFrom(message)
        event.occurred_at.FromDatetime(datetime.now(UTC))
        return event

    async def record(self, **entry: Any) -> None:
        """Records one entry (the keywords of `event`); durable when it returns."""
        await self.publish(self.event(**entry))

    def record_soon(self, **entry: Any) -> None:
        """Records one entry from a background task; the event (and its origin) is built now."""
        task = asyncio.create_task(self.publish(self.event(**entry)), name="audit-record")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, event: audit_event_pb2.AuditEvent) -> None:
        if self._publisher is None:
            log.info("audit (not stored, no NATS): %s by %s", event.action, event.actor)
            return
        try:
            await self._publisher.publish(event)
        except Exception:
            log.exception("audit event %s could not be kept", event.event_id)

    async def close(self) -> None:
        """Waits for entries still being published."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def entry_of(event: audit_event_pb2.AuditEvent) -> AuditEntry:
    """The row of an AuditEvent."""
    def values(name: str) -> dict[str, Any] | None:
        return json_format.MessageToDict(getattr(event, name)) if event.HasField(name) else None

    return AuditEntry(
        organization_id=event.organization_id or None, actor=event.actor, action=event.action,
        target=event.target or None, details=values("details"), before=values("before"),
        after=values("after"), origin=AuditOrigin(ip=event.ip or None, request_id=event.request_id or None),
        event_id=event.event_id,
        occurred_at=event.occurred_at.ToDatetime(tzinfo=UTC) if event.HasField("occurred_at") else None)


class AuditConsumer(PullConsumer):
    """Writes stream AUDIT to `audit_log`: a durable pull consumer (`audit-writer`, shared by every
    auth process), up to `batch` events per transaction, acknowledged after the commit."""

    name = "audit-consumer"

    def __init__(self, nc: Client, pool: asyncpg.Pool, *, batch: int = 100, wait_s: float = 1.0) -> None:
        super().__init__(batch=batch, wait_s=wait_s)
        self._nc = nc
        self._pool = pool

    async def _subscribe(self) -> Any:
        js = self._nc.jetstream()
        await ensure_audit_stream(js)
        return await js.pull_subscribe(
            AUDIT_SUBJECT_PREFIX + ">", durable=AUDIT_CONSUMER, stream=AUDIT_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=10_000))

    async def write(self, messages: list[Any]) -> int:
        """Inserts a batch in one transaction, then acknowledges it; answers the rows offered."""
        entries = []
        for message in messages:
            try:
                entries.append(entry_of(audit_event_pb2.AuditEvent.FromString(message.data)))
            except Exception:
                log.error("audit consumer: undecodable event dropped: %s",
                          orjson.dumps(message.headers or {}).decode()[:200])
        if entries:
            await insert_batch(self._pool, entries)
        for message in messages:
            await message.ack()
        return len(entries)
