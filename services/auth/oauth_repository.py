"""All SQL of OAuth 2.0 (docs/reference.md §4 "OAuth 2.0"): clients, authorization codes, and
what a client obtained (API keys, client-credentials sessions), each change with its audit row in
the same transaction. Secrets and codes are found by their HMAC, never stored in plain text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.auth.records import KeyRow, KeySettings
from services.auth.repository import _audit, insert_key_in
from services.auth.tenancy_repository import Page
from services.core.errors import GatewayError, Reason

_CLIENT_COLUMNS = "id, organization_id, name, redirect_uris, confidential, secret_hash, scopes, created_at"


@dataclass(frozen=True, slots=True)
class ClientRow:
    id: str
    organization_id: str
    name: str
    redirect_uris: tuple[str, ...]
    confidential: bool
    secret_hash: str | None
    scopes: tuple[str, ...]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> ClientRow:
        return cls(id=str(row["id"]), organization_id=str(row["organization_id"]), name=row["name"],
                   redirect_uris=tuple(row["redirect_uris"]), confidential=row["confidential"],
                   secret_hash=row["secret_hash"], scopes=tuple(row["scopes"]), created_at=row["created_at"])

    def view(self) -> dict[str, Any]:
        """What the audit trail keeps: never the secret's HMAC."""
        return {"name": self.name, "redirect_uris": list(self.redirect_uris),
                "confidential": self.confidential, "scopes": list(self.scopes)}


@dataclass(frozen=True, slots=True)
class CodeRow:
    """An authorization code as stored, with its user's current state."""

    client_id: str
    user_id: str
    organization_id: str
    redirect_uri: str
    code_challenge: str
    scopes: tuple[str, ...]
    expired: bool
    used: bool
    api_key_id: str | None
    user_role: str | None  # None when the user is disabled


@dataclass(frozen=True, slots=True)
class Revoked:
    """What deleting a client (or re-presenting its code) revoked."""

    key_ids: tuple[str, ...] = ()
    session_ids: tuple[str, ...] = ()


# -- clients -----------------------------------------------------------------------------------

async def create_client(pool: asyncpg.Pool, *, organization_id: str, name: str,
                        redirect_uris: tuple[str, ...], confidential: bool, secret_hash: str | None,
                        scopes: tuple[str, ...], actor: str) -> ClientRow:
    async with pool.acquire() as conn, conn.transaction():
        row = ClientRow.from_row(await conn.fetchrow(
            "INSERT INTO oauth_clients (organization_id, name, redirect_uris, confidential, secret_hash, "
            "scopes) "
            f"VALUES ($1::uuid, $2, $3::text[], $4, $5, $6::text[]) RETURNING {_CLIENT_COLUMNS}",
            organization_id, name, list(redirect_uris), confidential, secret_hash, list(scopes)))
        await _audit(conn, organization_id, actor, "oauth_client.create", row.id, after=row.view())
    return row


async def get_client(pool: asyncpg.Pool, client_id: str) -> ClientRow | None:
    """A live client of any organization, by id."""
    row = await pool.fetchrow(f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1::uuid "
                              "AND deleted_at IS NULL", client_id)
    return None if row is None else ClientRow.from_row(row)


async def list_clients(pool: asyncpg.Pool, organization_id: str, limit: int, after: str | None) -> Page:
    """The organization's live clients, oldest first, after the one with id `after`."""
    async with pool.acquire() as conn:
        if after is None:
            rows = await conn.fetch(
                f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE organization_id = $1::uuid "
                "AND deleted_at IS NULL ORDER BY created_at, id LIMIT $2", organization_id, limit + 1)
        else:
            cursor = await conn.fetchrow(
                "SELECT created_at, id FROM oauth_clients WHERE id = $1::uuid AND organization_id = $2::uuid",
                after, organization_id)
            if cursor is None:
                raise GatewayError(Reason.INVALID_REQUEST, "after must be the id of an item of this list.",
                                   param="after")
            rows = await conn.fetch(
                f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE organization_id = $1::uuid "
                "AND deleted_at IS NULL AND (created_at, id) > ($3, $4::uuid) "
                "ORDER BY created_at, id LIMIT $2",
                organization_id, limit + 1, cursor["created_at"], cursor["id"])
    return Page([ClientRow.from_row(r) for r in rows[:limit]], len(rows) > limit)


async def delete_client(pool: asyncpg.Pool, organization_id: str, client_id: str,
                        actor: str) -> Revoked | None:
    """Deletes a client of the organization and revokes every key and session it obtained, in one
    transaction; answers what was revoked (empty when it was already deleted), None when the
    organization has no such client."""
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchrow(
            "SELECT deleted_at IS NOT NULL AS gone FROM oauth_clients WHERE id = $1::uuid "
            "AND organization_id = $2::uuid FOR UPDATE", client_id, organization_id)
        if found is None:
            return None
        if found["gone"]:
            return Revoked()
        await conn.execute("UPDATE oauth_clients SET deleted_at = now() WHERE id = $1::uuid", client_id)
        keys = await conn.fetch("UPDATE api_keys SET revoked_at = now() WHERE oauth_client_id = $1::uuid "
                                "AND revoked_at IS NULL RETURNING id", client_id)
        sessions = await conn.fetch(
            "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = 'oauth_client_deleted' "
            "WHERE oauth_client_id = $1::uuid AND revoked_at IS NULL RETURNING id", client_id)
        await conn.execute("DELETE FROM oauth_codes WHERE client_id = $1::uuid", client_id)
        revoked = Revoked(tuple(str(r["id"]) for r in keys), tuple(str(r["id"]) for r in sessions))
        await _audit(conn, organization_id, actor, "oauth_client.delete", client_id,
                     {"revoked_keys": len(revoked.key_ids), "revoked_tokens": len(revoked.session_ids)},
                     after={"deleted": True})
    return revoked


# -- authorization codes -----------------------------------------------------------------------

async def insert_code(pool: asyncpg.Pool, *, code_hash: str, client: ClientRow, user_id: str,
                      organization_id: str, redirect_uri: str, code_challenge: str, scopes: tuple[str, ...],
                      ttl: timedelta) -> None:
    """Stores an approved authorization request's code; the approval is audited (`oauth.authorize`)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO oauth_codes (code_hash, client_id, user_id, organization_id, redirect_uri, "
            "code_challenge, scopes, expires_at) "
            "VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5, $6, $7::text[], now() + $8::interval)",
            code_hash, client.id, user_id, organization_id, redirect_uri, code_challenge, list(scopes), ttl)
        await _audit(conn, organization_id, f"user:{user_id}", "oauth.authorize", client.id,
                     {"client": client.name, "scopes": list(scopes)})
        # Spent and expired codes are of no further use: the table stays small.
        await conn.execute("DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day'")


# Decides whether a code may be exchanged: None to go on, or the error to answer (the code is
# spent either way, so a stolen code gets one try).
CodeCheck = Callable[[CodeRow], "OAuthRefusal | None"]


@dataclass(frozen=True, slots=True)
class OAuthRefusal:
    error: str
    description: str


@dataclass(frozen=True, slots=True)
class Exchanged:
    """The outcome of presenting a code: a new key, a refusal, or (`reused`) a code presented
    again, whose key is now revoked."""

    key: KeyRow | None = None
    code: CodeRow | None = None
    refusal: OAuthRefusal | None = None
    reused_key_id: str | None = None


async def exchange_code(pool: asyncpg.Pool, code_hash: str, check: CodeCheck,
                        new_key: Callable[[CodeRow], tuple[KeySettings, str, str]], actor: str) -> Exchanged:
    """Spends a code and issues its API key, in one transaction. `check` refuses a code presented
    by the wrong client, with the wrong verifier or redirect URI, or too late; `new_key` answers
    the key's settings, HMAC and prefix. A code presented a second time revokes the key it gave
    (RFC 6749 §4.1.2) and answers `reused_key_id`."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT c.client_id, c.user_id, c.organization_id, c.redirect_uri, c.code_challenge, c.scopes, "
            "c.expires_at <= now() AS expired, c.used_at IS NOT NULL AS used, c.api_key_id, "
            "CASE WHEN u.disabled_at IS NULL THEN u.role END AS user_role "
            "FROM oauth_codes c JOIN users u ON u.id = c.user_id WHERE c.code_hash = $1 FOR UPDATE OF c",
            code_hash)
        if row is None:
            return Exchanged(refusal=OAuthRefusal("invalid_grant", "Unknown authorization code."))
        issued = row["api_key_id"]
        code = CodeRow(client_id=str(row["client_id"]), user_id=str(row["user_id"]),
                       organization_id=str(row["organization_id"]), redirect_uri=row["redirect_uri"],
                       code_challenge=row["code_challenge"], scopes=tuple(row["scopes"]),
                       expired=row["expired"], used=row["used"], user_role=row["user_role"],
                       api_key_id=None if issued is None else str(issued))
        if code.used:
            reused = None
            if code.api_key_id is not None:
                reused = await conn.fetchval(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid AND revoked_at IS NULL "
                    "RETURNING id", code.api_key_id)
            await _audit(conn, code.organization_id, actor, "oauth.code_reuse", code.client_id,
                         {"revoked_key": code.api_key_id if reused is not None else None})
            return Exchanged(code=code, reused_key_id=code.api_key_id,
                             refusal=OAuthRefusal("invalid_grant", "This authorization code was already "
                                                  "used; the key it gave is revoked."))
        refusal = check(code)
        if refusal is not None:
            await conn.execute("UPDATE oauth_codes SET used_at = now() WHERE code_hash = $1", code_hash)
            return Exchanged(code=code, refusal=refusal)
        settings, key_hash, prefix = new_key(code)
        key = await insert_key_in(conn, organization_id=code.organization_id, key_hash=key_hash,
                                  prefix=prefix, settings=settings, actor=actor, user_id=code.user_id,
                                  oauth_client_id=code.client_id, details={"grant": "authorization_code"})
        await conn.execute("UPDATE oauth_codes SET used_at = now(), api_key_id = $2::uuid "
                           "WHERE code_hash = $1", code_hash, key.id)
        await _audit(conn, code.organization_id, actor, "oauth.token", key.id,
                     {"grant_type": "authorization_code", "user_id": code.user_id,
                      "scopes": list(settings.scopes)})
    return Exchanged(key=key, code=code)


# -- what a client obtained --------------------------------------------------------------------

async def open_client_session(pool: asyncpg.Pool, client: ClientRow, scopes: tuple[str, ...],
                              ttl: timedelta, actor: str) -> str:
    """The session a client-credentials access token belongs to (revoking it ends the token)."""
    async with pool.acquire() as conn, conn.transaction():
        session_id = str(await conn.fetchval(
            "INSERT INTO auth_sessions (oauth_client_id, organization_id, expires_at) "
            "VALUES ($1::uuid, $2::uuid, now() + $3::interval) RETURNING id",
            client.id, client.organization_id, ttl))
        await _audit(conn, client.organization_id, actor, "oauth.token", client.id,
                     {"grant_type": "client_credentials", "session_id": session_id, "scopes": list(scopes)})
    return session_id


async def client_key(pool: asyncpg.Pool, key_hash: str, client_id: str) -> tuple[str, str] | None:
    """(id, organization id) of a live key with this HMAC that the client obtained."""
    row = await pool.fetchrow("SELECT id, organization_id FROM api_keys WHERE key_hash = $1 "
                              "AND oauth_client_id = $2::uuid AND revoked_at IS NULL", key_hash, client_id)
    return None if row is None else (str(row["id"]), str(row["organization_id"]))


async def client_session(pool: asyncpg.Pool, session_id: str, client_id: str) -> bool:
    """Whether a live session is a client-credentials session of this client."""
    return bool(await pool.fetchval(
        "SELECT true FROM auth_sessions WHERE id = $1::uuid AND oauth_client_id = $2::uuid "
        "AND revoked_at IS NULL", session_id, client_id))


async def audit_revocation(pool: asyncpg.Pool, organization_id: str, actor: str, target: str,
                           kind: str) -> None:
    async with pool.acquire() as conn:
        await _audit(conn, organization_id, actor, "oauth.revoke", target, {"token_type": kind})
