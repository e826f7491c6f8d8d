"""Builds the auth service's parts for one process, for the runtime's bootstrap and for tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from aggregator.auth.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    audit_log_service_pb2,
    audit_log_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
)
from services.auth import repository
from services.auth.audit import AuditConsumer, AuditPublisher, AuditTrail
from services.auth.audit_servicer import AuditLogServicer
from services.auth.authenticator import Authenticator
from services.auth.cache import PrincipalCache
from services.auth.last_used import LastUsedRecorder
from services.auth.management import ApiKeyManager
from services.auth.permissions import PlatformOrganization, grant
from services.auth.records import AuthRecord, auth_record
from services.auth.servicer import ApiKeyServicer, AuthServicer
from services.core.server import Registration


def platform_organization(pool: asyncpg.Pool) -> PlatformOrganization:
    """The organization whose admins get `admin:platform`: the default one, which holds the
    bootstrap admin key (services/auth/admin.py)."""
    return PlatformOrganization(functools.partial(repository.find_organization, pool,
                                                  repository.DEFAULT_ORGANIZATION))


async def load_auth_record(pool: asyncpg.Pool, key_hash: str, *,
                           platform: PlatformOrganization | None = None) -> AuthRecord | None:
    """The cache's loader: the live key with this HMAC, as a cache entry whose principal carries
    its permissions, computed here once rather than on every request (docs/architecture.md §2.3)."""
    row = await repository.find_live_key(pool, key_hash)
    if row is None:
        return None
    record = auth_record(row)
    is_platform = (platform is not None and record.principal.role == "admin"
                   and await platform.is_platform(record.principal.organization_id))
    grant(record.principal, platform=is_platform)
    return record


@dataclass(slots=True)
class AuthComponents:
    """Everything the auth service holds in one process."""

    authenticator: Authenticator
    cache: PrincipalCache
    recorder: LastUsedRecorder
    manager: ApiKeyManager
    auth_servicer: AuthServicer
    api_key_servicer: ApiKeyServicer
    audit_log_servicer: AuditLogServicer
    trail: AuditTrail  # AuditTrail.record(...): hot-path audit entries (docs/architecture.md §2.11)
    audit_publisher: AuditPublisher | None = None
    audit_consumer: AuditConsumer | None = None

    def registrations(self) -> list[Registration]:
        """The servicers, for services.core.server.GrpcServer (or an in-process channel)."""
        return [
            Registration(auth_service_pb2_grpc.add_AuthServiceServicer_to_server, self.auth_servicer,
                         auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name),
            Registration(api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server, self.api_key_servicer,
                         api_key_service_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name),
            Registration(audit_log_service_pb2_grpc.add_AuditLogServiceServicer_to_server,
                         self.audit_log_servicer,
                         audit_log_service_pb2.DESCRIPTOR.services_by_name["AuditLogService"].full_name),
        ]

    async def close(self) -> None:
        """Stops listening for invalidations and writes pending last_used_at updates."""
        await self.cache.close()
        await self.recorder.close()
        await self.trail.close()
        if self.audit_publisher is not None:
            await self.audit_publisher.stop()
        if self.audit_consumer is not None:
            await self.audit_consumer.stop()


async def build_auth(pool: asyncpg.Pool, secret: bytes, nc: Any | None = None, *, ttl_s: float = 60.0,
                     negative_ttl_s: float = 5.0, audit_outbox: Path | None = None) -> AuthComponents:
    """Wires the auth service; subscribes its cache to key invalidations when `nc` is given.

    Without NATS, revocations reach other processes only through the cache TTL. After a NATS
    reconnect the caller should call `cache.clear()`, as events may have been missed meanwhile.
    With `nc` and `audit_outbox` (a directory), hot-path audit entries are published to JetStream
    (that outbox when NATS is away) and this process's consumer writes them to `audit_log`.
    """
    cache = PrincipalCache(functools.partial(load_auth_record, pool, platform=platform_organization(pool)),
                           ttl_s=ttl_s, negative_ttl_s=negative_ttl_s)
    if nc is not None:
        await cache.subscribe(nc)
    recorder = LastUsedRecorder(functools.partial(repository.touch_keys, pool))
    authenticator = Authenticator(secret, cache, recorder=recorder)
    manager = ApiKeyManager(pool, secret, cache, nc)
    publisher = consumer = None
    if nc is not None and audit_outbox is not None:
        publisher = AuditPublisher(nc, audit_outbox)
        await publisher.start()
        consumer = AuditConsumer(nc, pool)
        await consumer.start()
    trail = AuditTrail(publisher)
    return AuthComponents(authenticator=authenticator, cache=cache, recorder=recorder, manager=manager,
                          auth_servicer=AuthServicer(authenticator),
                          api_key_servicer=ApiKeyServicer(authenticator, manager, trail),
                          audit_log_servicer=AuditLogServicer(authenticator, pool, trail), trail=trail,
                          audit_publisher=publisher, audit_consumer=consumer)
