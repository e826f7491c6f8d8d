"""All SQL of the audit trail: inserting entries (one in a change's own transaction, or a batch
from the JetStream consumer) and listing them for `GET /v1/audit-log` (docs/architecture.md §2.11).

Also the two things every writer shares: where a request came from (`AuditOrigin`, bound per RPC
in a context variable so the repositories' transactions can read it) and `redact`, which drops
anything secret-shaped from before/after/details so that no secret, hash or token ever lands in
the table.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from services.auth.records import KeyRow
from services.core.money import decimal_str

# Keys never written to the trail, whatever a caller passes (docs/architecture.md §2.11).
SECRET_FIELDS = frozenset({"key", "key_hash", "previous_key_hash", "password", "password_hash", "secret",
                           "token", "access_token", "refresh_token", "client_secret", "authorization",
                           "api_key"})
_COLUMNS = ("id, organization_id, actor, action, target, host(ip) AS ip, request_id, before, after, details, "
            "created_at")


@dataclass(frozen=True, slots=True)
class AuditOrigin:
    """Where a request came from: the client's IP (as Envoy saw it) and Envoy's request id."""

    ip: str | None = None
    request_id: str | None = None


# Bound by a servicer for the RPC it runs (each grpc.aio call runs in its own task, so the value
# never leaks into another request); read by `insert_entry`.
current_origin: contextvars.ContextVar[AuditOrigin | None] = contextvars.ContextVar("audit_origin",
                                                                                     default=None)


def client_ip(forwarded_for: str | None, peer: str | None = None) -> str | None:
    """The client's address: the last x-forwarded-for entry (the one Envoy appends, as
    use_remote_address is on), else the gRPC peer (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`); None when
    neither is an IP address."""
    candidates = []
    if forwarded_for:
        candidates.append(forwarded_for.split(",")[-1].strip())
    if peer and peer.startswith(("ipv4:", "ipv6:")):
        host = peer.partition(":")[2].rpartition(":")[0]
        candidates.append(host.strip("[]"))
    for candidate in candidates:
        normal = _normal_ip(candidate)
        if normal is not None:
            return normal
    return None


@functools.lru_cache(maxsize=4096)
def _normal_ip(candidate: str) -> str | None:
    """An address in its normal form, or None; cached: a gateway sees the same clients again."""
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def redact(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy without secret-shaped keys (at any depth), JSON-ready (datetimes as RFC 3339, money
    as an exact decimal string)."""
    if values is None:
        return None

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items() if str(k).lower() not in SECRET_FIELDS}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, Decimal):
            return decimal_str(value)
        return value

    return orjson.loads(orjson.dumps(clean(values), option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC))


def actor_of(principal: Any) -> str:
    """How the audit log names a caller: its key, its user (an access token) or its OAuth client
    (a client-credentials token)."""
    if principal.user_id:
        return f"user:{principal.user_id}"
    if principal.oauth_client_id:
        return f"oauth_client:{principal.oauth_client_id}"
    return f"api_key:{principal.api_key_id}"


def key_view(row: KeyRow | None) -> dict[str, Any] | None:
    """What the trail keeps of a key: its settings and prefix, never its secret or HMAC."""
    if row is None:
        return None
    view: dict[str, Any] = {f.name: getattr(row.settings, f.name) for f in fields(row.settings)}
    view["prefix"] = row.prefix
    return redact(view)


def _json(value: Mapping[str, Any] | None) -> str | None:
    cleaned = redact(value)
    return None if cleaned is None else orjson.dumps(cleaned).decode()


_INSERT = (
    "INSERT INTO audit_log (organization_id, actor, action, target, details, ip, request_id, before, after, "
    "event_id, created_at) "
    # text::jsonb: the JSON is sent as text, whatever jsonb codec the pool's connections carry.
    "VALUES ($1::uuid, $2, $3, $4, $5::text::jsonb, $6::inet, $7, $8::text::jsonb, $9::text::jsonb, "
    "$10::uuid, COALESCE($11::timestamptz, now())) ON CONFLICT (event_id) DO NOTHING")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row to insert."""

    organization_id: str | None
    actor: str
    action: str
    target: str | None = None
    details: Mapping[str, Any] | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    origin: AuditOrigin | None = None
    event_id: str | None = None
    occurred_at: datetime | None = None

    def arguments(self) -> tuple[Any, ...]:
        origin = self.origin or AuditOrigin()
        return (self.organization_id or None, self.actor, self.action, self.target or None,
                _json(self.details or {}), origin.ip, origin.request_id, _json(self.before),
                _json(self.after), self.event_id, self.occurred_at)


async def insert_entry(conn: Any, entry: AuditEntry) -> None:
    """Inserts one row on `conn` (inside the caller's transaction); the origin defaults to the
    one bound for the running RPC."""
    if entry.origin is None:
        entry = AuditEntry(**{f.name: getattr(entry, f.name) for f in fields(entry)}
                           | {"origin": current_origin.get()})
    await conn.execute(_INSERT, *entry.arguments())


async def insert_batch(pool: asyncpg.Pool, entries: Sequence[AuditEntry]) -> None:
    """Inserts the consumer's batch in one transaction; an event id already stored inserts nothing."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(_INSERT, [e.arguments() for e in entries])


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A validated `GET /v1/audit-log` (audit_servicer.py builds it)."""

    organization_id: str
    limit: int
    actor: str | None = None
    action: str | None = None
    start: date | None = None
    end: date | None = None
    after: int | None = None


async def list_entries(pool: asyncpg.Pool, query: AuditQuery) -> list[asyncpg.Record]:
    """Up to `limit` rows of the organization, newest (highest id) first, matching the filters;
    dates are UTC days, both ends inclusive."""
    where = ["organization_id = $1::uuid"]
    args: list[Any] = [query.organization_id]
    for condition, value in (("actor = ${}", query.actor), ("action = ${}", query.action),
                             ("id < ${}", query.after),
                             ("created_at >= ${}::date::timestamp AT TIME ZONE 'UTC'", query.start),
                             ("created_at < ${}::date::timestamp AT TIME ZONE 'UTC'",
                              None if query.end is None else query.end + timedelta(days=1))):
        if value is not None:
            args.append(value)
            where.append(condition.format(len(args)))
    args.append(query.limit)
    return list(await pool.fetch(
        f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ${len(args)}",
        *args))
