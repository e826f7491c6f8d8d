"""The rule book: which rate limits apply to a request, answered from memory (docs/architecture.md
§2.3: nothing slow on the hot path).

`RuleBook.for_request` reads, once per organization and then for `ttl_s`, every enabled rule of
that organization plus every `model` and `global` rule, in one query; a warm request reads no
database. A change of the rules (rule_manager.py) is published on the core NATS subject
`limits.rules.changed` (`publish_change`); every process's rule book subscribed to it forgets
what it cached when the message arrives, so a change applies everywhere within 2 seconds. Core
NATS is at-most-once: a process that misses the message (disconnected) still sees the change
within `ttl_s`, and forgets everything on a NATS reconnect (call `invalidate`). The caching is
services/limits/org_book.py's, which the organization quotas use too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.limits import rule_repository as store
from services.limits.org_book import OrganizationBook
from services.limits.org_book import publish_change as announce
from services.limits.rule_repository import RuleRow

SUBJECT = "limits.rules.changed"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit a request is held to, from a rule or from a key's own columns."""

    scope: str            # "key" | "user" | "organization" | "model" | "global"
    target: str           # the id the counter is kept for ("" for global)
    model: str | None     # None: every model
    window_s: int         # 60, 3600 or 86400
    max_requests: int | None
    max_tokens: int | None
    max_cost_usd: Decimal | None
    rule_id: str | None   # None for limits that come from a key's own columns


def spec_of(row: RuleRow) -> LimitSpec:
    return LimitSpec(scope=row.scope, target=row.target_id, model=row.model, window_s=row.window_seconds,
                     max_requests=row.max_requests, max_tokens=row.max_tokens, max_cost_usd=row.max_cost_usd,
                     rule_id=row.id)


def applies(spec: LimitSpec, organization_id: str, api_key_id: str, user_id: str, model: str) -> bool:
    """Whether a rule of the request's organization (or of none) holds this request."""
    if spec.model is not None and spec.model != model:
        return False
    if spec.scope == "key":
        return bool(api_key_id) and spec.target == api_key_id
    if spec.scope == "user":
        return bool(user_id) and spec.target == user_id
    if spec.scope == "organization":
        return spec.target == organization_id
    if spec.scope == "model":
        return spec.target == model
    return spec.scope == "global"


class RuleBook(OrganizationBook[tuple[LimitSpec, ...]]):
    """Per process: the enabled rules of each organization seen (services/limits/org_book.py)."""

    def __init__(self, pool: Any, *, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 max_organizations: int = 10_000) -> None:
        async def load(organization_id: str) -> tuple[LimitSpec, ...]:
            return tuple(spec_of(row) for row in await store.applicable_rules(pool, organization_id))

        super().__init__(load, SUBJECT, ttl_s=ttl_s, clock=clock, max_organizations=max_organizations)

    async def for_request(self, organization_id: str, api_key_id: str, user_id: str,
                          model: str) -> list[LimitSpec]:
        """Every enabled rule that applies: key rules of this key, user rules of this user,
        organization rules of this organization, model rules whose target is `model`, global
        rules (a rule with `model` set applies only to that model)."""
        rules = await self.of(organization_id)
        return [spec for spec in rules if applies(spec, organization_id, api_key_id, user_id, model)]


async def publish_change(nc: Any | None) -> bool:
    """Tells every process that the rules changed (org_book.publish_change)."""
    return await announce(nc, SUBJECT)
