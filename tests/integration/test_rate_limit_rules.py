"""Rate-limit rules on real PostgreSQL and NATS (docs/reference.md §4 "Rate-limit rules"): the
manager's validation and scoping (another organization's ids are 404, the platform scopes need
`admin:platform`), duplicates, pagination, audit rows, and the rule book (services/limits/rules.py):
it picks exactly the rules that apply, answers a warm request without the database, and forgets
what it cached within 2 seconds of a change, in every process, through NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from aggregator.auth.v1 import auth_service_pb2
from services.auth import admin
from services.auth import tenancy_repository as tenancy
from services.auth.permissions import grant
from services.core.config import StoreUrls
from services.core.db import create_pool
from services.core.errors import GatewayError, Reason
from services.core.nats import connect_nats
from services.limits.rule_manager import RuleManager
from services.limits.rules import LimitSpec, RuleBook, publish_change

pytestmark = pytest.mark.asyncio(loop_scope="session")
SECRET = b"rate-limit-rules-test-secret-32b"


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(migrated_database_url)
    yield created
    await created.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin_of(org_id: str, *, platform: bool = False) -> auth_service_pb2.Principal:
    return grant(auth_service_pb2.Principal(api_key_id=str(uuid.uuid4()), organization_id=org_id,
                                            role="admin"), platform=platform)


async def new_org(pool: asyncpg.Pool) -> str:
    return (await tenancy.create_organization(pool, unique("limits"), "test")).id


async def new_key(pool: asyncpg.Pool, org_id: str) -> str:
    name = unique("key")
    await admin.create_key(pool, SECRET, org_id, name, "member")
    return str(await pool.fetchval("SELECT id FROM api_keys WHERE organization_id = $1::uuid AND name = $2",
                                   org_id, name))


async def new_user(pool: asyncpg.Pool, org_id: str) -> str:
    return (await tenancy.create_user(pool, org_id, email=f"{unique('u')}@example.com", name="",
                                      role="member", password_hash="x", actor="test")).id


def fields(scope: str, target_id: str = "", window: str = "minute", **limits: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"scope": scope, "target_id": target_id, "model": None, "window": window,
                              "max_requests": None, "max_tokens": None, "max_cost_usd": None}
    values.update(limits)
    if not any(values[k] is not None for k in ("max_requests", "max_tokens", "max_cost_usd")):
        values["max_requests"] = 10
    return values


async def refused(attempt: Any, reason: Reason, param: str | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await attempt
    assert caught.value.reason is reason, caught.value.message
    if param is not None:
        assert caught.value.param == param, caught.value.message
    return caught.value


async def test_fields_are_checked_each_naming_its_parameter(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org = await new_org(pool)
    caller = admin_of(org)
    bad: list[tuple[dict[str, Any], str]] = [
        (fields("team"), "scope"),
        (fields("organization", window="week"), "window"),
        (fields("organization", window=""), "window"),
        (fields("organization", max_requests=0), "max_requests"),
        (fields("organization", max_tokens=-5), "max_tokens"),
        (fields("organization", max_cost_usd="0"), "max_cost_usd"),
        (fields("organization", max_cost_usd="-1"), "max_cost_usd"),
        (fields("organization", max_cost_usd="1e3"), "max_cost_usd"),
        (fields("organization", max_cost_usd="abc"), "max_cost_usd"),
        (fields("organization", max_cost_usd="0.00000000001"), "max_cost_usd"),  # 11 decimals
        (fields("organization", max_cost_usd="12345678901"), "max_cost_usd"),  # 11 integer digits
        (fields("organization", max_cost_usd=" 1"), "max_cost_usd"),
        (fields("organization", model=""), "model"),
        (fields("organization", model="gpt 4"), "model"),
        (fields("key"), "target_id"),
        (fields("user"), "target_id"),
    ]
    for values, param in bad:
        error = await refused(manager.create_rule(caller, **values), Reason.INVALID_REQUEST, param)
        assert param in error.message
    # fields() fills max_requests when no limit is given: the limitless request is built by hand.
    limitless = {"scope": "organization", "target_id": "", "model": None, "window": "minute",
                 "max_requests": None, "max_tokens": None, "max_cost_usd": None}
    error = await refused(manager.create_rule(caller, **limitless), Reason.INVALID_REQUEST, "max_requests")
    assert "at least one of max_requests, max_tokens and max_cost_usd" in error.message
    created = await manager.create_rule(caller, **fields("organization", max_cost_usd="2.5000000000"))
    assert created.max_cost_usd == Decimal("2.5") and created.target_id == org


async def test_targets_of_another_organization_are_not_found(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org_a, org_b = await new_org(pool), await new_org(pool)
    key_b, user_b = await new_key(pool, org_b), await new_user(pool, org_b)
    caller_a = admin_of(org_a)
    for values in (fields("key", key_b), fields("user", user_b), fields("organization", org_b),
                   fields("key", str(uuid.uuid4())), fields("key", "not-a-uuid"), fields("user", "nope")):
        await refused(manager.create_rule(caller_a, **values), Reason.NOT_FOUND, "target_id")
    # B's admin may, and A then cannot see or delete B's rules.
    rule_b = await manager.create_rule(admin_of(org_b), **fields("key", key_b, max_tokens=1000))
    assert rule_b.scope == "key" and rule_b.target_id == key_b and rule_b.organization_id == org_b
    assert (await manager.list_rules(caller_a, 100, "")).rows == []
    await refused(manager.delete_rule(caller_a, rule_b.id), Reason.NOT_FOUND, "id")
    await refused(manager.list_rules(caller_a, 10, rule_b.id), Reason.INVALID_REQUEST, "after")
    # A revoked key is no target.
    key_a = await new_key(pool, org_a)
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid", key_a)
    await refused(manager.create_rule(caller_a, **fields("key", key_a)), Reason.NOT_FOUND, "target_id")
    assert [r.id for r in (await manager.list_rules(admin_of(org_b), 100, "")).rows] == [rule_b.id]
    assert await manager.delete_rule(admin_of(org_b), rule_b.id) == rule_b.id
    await refused(manager.delete_rule(admin_of(org_b), rule_b.id), Reason.NOT_FOUND, "id")


async def test_model_and_global_rules_need_the_platform(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org, platform_org = await new_org(pool), await new_org(pool)
    for values in (fields("model", "gpt-4o-mini"), fields("global")):
        error = await refused(manager.create_rule(admin_of(org), **values), Reason.PERMISSION_DENIED)
        assert "'admin:platform'" in error.message
    platform = admin_of(platform_org, platform=True)
    window = "day"  # model and global rules are shared by every test of the session: unique models
    model = unique("model")
    by_model = await manager.create_rule(platform, **fields("model", model, window, max_cost_usd="100"))
    assert by_model.model == model and by_model.target_id == model and by_model.organization_id is None
    await refused(manager.create_rule(platform, **fields("model", model, "hour", model="other")),
                  Reason.INVALID_REQUEST, "model")
    await refused(manager.create_rule(platform, **fields("model", "")), Reason.INVALID_REQUEST, "target_id")
    await refused(manager.create_rule(platform, **fields("global", "x")), Reason.INVALID_REQUEST, "target_id")
    everywhere = await manager.create_rule(platform, **fields("global", "", "hour", model=model))
    assert everywhere.target_id == "" and everywhere.model == model
    # Platform admins list them beside their own organization's; other admins never see them.
    seen = {r.id for r in (await manager.list_rules(platform, 100, "")).rows}
    assert {by_model.id, everywhere.id} <= seen
    own = await manager.create_rule(admin_of(org), **fields("organization"))
    assert [r.id for r in (await manager.list_rules(admin_of(org), 100, "")).rows] == [own.id]
    await refused(manager.delete_rule(admin_of(org), by_model.id), Reason.NOT_FOUND, "id")
    for rule in (by_model, everywhere):
        assert await manager.delete_rule(platform, rule.id) == rule.id


async def test_a_duplicate_rule_is_refused_naming_the_existing_one(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org = await new_org(pool)
    caller = admin_of(org)
    key = await new_key(pool, org)
    first = await manager.create_rule(caller, **fields("key", key, "hour", max_requests=5))
    error = await refused(manager.create_rule(caller, **fields("key", key.upper(), "hour", max_tokens=9)),
                          Reason.INVALID_REQUEST, "window")
    assert first.id in error.message and "already exists" in error.message
    # Another window, model or scope is another rule; the organization's own id may be left out.
    await manager.create_rule(caller, **fields("key", key, "day", max_requests=5))
    await manager.create_rule(caller, **fields("key", key, "hour", model="gpt-4o-mini", max_requests=5))
    await manager.create_rule(caller, **fields("organization", "", "hour", max_requests=5))
    await refused(manager.create_rule(caller, **fields("organization", org, "hour", max_requests=7)),
                  Reason.INVALID_REQUEST, "window")


async def test_pages_follow_the_after_cursor(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org = await new_org(pool)
    caller = admin_of(org)
    user = await new_user(pool, org)
    ids = [(await manager.create_rule(caller, **fields("user", user, "hour", model=f"m{i}"))).id
           for i in range(5)]
    first = await manager.list_rules(caller, 2, "")
    assert [r.id for r in first.rows] == ids[:2] and first.has_more
    second = await manager.list_rules(caller, 2, first.rows[-1].id)
    assert [r.id for r in second.rows] == ids[2:4] and second.has_more
    await refused(manager.list_rules(caller, 101, ""), Reason.INVALID_REQUEST, "limit")
    await refused(manager.list_rules(caller, 2, "nope"), Reason.INVALID_REQUEST, "after")


async def test_changes_write_audit_rows(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org = await new_org(pool)
    caller = admin_of(org)
    rule = await manager.create_rule(caller, **fields("organization", max_tokens=500, max_cost_usd="1.25"))
    assert await pool.fetchval("SELECT created_by FROM rate_limit_rules WHERE id = $1::uuid",
                               rule.id) == f"api_key:{caller.api_key_id}"
    await manager.delete_rule(caller, rule.id)
    rows = await pool.fetch("SELECT actor, action, target, before::text AS before, after::text AS after "
                            "FROM audit_log WHERE organization_id = $1::uuid "
                            "AND action LIKE 'rate_limit_rule.%' ORDER BY id", org)
    assert [(r["action"], r["target"]) for r in rows] == [("rate_limit_rule.create", rule.id),
                                                          ("rate_limit_rule.delete", rule.id)]
    assert all(r["actor"] == f"api_key:{caller.api_key_id}" for r in rows)
    view = {"scope": "organization", "target_id": org, "model": None, "window": "minute",
            "max_requests": None, "max_tokens": 500, "max_cost_usd": "1.25"}
    assert orjson.loads(rows[0]["after"]) == view and rows[0]["before"] is None
    assert orjson.loads(rows[1]["before"]) == view and rows[1]["after"] is None
    assert await pool.fetchval("SELECT count(*) FROM rate_limit_rules WHERE id = $1::uuid", rule.id) == 0


class CountingPool:
    """A pool that counts the queries the rule book makes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetch(self, *args: Any) -> Any:
        self.queries += 1
        return await self.pool.fetch(*args)


def _ids(specs: list[LimitSpec]) -> set[str | None]:
    return {s.rule_id for s in specs}


async def test_the_rule_book_picks_exactly_the_applicable_rules_and_caches_them(pool: asyncpg.Pool) -> None:
    manager = RuleManager(pool)
    org, other = await new_org(pool), await new_org(pool)
    caller = admin_of(org)
    key, other_key = await new_key(pool, org), await new_key(pool, org)
    user, other_user = await new_user(pool, org), await new_user(pool, org)
    model = unique("model")  # model and global rules of other tests exist too: count only ours
    platform = admin_of(await new_org(pool), platform=True)
    r = {
        "key": await manager.create_rule(caller, **fields("key", key)),
        "key_model": await manager.create_rule(caller, **fields("key", key, model=model)),
        "other_key": await manager.create_rule(caller, **fields("key", other_key)),
        "user": await manager.create_rule(caller, **fields("user", user, "hour", max_cost_usd="3")),
        "other_user": await manager.create_rule(caller, **fields("user", other_user)),
        "org": await manager.create_rule(caller, **fields("organization", window="day", max_tokens=7)),
        "org_other_model": await manager.create_rule(caller, **fields("organization", model=unique("m"))),
        "other_org": await manager.create_rule(admin_of(other), **fields("organization")),
        "model": await manager.create_rule(platform, **fields("model", model)),
        "other_model": await manager.create_rule(platform, **fields("model", unique("model"))),
        "global": await manager.create_rule(platform, **fields("global", model=model, max_requests=3)),
    }
    disabled = await manager.create_rule(caller, **fields("organization", window="hour"))
    await pool.execute("UPDATE rate_limit_rules SET enabled = false WHERE id = $1::uuid", disabled.id)
    counting = CountingPool(pool)
    book = RuleBook(counting)
    mine = {v.id for v in r.values()}
    specs = await book.for_request(org, key, user, model)
    assert _ids(specs) & mine == {r[n].id for n in ("key", "key_model", "user", "org", "model", "global")}
    user_spec = next(s for s in specs if s.rule_id == r["user"].id)
    assert user_spec == LimitSpec(scope="user", target=user, model=None, window_s=3600, max_requests=None,
                                  max_tokens=None, max_cost_usd=Decimal("3"), rule_id=r["user"].id)
    assert next(s for s in specs if s.rule_id == r["global"].id).target == ""
    # Another model: only the rules for every model; no user (an API key of no user).
    assert _ids(await book.for_request(org, key, "", "gpt-4o-mini")) & mine == {r["key"].id, r["org"].id}
    assert counting.queries == 1  # one query per organization, then memory only
    counting.pool = None  # type: ignore[assignment]  # a warm request must not touch the database
    assert _ids(await book.for_request(org, other_key, other_user, model)) & mine == {
        r["other_key"].id, r["other_user"].id, r["org"].id, r["model"].id, r["global"].id}
    assert counting.queries == 1
    # Another organization is its own query.
    counting.pool = pool
    assert _ids(await book.for_request(other, "", "", "x")) & mine == {r["other_org"].id}
    assert counting.queries == 2


async def test_the_rule_book_expires_and_shares_a_cold_load(pool: asyncpg.Pool) -> None:
    org = await new_org(pool)
    now = [0.0]
    counting = CountingPool(pool)
    book = RuleBook(counting, ttl_s=30.0, clock=lambda: now[0])
    await asyncio.gather(*(book.for_request(org, "", "", "m") for _ in range(10)))
    assert counting.queries == 1
    rule = await RuleManager(pool).create_rule(admin_of(org), **fields("organization"))
    assert await book.for_request(org, "", "", "m") == []  # cached, no NATS here
    now[0] = 31.0
    assert _ids(await book.for_request(org, "", "", "m")) == {rule.id}
    assert counting.queries == 2
    book.invalidate()
    await book.for_request(org, "", "", "m")
    assert counting.queries == 3


async def test_a_change_reaches_every_rule_book_within_two_seconds(pool: asyncpg.Pool,
                                                                    store_urls: StoreUrls) -> None:
    org = await new_org(pool)
    connections = [await connect_nats(store_urls.nats_url, unique("rules")) for _ in range(3)]
    books = [RuleBook(pool, ttl_s=3600.0) for _ in range(2)]
    try:
        for book, nc in zip(books, connections[:2], strict=True):
            await book.subscribe(nc)
            assert await book.for_request(org, "", "", "m") == []
        manager = RuleManager(pool, connections[2])
        rule = await manager.create_rule(admin_of(org), **fields("organization"))
        started = time.monotonic()
        for book in books:
            while _ids(await book.for_request(org, "", "", "m")) != {rule.id}:
                assert time.monotonic() - started < 2.0, "the change did not arrive within 2 s"
                await asyncio.sleep(0.02)
        await manager.delete_rule(admin_of(org), rule.id)
        started = time.monotonic()
        for book in books:
            while await book.for_request(org, "", "", "m") != []:
                assert time.monotonic() - started < 2.0, "the deletion did not arrive within 2 s"
                await asyncio.sleep(0.02)
        assert await publish_change(None) is False
    finally:
        for book in books:
            await book.close()
        for nc in connections:
            await nc.drain()
