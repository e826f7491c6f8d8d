"""What a usage report or an analytics series covers (docs/reference.md §4, `GET /v1/usage` and
`GET /v1/analytics/*`): the organization (the caller's; `admin:platform` may name another) and two
UTC days, both inclusive, checked once here for every report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aggregator.auth.v1 import auth_service_pb2
from services.auth.permissions import ADMIN_PLATFORM, check
from services.auth.validation import key_id
from services.core.errors import GatewayError, Reason, quote

MAX_DAYS = 366


def invalid(message: str, param: str) -> GatewayError:
    """400 invalid_request_error naming `param`."""
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def parse_day(value: str, param: str) -> date:
    """A YYYY-MM-DD day, or 400 naming `param`."""
    try:
        return date.fromisoformat(value) if len(value) == 10 else date.fromisoformat("x")
    except ValueError:
        raise invalid(f"{param} must be a date, YYYY-MM-DD (UTC); got {quote(value)}.", param) from None


@dataclass(frozen=True, slots=True)
class Scope:
    """An organization, the UTC instants [since, until) of the days asked for, and a model or ''."""

    organization_id: str
    since: datetime
    until: datetime
    model: str

    @property
    def days(self) -> int:
        return (self.until - self.since).days


def resolve(caller: auth_service_pb2.Principal, request: Any, max_days: int = MAX_DAYS) -> Scope:
    """The scope of `request` (any message with start_date, end_date, model and organization_id)
    for `caller`: 403 when naming another organization without `admin:platform`, 400 naming the
    parameter when a day is malformed, reversed or the range longer than `max_days`."""
    organization = caller.organization_id
    if request.organization_id and request.organization_id != caller.organization_id:
        check(caller, ADMIN_PLATFORM)
        organization = key_id(request.organization_id) or ""
        if not organization:
            raise invalid("organization_id must be an organization id.", "organization_id")
    start, end = parse_day(request.start_date, "start_date"), parse_day(request.end_date, "end_date")
    if end < start:
        raise invalid("end_date must not be before start_date.", "end_date")
    if (end - start).days >= max_days:
        raise invalid(f"A report covers at most {max_days} days.", "end_date")
    since = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return Scope(organization, since, since + timedelta(days=(end - start).days + 1), request.model)
