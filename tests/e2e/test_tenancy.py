"""Organizations and users through Envoy, in both topologies (docs/reference.md §4 "Organizations
and users"): the bootstrap admin (a platform admin) creates organization B, its first admin user
and an admin key in B; B's admin and the default organization's admins cannot see or touch each
other's users, keys or organization (404, lists leave them out); members get 403; an email is
unique on the whole gateway; a password is never answered. Native gRPC follows the same rules."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from aggregator.tenancy.v1 import (
    organization_service_pb2,
    organization_service_pb2_grpc,
    user_service_pb2,
    user_service_pb2_grpc,
)
from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery"


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert "password" not in response.text and "argon2" not in response.text
    return response.json()


def assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def assert_denied(response: httpx.Response, permission: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "permission_denied"
    assert f"'{permission}'" in response.json()["error"]["message"]


def email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


@dataclass
class Tenants:
    """The default organization (A, the bootstrap admin's) and a new organization B."""

    platform: httpx.AsyncClient  # the bootstrap admin key: admin of A, platform admin
    org_a: dict[str, Any]
    org_b: dict[str, Any]
    b_admin: httpx.AsyncClient  # an admin key created in B
    b_admin_user: dict[str, Any]
    a_member: httpx.AsyncClient


def _client(gateway: Gateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                             headers={"authorization": f"Bearer {key}"})


@pytest.fixture
async def tenants(gateway: Gateway, http: httpx.AsyncClient) -> AsyncIterator[Tenants]:
    org_b = ok(await http.post("/v1/organizations", json={"name": f"org-b-{uuid.uuid4().hex[:8]}"}))
    assert org_b["object"] == "organization"
    first = ok(await http.post("/v1/users", json={"organization_id": org_b["id"], "email": email("Boss"),
                                                 "name": "Boss", "role": "admin", "password": PASSWORD}))
    assert first["organization_id"] == org_b["id"] and first["role"] == "admin"
    assert first["email"] == first["email"].lower() and "password" not in first
    b_key = ok(await http.post("/v1/api-keys", json={"organization_id": org_b["id"], "name": "b admin",
                                                    "role": "admin"}))
    assert b_key["organization_id"] == org_b["id"]
    member_key = ok(await http.post("/v1/api-keys", json={"name": "a member", "role": "member"}))
    org_a_id = member_key["organization_id"]
    org_a = ok(await http.get(f"/v1/organizations/{org_a_id}"))
    async with _client(gateway, b_key["key"]) as b_admin, _client(gateway, member_key["key"]) as a_member:
        yield Tenants(http, org_a, org_b, b_admin, first, a_member)


async def test_a_new_organization_runs_itself(tenants: Tenants) -> None:
    b = tenants.b_admin
    assert ok(await b.get(f"/v1/organizations/{tenants.org_b['id']}"))["name"] == tenants.org_b["name"]
    renamed = ok(await b.patch(f"/v1/organizations/{tenants.org_b['id']}",
                               json={"name": f"renamed-{uuid.uuid4().hex[:8]}"}))
    assert renamed["id"] == tenants.org_b["id"] and renamed["name"] != tenants.org_b["name"]
    member = ok(await b.post("/v1/users", json={"email": email("member"), "password": PASSWORD}))
    assert member["role"] == "member" and member["organization_id"] == tenants.org_b["id"]
    changed = ok(await b.patch(f"/v1/users/{member['id']}", json={"name": "M", "password": "another one!"}))
    assert changed["name"] == "M" and changed["email"] == member["email"]
    listed = ok(await b.get("/v1/users"))
    assert listed["object"] == "list" and listed["has_more"] is False
    assert {u["id"] for u in listed["data"]} == {tenants.b_admin_user["id"], member["id"]}
    page = ok(await b.get("/v1/users", params={"limit": 1}))
    assert page["has_more"] is True and len(page["data"]) == 1
    rest = ok(await b.get("/v1/users", params={"limit": 1, "after": page["data"][0]["id"]}))
    assert [u["id"] for u in rest["data"]] != [u["id"] for u in page["data"]] and rest["has_more"] is False
    assert ok(await b.delete(f"/v1/users/{member['id']}")) == {"id": member["id"], "object": "user",
                                                               "deleted": True}
    assert_not_found(await b.get(f"/v1/users/{member['id']}"))
    # Each change left an audit row in B's trail, with before/after and never a password.
    trail = await b.get("/v1/audit-log", params={"limit": 100})
    assert trail.status_code == 200, trail.text
    assert [w for w in ("password_hash", "argon2", PASSWORD, "another one!") if w in trail.text] == []
    rows = {(r["action"], r["target"]): r for r in trail.json()["data"]}
    created = rows[("user.create", member["id"])]
    assert created["after"]["email"] == member["email"] and created["request_id"] and created["ip"]
    assert rows[("user.update", member["id"])]["before"]["name"] == ""
    assert rows[("user.delete", member["id"])]["before"]["email"] == member["email"]
    org_b = tenants.org_b["id"]
    assert rows[("organization.update", org_b)]["after"]["name"] == renamed["name"]
    assert rows[("organization.create", org_b)]["after"]["name"] == tenants.org_b["name"]


async def test_organizations_cannot_see_or_touch_each_other(tenants: Tenants) -> None:
    a, b = tenants.platform, tenants.b_admin
    a_user = ok(await a.post("/v1/users", json={"email": email("a-user"), "password": PASSWORD}))
    a_key = ok(await a.post("/v1/api-keys", json={"name": "a key"}))
    # B guessing A's ids: 404, exactly like ids that do not exist.
    assert_not_found(await b.get(f"/v1/users/{a_user['id']}"))
    assert_not_found(await b.patch(f"/v1/users/{a_user['id']}", json={"role": "admin"}))
    assert_not_found(await b.delete(f"/v1/users/{a_user['id']}"))
    assert_not_found(await b.get(f"/v1/api-keys/{a_key['id']}"))
    assert_not_found(await b.delete(f"/v1/api-keys/{a_key['id']}"))
    assert_not_found(await b.get(f"/v1/organizations/{tenants.org_a['id']}"))
    assert_not_found(await b.patch(f"/v1/organizations/{tenants.org_a['id']}", json={"name": "taken"}))
    assert_not_found(await b.get(f"/v1/users/{uuid.uuid4()}"))
    # B's lists leave A out; B may not list or create in other organizations.
    assert a_user["id"] not in {u["id"] for u in ok(await b.get("/v1/users"))["data"]}
    assert a_key["id"] not in {k["id"] for k in ok(await b.get("/v1/api-keys"))["data"]}
    assert_denied(await b.get("/v1/organizations"), "admin:platform")
    assert_denied(await b.post("/v1/organizations", json={"name": "mine"}), "admin:platform")
    assert_denied(await b.post("/v1/users", json={"organization_id": tenants.org_a["id"],
                                                  "email": email("sneak"), "password": PASSWORD}),
                  "admin:platform")
    assert_denied(await b.post("/v1/api-keys", json={"organization_id": tenants.org_a["id"]}),
                  "admin:platform")
    # And the other way round: A's admin acting in its own organization does not see B's users.
    assert_not_found(await a.get(f"/v1/users/{tenants.b_admin_user['id']}"))
    assert tenants.b_admin_user["id"] not in {u["id"] for u in ok(await a.get("/v1/users"))["data"]}
    # The user and key survived B's attempts.
    assert ok(await a.get(f"/v1/users/{a_user['id']}"))["role"] == "member"
    assert ok(await a.get(f"/v1/api-keys/{a_key['id']}"))["id"] == a_key["id"]


async def test_platform_admins_list_every_organization(tenants: Tenants) -> None:
    ids: set[str] = set()
    after = ""
    while True:
        page = ok(await tenants.platform.get("/v1/organizations",
                                             params={"limit": 100, **({"after": after} if after else {})}))
        ids |= {o["id"] for o in page["data"]}
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert {tenants.org_a["id"], tenants.org_b["id"]} <= ids
    listed_b = ok(await tenants.platform.get("/v1/users", params={"organization_id": tenants.org_b["id"]}))
    assert tenants.b_admin_user["id"] in {u["id"] for u in listed_b["data"]}
    assert_not_found(await tenants.platform.post("/v1/users", json={
        "organization_id": str(uuid.uuid4()), "email": email("nowhere"), "password": PASSWORD}))


async def test_members_are_denied(tenants: Tenants) -> None:
    m = tenants.a_member
    assert_denied(await m.get("/v1/users"), "read:users")
    assert_denied(await m.post("/v1/users", json={"email": email("m"), "password": PASSWORD}), "write:users")
    assert_denied(await m.get(f"/v1/users/{uuid.uuid4()}"), "read:users")
    assert_denied(await m.patch(f"/v1/users/{uuid.uuid4()}", json={"name": "x"}), "write:users")
    assert_denied(await m.delete(f"/v1/users/{uuid.uuid4()}"), "write:users")
    assert_denied(await m.get(f"/v1/organizations/{tenants.org_a['id']}"), "read:users")
    assert_denied(await m.patch(f"/v1/organizations/{tenants.org_a['id']}", json={"name": "x"}),
                  "write:users")
    assert_denied(await m.get("/v1/organizations"), "admin:platform")


async def test_an_email_is_unique_across_organizations(tenants: Tenants) -> None:
    address = email("shared")
    ok(await tenants.platform.post("/v1/users", json={"email": address, "password": PASSWORD}))
    taken = await tenants.b_admin.post("/v1/users", json={"email": address.upper(), "password": PASSWORD})
    assert taken.status_code == 400, taken.text
    assert taken.json()["error"]["param"] == "email" and "already in use" in taken.json()["error"]["message"]
    short = await tenants.b_admin.post("/v1/users", json={"email": email("short"), "password": "short"})
    assert short.status_code == 400 and short.json()["error"]["param"] == "password"


async def test_native_grpc_serves_the_same_rules(gateway: Gateway, tenants: Tenants) -> None:
    metadata = (("authorization", f"Bearer {gateway.admin_key}"),)
    b_metadata = (("authorization", tenants.b_admin.headers["authorization"]),)
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        users = user_service_pb2_grpc.UserServiceStub(channel)
        created = await users.CreateUser(user_service_pb2.CreateUserRequest(
            email=email("Grpc"), password=PASSWORD, organization_id=tenants.org_b["id"]), metadata=metadata)
        assert created.organization_id == tenants.org_b["id"] and created.email == created.email.lower()
        assert (await users.GetUser(user_service_pb2.GetUserRequest(id=created.id), metadata=b_metadata)).id \
            == created.id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetUser(user_service_pb2.GetUserRequest(id=created.id), metadata=metadata)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        organizations = organization_service_pb2_grpc.OrganizationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await organizations.ListOrganizations(organization_service_pb2.ListOrganizationsRequest(),
                                                  metadata=b_metadata)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
