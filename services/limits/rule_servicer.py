"""RateLimitRuleService: `/v1/rate-limit-rules` (docs/reference.md §4 "Rate-limit rules"); thin
translation between messages and rule_manager.py.

Authenticates the caller from the `authorization` metadata and admits keys holding the permission
each RPC declares (services/auth/permissions.py): `read:rate-limits` to list, `write:rate-limits`
to create and delete (admins); the `model` and `global` scopes also need `admin:platform`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2

from aggregator.limits.v1 import rate_limit_rule_service_pb2 as rules_pb2
from aggregator.limits.v1 import rate_limit_rule_service_pb2_grpc as rules_pb2_grpc
from services.auth.audit import AuditTrail, authorized
from services.auth.authenticator import Authenticator
from services.auth.permissions import READ_RATE_LIMITS, WRITE_RATE_LIMITS, requires
from services.core.money import decimal_str
from services.core.rpc import rpc_method, send_headers
from services.core.server import Registration
from services.limits.rule_manager import RuleManager
from services.limits.rule_repository import RuleRow


def rule_message(row: RuleRow) -> rules_pb2.RateLimitRule:
    """A rule as answered; absent limits, model and organization stay unset (left out of JSON)."""
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(row.created_at)
    message = rules_pb2.RateLimitRule(id=row.id, object="rate_limit_rule", scope=row.scope,
                                      target_id=row.target_id, window=row.window, created_at=created)
    if row.model is not None:
        message.model = row.model
    if row.max_requests is not None:
        message.max_requests = row.max_requests
    if row.max_tokens is not None:
        message.max_tokens = row.max_tokens
    if row.max_cost_usd is not None:
        message.max_cost_usd = decimal_str(row.max_cost_usd)
    if row.organization_id is not None:
        message.organization_id = row.organization_id
    return message


def _optional(request: Any, field: str) -> Any:
    return getattr(request, field) if request.HasField(field) else None


class RateLimitRuleServicer(rules_pb2_grpc.RateLimitRuleServiceServicer):
    """RateLimitRuleService: `/v1/rate-limit-rules`."""

    def __init__(self, authenticator: Authenticator, manager: RuleManager,
                 trail: AuditTrail | None = None) -> None:
        self._authenticator = authenticator
        self._manager = manager
        self._trail = trail

    async def _caller(self, context: Any) -> Any:
        await send_headers(context)  # the request id, as a response header
        # The permission the running RPC declares; a refusal goes to the audit trail.
        return await authorized(self._authenticator, self._trail, context)

    @rpc_method
    @requires(WRITE_RATE_LIMITS)
    async def CreateRateLimitRule(self, request: rules_pb2.CreateRateLimitRuleRequest,
                                  context: Any) -> rules_pb2.RateLimitRule:
        """Creates a rule (the platform scopes need `admin:platform` too)."""
        caller = await self._caller(context)
        row = await self._manager.create_rule(
            caller, scope=request.scope, target_id=request.target_id, model=_optional(request, "model"),
            window=request.window, max_requests=_optional(request, "max_requests"),
            max_tokens=_optional(request, "max_tokens"), max_cost_usd=_optional(request, "max_cost_usd"))
        return rule_message(row)

    @rpc_method
    @requires(READ_RATE_LIMITS)
    async def ListRateLimitRules(self, request: rules_pb2.ListRateLimitRulesRequest,
                                 context: Any) -> rules_pb2.ListRateLimitRulesResponse:
        """The organization's rules (and the platform's, for a platform admin), oldest first."""
        caller = await self._caller(context)
        page = await self._manager.list_rules(caller, request.limit, request.after)
        return rules_pb2.ListRateLimitRulesResponse(object="list", data=[rule_message(r) for r in page.rows],
                                                    has_more=page.has_more)

    @rpc_method
    @requires(WRITE_RATE_LIMITS)
    async def DeleteRateLimitRule(self, request: rules_pb2.DeleteRateLimitRuleRequest,
                                  context: Any) -> rules_pb2.DeleteRateLimitRuleResponse:
        """Deletes a rule the caller sees."""
        caller = await self._caller(context)
        ident = await self._manager.delete_rule(caller, request.id)
        return rules_pb2.DeleteRateLimitRuleResponse(id=ident, object="rate_limit_rule", deleted=True)


def rate_limit_rule_registration(pool: asyncpg.Pool, authenticator: Authenticator,
                                 trail: AuditTrail | None = None, nc: Any = None) -> Registration:
    """The servicer, for services.core.server.GrpcServer (or an in-process channel); `trail`
    records permission denials (services/auth/audit.py); `nc` announces rule changes (rules.py)."""
    return Registration(rules_pb2_grpc.add_RateLimitRuleServiceServicer_to_server,
                        RateLimitRuleServicer(authenticator, RuleManager(pool, nc), trail),
                        rules_pb2.DESCRIPTOR.services_by_name["RateLimitRuleService"].full_name)
