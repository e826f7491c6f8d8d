"""Organizations and users on real PostgreSQL (docs/reference.md §4 "Organizations and users"):
the repository's scoping, email uniqueness, pagination and audit rows, and the manager's rules for
platform admins, through services/auth/tenancy.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from aggregator.auth.v1 import auth_service_pb2
from services.auth import admin
from services.auth import tenancy_repository as store
from services.auth.passwords import verify_password
from services.auth.permissions import grant
from services.auth.sessions import SessionStore
from services.auth.tenancy import TenancyManager
from services.core.db import create_pool
from services.core.errors import GatewayError, Reason

pytestmark = pytest.mark.asyncio(loop_scope="session")
PASSWORD = "correct horse battery"


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


async def test_users_are_scoped_to_their_organization(pool: asyncpg.Pool) -> None:
    org_a = await store.create_organization(pool, unique("tenancy-a"), "test")
    org_b = await store.create_organization(pool, unique("tenancy-b"), "test")
    user = await store.create_user(pool, org_a.id, email=f"{unique('u')}@a.example", name="U", role="member",
                                   password_hash="x", actor="test")
    assert await store.get_user(pool, org_a.id, user.id) == user
    assert await store.get_user(pool, org_b.id, user.id) is None
    assert await store.update_user(pool, org_b.id, user.id, {"name": "taken over"}, "test") is None
    assert not await store.delete_user(pool, org_b.id, user.id, "test")
    assert (await store.list_users(pool, org_b.id, 100)).rows == []
    assert (await store.get_user(pool, org_a.id, user.id)) == user


async def test_an_email_is_unique_on_the_whole_gateway_whatever_its_case(pool: asyncpg.Pool) -> None:
    org_a = await store.create_organization(pool, unique("tenancy-a"), "test")
    org_b = await store.create_organization(pool, unique("tenancy-b"), "test")
    email = f"{unique('dup')}@example.com"
    await store.create_user(pool, org_a.id, email=email, name="", role="member", password_hash="x", actor="t")
    with pytest.raises(GatewayError) as caught:
        await store.create_user(pool, org_b.id, email=email, name="", role="member", password_hash="x",
                                actor="t")
    assert caught.value.reason is Reason.INVALID_REQUEST and "already in use" in caught.value.message
    # The index on lower(email) refuses another spelling even if a writer forgot to lower-case.
    with pytest.raises(GatewayError):
        await store.create_user(pool, org_b.id, email=email.upper(), name="", role="member",
                                password_hash="x", actor="t")
    manager = TenancyManager(pool)
    with pytest.raises(GatewayError) as caught:
        await manager.create_user(admin_of(org_b.id), email=f"  {email.upper()} ", name="", role="",
                                  secret=PASSWORD)
    assert caught.value.param == "email"
    other = await manager.create_user(admin_of(org_b.id), email=f"{unique('Other')}@Example.COM", name="",
                                      role="", secret=PASSWORD)
    assert other.email == other.email.lower() and other.role == "member"
    with pytest.raises(GatewayError):
        await manager.update_user(admin_of(org_b.id), other.id, {"email": email})


async def test_pages_follow_the_after_cursor(pool: asyncpg.Pool) -> None:
    org = await store.create_organization(pool, unique("tenancy-page"), "test")
    ids = [(await store.create_user(pool, org.id, email=f"{unique('p')}@example.com", name=str(i),
                                    role="member", password_hash="x", actor="t")).id for i in range(5)]
    first = await store.list_users(pool, org.id, 2)
    assert [u.id for u in first.rows] == ids[:2] and first.has_more
    second = await store.list_users(pool, org.id, 2, first.rows[-1].id)
    assert [u.id for u in second.rows] == ids[2:4] and second.has_more
    last = await store.list_users(pool, org.id, 2, second.rows[-1].id)
    assert [u.id for u in last.rows] == ids[4:] and not last.has_more
    other = await store.create_organization(pool, unique("tenancy-other"), "test")
    with pytest.raises(GatewayError):  # another organization's user is no cursor here
        await store.list_users(pool, other.id, 2, ids[0])


async def test_changes_write_audit_rows_without_secrets(pool: asyncpg.Pool) -> None:
    manager = TenancyManager(pool)
    org = await store.create_organization(pool, unique("tenancy-audit"), "test")
    caller = admin_of(org.id)
    user = await manager.create_user(caller, email=f"{unique('a')}@example.com", name="Ada", role="admin",
                                     secret=PASSWORD)
    # The organization keeps an admin when Ada stops being one.
    await manager.create_user(caller, email=f"{unique('k')}@example.com", name="Kim", role="admin",
                              secret=PASSWORD)
    await manager.update_user(caller, user.id, {"role": "member", "password": "another password"})
    await manager.update_organization(caller, org.id, unique("renamed"))
    await manager.delete_user(caller, user.id)
    rows = await pool.fetch(
        "SELECT actor, action, target, concat(details::text, before::text, after::text) AS details, "
        "details::text AS fields, before::text AS before, after::text AS after "
        "FROM audit_log WHERE organization_id = $1::uuid ORDER BY id", org.id)
    assert [r["action"] for r in rows] == ["organization.create", "user.create", "user.create", "user.update",
                                           "organization.update", "user.delete"]
    assert all(r["actor"] == "test" or r["actor"] == f"api_key:{caller.api_key_id}" for r in rows)
    for row in rows:
        assert "password_hash" not in row["details"] and PASSWORD not in row["details"]
        assert "argon2" not in row["details"] and "another password" not in row["details"]
    update = rows[3]
    assert orjson.loads(update["before"])["role"] == "admin"
    assert orjson.loads(update["after"])["role"] == "member"
    assert orjson.loads(update["fields"])["fields"] == ["password_changed", "role"]
    assert orjson.loads(rows[5]["before"])["email"] == user.email and rows[5]["after"] is None
    assert orjson.loads(rows[1]["after"]) == {"email": user.email, "name": "Ada", "role": "admin"}


async def test_the_last_admin_can_be_neither_demoted_nor_deleted(pool: asyncpg.Pool) -> None:
    manager = TenancyManager(pool)
    org = await store.create_organization(pool, unique("tenancy-last"), "test")
    caller = admin_of(org.id)
    first = await manager.create_user(caller, email=f"{unique('f')}@example.com", name="F", role="admin",
                                      secret=PASSWORD)
    for attempt in (manager.update_user(caller, first.id, {"role": "member"}),
                    manager.delete_user(caller, first.id)):
        with pytest.raises(GatewayError) as caught:
            await attempt
        assert caught.value.reason is Reason.INVALID_REQUEST and caught.value.param == "role"
        assert "last admin" in caught.value.message
    assert (await manager.update_user(caller, first.id, {"name": "still F"})).role == "admin"
    second = await manager.create_user(caller, email=f"{unique('s')}@example.com", name="S", role="admin",
                                       secret=PASSWORD)
    assert (await manager.update_user(caller, first.id, {"role": "member"})).role == "member"
    with pytest.raises(GatewayError):
        await manager.delete_user(caller, second.id)
    assert await manager.delete_user(caller, first.id) == first.id  # a member goes freely


async def test_a_new_role_or_password_ends_the_users_sessions(pool: asyncpg.Pool) -> None:
    """Access tokens carry the role they were signed with: a change makes the user sign in again."""
    manager = TenancyManager(pool)
    org = await store.create_organization(pool, unique("tenancy-sessions"), "test")
    caller = admin_of(org.id)
    user = await manager.create_user(caller, email=f"{unique('r')}@example.com", name="R", role="member",
                                     secret=PASSWORD)
    sessions = SessionStore(pool, b"s" * 32)
    for change in ({"name": "renamed"}, {"role": "admin"}, {"password": "a brand new password"}):
        session_id, _ = await sessions.open(user.id, org.id)
        await manager.update_user(caller, user.id, change)
        assert await sessions.is_revoked(session_id) is ("name" not in change), change
        reason = await pool.fetchval("SELECT revoked_reason FROM auth_sessions WHERE id = $1::uuid",
                                     session_id)
        expected = {"name": None, "role": "role_changed", "password": "password_changed"}
        assert reason == expected[next(iter(change))]


async def test_passwords_are_argon2id_and_reset_from_the_cli(pool: asyncpg.Pool) -> None:
    org = await store.create_organization(pool, unique("tenancy-pw"), "test")
    user = await TenancyManager(pool).create_user(admin_of(org.id), email=f"{unique('pw')}@example.com",
                                                  name="", role="", secret=PASSWORD)
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1::uuid", user.id)
    assert stored.startswith("$argon2id$") and verify_password(stored, PASSWORD)
    session_id, _ = await SessionStore(pool, b"s" * 32).open(user.id, org.id)
    assert await admin.reset_password(pool, user.email.upper(), "a brand new one") == user.id
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1::uuid", user.id)
    assert verify_password(stored, "a brand new one") and not verify_password(stored, PASSWORD)
    assert await SessionStore(pool, b"s" * 32).is_revoked(session_id)  # a reset ends the sessions
    with pytest.raises(GatewayError) as caught:
        await admin.reset_password(pool, "nobody@nowhere.example", "long enough")
    assert caught.value.reason is Reason.NOT_FOUND


async def test_only_platform_admins_reach_other_organizations(pool: asyncpg.Pool) -> None:
    manager = TenancyManager(pool)
    platform_org = await store.create_organization(pool, unique("tenancy-platform"), "test")
    org_b = await store.create_organization(pool, unique("tenancy-b"), "test")
    platform, b_admin = admin_of(platform_org.id, platform=True), admin_of(org_b.id)
    first = await manager.create_user(platform, email=f"{unique('first')}@b.example", name="", role="admin",
                                      secret=PASSWORD, organization_id=org_b.id)
    assert first.organization_id == org_b.id
    assert (await manager.get_organization(platform, org_b.id)).id == org_b.id
    assert (await manager.get_organization(b_admin, org_b.id)).id == org_b.id
    for attempt in (manager.get_organization(b_admin, platform_org.id),
                    manager.update_organization(b_admin, platform_org.id, "mine now"),
                    manager.get_user(admin_of(platform_org.id), first.id)):
        with pytest.raises(GatewayError) as caught:
            await attempt
        assert caught.value.reason is Reason.NOT_FOUND
    with pytest.raises(GatewayError) as caught:
        await manager.create_user(b_admin, email=f"{unique('x')}@b.example", name="", role="",
                                  secret=PASSWORD, organization_id=platform_org.id)
    assert caught.value.reason is Reason.PERMISSION_DENIED
    with pytest.raises(GatewayError) as caught:
        await manager.create_user(platform, email=f"{unique('x')}@b.example", name="", role="",
                                  secret=PASSWORD, organization_id=str(uuid.uuid4()))
    assert caught.value.reason is Reason.NOT_FOUND
