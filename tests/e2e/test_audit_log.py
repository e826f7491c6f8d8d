"""GET /v1/audit-log through Envoy, in both topologies (docs/reference.md §4; docs/architecture.md
§2.11): an organization's admins read its own trail, with the client IP and request id of a
permission denial; filters and paging work; another organization's rows never appear; members
get 403; a platform admin may name another organization."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
FIELDS = {"id", "object", "organization_id", "actor", "action", "target", "ip", "request_id", "before",
          "after", "details", "created_at"}


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Org:
    id: str
    admin: httpx.AsyncClient
    member: httpx.AsyncClient


def _client(gateway: Gateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                             headers={"authorization": f"Bearer {key}"})


@pytest.fixture
async def org(gateway: Gateway, http: httpx.AsyncClient) -> AsyncIterator[Org]:
    """A fresh organization with an admin and a member key, made by the platform admin."""
    made = ok(await http.post("/v1/organizations", json={"name": f"audit-{uuid.uuid4().hex[:8]}"}))
    admin_key = ok(await http.post("/v1/api-keys", json={"organization_id": made["id"], "name": "boss",
                                                        "role": "admin"}))["key"]
    async with _client(gateway, admin_key) as admin:
        member_key = ok(await admin.post("/v1/api-keys", json={"name": "worker", "role": "member"}))["key"]
        async with _client(gateway, member_key) as member:
            yield Org(made["id"], admin, member)


async def entries(client: httpx.AsyncClient, **query: Any) -> dict[str, Any]:
    return ok(await client.get("/v1/audit-log", params=query))  # type: ignore[no-any-return]


async def test_a_denial_is_listed_once_with_ip_and_request_id(org: Org) -> None:
    refused = await org.member.post("/v1/api-keys", json={"name": "mine"})
    assert refused.status_code == 403, refused.text
    request_id = refused.headers.get("x-request-id")
    assert request_id
    deadline = time.monotonic() + 30
    while not (found := (await entries(org.admin, action="permission.denied"))["data"]):
        assert time.monotonic() < deadline, "the denial never reached the audit log"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    found = (await entries(org.admin, action="permission.denied"))["data"]
    assert len(found) == 1
    [row] = found
    assert set(row) == FIELDS and row["object"] == "audit_log"
    assert row["organization_id"] == org.id and row["actor"].startswith("api_key:")
    assert row["request_id"] == request_id
    # The address Envoy appended to x-forwarded-for: for a loopback client (this test) Envoy puts
    # its machine's own address there, so any real address of this machine.
    assert ipaddress.ip_address(row["ip"])
    assert row["target"] == "POST /v1/api-keys" and row["details"] == {"permission": "write:api-keys"}
    assert row["created_at"].endswith("Z")


async def test_filters_paging_and_organizations(org: Org, http: httpx.AsyncClient) -> None:
    for name in ("one", "two"):
        ok(await org.admin.post("/v1/api-keys", json={"name": name}))
    created = (await entries(org.admin, action="api_key.create"))["data"]
    # The admin key (made by the platform admin), the member key and two more.
    assert len(created) == 4 and {e["action"] for e in created} == {"api_key.create"}
    assert all(e["organization_id"] == org.id for e in created)
    newest = created[0]
    assert newest["before"] is None and newest["after"]["name"] == "two"
    assert "key" not in newest["after"] and "key_hash" not in newest["after"]
    mine = (await entries(org.admin, actor=newest["actor"], action="api_key.create"))["data"]
    assert [e["id"] for e in mine] == [e["id"] for e in created[:3]]
    today = datetime.now(UTC).date()
    days = {"start_date": (today - timedelta(days=1)).isoformat(), "end_date": today.isoformat()}
    assert len((await entries(org.admin, action="api_key.create", **days))["data"]) == 4
    old = {"start_date": "2001-01-01", "end_date": (today - timedelta(days=2)).isoformat()}
    assert (await entries(org.admin, **old))["data"] == []
    first = await entries(org.admin, action="api_key.create", limit=3)
    assert first["object"] == "list" and len(first["data"]) == 3 and first["has_more"] is True
    rest = await entries(org.admin, action="api_key.create", limit=3, after=first["data"][-1]["id"])
    assert rest["has_more"] is False and [e["id"] for e in first["data"] + rest["data"]] == [
        e["id"] for e in created]
    bad = await org.admin.get("/v1/audit-log", params={"start_date": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_date"
    # The platform admin's own organization never shows this one's rows; naming it does.
    own = (await entries(http, limit=100))["data"]
    assert own and all(e["organization_id"] != org.id for e in own)
    named = (await entries(http, organization_id=org.id, action="api_key.create"))["data"]
    assert [e["id"] for e in named] == [e["id"] for e in created]
    # ...but an organization's admin may not name another.
    other = await org.admin.get("/v1/audit-log", params={"organization_id": own[0]["organization_id"]})
    assert other.status_code == 403 and "admin:platform" in other.json()["error"]["message"]


async def test_a_member_may_not_read_the_audit_log(org: Org) -> None:
    refused = await org.member.get("/v1/audit-log")
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "This credential lacks the permission 'read:audit-log'."


async def test_a_denial_on_the_inference_face_is_listed(gateway: Gateway, org: Org) -> None:
    narrowed_key = ok(await org.admin.post("/v1/api-keys", json={"name": "narrow", "role": "admin",
                                                                 "scopes": ["inference"]}))["key"]
    async with _client(gateway, narrowed_key) as narrowed:
        refused = await narrowed.get("/v1/models")
    assert refused.status_code == 403, refused.text
    deadline = time.monotonic() + 30
    while not (found := (await entries(org.admin, action="permission.denied"))["data"]):
        assert time.monotonic() < deadline, "the denial never reached the audit log"
        await asyncio.sleep(0.2)
    [row] = found
    assert row["target"] == "GET /v1/models" and row["details"] == {"permission": "read:models"}
    assert row["organization_id"] == org.id and ipaddress.ip_address(row["ip"])
