"""The audit trail on real PostgreSQL and NATS JetStream (docs/architecture.md §2.11): a permission
denial leaves exactly one row with the client's IP and request id, also when NATS was down when it
happened (the outbox); the consumer is idempotent by event id; key changes carry before/after
without the secret or its hash; GET /v1/audit-log's RPC filters and stays in its organization."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import grpc
import orjson
import pytest

from aggregator.auth.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    audit_log_service_pb2,
    audit_log_service_pb2_grpc,
)
from services.auth import admin
from services.auth.assembly import AuthComponents, build_auth
from services.auth.audit import AuditConsumer, AuditTrail
from services.auth.keys import hash_key
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.nats import connect_nats
from tests.integration.test_auth import SECRET, Org, bearer, new_org, rpc_error
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio(loop_scope="session")
CLIENT_IP = "203.0.113.7"


@dataclass
class Served:
    pool: asyncpg.Pool
    proxy: TcpProxy
    auth: AuthComponents
    keys: api_key_service_pb2_grpc.ApiKeyServiceStub
    audit: audit_log_service_pb2_grpc.AuditLogServiceStub


@pytest.fixture(scope="module")
async def served(store_urls: StoreUrls, migrated_database_url: str,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    target = urlsplit(store_urls.nats_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 4222)
    port = await proxy.restore()
    pool = await create_pool(migrated_database_url, max_size=4)
    # Through the proxy, so that a test can take NATS away from this process.
    nc = await connect_nats(f"nats://127.0.0.1:{port}", "test-audit")
    outbox: Path = tmp_path_factory.mktemp("audit-outbox")
    auth = await build_auth(pool, SECRET, nc, audit_outbox=outbox)
    server = grpc.aio.server()
    for registration in auth.registrations():
        registration.add_to_server(registration.servicer, server)
    server_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server_port}")
    yield Served(pool, proxy, auth, api_key_service_pb2_grpc.ApiKeyServiceStub(channel),
                 audit_log_service_pb2_grpc.AuditLogServiceStub(channel))
    await channel.close()
    await server.stop(0)
    await auth.close()
    await nc.close()
    await pool.close()
    await proxy.cut()


def origin(key: str, request_id: str) -> tuple[tuple[str, str], ...]:
    # As Envoy sends it: the client's own x-forwarded-for, then the address Envoy appended.
    return (*bearer(key), ("x-forwarded-for", f"10.9.9.9, {CLIENT_IP}"), ("x-request-id", request_id))


async def rows_of(pool: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT organization_id, actor, action, target, host(ip) AS ip, request_id, before::text, "
        "after::text, details::text FROM audit_log WHERE request_id = $1", request_id))


async def eventually_rows(pool: asyncpg.Pool, request_id: str, within: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + within
    while not await rows_of(pool, request_id):
        assert time.monotonic() < deadline, f"no audit row for {request_id} in {within} s"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a duplicate would arrive right behind the first
    return await rows_of(pool, request_id)


async def member_key(org: Org, pool: asyncpg.Pool) -> str:
    return await admin.create_key(pool, SECRET, org.id, "member", "member")


async def test_permission_denial_leaves_one_row_with_ip_and_request_id(served: Served) -> None:
    org = await new_org(served.pool)
    member = await member_key(org, served.pool)
    request_id = f"req-{uuid.uuid4()}"
    error, body, status = await rpc_error(served.keys.CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(name="nope"), metadata=origin(member, request_id)))
    assert status == 403 and error.code() is grpc.StatusCode.PERMISSION_DENIED
    rows = await eventually_rows(served.pool, request_id)
    assert len(rows) == 1
    row = rows[0]
    assert row["action"] == "permission.denied"
    assert str(row["organization_id"]) == org.id
    assert row["actor"].startswith("api_key:")
    assert row["ip"] == CLIENT_IP and row["request_id"] == request_id
    assert orjson.loads(row["details"]) == {"permission": "write:api-keys"}
    assert member not in str(dict(row)) and hash_key(SECRET, member) not in str(dict(row))


async def test_denial_while_nats_is_down_is_written_once_nats_is_back(served: Served) -> None:
    org = await new_org(served.pool)
    member = await member_key(org, served.pool)
    request_id = f"req-{uuid.uuid4()}"
    await served.proxy.cut()
    try:
        deadline = time.monotonic() + 10
        while served.auth.audit_publisher is not None and served.auth.audit_publisher._nc.is_connected:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        _, _, status = await rpc_error(served.keys.ListApiKeys(
            api_key_service_pb2.ListApiKeysRequest(), metadata=origin(member, request_id)))
        assert status == 403
        await served.auth.trail.close()  # the background publish has finished: into the outbox
        assert served.auth.audit_publisher is not None and served.auth.audit_publisher.pending() >= 1
        await asyncio.sleep(1.0)
        assert await rows_of(served.pool, request_id) == []
    finally:
        await served.proxy.restore()
    rows = await eventually_rows(served.pool, request_id, within=45.0)
    assert len(rows) == 1 and rows[0]["ip"] == CLIENT_IP and rows[0]["action"] == "permission.denied"


@dataclass
class FakeMessage:
    data: bytes
    headers: dict[str, str] | None = None
    acked: int = 0

    async def ack(self) -> None:
        self.acked += 1


async def test_consumer_writes_the_same_event_once(served: Served) -> None:
    org = await new_org(served.pool)
    request_id = f"req-{uuid.uuid4()}"
    event = AuditTrail.event(action="auth.login", actor="user:u1", organization_id=org.id,
                             details={"method": "password", "password": "hunter22"})
    event.request_id = request_id
    consumer = AuditConsumer(served.auth.audit_publisher._nc, served.pool)  # type: ignore[union-attr]
    first, second = FakeMessage(event.SerializeToString()), FakeMessage(event.SerializeToString())
    await consumer.write([first, second])
    await consumer.write([FakeMessage(event.SerializeToString())])
    rows = await rows_of(served.pool, request_id)
    assert len(rows) == 1 and first.acked == 1 and second.acked == 1
    assert orjson.loads(rows[0]["details"]) == {"method": "password"}  # never a secret


async def test_key_changes_carry_before_and_after_without_secrets(served: Served) -> None:
    org = await new_org(served.pool)
    created_id, updated_id = f"req-{uuid.uuid4()}", f"req-{uuid.uuid4()}"
    key = await served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name="ci", role="member"),
                                         metadata=origin(org.admin_key, created_id))
    await served.keys.UpdateApiKey(api_key_service_pb2.UpdateApiKeyRequest(id=key.id, name="ci-2"),
                                   metadata=origin(org.admin_key, updated_id))
    [created] = await rows_of(served.pool, created_id)
    [updated] = await rows_of(served.pool, updated_id)
    assert created["action"] == "api_key.create" and created["ip"] == CLIENT_IP
    assert created["before"] is None
    assert orjson.loads(created["after"])["name"] == "ci"
    assert orjson.loads(created["after"])["prefix"] == key.prefix
    assert updated["action"] == "api_key.update" and updated["request_id"] == updated_id
    before, after = orjson.loads(updated["before"]), orjson.loads(updated["after"])
    assert (before["name"], after["name"]) == ("ci", "ci-2")
    assert before["role"] == after["role"] == "member"
    key_hash = hash_key(SECRET, key.key)
    for row in (created, updated):
        text = str(dict(row))
        assert key.key not in text and key_hash not in text and "key_hash" not in text


async def test_list_filters_pages_and_stays_in_its_organization(served: Served) -> None:
    org, other = await new_org(served.pool), await new_org(served.pool)
    for name in ("a", "b", "c"):
        await served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name=name),
                                       metadata=origin(org.admin_key, f"req-{uuid.uuid4()}"))
    await served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name="theirs"),
                                   metadata=origin(other.admin_key, f"req-{uuid.uuid4()}"))
    request = audit_log_service_pb2.ListAuditLogRequest
    page = await served.audit.ListAuditLog(request(action="api_key.create", limit=2),
                                           metadata=bearer(org.admin_key))
    assert page.object == "list" and len(page.data) == 2 and page.has_more
    rest = await served.audit.ListAuditLog(request(action="api_key.create", limit=2, after=page.data[-1].id),
                                           metadata=bearer(org.admin_key))
    entries = [*page.data, *rest.data]
    # Three keys made through the API, and the organization's admin key made by admin.create_key.
    assert len(entries) == 4 and not rest.has_more
    assert all(e.organization_id == org.id for e in entries)
    assert [int(e.id) for e in entries] == sorted((int(e.id) for e in entries), reverse=True)
    assert entries[0].created_at.endswith("Z")
    everything = await served.audit.ListAuditLog(request(limit=100), metadata=bearer(org.admin_key))
    assert all(e.organization_id == org.id for e in everything.data)
    none = await served.audit.ListAuditLog(request(start_date="2000-01-01", end_date="2000-01-31"),
                                           metadata=bearer(org.admin_key))
    assert list(none.data) == []
    member = await member_key(org, served.pool)
    _, _, status = await rpc_error(served.audit.ListAuditLog(request(), metadata=bearer(member)))
    assert status == 403
    _, body, status = await rpc_error(served.audit.ListAuditLog(request(organization_id=other.id),
                                                                metadata=bearer(org.admin_key)))
    assert status == 403 and "admin:platform" in body["error"]["message"]
    _, body, status = await rpc_error(served.audit.ListAuditLog(request(start_date="2026-13-01"),
                                                                metadata=bearer(org.admin_key)))
    assert status == 400 and body["error"]["param"] == "start_date"
