"""AuditLogService: `GET /v1/audit-log`, the audit trail of the caller's organization
(docs/reference.md §4; docs/architecture.md §2.11).

Keys holding `read:audit-log` (admins) read their own organization's entries; a key holding
`admin:platform` may name another with `organization_id`. Filters: `actor`, `action`,
`start_date`/`end_date` (YYYY-MM-DD, UTC days, inclusive); cursor pagination with `after` (the
last id of the previous page) and `limit`.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
from google.protobuf import json_format, struct_pb2

from aggregator.auth.v1 import audit_log_pb2, audit_log_service_pb2, audit_log_service_pb2_grpc
from services.auth.audit import AuditTrail, audited_check, authorized
from services.auth.audit_repository import AuditQuery, list_entries
from services.auth.authenticator import Authenticator
from services.auth.permissions import ADMIN_PLATFORM, READ_AUDIT_LOG, requires
from services.core.errors import GatewayError, Reason
from services.core.rpc import rpc_method

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_MAX_FILTER_CHARS = 256


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def _day(value: str, param: str) -> date | None:
    if not value:
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise _invalid(f"{param} must be a date in the form YYYY-MM-DD.", param) from None


def _text(value: str, param: str) -> str | None:
    if len(value) > _MAX_FILTER_CHARS:
        raise _invalid(f"{param} must be at most {_MAX_FILTER_CHARS} characters.", param)
    return value or None


def query_of(request: audit_log_service_pb2.ListAuditLogRequest, organization_id: str) -> AuditQuery:
    """The validated query of a request; INVALID_REQUEST (400) naming the bad parameter."""
    if not 0 <= request.limit <= MAX_LIMIT:
        raise _invalid(f"limit must be between 1 and {MAX_LIMIT}.", "limit")
    after = None
    if request.after:
        if not request.after.isdigit() or len(request.after) > 18:
            raise _invalid("after must be the id of an audit log entry.", "after")
        after = int(request.after)
    start, end = _day(request.start_date, "start_date"), _day(request.end_date, "end_date")
    if start is not None and end is not None and end < start:
        raise _invalid("end_date must not be before start_date.", "end_date")
    return AuditQuery(organization_id=organization_id, limit=request.limit or DEFAULT_LIMIT,
                      actor=_text(request.actor, "actor"), action=_text(request.action, "action"),
                      start=start, end=end, after=after)


def _value(raw: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if raw is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        json_format.ParseDict(raw, value)
    return value


def json_format_ready(raw: Any) -> Any:
    """A jsonb column's value as Python (asyncpg hands jsonb over as text by default)."""
    return orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw


def entry_message(row: Any) -> audit_log_pb2.AuditLogEntry:
    """The wire form of an audit_log row; created_at in RFC 3339, UTC."""
    created: datetime = row["created_at"].astimezone(UTC)
    entry = audit_log_pb2.AuditLogEntry(
        id=str(row["id"]), object="audit_log", organization_id=str(row["organization_id"] or ""),
        actor=row["actor"], action=row["action"], target=row["target"] or "", ip=row["ip"] or "",
        request_id=row["request_id"] or "", before=_value(json_format_ready(row["before"])),
        after=_value(json_format_ready(row["after"])),
        created_at=created.isoformat(timespec="microseconds").replace("+00:00", "Z"))
    details = json_format_ready(row["details"])
    if details:
        entry.details.update(details)
    return entry


class AuditLogServicer(audit_log_service_pb2_grpc.AuditLogServiceServicer):
    """AuditLogService: the audit trail, for keys holding `read:audit-log`."""

    def __init__(self, authenticator: Authenticator, pool: asyncpg.Pool,
                 trail: AuditTrail | None = None) -> None:
        self._authenticator = authenticator
        self._pool = pool
        self._trail = trail

    @rpc_method
    @requires(READ_AUDIT_LOG)
    async def ListAuditLog(self, request: audit_log_service_pb2.ListAuditLogRequest,
                           context: Any) -> audit_log_service_pb2.ListAuditLogResponse:
        """Entries of the caller's organization (or, for `admin:platform`, of the one named),
        newest first."""
        caller = await authorized(self._authenticator, self._trail, context)
        organization_id = caller.organization_id
        if request.organization_id and request.organization_id != organization_id:
            audited_check(self._trail, caller, context, ADMIN_PLATFORM)
            try:
                organization_id = str(uuid.UUID(request.organization_id))
            except ValueError:
                raise _invalid("organization_id must be an organization id.", "organization_id") from None
        query = query_of(request, organization_id)
        # One row more than asked tells whether another page follows.
        rows = await list_entries(self._pool, replace(query, limit=query.limit + 1))
        return audit_log_service_pb2.ListAuditLogResponse(
            object="list", data=[entry_message(r) for r in rows[:query.limit]],
            has_more=len(rows) > query.limit)

