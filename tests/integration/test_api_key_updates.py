"""Updating and rotating API keys on real PostgreSQL and NATS (docs/reference.md §4).

Two AuthComponents stand for two gateway processes (see test_auth.py): a change made through
process A's servicers must reach process B's cache over NATS within 2 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format

from aggregator.auth.v1 import api_key_pb2, api_key_service_pb2, api_key_service_pb2_grpc
from services.auth import admin
from services.auth.keys import hash_key, key_prefix
from services.auth.validation import DEFAULT_GRACE_PERIOD_S
from services.core.config import StoreUrls
from services.core.errors import GatewayError, Reason
from tests.integration.test_auth import (
    REVOCATION_DEADLINE_S,
    SECRET,
    Org,
    Process,
    bearer,
    new_org,
    rejected_within,
    rpc_error,
    start_process,
    stop_process,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
Keys = api_key_service_pb2_grpc.ApiKeyServiceStub


@pytest.fixture(scope="module")
async def process_a(store_urls: StoreUrls, migrated_database_url: str) -> AsyncIterator[Process]:
    process = await start_process(store_urls, migrated_database_url, "test-keys-a")
    yield process
    await stop_process(process)


@pytest.fixture(scope="module")
async def process_b(store_urls: StoreUrls, migrated_database_url: str) -> AsyncIterator[Process]:
    process = await start_process(store_urls, migrated_database_url, "test-keys-b")
    yield process
    await stop_process(process)


@pytest.fixture(scope="module")
async def keys(process_a: Process) -> AsyncIterator[Keys]:
    server = grpc.aio.server()
    for registration in process_a.auth.registrations():
        registration.add_to_server(registration.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield api_key_service_pb2_grpc.ApiKeyServiceStub(channel)
    await channel.close()
    await server.stop(0)


@pytest.fixture
async def org(process_a: Process) -> Org:
    return await new_org(process_a.pool)


async def create(keys: Keys, org: Org, **fields: Any) -> api_key_pb2.ApiKey:
    request = json_format.ParseDict(fields, api_key_service_pb2.CreateApiKeyRequest())
    return await keys.CreateApiKey(request, metadata=bearer(org.admin_key))


async def update(keys: Keys, org: Org, ident: str, **fields: Any) -> api_key_pb2.ApiKey:
    """PUT with these JSON fields, parsed as Envoy's transcoder parses the body (null included)."""
    request = json_format.ParseDict({"id": ident, **fields}, api_key_service_pb2.UpdateApiKeyRequest())
    return await keys.UpdateApiKey(request, metadata=bearer(org.admin_key))


async def rotate(keys: Keys, org: Org, ident: str, grace: int | None = None) -> api_key_pb2.ApiKey:
    request = api_key_service_pb2.RotateApiKeyRequest(id=ident)
    if grace is not None:
        request.grace_period_seconds = grace
    return await keys.RotateApiKey(request, metadata=bearer(org.admin_key))


def as_json(key: api_key_pb2.ApiKey) -> dict[str, Any]:
    return json_format.MessageToDict(key, preserving_proto_field_name=True)


async def eventually(check: Callable[[], Awaitable[bool]], deadline_s: float) -> None:
    """Polls `check` until it answers True; fails after `deadline_s`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < deadline_s, "condition not met before the deadline"
        await asyncio.sleep(0.02)


async def test_each_field_updates_and_the_others_stay(keys: Keys, org: Org) -> None:
    expiry = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    created = await create(keys, org, name="ci", allowed_models=["gpt-4o-mini"], rate_limit_per_minute=30,
                           rate_limit_per_hour=300, expires_at=expiry.isoformat())
    before = as_json(created)
    before.pop("key")
    steps: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"name": "renamed"}, {"name": "renamed"}),
        ({"role": "admin"}, {"role": "admin"}),
        ({"allowed_models": ["a", "b", "a"]}, {"allowed_models": ["a", "b"]}),
        ({"allowed_models": None}, {"allowed_models": None}),
        ({"rate_limit_per_minute": 60}, {"rate_limit_per_minute": 60}),
        ({"rate_limit_per_hour": None}, {"rate_limit_per_hour": None}),
        ({"rate_limit_per_day": 1000, "tokens_per_minute": 5000},
         {"rate_limit_per_day": 1000, "tokens_per_minute": 5000}),
        ({"expires_at": "2099-01-01T00:00:00Z"}, {"expires_at": "2099-01-01T00:00:00Z"}),
        ({"expires_at": None}, {"expires_at": None}),
        ({"scopes": ["inference", "read:models"]}, {"scopes": ["inference", "read:models"]}),
        ({"scopes": None}, {"scopes": None}),
        ({}, {}),
    ]
    expected = dict(before)
    for fields, changed in steps:
        answer = as_json(await update(keys, org, created.id, **fields))
        for name, value in changed.items():
            if value is None:
                expected.pop(name, None)
            else:
                expected[name] = value
        assert answer == expected, fields
        got = await keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=created.id),
                                   metadata=bearer(org.admin_key))
        assert as_json(got) == expected and not got.HasField("key")


async def test_updates_reach_every_process_within_2s(keys: Keys, process_a: Process, process_b: Process,
                                                     org: Org) -> None:
    created = await create(keys, org, name="spread", allowed_models=["m1"])
    for process in (process_a, process_b):  # cached in both: only an event can change it
        principal = await process.auth.authenticator.authenticate(f"Bearer {created.key}")
        assert list(principal.allowed_models) == ["m1"] and principal.role == "member"
    await update(keys, org, created.id, role="admin", allowed_models=None, scopes=["inference"],
                 rate_limit_per_day=7)
    for process in (process_a, process_b):
        async def changed(p: Process = process) -> bool:
            principal = await p.auth.authenticator.authenticate(f"Bearer {created.key}")
            return (principal.role == "admin" and not principal.HasField("allowed_models")
                    and list(principal.scopes) == ["inference"] and principal.rate_limit_per_day == 7)
        await eventually(changed, REVOCATION_DEADLINE_S)
    actions = await process_a.pool.fetch(
        "SELECT action, details FROM audit_log WHERE target = $1 ORDER BY id", created.id)
    assert [r["action"] for r in actions] == ["api_key.create", "api_key.update"]


async def test_invalid_updates_are_400_naming_the_field(keys: Keys, org: Org) -> None:
    created = await create(keys, org, name="valid", rate_limit_per_minute=5)
    cases = [({"role": "owner"}, "role"), ({"role": ""}, "role"), ({"name": "x" * 201}, "name"),
             ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
             ({"rate_limit_per_hour": 1.5}, "rate_limit_per_hour"),
             ({"rate_limit_per_day": "10"}, "rate_limit_per_day"),
             ({"tokens_per_minute": 2**31}, "tokens_per_minute"),
             ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
             ({"expires_at": "next tuesday"}, "expires_at"), ({"expires_at": 5}, "expires_at"),
             ({"allowed_models": "gpt-4o-mini"}, "allowed_models"),
             ({"allowed_models": [1]}, "allowed_models"),
             ({"scopes": "inference"}, "scopes"), ({"scopes": [""]}, "scopes"),
             ({"scopes": [f"s{i}" for i in range(65)]}, "scopes")]
    for fields, param in cases:
        error, body, status = await rpc_error(update(keys, org, created.id, **fields))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and status == 400, fields
        assert body["error"]["param"] == param, fields
    got = await keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=created.id),
                               metadata=bearer(org.admin_key))
    assert got.name == "valid" and got.rate_limit_per_minute == 5  # nothing changed


async def test_rotation_grace_then_401(keys: Keys, process_a: Process, process_b: Process, org: Org) -> None:
    created = await create(keys, org, name="rotating", scopes=["inference"])
    old = created.key
    for process in (process_a, process_b):
        await process.auth.authenticator.authenticate(f"Bearer {old}")
    rotated = await rotate(keys, org, created.id, grace=1)
    new = rotated.key
    assert new.startswith("sk_live_") and new != old and rotated.id == created.id
    assert rotated.prefix == key_prefix(new) and list(rotated.scopes) == ["inference"]
    grace_end = rotated.previous_key_expires_at.ToDatetime(tzinfo=UTC)
    assert timedelta(0) < grace_end - datetime.now(UTC) <= timedelta(seconds=1)
    stored = await process_a.pool.fetchrow(
        "SELECT key_hash, previous_key_hash FROM api_keys WHERE id = $1::uuid", created.id)
    assert (stored["key_hash"], stored["previous_key_hash"]) == (hash_key(SECRET, new), hash_key(SECRET, old))
    for process in (process_a, process_b):
        principal = await process.auth.authenticator.authenticate(f"Bearer {new}")
        assert principal.api_key_id == created.id and list(principal.scopes) == ["inference"]
    # During the grace period the old secret is the same key; after it, an unknown one.
    if datetime.now(UTC) < grace_end - timedelta(milliseconds=100):
        principal = await process_b.auth.authenticator.authenticate(f"Bearer {old}")
        assert principal.api_key_id == created.id
    for process in (process_a, process_b):
        await rejected_within(lambda p=process: p.auth.authenticator.authenticate(f"Bearer {old}"), 1.0 + 2.0)
        assert (await process.auth.authenticator.authenticate(f"Bearer {new}")).api_key_id == created.id
    got = await keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=created.id),
                               metadata=bearer(org.admin_key))
    assert not got.HasField("key") and got.prefix == key_prefix(new)
    assert not got.HasField("previous_key_expires_at")  # the grace period is over


async def test_rotation_default_grace_keeps_the_old_secret_and_revocation_ends_both(
        keys: Keys, process_a: Process, process_b: Process, org: Org) -> None:
    created = await create(keys, org, name="long grace")
    rotated = await rotate(keys, org, created.id)
    grace = rotated.previous_key_expires_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=DEFAULT_GRACE_PERIOD_S - 60) < grace <= timedelta(seconds=DEFAULT_GRACE_PERIOD_S)
    for process in (process_a, process_b):
        for key in (created.key, rotated.key):
            assert (await process.auth.authenticator.authenticate(f"Bearer {key}")).api_key_id == created.id
    # A second rotation ends the first one's grace at once: only the latest replaced secret works.
    again = await rotate(keys, org, created.id, grace=3600)
    for process in (process_a, process_b):
        await rejected_within(lambda p=process: p.auth.authenticator.authenticate(f"Bearer {created.key}"),
                              REVOCATION_DEADLINE_S)
        principal = await process.auth.authenticator.authenticate(f"Bearer {rotated.key}")
        assert principal.api_key_id == created.id
    await keys.DeleteApiKey(api_key_service_pb2.DeleteApiKeyRequest(id=created.id),
                            metadata=bearer(org.admin_key))
    for process in (process_a, process_b):
        for key in (rotated.key, again.key):
            await rejected_within(lambda p=process, k=key: p.auth.authenticator.authenticate(f"Bearer {k}"),
                                  REVOCATION_DEADLINE_S)


async def test_rotation_without_grace_and_bad_grace(keys: Keys, process_b: Process, org: Org) -> None:
    created = await create(keys, org, name="no grace")
    await process_b.auth.authenticator.authenticate(f"Bearer {created.key}")
    rotated = await rotate(keys, org, created.id, grace=0)
    assert not rotated.HasField("previous_key_expires_at")
    await rejected_within(lambda: process_b.auth.authenticator.authenticate(f"Bearer {created.key}"),
                          REVOCATION_DEADLINE_S)
    for grace in (-1, 7 * 24 * 3600 + 1):
        error, body, status = await rpc_error(rotate(keys, org, created.id, grace=grace))
        assert status == 400 and body["error"]["param"] == "grace_period_seconds"
    assert (await process_b.auth.authenticator.authenticate(f"Bearer {rotated.key}")).api_key_id == created.id


async def test_expiry_is_enforced_on_cached_keys(keys: Keys, process_a: Process, process_b: Process,
                                                 org: Org) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    created = await create(keys, org, name="short-lived", expires_at=soon.isoformat())
    for process in (process_a, process_b):
        await process.auth.authenticator.authenticate(f"Bearer {created.key}")  # now cached
    for process in (process_a, process_b):
        await rejected_within(lambda p=process: p.auth.authenticator.authenticate(f"Bearer {created.key}"),
                              1.5 + 1.0)
    # Extending the expiry of the expired key brings it back everywhere.
    await update(keys, org, created.id, expires_at=None)
    for process in (process_a, process_b):
        async def works(p: Process = process) -> bool:
            try:
                await p.auth.authenticator.authenticate(f"Bearer {created.key}")
            except GatewayError as exc:
                assert exc.reason is Reason.INVALID_API_KEY
                return False
            return True
        await eventually(works, REVOCATION_DEADLINE_S)
    # Setting an expiry on a cached key stops it there too.
    await update(keys, org, created.id, expires_at=(datetime.now(UTC) + timedelta(seconds=1)).isoformat())
    for process in (process_a, process_b):
        await rejected_within(lambda p=process: p.auth.authenticator.authenticate(f"Bearer {created.key}"),
                              1.0 + REVOCATION_DEADLINE_S)


async def test_another_organization_and_members_cannot_touch_a_key(keys: Keys, process_a: Process,
                                                                   org: Org) -> None:
    other = await new_org(process_a.pool)
    theirs = await create(keys, other, name="theirs")
    for call in (update(keys, org, theirs.id, name="mine now"), rotate(keys, org, theirs.id),
                 update(keys, org, str(uuid.uuid4()), name="x"), rotate(keys, org, "not-a-uuid")):
        error, body, status = await rpc_error(call)
        assert error.code() is grpc.StatusCode.NOT_FOUND and status == 404
        assert body["error"]["code"] == "not_found"
    got = await keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=theirs.id),
                               metadata=bearer(other.admin_key))
    assert got.name == "theirs" and got.prefix == key_prefix(theirs.key)  # untouched
    member_key = await admin.create_key(process_a.pool, SECRET, org.id, "member")
    member = Org(org.id, member_key)
    mine = await create(keys, org, name="mine")
    for call in (update(keys, member, mine.id, name="x"), rotate(keys, member, mine.id)):
        error, _, status = await rpc_error(call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED and status == 403


async def test_lists_and_gets_never_show_a_secret(keys: Keys, org: Org) -> None:
    created = await create(keys, org, name="secretive")
    rotated = await rotate(keys, org, created.id)
    updated = await update(keys, org, created.id, name="still secret")
    assert not updated.HasField("key")
    listed = await keys.ListApiKeys(api_key_service_pb2.ListApiKeysRequest(), metadata=bearer(org.admin_key))
    got = await keys.GetApiKey(api_key_service_pb2.GetApiKeyRequest(id=created.id),
                               metadata=bearer(org.admin_key))
    text = orjson.dumps([as_json(k) for k in (*listed.data, got, updated)]).decode()
    for secret in (created.key, rotated.key, org.admin_key):
        assert secret not in text and secret[len("sk_live_"):] not in text
    mine = next(k for k in listed.data if k.id == created.id)
    assert mine.prefix == key_prefix(rotated.key) and not mine.HasField("key")
    assert all(not k.HasField("key") for k in listed.data)
