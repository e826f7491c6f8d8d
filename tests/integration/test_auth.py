"""Auth on real PostgreSQL and NATS, through a real grpc.aio server and generated stubs.

Two AuthComponents stand for two gateway processes: each has its own pool, NATS connection and
cache, so a revocation in one must reach the other over NATS.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import orjson
import pytest
from google.protobuf import json_format

from aggregator.auth.v1 import (
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
)
from services.auth import admin, invalidation, repository
from services.auth.assembly import AuthComponents, build_auth
from services.auth.keys import hash_key, key_prefix
from services.auth.records import KeySettings
from services.core.calls import unary
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.errors import ERROR_JSON_KEY, HTTP_STATUS_KEY, GatewayError, Reason, from_rpc_error
from services.core.inproc import InProcessChannel
from services.core.nats import connect_nats

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = os.urandom(32)
REVOCATION_DEADLINE_S = 2.0


@dataclass
class Process:
    """One gateway process's auth service: its own pool, NATS connection and cache."""

    pool: asyncpg.Pool
    nc: Any
    auth: AuthComponents


@dataclass
class Served:
    """Process A's servicers on a real port, with stubs."""

    keys: api_key_service_pb2_grpc.ApiKeyServiceStub
    auth: auth_service_pb2_grpc.AuthServiceStub


async def start_process(store_urls: StoreUrls, database_url: str, name: str) -> Process:
    pool = await create_pool(database_url, max_size=4)
    nc = await connect_nats(store_urls.nats_url, name)
    return Process(pool, nc, await build_auth(pool, SECRET, nc))


async def stop_process(process: Process) -> None:
    await process.auth.close()
    await process.nc.close()
    await process.pool.close()


@pytest.fixture(scope="module")
async def process_a(store_urls: StoreUrls, migrated_database_url: str) -> AsyncIterator[Process]:
    process = await start_process(store_urls, migrated_database_url, "test-auth-a")
    yield process
    await stop_process(process)


@pytest.fixture(scope="module")
async def process_b(store_urls: StoreUrls, migrated_database_url: str) -> AsyncIterator[Process]:
    process = await start_process(store_urls, migrated_database_url, "test-auth-b")
    yield process
    await stop_process(process)


@pytest.fixture(scope="module")
async def served(process_a: Process) -> AsyncIterator[Served]:
    server = grpc.aio.server()
    for registration in process_a.auth.registrations():
        registration.add_to_server(registration.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Served(api_key_service_pb2_grpc.ApiKeyServiceStub(channel),
                 auth_service_pb2_grpc.AuthServiceStub(channel))
    await channel.close()
    await server.stop(0)


@dataclass
class Org:
    id: str
    admin_key: str


async def new_org(pool: asyncpg.Pool) -> Org:
    name = f"org-{uuid.uuid4().hex[:12]}"
    org_id = await admin.create_org(pool, name)
    return Org(org_id, await admin.create_key(pool, SECRET, name, "org admin", "admin"))


@pytest.fixture
async def org(process_a: Process) -> Org:
    return await new_org(process_a.pool)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def list_keys(served: Served, key: str) -> api_key_service_pb2.ListApiKeysResponse:
    return await served.keys.ListApiKeys(api_key_service_pb2.ListApiKeysRequest(), metadata=bearer(key))


async def rpc_error(call: Awaitable[Any]) -> tuple[grpc.aio.AioRpcError, dict[str, Any], int]:
    """The error of a failing call, its OpenAI error JSON and HTTP status from trailing metadata."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    trailers = dict(caught.value.trailing_metadata() or ())
    return caught.value, orjson.loads(trailers[ERROR_JSON_KEY]), int(trailers[HTTP_STATUS_KEY])


async def rejected_within(authenticate: Callable[[], Awaitable[Any]], deadline_s: float) -> float:
    """Polls until `authenticate` raises INVALID_API_KEY; answers how long that took."""
    started = time.monotonic()
    while True:
        try:
            await authenticate()
        except GatewayError as exc:
            assert exc.reason is Reason.INVALID_API_KEY
            return time.monotonic() - started
        assert time.monotonic() - started < deadline_s, "key still accepted after the deadline"
        await asyncio.sleep(0.01)


async def test_key_lifecycle_and_revocation_reaches_every_process(
        served: Served, process_a: Process, process_b: Process, org: Org) -> None:
    created = await served.keys.CreateApiKey(
        json_format.ParseDict({"name": "ci", "allowed_models": ["gpt-4o-mini"], "rate_limit_per_minute": 30},
                              api_key_service_pb2.CreateApiKeyRequest()),
        metadata=bearer(org.admin_key))
    key = created.key
    assert key.startswith("sk_live_") and len(key) == 8 + 43
    assert created.object == "api_key" and created.role == "member"
    assert created.prefix == key_prefix(key) and created.organization_id == org.id
    assert list(created.allowed_models) == ["gpt-4o-mini"]
    assert created.rate_limit_per_minute == 30 and created.HasField("created_at")
    # The plaintext is stored nowhere; only its HMAC.
    stored = await process_a.pool.fetchrow("SELECT key_hash, prefix FROM api_keys WHERE id = $1::uuid",
                                           created.id)
    assert stored["key_hash"] == hash_key(SECRET, key) and key not in stored["key_hash"]

    answer = await served.auth.Authenticate(auth_service_pb2.AuthenticateRequest(api_key=key))
    assert (answer.principal.organization_id, answer.principal.api_key_id, answer.principal.role) == (
        org.id, created.id, "member")
    assert list(answer.principal.allowed_models) == ["gpt-4o-mini"]
    # Both processes now hold the key in their caches (60 s TTL): only an event can evict it.
    for process in (process_a, process_b):
        principal = await process.auth.authenticator.authenticate(f"Bearer {key}")
        assert principal.api_key_id == created.id

    listed = await list_keys(served, org.admin_key)
    assert listed.object == "list"
    assert [k.id for k in listed.data][0] == created.id  # newest first
    assert all(not k.HasField("key") for k in listed.data)
    got = await served.keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=created.id),
                                      metadata=bearer(org.admin_key))
    assert not got.HasField("key") and got.name == "ci"

    deleted = await served.keys.DeleteApiKey(api_key_service_pb2.DeleteApiKeyRequest(id=created.id),
                                             metadata=bearer(org.admin_key))
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "api_key", True)
    for process in (process_a, process_b):
        await rejected_within(lambda p=process: p.auth.authenticator.authenticate(f"Bearer {key}"),
                              REVOCATION_DEADLINE_S)
    error, body, status = await rpc_error(
        served.auth.Authenticate(auth_service_pb2.AuthenticateRequest(api_key=key)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED and status == 401
    assert body["error"]["code"] == "invalid_api_key" and key not in orjson.dumps(body).decode()

    listed = await list_keys(served, org.admin_key)
    assert created.id not in [k.id for k in listed.data]
    _, body, status = await rpc_error(served.keys.GetApiKey(
        api_key_service_pb2.GetApiKeyRequest(id=created.id), metadata=bearer(org.admin_key)))
    assert status == 404 and body["error"]["code"] == "not_found"
    again = await served.keys.DeleteApiKey(api_key_service_pb2.DeleteApiKeyRequest(id=created.id),
                                           metadata=bearer(org.admin_key))
    assert again.deleted  # idempotent
    actions = await process_a.pool.fetch(
        "SELECT action FROM audit_log WHERE target = $1 ORDER BY id", created.id)
    assert [r["action"] for r in actions] == ["api_key.create", "api_key.revoke"]


async def test_creation_announces_the_new_key_hash(served: Served, process_b: Process, org: Org) -> None:
    events: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        await events.put(msg.data)

    subscription = await process_b.nc.subscribe(invalidation.SUBJECT, cb=on_message)
    await process_b.nc.flush()
    try:
        created = await served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name="fresh"),
                                                 metadata=bearer(org.admin_key))
        while True:
            event = invalidation.decode(await asyncio.wait_for(events.get(), REVOCATION_DEADLINE_S))
            if event is not None and event.api_key_id == created.id:
                break
        assert event.key_hash == hash_key(SECRET, created.key)
    finally:
        await subscription.unsubscribe()
    principal = await process_b.auth.authenticator.authenticate(f"Bearer {created.key}")
    assert principal.api_key_id == created.id


async def test_member_keys_may_not_manage_keys(served: Served, process_a: Process, org: Org) -> None:
    member = await admin.create_key(process_a.pool, SECRET, org.id, "member")
    calls = [
        served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(), metadata=bearer(member)),
        served.keys.ListApiKeys(api_key_service_pb2.ListApiKeysRequest(), metadata=bearer(member)),
        served.keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=str(uuid.uuid4())),
                              metadata=bearer(member)),
        served.keys.DeleteApiKey(api_key_service_pb2.DeleteApiKeyRequest(id=str(uuid.uuid4())),
                                 metadata=bearer(member)),
    ]
    for call in calls:
        error, body, status = await rpc_error(call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED and status == 403
        assert body["error"]["type"] == "permission_error"
        assert from_rpc_error(error).reason is Reason.PERMISSION_DENIED


async def test_missing_and_bad_keys_are_401(served: Served) -> None:
    error, body, status = await rpc_error(served.keys.ListApiKeys(api_key_service_pb2.ListApiKeysRequest()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED and status == 401
    assert body["error"]["code"] == "missing_api_key"
    bad = "sk_live_" + "A" * 43
    _, body, status = await rpc_error(served.keys.ListApiKeys(api_key_service_pb2.ListApiKeysRequest(),
                                                              metadata=bearer(bad)))
    assert status == 401 and body["error"] == {"message": "Incorrect API key provided.",
                                               "type": "invalid_request_error", "param": None,
                                               "code": "invalid_api_key"}
    _, body, _ = await rpc_error(served.auth.Authenticate(auth_service_pb2.AuthenticateRequest()))
    assert body["error"]["code"] == "missing_api_key"


async def test_another_organizations_keys_are_invisible(served: Served, process_a: Process, org: Org) -> None:
    other = await new_org(process_a.pool)
    theirs = await served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name="theirs"),
                                            metadata=bearer(other.admin_key))
    for call in (served.keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=theirs.id),
                                       metadata=bearer(org.admin_key)),
                 served.keys.DeleteApiKey(api_key_service_pb2.DeleteApiKeyRequest(id=theirs.id),
                                          metadata=bearer(org.admin_key))):
        error, body, status = await rpc_error(call)
        assert error.code() is grpc.StatusCode.NOT_FOUND and status == 404
    listed = await list_keys(served, org.admin_key)
    assert theirs.id not in [k.id for k in listed.data]
    assert {k.organization_id for k in listed.data} == {org.id}
    # Untouched: the other organization's key still works.
    principal = await process_a.auth.authenticator.authenticate(f"Bearer {theirs.key}")
    assert principal.organization_id == other.id


async def test_invalid_input_is_400_naming_the_field(served: Served, org: Org) -> None:
    cases = [({"role": "owner"}, "role"), ({"name": "x" * 201}, "name"),
             ({"tokens_per_minute": 0}, "tokens_per_minute"),
             ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
             ({"allowed_models": [1]}, "allowed_models")]
    for fields, param in cases:
        request = json_format.ParseDict(fields, api_key_service_pb2.CreateApiKeyRequest())
        error, body, status = await rpc_error(
            served.keys.CreateApiKey(request, metadata=bearer(org.admin_key)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and status == 400
        assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"
    _, body, status = await rpc_error(served.keys.GetApiKey(
        api_key_service_pb2.GetApiKeyRequest(id="not-a-uuid"), metadata=bearer(org.admin_key)))
    assert status == 404
    _, body, status = await rpc_error(served.keys.ListApiKeys(
        api_key_service_pb2.ListApiKeysRequest(page_token="garbage!"), metadata=bearer(org.admin_key)))
    assert status == 400 and body["error"]["param"] == "page_token"


async def test_listing_pages_newest_first(served: Served, org: Org) -> None:
    created = []
    for i in range(4):
        response = await served.keys.CreateApiKey(api_key_service_pb2.CreateApiKeyRequest(name=f"k{i}"),
                                                  metadata=bearer(org.admin_key))
        created.append(response.id)
    seen: list[str] = []
    token = ""
    while True:
        request = api_key_service_pb2.ListApiKeysRequest(page_size=2, page_token=token)
        page = await served.keys.ListApiKeys(request, metadata=bearer(org.admin_key))
        assert len(page.data) <= 2
        seen += [k.id for k in page.data]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5  # four keys and the org's admin key
    assert seen[:4] == created[::-1]


async def test_request_id_is_echoed(served: Served, org: Org) -> None:
    call = served.keys.ListApiKeys(api_key_service_pb2.ListApiKeysRequest(),
                                   metadata=(*bearer(org.admin_key), ("x-request-id", "req-123")))
    await call
    assert dict(await call.initial_metadata())["x-request-id"] == "req-123"


async def test_expired_keys_are_refused(process_a: Process, org: Org) -> None:
    key = "sk_live_expired_" + uuid.uuid4().hex
    await repository.insert_key(process_a.pool, organization_id=org.id, key_hash=hash_key(SECRET, key),
                                prefix=key_prefix(key), actor="test",
                                settings=KeySettings(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with pytest.raises(GatewayError) as caught:
        await process_a.auth.authenticator.authenticate(f"Bearer {key}")
    assert caught.value.reason is Reason.INVALID_API_KEY


async def test_last_used_at_is_recorded(process_a: Process, org: Org) -> None:
    principal = await process_a.auth.authenticator.authenticate(f"Bearer {org.admin_key}")
    await process_a.auth.recorder.flush()
    used = await process_a.pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1::uuid",
                                         principal.api_key_id)
    assert used is not None and datetime.now(UTC) - used < timedelta(minutes=1)


async def count_rows(pool: asyncpg.Pool, key: str) -> int:
    count = await pool.fetchval("SELECT count(*) FROM api_keys WHERE key_hash = $1", hash_key(SECRET, key))
    return int(count)


async def test_bootstrap_admin_key_from_the_environment(
        served: Served, process_a: Process, tmp_path: Path) -> None:
    key = "my-chosen-admin-key-" + uuid.uuid4().hex
    env = {admin.ADMIN_KEY_ENV: key}
    for _ in range(3):  # every start
        assert await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, env) is None
    assert await count_rows(process_a.pool, key) == 1
    assert not (tmp_path / admin.ADMIN_KEY_FILE).exists()
    principal = await process_a.auth.authenticator.authenticate(f"Bearer {key}")
    default_org = await repository.ensure_organization(process_a.pool)
    assert (principal.role, principal.organization_id) == ("admin", default_org)
    listed = await list_keys(served, key)
    assert principal.api_key_id in [k.id for k in listed.data]
    # Revoked through the API, it stays revoked on every later start, which says so in one line.
    await served.keys.DeleteApiKey(api_key_service_pb2.DeleteApiKeyRequest(id=principal.api_key_id),
                                   metadata=bearer(key))
    await rejected_within(lambda: process_a.auth.authenticator.authenticate(f"Bearer {key}"), 0.5)
    for _ in range(2):
        warnings: list[str] = []
        assert await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, env,
                                                      warn=warnings.append) is None
        assert len(warnings) == 1 and "revoked" in warnings[0] and admin.ADMIN_KEY_ENV in warnings[0]
        assert "aggregator admin create-key" in warnings[0] and key not in warnings[0]
    assert await repository.key_state(process_a.pool, hash_key(SECRET, key)) == "revoked"
    process_a.auth.cache.invalidate(hash_key(SECRET, key))  # what the restarted process starts with
    with pytest.raises(GatewayError) as refused:
        await process_a.auth.authenticator.authenticate(f"Bearer {key}")
    assert refused.value.reason is Reason.INVALID_API_KEY
    # A different value is the way back.
    other = "my-other-admin-key-" + uuid.uuid4().hex
    warnings = []
    await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, {admin.ADMIN_KEY_ENV: other},
                                           warn=warnings.append)
    assert warnings == []
    assert (await process_a.auth.authenticator.authenticate(f"Bearer {other}")).role == "admin"


async def test_bootstrap_admin_key_file_is_created_once(process_a: Process, tmp_path: Path) -> None:
    key = await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, {})
    assert key is not None and key.startswith("sk_live_")
    path = tmp_path / admin.ADMIN_KEY_FILE
    assert path.read_text().strip() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (await process_a.auth.authenticator.authenticate(f"Bearer {key}")).role == "admin"
    for _ in range(2):  # later starts create nothing
        assert await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, {}) is None
    assert path.read_text().strip() == key and await count_rows(process_a.pool, key) == 1
    # A fresh database with the same data dir: the file's key is registered again.
    await process_a.pool.execute("DELETE FROM api_keys WHERE key_hash = $1", hash_key(SECRET, key))
    assert await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, {}) is None
    assert await count_rows(process_a.pool, key) == 1
    # A deliberately revoked bootstrap key stays revoked, with one warning line.
    await process_a.pool.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1",
                                 hash_key(SECRET, key))
    warnings: list[str] = []
    assert await admin.ensure_bootstrap_admin_key(process_a.pool, SECRET, tmp_path, {},
                                                  warn=warnings.append) is None
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert await repository.key_state(process_a.pool, hash_key(SECRET, key)) == "revoked"


async def test_cli_helpers_create_orgs_users_and_keys(process_a: Process) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    org_id = await admin.create_org(process_a.pool, name)
    with pytest.raises(GatewayError) as caught:
        await admin.create_org(process_a.pool, name)
    assert caught.value.param == "name"
    user_id = await admin.create_user(process_a.pool, name, f"{name}@example.com", "hunter2hunter2", "admin")
    stored = await process_a.pool.fetchrow(
        "SELECT organization_id, password_hash, role FROM users WHERE id = $1::uuid", user_id)
    assert str(stored["organization_id"]) == org_id and stored["role"] == "admin"
    assert stored["password_hash"].startswith("$argon2id$")
    key = await admin.create_key(process_a.pool, SECRET, org_id, "from cli", allowed_models=["m"],
                                 rate_limit_per_day=10)
    principal = await process_a.auth.authenticator.authenticate(f"Bearer {key}")
    assert principal.organization_id == org_id and list(principal.allowed_models) == ["m"]
    assert principal.rate_limit_per_day == 10 and principal.role == "member"
    with pytest.raises(GatewayError) as caught:
        await admin.create_key(process_a.pool, SECRET, "no-such-org-" + uuid.uuid4().hex, "x")
    assert caught.value.reason is Reason.NOT_FOUND


async def test_the_same_servicers_work_on_the_in_process_channel(process_a: Process, org: Org) -> None:
    channel = InProcessChannel()
    for registration in process_a.auth.registrations():
        channel.register(registration.add_to_server, registration.servicer)
    keys = api_key_service_pb2_grpc.ApiKeyServiceStub(channel)
    auth = auth_service_pb2_grpc.AuthServiceStub(channel)
    created = await unary(keys.CreateApiKey, api_key_service_pb2.CreateApiKeyRequest(name="inproc"),
                          metadata=bearer(org.admin_key))
    answer = await unary(auth.Authenticate, auth_service_pb2.AuthenticateRequest(api_key=created.key))
    assert answer.principal.api_key_id == created.id
    with pytest.raises(GatewayError) as caught:
        await unary(keys.ListApiKeys, api_key_service_pb2.ListApiKeysRequest(),
                    metadata=bearer(created.key))
    assert caught.value.reason is Reason.PERMISSION_DENIED
