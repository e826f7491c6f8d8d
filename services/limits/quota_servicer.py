"""QuotaService: `GET /v1/quotas` (the caller's organization, `read:usage`) and
`PUT /v1/organizations/{id}/quotas` (platform admins: an organization must not lift its own
quota) (docs/reference.md §4, docs/limits.md "Quotas")."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from aggregator.limits.v1 import quota_service_pb2, quota_service_pb2_grpc
from services.auth.audit import AuditTrail, authorized, bind_origin
from services.auth.audit_repository import actor_of
from services.auth.authenticator import Authenticator
from services.auth.permissions import ADMIN_PLATFORM, READ_USAGE, requires
from services.auth.repository import _audit
from services.auth.validation import key_id, validate_budget
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str
from services.core.rpc import rpc_method
from services.core.server import Registration
from services.limits.budgets import SpendStore, period_end, period_start
from services.limits.quotas import PERIODS, QuotaRow, load_quotas, publish_change

_MAX_INT32 = 2_147_483_647


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def _limit(request: Any, field: str) -> int | None:
    if not request.HasField(field):
        return None
    value = getattr(request, field)
    if not 0 < value <= _MAX_INT32:
        raise _invalid(f"{field} must be a positive integer.", field)
    return int(value)


async def quota_message(pool: asyncpg.Pool, quota: QuotaRow, now: datetime) -> quota_service_pb2.Quota:
    """A quota with what its current period's settled requests used and what remains."""
    start = period_start(quota.period, now)
    requests, tokens, cost = await SpendStore(pool).settled(quota.organization_id, "", quota.period, start)
    message = quota_service_pb2.Quota(
        object="quota", organization_id=quota.organization_id, period=quota.period,
        used=quota_service_pb2.QuotaUsage(requests=min(requests, _MAX_INT32), tokens=min(tokens, _MAX_INT32),
                                          cost_usd=decimal_str(cost)),
        remaining=quota_service_pb2.QuotaUsage(
            requests=max((quota.max_requests or 0) - requests, 0),
            tokens=max((quota.max_tokens or 0) - tokens, 0),
            cost_usd=decimal_str(max((quota.max_cost_usd or Decimal(0)) - cost, Decimal(0)))))
    if quota.max_requests is not None:
        message.max_requests = quota.max_requests
    if quota.max_tokens is not None:
        message.max_tokens = quota.max_tokens
    if quota.max_cost_usd is not None:
        message.max_cost_usd = decimal_str(quota.max_cost_usd)
    end = period_end(quota.period, start)
    if end is not None:
        message.resets_at.FromDatetime(end)
    return message


class QuotaServicer(quota_service_pb2_grpc.QuotaServiceServicer):
    """QuotaService: organization quotas."""

    def __init__(self, pool: asyncpg.Pool, authenticator: Authenticator, trail: AuditTrail | None = None,
                 nc: Any | None = None) -> None:
        self._pool = pool
        self._authenticator = authenticator
        self._trail = trail
        self._nc = nc

    @rpc_method
    @requires(READ_USAGE)
    async def ListQuotas(self, request: quota_service_pb2.ListQuotasRequest,
                         context: Any) -> quota_service_pb2.ListQuotasResponse:
        """The caller's organization's quotas, used and remaining."""
        caller = await authorized(self._authenticator, self._trail, context)
        now = datetime.now(UTC)
        quotas = await load_quotas(self._pool, caller.organization_id)
        return quota_service_pb2.ListQuotasResponse(
            object="list", data=[await quota_message(self._pool, q, now) for q in quotas], has_more=False)

    @rpc_method
    @requires(ADMIN_PLATFORM)
    async def SetQuota(self, request: quota_service_pb2.SetQuotaRequest,
                       context: Any) -> quota_service_pb2.Quota:
        """Sets an organization's quota for a period; no limit at all removes it."""
        bind_origin(context)
        caller = await authorized(self._authenticator, self._trail, context)
        organization = key_id(request.id)
        if request.period not in PERIODS:
            raise _invalid(f"Invalid period {quote(request.period)}: expected 'daily' or 'monthly'.",
                           "period")
        cost = (validate_budget(request.max_cost_usd, "max_cost_usd") if request.HasField("max_cost_usd")
                else None)
        quota = QuotaRow(organization or "", request.period, _limit(request, "max_requests"),
                         _limit(request, "max_tokens"), cost)
        async with self._pool.acquire() as conn, conn.transaction():
            exists = organization is not None and await conn.fetchval(
                "SELECT true FROM organizations WHERE id = $1::uuid", organization)
            if not exists:
                raise GatewayError(Reason.NOT_FOUND, "No organization found with id "
                                   f"{quote(request.id)}.", param="id")
            await conn.execute("DELETE FROM usage_quotas WHERE organization_id = $1::uuid "
                               "AND api_key_id IS NULL AND period = $2", organization, PERIODS[quota.period])
            limits = (quota.max_requests, quota.max_tokens, quota.max_cost_usd)
            if any(v is not None for v in limits):
                await conn.execute(
                    "INSERT INTO usage_quotas (organization_id, period, max_requests, max_tokens, "
                    "max_cost_usd) VALUES ($1::uuid, $2, $3, $4, $5)",
                    organization, PERIODS[quota.period], *limits)
            await _audit(conn, organization, actor_of(caller), "quota.update", organization,
                         {"period": quota.period},
                         after={"max_requests": quota.max_requests, "max_tokens": quota.max_tokens,
                                "max_cost_usd": quota.max_cost_usd})
        await publish_change(self._nc)
        return await quota_message(self._pool, quota, datetime.now(UTC))


def quota_registration(pool: asyncpg.Pool, authenticator: Authenticator, trail: AuditTrail | None = None,
                       nc: Any | None = None) -> Registration:
    return Registration(quota_service_pb2_grpc.add_QuotaServiceServicer_to_server,
                        QuotaServicer(pool, authenticator, trail, nc),
                        quota_service_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name)
