"""All SQL of the auth service: organizations, users, API keys and their audit rows.

Every statement is parameterized. Keys are found by their HMAC (`key_hash`, unique index), never
by plaintext. Connection-level failures of the hot-path lookup become GatewayError(UNAVAILABLE)
here, the one place that knows the driver's exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg

from services.auth import audit_repository
from services.auth.audit_repository import AuditEntry, key_view
from services.auth.records import LIMIT_FIELDS, KeyRow, KeySettings
from services.auth.validation import PageCursor
from services.core.errors import GatewayError, Reason

DEFAULT_ORGANIZATION = "default"

_KEY_COLUMN_NAMES = ("id", "organization_id", "key_hash", "prefix", "name", "role", "allowed_models",
                     *LIMIT_FIELDS, "expires_at", "created_at", "revoked_at", "scopes",
                     "previous_key_expires_at", "cache", "max_budget_usd", "budget_period", "provider_policy")
# The columns an update may set (validation.changes_from_update's keys), with their casts.
_UPDATABLE = {"name": "", "role": "", "allowed_models": "::text[]", "expires_at": "::timestamptz",
              "scopes": "::text[]", "cache": "::boolean", "max_budget_usd": "::numeric", "budget_period": "",
              "provider_policy": "::jsonb",
              **dict.fromkeys(LIMIT_FIELDS, "::integer")}
_KEY_COLUMNS = ", ".join(_KEY_COLUMN_NAMES)
_K_KEY_COLUMNS = ", ".join(f"k.{c}" for c in _KEY_COLUMN_NAMES)
_STORE_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
               asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except _STORE_DOWN as exc:
        raise GatewayError(Reason.UNAVAILABLE, "The server is temporarily unable to check API keys. "
                           "Please retry.") from exc


async def _audit(conn: Any, organization_id: str | None, actor: str, action: str, target: str | None,
                 details: dict[str, Any] | None = None, *, before: dict[str, Any] | None = None,
                 after: dict[str, Any] | None = None) -> None:
    """One audit row in the caller's transaction, with the running RPC's IP and request id and
    the change's before/after, secrets removed (docs/architecture.md §2.11). A `details` holding
    "before"/"after" (and no keywords) fills those columns too."""
    if before is None and after is None and details and ("before" in details or "after" in details):
        before, after = details.get("before"), details.get("after")
    await audit_repository.insert_entry(conn, AuditEntry(organization_id, actor, action, target, details,
                                                         before=before, after=after))


# -- organizations and users ----------------------------------------------------------------

async def ensure_organization(pool: asyncpg.Pool, name: str = DEFAULT_ORGANIZATION) -> str:
    """The id of organization `name`, created if missing (safe under concurrent callers)."""
    found = await pool.fetchval("SELECT id FROM organizations WHERE name = $1", name)
    if found is not None:
        return str(found)
    # DO UPDATE (a no-op) rather than DO NOTHING so RETURNING yields the id even when a concurrent
    # caller inserted the row first.
    return str(await pool.fetchval(
        "INSERT INTO organizations (name, created_at, updated_at) VALUES ($1, now(), now()) "
        "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id", name))


async def create_organization(pool: asyncpg.Pool, name: str, actor: str) -> str:
    """Creates organization `name`; GatewayError(INVALID_REQUEST) if the name is taken."""
    async with pool.acquire() as conn, conn.transaction():
        org_id = await conn.fetchval(
            "INSERT INTO organizations (name, created_at, updated_at) VALUES ($1, now(), now()) "
            "ON CONFLICT (name) DO NOTHING RETURNING id", name)
        if org_id is None:
            raise GatewayError(Reason.INVALID_REQUEST, f"Organization {name!r} already exists.", param="name")
        await _audit(conn, str(org_id), actor, "organization.create", str(org_id), {"name": name},
                     after={"name": name})
    return str(org_id)


async def find_organization(pool: asyncpg.Pool, ref: str) -> str | None:
    """The id of the organization whose id or name is `ref`."""
    row = await pool.fetchval(
        "SELECT id FROM organizations WHERE id::text = $1 OR name = $1 ORDER BY (id::text = $1) DESC LIMIT 1",
        ref)
    return None if row is None else str(row)


async def create_user(pool: asyncpg.Pool, organization_id: str, email: str, password_hash: str | None,
                      role: str, actor: str) -> str:
    """Creates a user; GatewayError(INVALID_REQUEST) if the email is taken."""
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval(
            "INSERT INTO users (organization_id, email, password_hash, role, created_at) "
            "VALUES ($1::uuid, $2, $3, $4, now()) ON CONFLICT (email) DO NOTHING RETURNING id",
            organization_id, email, password_hash, role)
        if user_id is None:
            raise GatewayError(Reason.INVALID_REQUEST, "A user with this email already exists.",
                               param="email")
        await _audit(conn, organization_id, actor, "user.create", str(user_id), {"role": role},
                     after={"email": email, "role": role})
    return str(user_id)


# -- API keys -------------------------------------------------------------------------------

async def insert_key(pool: asyncpg.Pool, *, organization_id: str, key_hash: str, prefix: str,
                     settings: KeySettings, actor: str, user_id: str | None = None) -> KeyRow:
    """Stores a new key with an audit row, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        return await insert_key_in(conn, organization_id=organization_id, key_hash=key_hash, prefix=prefix,
                                   settings=settings, actor=actor, user_id=user_id)


async def insert_key_in(conn: Any, *, organization_id: str, key_hash: str, prefix: str, settings: KeySettings,
                        actor: str, user_id: str | None = None, oauth_client_id: str | None = None,
                        details: dict[str, Any] | None = None) -> KeyRow:
    """Stores a new key with its audit row in the caller's transaction (an OAuth code exchange
    spends its code in the same one); `oauth_client_id` names the app it was issued to."""
    limits = [getattr(settings, f) for f in LIMIT_FIELDS]
    models = None if settings.allowed_models is None else list(settings.allowed_models)
    row = await conn.fetchrow(
        f"INSERT INTO api_keys (organization_id, user_id, name, key_hash, prefix, role, allowed_models, "
        f"{', '.join(LIMIT_FIELDS)}, expires_at, scopes, oauth_client_id, cache, max_budget_usd, "
        f"budget_period, provider_policy) "
        f"VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7::text[], $8, $9, $10, $11, $12, $13::text[], "
        f"$14::uuid, $15, $16, $17, $18::jsonb) RETURNING {_KEY_COLUMNS}",
        organization_id, user_id, settings.name, key_hash, prefix, settings.role, models, *limits,
        settings.expires_at, list(settings.scopes), oauth_client_id, settings.cache, settings.max_budget_usd,
        settings.budget_period, settings.provider_policy)
    key = KeyRow.from_row(row)
    await _audit(conn, organization_id, actor, "api_key.create", key.id,
                 {"name": settings.name, "role": settings.role, "prefix": prefix, **(details or {})},
                 after=key_view(key))
    return key


async def list_keys(pool: asyncpg.Pool, organization_id: str, limit: int,
                    after: PageCursor | None = None) -> list[KeyRow]:
    """Live (not revoked) keys of an organization, newest first, starting after `after`."""
    if after is None:
        rows = await pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE organization_id = $1::uuid AND revoked_at IS NULL "
            "ORDER BY created_at DESC, id DESC LIMIT $2", organization_id, limit)
    else:
        rows = await pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE organization_id = $1::uuid AND revoked_at IS NULL "
            "AND (created_at, id) < ($3, $4::uuid) ORDER BY created_at DESC, id DESC LIMIT $2",
            organization_id, limit, after.created_at, after.id)
    return [KeyRow.from_row(r) for r in rows]


async def get_key(pool: asyncpg.Pool, organization_id: str, key_id: str) -> KeyRow | None:
    """A live key of the organization, or None (another organization's key is None too)."""
    row = await pool.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1::uuid AND organization_id = $2::uuid "
        "AND revoked_at IS NULL", key_id, organization_id)
    return None if row is None else KeyRow.from_row(row)


async def update_key(pool: asyncpg.Pool, organization_id: str, key_id: str, changes: dict[str, Any],
                     actor: str) -> KeyRow | None:
    """Sets the changed columns of a live key of the organization (one statement, so concurrent
    updates of different fields never undo each other) with an audit row naming the fields; None
    when the organization has no such live key."""
    unknown = set(changes) - set(_UPDATABLE)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not changes:
        return await get_key(pool, organization_id, key_id)
    async with pool.acquire() as conn, conn.transaction():
        # The row as it was, locked until the update commits: the audit row's `before`.
        old = await conn.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1::uuid AND organization_id = $2::uuid "
            "AND revoked_at IS NULL FOR UPDATE", key_id, organization_id)
        if old is not None:
            changes = _complete_budget(changes, old)
        columns = list(changes)
        # Column names come from _UPDATABLE only; every value is a placeholder.
        assignments = ", ".join(f"{c} = ${i}{_UPDATABLE[c]}" for i, c in enumerate(columns, start=3))
        values = [list(v) if isinstance(v, tuple) else v for v in changes.values()]
        row = None if old is None else await conn.fetchrow(
            f"UPDATE api_keys SET {assignments} WHERE id = $1::uuid AND organization_id = $2::uuid "
            f"AND revoked_at IS NULL RETURNING {_KEY_COLUMNS}", key_id, organization_id, *values)
        if row is None:
            return None
        await _audit(conn, organization_id, actor, "api_key.update", key_id, {"fields": sorted(columns)},
                     before=key_view(KeyRow.from_row(old)), after=key_view(KeyRow.from_row(row)))
    return KeyRow.from_row(row)


def _complete_budget(changes: dict[str, Any], old: Any) -> dict[str, Any]:
    """A budget and its period change together: a new budget keeps the key's period (monthly when
    it had none), clearing the budget clears the period, and a period needs a budget."""
    if "max_budget_usd" in changes and "budget_period" not in changes:
        period = None if changes["max_budget_usd"] is None else (old["budget_period"] or "monthly")
        return {**changes, "budget_period": period}
    if changes.get("budget_period") and changes.get("max_budget_usd", old["max_budget_usd"]) is None:
        raise GatewayError(Reason.INVALID_REQUEST, "budget_period needs a max_budget_usd.",
                           param="budget_period")
    return changes


async def rotate_key(pool: asyncpg.Pool, organization_id: str, key_id: str, *, key_hash: str, prefix: str,
                     grace_s: int, actor: str) -> KeyRow | None:
    """Gives a live key of the organization a new HMAC and prefix; the replaced HMAC stays valid
    for `grace_s` seconds (none when 0; a secret still in an earlier grace period stops now). None
    when the organization has no such live key."""
    async with pool.acquire() as conn, conn.transaction():
        # SET expressions read the row as it was, so previous_key_hash takes the replaced HMAC.
        row = await conn.fetchrow(
            "UPDATE api_keys SET "
            "previous_key_hash = CASE WHEN $5::integer > 0 THEN key_hash END, "
            "previous_key_expires_at = CASE WHEN $5::integer > 0 "
            "THEN now() + make_interval(secs => $5::integer) END, "
            "key_hash = $3, prefix = $4 "
            "WHERE id = $1::uuid AND organization_id = $2::uuid AND revoked_at IS NULL "
            f"RETURNING {_KEY_COLUMNS}", key_id, organization_id, key_hash, prefix, grace_s)
        if row is None:
            return None
        await _audit(conn, organization_id, actor, "api_key.rotate", key_id,
                     {"prefix": prefix, "grace_period_seconds": grace_s},
                     after={"prefix": prefix, "previous_key_expires_at": row["previous_key_expires_at"]})
    return KeyRow.from_row(row)


async def revoke_key(pool: asyncpg.Pool, organization_id: str, key_id: str, actor: str) -> str | None:
    """Revokes a key of the organization and answers its key_hash (also when it was already
    revoked, so that deletion is idempotent); None when the organization has no such key."""
    async with pool.acquire() as conn, conn.transaction():
        key_hash = await conn.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid AND organization_id = $2::uuid "
            "AND revoked_at IS NULL RETURNING key_hash", key_id, organization_id)
        if key_hash is not None:
            await _audit(conn, organization_id, actor, "api_key.revoke", key_id, after={"revoked": True})
            return str(key_hash)
        found = await conn.fetchval(
            "SELECT key_hash FROM api_keys WHERE id = $1::uuid AND organization_id = $2::uuid",
            key_id, organization_id)
    return None if found is None else str(found)


async def find_live_key(pool: asyncpg.Pool, key_hash: str) -> KeyRow | None:
    """The live key whose current or rotated-out HMAC this is, joined to its organization; None
    when unknown or revoked. One statement over two unique indexes. Expiry (the key's, and the
    grace period's for a rotated-out secret) is the caller's check, so a cached entry expires on
    time."""
    with _store_errors():
        row = await pool.fetchrow(
            f"SELECT {_K_KEY_COLUMNS}, k.key_hash <> $1 AS by_previous FROM api_keys k "
            "JOIN organizations o ON o.id = k.organization_id "
            "WHERE (k.key_hash = $1 OR k.previous_key_hash = $1) AND k.revoked_at IS NULL "
            # A key's current secret wins over another row's rotated-out one (the bootstrap admin
            # key may be re-inserted by `up` after being rotated).
            "ORDER BY by_previous LIMIT 1", key_hash)
    return None if row is None else KeyRow.from_row(row, found_by_previous_key=row["by_previous"])


async def key_state(pool: asyncpg.Pool, key_hash: str) -> str | None:
    """'live', 'revoked', or None when no row has this HMAC."""
    row = await pool.fetchrow("SELECT revoked_at FROM api_keys WHERE key_hash = $1", key_hash)
    if row is None:
        return None
    return "live" if row["revoked_at"] is None else "revoked"


async def upsert_admin_key(pool: asyncpg.Pool, *, organization_id: str, key_hash: str, prefix: str,
                           name: str, actor: str) -> bool:
    """Makes the key with this HMAC a live, non-expiring admin key of the organization, inserting
    it if missing. Answers True when a row was inserted."""
    async with pool.acquire() as conn, conn.transaction():
        # xmax = 0 only on a freshly inserted row version: tells an insert from a conflict update.
        row = await conn.fetchrow(
            "INSERT INTO api_keys (organization_id, name, key_hash, prefix, role) "
            "VALUES ($1::uuid, $2, $3, $4, 'admin') "
            "ON CONFLICT (key_hash) DO UPDATE SET organization_id = EXCLUDED.organization_id, "
            "role = 'admin', revoked_at = NULL, expires_at = NULL "
            "RETURNING id, (xmax = 0) AS inserted", organization_id, name, key_hash, prefix)
        if row["inserted"]:
            await _audit(conn, organization_id, actor, "api_key.create", str(row["id"]),
                         {"name": name, "role": "admin", "prefix": prefix})
    return bool(row["inserted"])


async def touch_keys(pool: asyncpg.Pool, key_ids: Sequence[str]) -> None:
    """Sets last_used_at to now for these keys, in one statement."""
    await pool.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", list(key_ids))
