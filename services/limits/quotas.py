"""Organization quotas (docs/limits.md, "Quotas"): requests, tokens and cost per UTC day or month,
enforced as budgets of the organization (services/limits/budgets.py: held when a request is
admitted, settled to the truth when it ends, durable in `rate_limit_tracking`).

`usage_quotas` holds them (one row per organization and period, no key); `QuotaBook` keeps each
organization's in memory, dropped on every change announced on NATS (`limits.quotas.changed`),
so a warm request reads no database. A `total` row is an organization's prepaid credits
(docs/billing.md "Prepaid credits", services/billing/plans.py): a cost budget that never resets,
whose limit is the credits bought; it is enforced like the others but set by billing, not by
`PUT /v1/organizations/{id}/quotas`, and not listed by `GET /v1/quotas`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.limits.budgets import (
    COST_UNIT,
    REQUESTS_UNIT,
    STORED_PERIODS,
    TOKENS_UNIT,
    Budget,
    micro,
    period_start,
)
from services.limits.org_book import OrganizationBook
from services.limits.org_book import publish_change as announce

SUBJECT = "limits.quotas.changed"
PERIODS = {name: stored for name, stored in STORED_PERIODS.items() if name != "total"}  # quotas reset
_NAMES = {stored: name for name, stored in STORED_PERIODS.items()}
CREDITS = "total"  # the period of an organization's prepaid credit budget


@dataclass(frozen=True, slots=True)
class QuotaRow:
    organization_id: str
    period: str  # daily | monthly
    max_requests: int | None
    max_tokens: int | None
    max_cost_usd: Decimal | None

    @classmethod
    def from_row(cls, row: Any) -> QuotaRow:
        tokens = row["max_tokens"]
        requests = row["max_requests"]
        return cls(str(row["organization_id"]), _NAMES[row["period"]],
                   None if requests is None else int(requests), None if tokens is None else int(tokens),
                   row["max_cost_usd"])

    def budgets(self, now: datetime) -> list[Budget]:
        """The quota as budgets of its organization for the period containing `now`."""
        start = period_start(self.period, now)
        if self.period == CREDITS:
            bought = self.max_cost_usd or Decimal(0)
            return [Budget(self.organization_id, "", self.period, start, micro(bought),
                           f"the prepaid credits of this organization (${bought} bought)", COST_UNIT)]
        whose = f"the {self.period} quota of this organization"
        out = []
        if self.max_requests is not None:
            out.append(Budget(self.organization_id, "", self.period, start, self.max_requests,
                              f"{whose} ({self.max_requests} requests)", REQUESTS_UNIT))
        if self.max_tokens is not None:
            out.append(Budget(self.organization_id, "", self.period, start, self.max_tokens,
                              f"{whose} ({self.max_tokens} tokens)", TOKENS_UNIT))
        if self.max_cost_usd is not None:
            out.append(Budget(self.organization_id, "", self.period, start, micro(self.max_cost_usd),
                              f"{whose} (${self.max_cost_usd})", COST_UNIT))
        return out


async def load_quotas(pool: Any, organization_id: str, *, credits: bool = False) -> list[QuotaRow]:
    """The organization's daily and monthly quotas, and with `credits` its prepaid credit budget."""
    rows = await pool.fetch(
        "SELECT organization_id, period, max_requests, max_tokens, max_cost_usd FROM usage_quotas "
        "WHERE organization_id = $1::uuid AND api_key_id IS NULL AND enabled AND (period IN ('day', 'month') "
        "OR ($2 AND period = 'total')) ORDER BY period", organization_id, credits)
    return [QuotaRow.from_row(row) for row in rows]


class QuotaBook(OrganizationBook[list[QuotaRow]]):
    """Per process: each organization's quotas and prepaid credits (services/limits/org_book.py)."""

    def __init__(self, pool: Any, *, ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(lambda organization_id: load_quotas(pool, organization_id, credits=True), SUBJECT,
                         ttl_s=ttl_s, clock=clock)


async def publish_change(nc: Any | None) -> None:
    """Tells every process to drop its quotas (they read them again on the next request)."""
    await announce(nc, SUBJECT)
