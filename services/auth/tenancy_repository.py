"""All SQL of organizations and users for the tenancy endpoints (docs/reference.md §4
"Organizations and users").

Every statement is parameterized; every user statement names the organization, so another
organization's user is simply not found. Each change writes its audit row (who, what, the record
before and after, never a password or its hash) with repository._audit, in the change's own
transaction (docs/architecture.md §2.11). Emails are stored lower-cased; the unique index on
lower(email) (migration 0009) backs the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.auth.repository import _audit
from services.core.errors import GatewayError, Reason, quote

_ORG_COLUMNS = "id, name, created_at, updated_at, store_prompts, provider_policy"
_USER_COLUMNS = "id, organization_id, email, name, role, created_at, updated_at"
# The user columns an update may set; the password arrives here already hashed.
USER_UPDATABLE = ("email", "name", "role", "password_hash")


@dataclass(frozen=True, slots=True)
class OrganizationRow:
    """An organization as the API shows it."""

    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    store_prompts: bool = False  # bodies kept in the request log (docs/ledger.md §2)
    provider: dict[str, Any] | None = None  # default provider preferences (docs/routing.md §2)

    @classmethod
    def from_row(cls, row: Any) -> OrganizationRow:
        return cls(str(row["id"]), row["name"], row["created_at"], row["updated_at"], row["store_prompts"],
                   row["provider_policy"])

    def view(self) -> dict[str, Any]:
        """What the audit trail keeps of it."""
        return {"name": self.name, "store_prompts": self.store_prompts, "provider": self.provider}


@dataclass(frozen=True, slots=True)
class UserRow:
    """A user as the API shows it: never the password hash."""

    id: str
    organization_id: str
    email: str
    name: str
    role: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> UserRow:
        return cls(str(row["id"]), str(row["organization_id"]), row["email"], row["name"], row["role"],
                   row["created_at"], row["updated_at"])

    def view(self) -> dict[str, Any]:
        """What the audit trail keeps of it: no password, no hash."""
        return {"email": self.email, "name": self.name, "role": self.role}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, oldest first, and whether more follow."""

    rows: list[Any]
    has_more: bool


def _email_taken(email: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST,
                        f"The email {quote(email)} is already in use by another user.", param="email")


def _name_taken(name: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, f"An organization named {quote(name)} already exists.",
                        param="name")


def _last_admin() -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, "This user is the organization's last admin: make another "
                        "user admin first.", param="role")


async def _another_admin(conn: Any, organization_id: str, user_id: str) -> bool:
    """Whether the organization has an admin user besides `user_id`. Locks its admins' rows, so
    two admins demoting each other at once cannot both succeed."""
    admins = await conn.fetch("SELECT id FROM users WHERE organization_id = $1::uuid AND role = 'admin' "
                              "ORDER BY id FOR UPDATE", organization_id)
    return any(str(row["id"]) != user_id for row in admins)


def _unknown_cursor() -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, "after must be the id of an item of this list.",
                        param="after")


# -- organizations ---------------------------------------------------------------------------

async def create_organization(pool: asyncpg.Pool, name: str, actor: str) -> OrganizationRow:
    """Creates organization `name`; INVALID_REQUEST when the name is taken."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO organizations (name, created_at, updated_at) VALUES ($1, now(), now()) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {_ORG_COLUMNS}", name)
        if row is None:
            raise _name_taken(name)
        org = OrganizationRow.from_row(row)
        await _audit(conn, org.id, actor, "organization.create", org.id, after=org.view())
    return org


async def get_organization(pool: asyncpg.Pool, organization_id: str) -> OrganizationRow | None:
    row = await pool.fetchrow(f"SELECT {_ORG_COLUMNS} FROM organizations WHERE id = $1::uuid",
                              organization_id)
    return None if row is None else OrganizationRow.from_row(row)


async def list_organizations(pool: asyncpg.Pool, limit: int, after: str | None = None) -> Page:
    """Every organization, oldest first, after the one with id `after`."""
    async with pool.acquire() as conn:
        if after is None:
            rows = await conn.fetch(f"SELECT {_ORG_COLUMNS} FROM organizations ORDER BY created_at, id "
                                    "LIMIT $1", limit + 1)
        else:
            cursor = await conn.fetchrow("SELECT created_at, id FROM organizations WHERE id = $1::uuid",
                                         after)
            if cursor is None:
                raise _unknown_cursor()
            rows = await conn.fetch(
                f"SELECT {_ORG_COLUMNS} FROM organizations WHERE (created_at, id) > ($2, $3::uuid) "
                "ORDER BY created_at, id LIMIT $1", limit + 1, cursor["created_at"], cursor["id"])
    return Page([OrganizationRow.from_row(r) for r in rows[:limit]], len(rows) > limit)


async def update_organization(pool: asyncpg.Pool, organization_id: str, name: str | None,
                              store_prompts: bool | None, actor: str,
                              provider: dict[str, Any] | None = None) -> OrganizationRow | None:
    """Renames an organization and/or sets its `store_prompts` and default `provider` preferences
    (None: unchanged; an empty `provider` removes them); None when it does not exist,
    INVALID_REQUEST when the name is taken."""
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchrow(f"SELECT {_ORG_COLUMNS} FROM organizations WHERE id = $1::uuid FOR UPDATE",
                                  organization_id)
        if old is None:
            return None
        try:
            row = await conn.fetchrow(
                "UPDATE organizations SET name = coalesce($2, name), "
                "store_prompts = coalesce($3, store_prompts), "
                "provider_policy = CASE WHEN $4::boolean THEN nullif($5::jsonb, '{}'::jsonb) "
                "ELSE provider_policy END "
                f"WHERE id = $1::uuid RETURNING {_ORG_COLUMNS}", organization_id, name, store_prompts,
                provider is not None, provider)
        except asyncpg.UniqueViolationError:
            raise _name_taken(name or "") from None
        org = OrganizationRow.from_row(row)
        await _audit(conn, org.id, actor, "organization.update", org.id,
                     before=OrganizationRow.from_row(old).view(), after=org.view())
    return org


# -- users -----------------------------------------------------------------------------------

async def create_user(pool: asyncpg.Pool, organization_id: str, *, email: str, name: str, role: str,
                      password_hash: str, actor: str) -> UserRow:
    """Creates a user; INVALID_REQUEST when the email (lower-cased by the caller) is in use."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO users (organization_id, email, name, role, password_hash, created_at, "
                "updated_at) "
                f"VALUES ($1::uuid, $2, $3, $4, $5, now(), now()) RETURNING {_USER_COLUMNS}",
                organization_id, email, name, role, password_hash)
        except asyncpg.UniqueViolationError:
            raise _email_taken(email) from None
        user = UserRow.from_row(row)
        await _audit(conn, organization_id, actor, "user.create", user.id, after=user.view())
    return user


async def get_user(pool: asyncpg.Pool, organization_id: str, user_id: str) -> UserRow | None:
    """A user of the organization, or None (another organization's user is None too)."""
    row = await pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1::uuid AND "
                              "organization_id = $2::uuid", user_id, organization_id)
    return None if row is None else UserRow.from_row(row)


async def list_users(pool: asyncpg.Pool, organization_id: str, limit: int, after: str | None = None) -> Page:
    """The organization's users, oldest first, after its user with id `after`."""
    async with pool.acquire() as conn:
        if after is None:
            rows = await conn.fetch(f"SELECT {_USER_COLUMNS} FROM users WHERE organization_id = $2::uuid "
                                    "ORDER BY created_at, id LIMIT $1", limit + 1, organization_id)
        else:
            cursor = await conn.fetchrow("SELECT created_at, id FROM users WHERE id = $1::uuid "
                                         "AND organization_id = $2::uuid", after, organization_id)
            if cursor is None:
                raise _unknown_cursor()
            rows = await conn.fetch(
                f"SELECT {_USER_COLUMNS} FROM users WHERE organization_id = $2::uuid "
                "AND (created_at, id) > ($3, $4::uuid) ORDER BY created_at, id LIMIT $1",
                limit + 1, organization_id, cursor["created_at"], cursor["id"])
    return Page([UserRow.from_row(r) for r in rows[:limit]], len(rows) > limit)


async def update_user(pool: asyncpg.Pool, organization_id: str, user_id: str, changes: dict[str, Any],
                      actor: str) -> UserRow | None:
    """Sets the changed columns (USER_UPDATABLE) of a user of the organization, with an audit row
    naming the fields (a new password shows as `password_changed`, never its hash); None when the
    organization has no such user. Demoting its last admin is INVALID_REQUEST."""
    unknown = set(changes) - set(USER_UPDATABLE)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not changes:
        return await get_user(pool, organization_id, user_id)
    columns = list(changes)
    # Column names come from USER_UPDATABLE only; every value is a placeholder.
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=3))
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1::uuid AND "
                                  "organization_id = $2::uuid FOR UPDATE", user_id, organization_id)
        if old is None:
            return None
        if old["role"] == "admin" and changes.get("role", "admin") != "admin" and \
                not await _another_admin(conn, organization_id, user_id):
            raise _last_admin()
        try:
            row = await conn.fetchrow(
                f"UPDATE users SET {assignments} WHERE id = $1::uuid AND organization_id = $2::uuid "
                f"RETURNING {_USER_COLUMNS}", user_id, organization_id, *changes.values())
        except asyncpg.UniqueViolationError:
            raise _email_taken(str(changes.get("email", ""))) from None
        user = UserRow.from_row(row)
        fields = sorted("password_changed" if c == "password_hash" else c for c in columns)
        await _audit(conn, organization_id, actor, "user.update", user_id, {"fields": fields},
                     before=UserRow.from_row(old).view(), after=user.view())
    return user


async def delete_user(pool: asyncpg.Pool, organization_id: str, user_id: str, actor: str) -> bool:
    """Deletes a user of the organization (its sessions go with it, its keys stay without a
    user); False when the organization has no such user, INVALID_REQUEST for its last admin."""
    async with pool.acquire() as conn, conn.transaction():
        role = await conn.fetchval("SELECT role FROM users WHERE id = $1::uuid "
                                   "AND organization_id = $2::uuid FOR UPDATE", user_id, organization_id)
        if role == "admin" and not await _another_admin(conn, organization_id, user_id):
            raise _last_admin()
        row = await conn.fetchrow(f"DELETE FROM users WHERE id = $1::uuid AND organization_id = $2::uuid "
                                  f"RETURNING {_USER_COLUMNS}", user_id, organization_id)
        if row is None:
            return False
        await _audit(conn, organization_id, actor, "user.delete", user_id,
                     before=UserRow.from_row(row).view())
    return True


async def set_password(pool: asyncpg.Pool, email: str, password_hash: str, actor: str) -> str | None:
    """Gives the user with this (lower-cased) email a new password hash; answers the user's id,
    None when no user has this email. For `aggregator admin reset-password`."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("UPDATE users SET password_hash = $2 WHERE lower(email) = $1 "
                                  "RETURNING id, organization_id", email, password_hash)
        if row is None:
            return None
        # A new password ends the user's sessions (every process within its session-state TTL).
        await conn.execute("UPDATE auth_sessions SET revoked_at = now(), revoked_reason = 'password_changed' "
                           "WHERE user_id = $1 AND revoked_at IS NULL", row["id"])
        await _audit(conn, str(row["organization_id"]), actor, "user.update", str(row["id"]),
                     {"fields": ["password_changed"]})
    return str(row["id"])
