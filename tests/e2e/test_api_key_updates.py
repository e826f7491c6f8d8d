"""Updating, rotating and expiring API keys through Envoy, in both topologies (docs/reference.md §4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.core.config import StoreUrls
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PROPAGATION_S = 2.0  # every process applies a key change within 2 s


@pytest.fixture
async def as_key(gateway: Gateway) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """Opens HTTP clients that authenticate with a given key."""
    clients: list[httpx.AsyncClient] = []

    def open_client(key: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                                   headers={"authorization": f"Bearer {key}"})
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.aclose()


async def create(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/api-keys", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def put(http: httpx.AsyncClient, ident: str, **fields: Any) -> dict[str, Any]:
    response = await http.put(f"/v1/api-keys/{ident}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_status(call: Callable[[], Awaitable[httpx.Response]], status: int, deadline_s: float) -> None:
    """Polls `call` until it answers `status`; fails when a request sent after `deadline_s` still
    answers otherwise. Measured at sending: on a busy machine one request may take seconds, and
    what it answers was decided when it arrived."""
    started = time.monotonic()
    while True:
        sent = time.monotonic()
        response = await call()
        if response.status_code == status:
            return
        assert sent - started < deadline_s, f"still {response.status_code}: {response.text}"
        await asyncio.sleep(0.1)


async def test_put_changes_only_the_fields_sent(http: httpx.AsyncClient) -> None:
    created = await create(http, name="e2e", allowed_models=["gpt-4o-mini"], rate_limit_per_minute=10,
                           tokens_per_minute=1000)
    renamed = await put(http, created["id"], name="renamed")
    kept = {k: v for k, v in created.items() if k not in ("key", "name")}
    assert renamed["name"] == "renamed" and "key" not in renamed
    assert {k: renamed[k] for k in kept} == kept
    changed = await put(http, created["id"], role="admin", allowed_models=None, rate_limit_per_minute=None,
                        rate_limit_per_hour=100, rate_limit_per_day=1000, expires_at="2099-06-01T00:00:00Z",
                        scopes=["inference", "read:models"])
    assert changed["name"] == "renamed" and changed["role"] == "admin"
    assert changed["tokens_per_minute"] == 1000
    assert changed["rate_limit_per_hour"] == 100 and changed["rate_limit_per_day"] == 1000
    assert changed["scopes"] == ["inference", "read:models"]
    assert changed["expires_at"] == "2099-06-01T00:00:00Z"
    assert changed.get("allowed_models") is None and changed.get("rate_limit_per_minute") is None
    patched = (await http.patch(f"/v1/api-keys/{created['id']}",
                                json={"expires_at": None, "scopes": []})).json()
    assert patched.get("expires_at") is None and patched["scopes"] == [] and patched["role"] == "admin"
    got = (await http.get(f"/v1/api-keys/{created['id']}")).json()
    assert got == patched and "key" not in got and got["prefix"] == created["key"][:12]


async def test_update_is_effective_everywhere_within_2s(
        http: httpx.AsyncClient, as_key: Callable[[str], httpx.AsyncClient]) -> None:
    created = await create(http, name="narrow", allowed_models=["gpt-4o-mini"])
    user = as_key(created["key"])
    fallback = {**CHAT, "model": "fallback-chat"}
    assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert (await user.post("/v1/chat/completions", json=fallback)).status_code == 403
    await put(http, created["id"], allowed_models=None)
    await until_status(lambda: user.post("/v1/chat/completions", json=fallback), 200, PROPAGATION_S)
    await put(http, created["id"], allowed_models=["fallback-chat"])
    await until_status(lambda: user.post("/v1/chat/completions", json=CHAT), 403, PROPAGATION_S)


async def test_invalid_updates_are_400(http: httpx.AsyncClient) -> None:
    created = await create(http, name="target")
    for fields, param in (({"role": "owner"}, "role"),
                          ({"rate_limit_per_minute": "ten"}, "rate_limit_per_minute"),
                          ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
                          ({"scopes": "inference"}, "scopes"), ({"allowed_models": [1]}, "allowed_models")):
        response = await http.put(f"/v1/api-keys/{created['id']}", json=fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["param"] == param
    response = await http.post(f"/v1/api-keys/{created['id']}/rotate", json={"grace_period_seconds": 604801})
    assert response.status_code == 400 and response.json()["error"]["param"] == "grace_period_seconds"


async def test_rotate_old_secret_works_during_grace_then_401(
        http: httpx.AsyncClient, as_key: Callable[[str], httpx.AsyncClient]) -> None:
    created = await create(http, name="rotating")
    old = as_key(created["key"])
    assert (await old.post("/v1/chat/completions", json=CHAT)).status_code == 200  # cached now
    response = await http.post(f"/v1/api-keys/{created['id']}/rotate", json={"grace_period_seconds": 2})
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert rotated["key"].startswith("sk_live_") and rotated["prefix"] == rotated["key"][:12]
    grace_end = datetime.fromisoformat(rotated["previous_key_expires_at"])
    new = as_key(rotated["key"])
    assert (await new.post("/v1/chat/completions", json=CHAT)).status_code == 200
    if datetime.now(UTC) < grace_end - timedelta(milliseconds=300):
        assert (await old.post("/v1/chat/completions", json=CHAT)).status_code == 200
    await until_status(lambda: old.post("/v1/chat/completions", json=CHAT), 401, 2.0 + PROPAGATION_S)
    assert (await old.post("/v1/chat/completions", json=CHAT)).json()["error"]["code"] == "invalid_api_key"
    assert (await new.post("/v1/chat/completions", json=CHAT)).status_code == 200
    listed = await http.get("/v1/api-keys")
    assert created["key"] not in listed.text and rotated["key"] not in listed.text
    mine = next(k for k in listed.json()["data"] if k["id"] == created["id"])
    assert "key" not in mine and mine["prefix"] == rotated["key"][:12]


async def test_rotate_with_the_default_grace(http: httpx.AsyncClient,
                                             as_key: Callable[[str], httpx.AsyncClient]) -> None:
    created = await create(http, name="default grace")
    rotated = (await http.post(f"/v1/api-keys/{created['id']}/rotate", json={})).json()
    grace = datetime.fromisoformat(rotated["previous_key_expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < grace <= timedelta(hours=24)
    for key in (created["key"], rotated["key"]):
        assert (await as_key(key).post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_expired_key_is_401(http: httpx.AsyncClient,
                                  as_key: Callable[[str], httpx.AsyncClient]) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    created = await create(http, name="short-lived", expires_at=soon.isoformat().replace("+00:00", "Z"))
    user = as_key(created["key"])
    assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200  # cached now
    await until_status(lambda: user.post("/v1/chat/completions", json=CHAT), 401, 2.0 + 1.0)
    await put(http, created["id"], expires_at=None)
    await until_status(lambda: user.post("/v1/chat/completions", json=CHAT), 200, PROPAGATION_S)


async def test_another_organizations_key_is_404(
        http: httpx.AsyncClient, as_key: Callable[[str], httpx.AsyncClient], store_urls: StoreUrls,
        gateway: Gateway) -> None:
    # Another organization's admin: a fresh key moved to a new organization before its first use.
    moved = await create(http, name="other org admin", role="admin")
    conn = await asyncpg.connect(store_urls.database_url)
    try:
        other_org = await conn.fetchval(
            "INSERT INTO organizations (name) VALUES ('e2e-other-' || gen_random_uuid()) RETURNING id")
        await conn.execute("UPDATE api_keys SET organization_id = $1 WHERE id = $2::uuid", other_org,
                           moved["id"])
    finally:
        await conn.close()
    other = as_key(moved["key"])
    theirs = await create(other, name="theirs")
    assert theirs["organization_id"] == str(other_org)
    mine = await create(http, name="mine")
    for admin, ident in ((http, theirs["id"]), (http, moved["id"]), (other, mine["id"])):
        for response in (await admin.get(f"/v1/api-keys/{ident}"),
                         await admin.put(f"/v1/api-keys/{ident}", json={"name": "taken"}),
                         await admin.post(f"/v1/api-keys/{ident}/rotate", json={}),
                         await admin.delete(f"/v1/api-keys/{ident}")):
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "not_found"
    assert {k["id"] for k in (await other.get("/v1/api-keys")).json()["data"]} == {moved["id"], theirs["id"]}
    assert (await other.get(f"/v1/api-keys/{theirs['id']}")).json()["name"] == "theirs"


async def test_members_cannot_update_or_rotate(http: httpx.AsyncClient,
                                               as_key: Callable[[str], httpx.AsyncClient]) -> None:
    member = await create(http, name="member")
    user = as_key(member["key"])
    assert (await user.put(f"/v1/api-keys/{member['id']}", json={"role": "admin"})).status_code == 403
    assert (await user.post(f"/v1/api-keys/{member['id']}/rotate", json={})).status_code == 403
    assert (await http.get(f"/v1/api-keys/{member['id']}")).json()["role"] == "member"


async def test_stored_scopes_narrow_the_key_everywhere_within_2s(
        http: httpx.AsyncClient, as_key: Callable[[str], httpx.AsyncClient]) -> None:
    created = await create(http, name="scoped admin", role="admin")
    admin = as_key(created["key"])
    assert (await admin.get("/v1/api-keys")).status_code == 200
    await put(http, created["id"], scopes=["inference"])
    await until_status(lambda: admin.get("/v1/api-keys"), 403, PROPAGATION_S)
    assert (await admin.post("/v1/chat/completions", json=CHAT)).status_code == 200
    await put(http, created["id"], scopes=None)
    await until_status(lambda: admin.get("/v1/api-keys"), 200, PROPAGATION_S)
