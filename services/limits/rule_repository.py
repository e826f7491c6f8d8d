"""All SQL of rate-limit rules (docs/reference.md §4 "Rate-limit rules"; migrations 0004, 0012).

Every statement is parameterized and names the organization: another organization's rule, key or
user is simply not found. `model` and `global` rules belong to no organization (organization_id
NULL); only callers the manager lets see them (platform admins) pass `platform=True`. Each change
writes its audit row with repository._audit in the change's own transaction
(docs/architecture.md §2.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.auth.repository import _audit
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str

SCOPES = ("key", "user", "organization", "model", "global")
PLATFORM_SCOPES = frozenset({"model", "global"})  # rules that span every organization
WINDOWS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
WINDOW_NAMES: dict[int, str] = {seconds: name for name, seconds in WINDOWS.items()}

_COLUMNS = ("id, scope, organization_id, api_key_id, user_id, model, window_seconds, max_requests, "
            "max_tokens, max_cost_usd, enabled, created_at")
# The rules an organization's requests may meet: its own and those spanning every organization.
_APPLICABLE = "enabled AND (organization_id = $1::uuid OR organization_id IS NULL)"


@dataclass(frozen=True, slots=True)
class RuleRow:
    """A rule as the API shows it; `target_id` is where its scope keeps the target."""

    id: str
    scope: str
    target_id: str
    model: str | None
    window_seconds: int
    max_requests: int | None
    max_tokens: int | None
    max_cost_usd: Decimal | None
    organization_id: str | None
    enabled: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> RuleRow:
        scope = row["scope"]
        target = {"key": row["api_key_id"], "user": row["user_id"], "organization": row["organization_id"],
                  "model": row["model"]}.get(scope)
        org = row["organization_id"]
        return cls(str(row["id"]), scope, "" if target is None else str(target), row["model"],
                   row["window_seconds"], row["max_requests"], row["max_tokens"], row["max_cost_usd"],
                   None if org is None else str(org), row["enabled"], row["created_at"])

    @property
    def window(self) -> str:
        return WINDOW_NAMES.get(self.window_seconds, f"{self.window_seconds}s")

    def view(self) -> dict[str, Any]:
        """What the audit trail keeps of it."""
        return {"scope": self.scope, "target_id": self.target_id, "model": self.model, "window": self.window,
                "max_requests": self.max_requests, "max_tokens": self.max_tokens,
                "max_cost_usd": None if self.max_cost_usd is None else decimal_str(self.max_cost_usd)}


@dataclass(frozen=True, slots=True)
class NewRule:
    """A validated rule to store (rule_manager.py checked every field)."""

    scope: str
    target_id: str  # canonical; the model id for "model", "" for "global"
    model: str | None
    window_seconds: int
    max_requests: int | None
    max_tokens: int | None
    max_cost_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, oldest first, and whether more follow."""

    rows: list[RuleRow]
    has_more: bool


def target_not_found(scope: str, ident: str) -> GatewayError:
    what = {"key": "API key", "user": "user", "organization": "organization"}.get(scope, scope)
    return GatewayError(Reason.NOT_FOUND, f"No {what} found with id {quote(ident)}.", param="target_id")


def _duplicate(existing: Any) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, "A rate-limit rule with this scope, target, model and window "
                        f"already exists: {quote(str(existing))}. Delete it first to replace it.",
                        param="window")


def _unknown_cursor() -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, "after must be the id of an item of this list.",
                        param="after")


async def _target_exists(conn: Any, organization_id: str, rule: NewRule) -> bool:
    """Whether the key (live) or user the rule targets belongs to the organization; locks it
    against a concurrent deletion."""
    if rule.scope == "key":
        found = await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1::uuid "
                                    "AND organization_id = $2::uuid AND revoked_at IS NULL FOR SHARE",
                                    rule.target_id, organization_id)
    elif rule.scope == "user":
        found = await conn.fetchval("SELECT 1 FROM users WHERE id = $1::uuid AND organization_id = $2::uuid "
                                    "FOR SHARE", rule.target_id, organization_id)
    else:
        return True
    return found is not None


async def create_rule(pool: asyncpg.Pool, organization_id: str, rule: NewRule, actor: str) -> RuleRow:
    """Stores a rule of the organization (or, for the platform scopes, of none); NOT_FOUND when its
    key or user is not the organization's, INVALID_REQUEST when the same rule exists."""
    platform = rule.scope in PLATFORM_SCOPES
    owner = None if platform else organization_id
    key = rule.target_id if rule.scope == "key" else None
    user = rule.target_id if rule.scope == "user" else None
    async with pool.acquire() as conn, conn.transaction():
        if not await _target_exists(conn, organization_id, rule):
            raise target_not_found(rule.scope, rule.target_id)
        row = await conn.fetchrow(
            "INSERT INTO rate_limit_rules (scope, organization_id, api_key_id, user_id, model, "
            "window_seconds, max_requests, max_tokens, max_cost_usd, created_by) "
            "VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5, $6, $7, $8, $9, $10) "
            f"ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
            rule.scope, owner, key, user, rule.model, rule.window_seconds, rule.max_requests, rule.max_tokens,
            rule.max_cost_usd, actor)
        if row is None:
            existing = await conn.fetchval(
                "SELECT id FROM rate_limit_rules WHERE scope = $1 AND organization_id IS NOT DISTINCT FROM "
                "$2::uuid AND api_key_id IS NOT DISTINCT FROM $3::uuid AND user_id IS NOT DISTINCT FROM "
                "$4::uuid AND model IS NOT DISTINCT FROM $5 AND window_seconds = $6",
                rule.scope, owner, key, user, rule.model, rule.window_seconds)
            raise _duplicate(existing)
        created = RuleRow.from_row(row)
        # A platform rule's row goes to the creator's organization's trail.
        await _audit(conn, organization_id, actor, "rate_limit_rule.create", created.id, after=created.view())
    return created


def _visible(platform: bool, param: int = 2) -> str:
    """Which rules a caller sees: its organization's (parameter `param`), and with `platform` the
    rules of no organization."""
    own = f"organization_id = ${param}::uuid"
    return f"({own} OR organization_id IS NULL)" if platform else own


async def list_rules(pool: asyncpg.Pool, organization_id: str, limit: int, after: str | None = None, *,
                     platform: bool = False) -> Page:
    """The organization's rules (with `platform`, also the model and global rules), oldest first,
    after the one with id `after`."""
    where = _visible(platform)
    async with pool.acquire() as conn:
        if after is None:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM rate_limit_rules WHERE {where} "
                                    "ORDER BY created_at, id LIMIT $1", limit + 1, organization_id)
        else:
            cursor = await conn.fetchrow(f"SELECT created_at, id FROM rate_limit_rules WHERE id = $1::uuid "
                                         f"AND {where}", after, organization_id)
            if cursor is None:
                raise _unknown_cursor()
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM rate_limit_rules WHERE {where} "
                "AND (created_at, id) > ($3, $4::uuid) ORDER BY created_at, id LIMIT $1",
                limit + 1, organization_id, cursor["created_at"], cursor["id"])
    return Page([RuleRow.from_row(r) for r in rows[:limit]], len(rows) > limit)


async def delete_rule(pool: asyncpg.Pool, organization_id: str, rule_id: str, actor: str, *,
                      platform: bool = False) -> RuleRow | None:
    """Deletes a rule the caller sees (as list_rules); None when there is none with this id."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(f"DELETE FROM rate_limit_rules WHERE id = $1::uuid "
                                  f"AND {_visible(platform)} RETURNING {_COLUMNS}", rule_id, organization_id)
        if row is None:
            return None
        deleted = RuleRow.from_row(row)
        await _audit(conn, organization_id, actor, "rate_limit_rule.delete", deleted.id,
                     before=deleted.view())
    return deleted


async def applicable_rules(pool: asyncpg.Pool, organization_id: str) -> list[RuleRow]:
    """Every enabled rule an organization's requests may meet: its own and the model and global
    rules, in one query (the rule book's load, rules.py)."""
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM rate_limit_rules WHERE {_APPLICABLE} "
                            "ORDER BY created_at, id", organization_id)
    return [RuleRow.from_row(r) for r in rows]
