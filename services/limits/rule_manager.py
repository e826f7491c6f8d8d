"""Rate-limit rules: the logic behind RateLimitRuleService (docs/reference.md §4 "Rate-limit rules").

* An organization's admins (`write:rate-limits`) create `key` rules (target: a live key of their
  organization), `user` rules (a user of it) and `organization` rules (their own organization;
  `target_id` may be left out). Another organization's key, user or organization answers
  NOT_FOUND (404), like an id that does not exist, so ids cannot be probed.
* `model` rules (target: a model id, which need not be configured yet) and `global` rules (no
  target) span every organization: creating, listing and deleting them needs `admin:platform`
  (403 naming it on creation; other callers do not see them).
* Every field is checked here, each error naming its parameter; the repository stores and audits.
  Each change is announced on NATS (rules.publish_change), so every process's rule book drops
  what it cached within 2 seconds.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from aggregator.auth.v1.auth_service_pb2 import Principal
from services.auth.audit_repository import actor_of
from services.auth.permissions import ADMIN_PLATFORM, denied
from services.auth.target_org import is_platform_admin, organization_not_found
from services.auth.tenancy import page_after, page_limit
from services.auth.validation import key_id
from services.core.errors import GatewayError, Reason, quote
from services.limits import rule_repository as store
from services.limits.rule_repository import PLATFORM_SCOPES, SCOPES, WINDOWS, NewRule, Page, RuleRow
from services.limits.rules import publish_change

MAX_MODEL_LENGTH = 256
INT32_MAX = 2**31 - 1
MAX_COST_DECIMALS = 10
MAX_COST_INTEGER_DIGITS = 10  # numeric(20, 10)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MODEL_ID = re.compile(r"[^\s\x00-\x1f\x7f]+")


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def rule_not_found(ident: str) -> GatewayError:
    return GatewayError(Reason.NOT_FOUND, f"No rate-limit rule found with id {quote(ident)}.", param="id")


def _choices(values: Any) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


# -- validation (pure) -----------------------------------------------------------------------

def rule_scope(value: str) -> str:
    if value not in SCOPES:
        raise _invalid(f"Invalid scope {quote(value)}: expected {_choices(SCOPES)}.", "scope")
    return value


def rule_window(value: str) -> int:
    """The window's length in seconds."""
    if value not in WINDOWS:
        raise _invalid(f"Invalid window {quote(value)}: expected {_choices(WINDOWS)}.", "window")
    return WINDOWS[value]


def model_id(value: str, param: str) -> str:
    """A model id: 1 to 256 characters, no spaces or control characters."""
    if len(value) > MAX_MODEL_LENGTH or not _MODEL_ID.fullmatch(value):
        raise _invalid(f"{param} must be a model id (1 to {MAX_MODEL_LENGTH} characters, no spaces).", param)
    return value


def positive_count(value: int | None, param: str) -> int | None:
    if value is not None and not 0 < value <= INT32_MAX:
        raise _invalid(f"{param} must be a positive integer (at most {INT32_MAX}).", param)
    return value


def cost_limit(value: str | None) -> Decimal | None:
    """A positive decimal string with at most 10 decimals and 10 integer digits, e.g. "2.50"."""
    if value is None:
        return None
    problem = (f"max_cost_usd must be a positive decimal string with at most {MAX_COST_DECIMALS} decimals, "
               'e.g. "2.50".')
    if not _DECIMAL.fullmatch(value):
        raise _invalid(problem, "max_cost_usd")
    whole, _, fraction = value.partition(".")
    try:
        amount = Decimal(value)
    except InvalidOperation:  # the pattern admits only plain decimals; kept for safety
        raise _invalid(problem, "max_cost_usd") from None
    if amount <= 0 or len(fraction) > MAX_COST_DECIMALS:
        raise _invalid(problem, "max_cost_usd")
    if len(whole.lstrip("0")) > MAX_COST_INTEGER_DIGITS:
        raise _invalid("max_cost_usd must be below 10000000000 (10 integer digits).", "max_cost_usd")
    return amount


def _target(caller: Principal, scope: str, target_id: str) -> str:
    """The canonical target of a rule; NOT_FOUND for an id that cannot be the organization's."""
    if scope == "global":
        if target_id:
            raise _invalid("A global rule has no target_id.", "target_id")
        return ""
    if scope == "model":
        if not target_id:
            raise _invalid("A model rule needs target_id: the model id.", "target_id")
        return model_id(target_id, "target_id")
    if scope == "organization":
        canonical = key_id(target_id) if target_id else caller.organization_id
        if canonical != caller.organization_id:
            raise organization_not_found(target_id, "target_id")
        return canonical
    if not target_id:
        raise _invalid(f"A {scope} rule needs target_id: the {'API key' if scope == 'key' else 'user'} id.",
                       "target_id")
    canonical = key_id(target_id)
    if canonical is None:
        raise store.target_not_found(scope, target_id)
    return canonical


def new_rule(caller: Principal, *, scope: str, target_id: str, model: str | None, window: str,
             max_requests: int | None, max_tokens: int | None, max_cost_usd: str | None) -> NewRule:
    """The rule a caller asks for, every field checked; PERMISSION_DENIED for a platform scope
    without `admin:platform`."""
    checked_scope = rule_scope(scope)
    if checked_scope in PLATFORM_SCOPES and not is_platform_admin(caller):
        raise denied(ADMIN_PLATFORM)
    seconds = rule_window(window)
    target = _target(caller, checked_scope, target_id)
    checked_model = None if model is None else model_id(model, "model")
    if checked_scope == "model":
        if checked_model is not None and checked_model != target:
            raise _invalid("A model rule applies to its target_id: leave model out or repeat it.", "model")
        checked_model = target
    limits = (positive_count(max_requests, "max_requests"), positive_count(max_tokens, "max_tokens"),
              cost_limit(max_cost_usd))
    if all(limit is None for limit in limits):
        raise _invalid("A rule needs at least one of max_requests, max_tokens and max_cost_usd.",
                       "max_requests")
    return NewRule(checked_scope, target, checked_model, seconds, *limits)


class RuleManager:
    """Rate-limit rules, each operation scoped as the module docstring says."""

    def __init__(self, pool: asyncpg.Pool, nc: Any = None) -> None:
        self._pool = pool
        self._nc = nc  # tells every process's rule book that the rules changed

    async def create_rule(self, caller: Principal, **fields: Any) -> RuleRow:
        """Creates the rule `fields` describe (as `new_rule` takes them)."""
        rule = new_rule(caller, **fields)
        row = await store.create_rule(self._pool, caller.organization_id, rule, actor_of(caller))
        await publish_change(self._nc)
        return row

    async def list_rules(self, caller: Principal, limit: int, after: str) -> Page:
        size, cursor = page_limit(limit), page_after(after)
        return await store.list_rules(self._pool, caller.organization_id, size, cursor,
                                      platform=is_platform_admin(caller))

    async def delete_rule(self, caller: Principal, ident: str) -> str:
        canonical = key_id(ident)
        row = None if canonical is None else await store.delete_rule(
            self._pool, caller.organization_id, canonical, actor_of(caller),
            platform=is_platform_admin(caller))
        if row is None:
            raise rule_not_found(ident)
        await publish_change(self._nc)
        return row.id
