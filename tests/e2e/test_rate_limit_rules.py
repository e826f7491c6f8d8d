"""Rate-limit rules through Envoy, in both topologies (docs/reference.md §4 "Rate-limit rules"):
create, list (cursor pages) and delete over HTTP in the contract's JSON shapes, 403 for a member
key and for the platform scopes without `admin:platform`, 404 for another organization's rule or
target, 400 naming the parameter, and the audit rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e
RULES = "/v1/rate-limit-rules"


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: httpx.Response, status: int, *, param: str | None = None,
            permission: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    if permission is not None:
        assert error["code"] == "permission_denied" and f"'{permission}'" in error["message"], error
    return error


@dataclass
class Callers:
    platform: httpx.AsyncClient  # the bootstrap admin key: admin of the default organization, platform admin
    org_a: str
    member_key_id: str
    a_member: httpx.AsyncClient
    b_admin: httpx.AsyncClient
    b_key_id: str


def _client(gateway: Gateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.base_url, timeout=30,
                             headers={"authorization": f"Bearer {key}"})


@pytest.fixture
async def callers(gateway: Gateway, http: httpx.AsyncClient) -> AsyncIterator[Callers]:
    org_b = ok(await http.post("/v1/organizations", json={"name": f"limits-b-{uuid.uuid4().hex[:8]}"}))
    b_key = ok(await http.post("/v1/api-keys", json={"organization_id": org_b["id"], "name": "b admin",
                                                    "role": "admin"}))
    member = ok(await http.post("/v1/api-keys", json={"name": "limits member", "role": "member"}))
    async with _client(gateway, b_key["key"]) as b_admin, _client(gateway, member["key"]) as a_member:
        yield Callers(http, member["organization_id"], member["id"], a_member, b_admin, b_key["id"])


async def test_rules_are_created_listed_and_deleted(callers: Callers, pool: asyncpg.Pool) -> None:
    a = callers.platform
    answer = await a.post(RULES, json={"scope": "key", "target_id": callers.member_key_id,
                                       "model": "gpt-4o-mini", "window": "minute", "max_requests": 60,
                                       "max_cost_usd": "0.50"})
    rule = ok(answer)
    assert answer.headers.get("x-request-id")
    assert set(rule) == {"id", "object", "scope", "target_id", "model", "window", "max_requests",
                         "max_cost_usd", "organization_id", "created_at"}
    assert rule["object"] == "rate_limit_rule" and rule["scope"] == "key"
    assert rule["target_id"] == callers.member_key_id and rule["model"] == "gpt-4o-mini"
    assert rule["window"] == "minute" and rule["max_requests"] == 60 and rule["max_cost_usd"] == "0.5"
    assert rule["organization_id"] == callers.org_a and rule["created_at"].endswith("Z")
    whole = ok(await a.post(RULES, json={"scope": "organization", "window": "day", "max_tokens": 1_000_000}))
    assert whole["target_id"] == callers.org_a and whole["max_tokens"] == 1_000_000
    assert "model" not in whole and "max_requests" not in whole and "max_cost_usd" not in whole

    first = ok(await a.get(RULES, params={"limit": 1}))
    assert first["object"] == "list" and first["has_more"] is True and len(first["data"]) == 1
    listed = ok(await a.get(RULES, params={"limit": 100}))
    ids = [r["id"] for r in listed["data"]]
    assert ids.index(rule["id"]) < ids.index(whole["id"]) and listed["has_more"] is False
    after = ok(await a.get(RULES, params={"after": rule["id"], "limit": 100}))
    later = {r["id"] for r in after["data"]}
    assert rule["id"] not in later and whole["id"] in later
    assert next(r for r in listed["data"] if r["id"] == rule["id"]) == rule

    duplicate = refused(await a.post(RULES, json={"scope": "key", "target_id": callers.member_key_id,
                                                  "model": "gpt-4o-mini", "window": "minute",
                                                  "max_tokens": 5}), 400, param="window")
    assert rule["id"] in duplicate["message"]

    for created in (rule, whole):
        gone = ok(await a.delete(f"{RULES}/{created['id']}"))
        assert gone == {"id": created["id"], "object": "rate_limit_rule", "deleted": True}
        refused(await a.delete(f"{RULES}/{created['id']}"), 404, param="id")
    rows = await pool.fetch("SELECT action, request_id FROM audit_log WHERE target = $1 ORDER BY id",
                            rule["id"])
    assert [r["action"] for r in rows] == ["rate_limit_rule.create", "rate_limit_rule.delete"]
    assert all(r["request_id"] for r in rows)


async def test_every_field_is_checked(callers: Callers) -> None:
    a = callers.platform
    base = {"scope": "organization", "window": "hour", "max_requests": 10}
    for change, param in (({"scope": "team"}, "scope"), ({"window": "week"}, "window"),
                          ({"max_requests": 0}, "max_requests"), ({"max_cost_usd": "1.5e2"}, "max_cost_usd"),
                          ({"max_cost_usd": "0.00000000001"}, "max_cost_usd"),
                          ({"max_requests": None}, "max_requests")):
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        error = refused(await a.post(RULES, json=body), 400, param=param)
        assert error["type"] == "invalid_request_error"
    refused(await a.get(RULES, params={"limit": 1000}), 400, param="limit")


async def test_members_are_denied(callers: Callers) -> None:
    m = callers.a_member
    refused(await m.get(RULES), 403, permission="read:rate-limits")
    refused(await m.post(RULES, json={"scope": "organization", "window": "hour", "max_requests": 1}), 403,
            permission="write:rate-limits")
    refused(await m.delete(f"{RULES}/{uuid.uuid4()}"), 403, permission="write:rate-limits")


async def test_organizations_cannot_see_or_touch_each_other(callers: Callers) -> None:
    a, b = callers.platform, callers.b_admin
    a_rule = ok(await a.post(RULES, json={"scope": "organization", "window": "minute", "max_requests": 100}))
    try:
        refused(await b.delete(f"{RULES}/{a_rule['id']}"), 404, param="id")
        assert a_rule["id"] not in {r["id"] for r in ok(await b.get(RULES))["data"]}
        refused(await b.get(RULES, params={"after": a_rule["id"]}), 400, param="after")
        for target in ({"scope": "key", "target_id": callers.member_key_id},
                       {"scope": "organization", "target_id": callers.org_a}):
            refused(await b.post(RULES, json={**target, "window": "hour", "max_requests": 1}), 404,
                    param="target_id")
        for platform_scope in ({"scope": "global"}, {"scope": "model", "target_id": "gpt-4o-mini"}):
            refused(await b.post(RULES, json={**platform_scope, "window": "hour", "max_requests": 1}), 403,
                    permission="admin:platform")
        b_rule = ok(await b.post(RULES, json={"scope": "key", "target_id": callers.b_key_id, "window": "hour",
                                              "max_requests": 1}))
        refused(await a.delete(f"{RULES}/{b_rule['id']}"), 404, param="id")
        assert [r["id"] for r in ok(await b.get(RULES))["data"]] == [b_rule["id"]]
    finally:
        ok(await a.delete(f"{RULES}/{a_rule['id']}"))


async def test_platform_admins_set_model_and_global_rules(callers: Callers) -> None:
    a, b = callers.platform, callers.b_admin
    model = f"limits-model-{uuid.uuid4().hex[:8]}"  # the gateway is shared: a model of this test only
    by_model = ok(await a.post(RULES, json={"scope": "model", "target_id": model, "window": "day",
                                            "max_cost_usd": "250"}))
    everywhere = ok(await a.post(RULES, json={"scope": "global", "model": model, "window": "minute",
                                              "max_requests": 10000}))
    try:
        assert by_model["model"] == model and "organization_id" not in by_model
        assert everywhere["target_id"] == "" and "organization_id" not in everywhere
        assert {by_model["id"], everywhere["id"]} <= {r["id"] for r in ok(await a.get(RULES))["data"]}
        assert not {by_model["id"], everywhere["id"]} & {r["id"] for r in ok(await b.get(RULES))["data"]}
        refused(await b.delete(f"{RULES}/{everywhere['id']}"), 404)
    finally:
        for rule in (by_model, everywhere):
            ok(await a.delete(f"{RULES}/{rule['id']}"))
