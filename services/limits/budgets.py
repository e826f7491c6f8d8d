"""Budgets that cannot be overspent (docs/limits.md, "Budgets").

A key's budget (`max_budget_usd` per `budget_period`) is a Redis hash per period,
`{rl}:budget:key:<key id>:<period start>`, holding `spent` and `held` (micro-USD) and `gen` (which
seeding of the hash this is), beside a sorted set of holds (`<request id>:<micro-USD>`, scored by
when the hold expires). A request holds its worst-case cost when it is admitted, in the same
script and round trip as the rate limits, and is refused (429 `insufficient_quota`) when spent +
held + its hold would pass the budget; concurrent requests see each other's holds. When it ends
(answered, failed or cut) its hold is released and its true cost spent.

Spend is durable in PostgreSQL (`rate_limit_tracking`, written before Redis when a request
settles), and a hash that is missing (a new period, or Redis lost it) is seeded from there before
it is used, with a new `gen`: a request admitted before a re-seeding settles by adding its true
cost only. A hold whose worker died expires after HOLD_S and counts as spent at its worst case:
never an overspend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.core.prices import of_candidate
from services.limits.scripts import TAG

MICRO = Decimal(1_000_000)
HOLD_S = 15 * 60  # a hold outlives any request (upstream timeout 120 s, streams too)
# A budget period as rate_limit_tracking names it.
STORED_PERIODS = {"daily": "day", "monthly": "month", "total": "total"}
COST_UNIT, TOKENS_UNIT, REQUESTS_UNIT = "cost", "tokens", "requests"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micro(value: Decimal) -> int:
    """USD as whole micro-dollars, rounded up: a budget check never errs low."""
    return math.ceil(value * MICRO)


def period_start(period: str, now: datetime) -> datetime:
    """The start of the budget period containing `now` (UTC)."""
    if period == "daily":
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "monthly":
        return datetime(now.year, now.month, 1, tzinfo=UTC)
    return _EPOCH


def period_end(period: str, start: datetime) -> datetime | None:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "monthly":
        return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return None


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget a request is held to: a key's (`api_key_id`) or an organization's quota (no key),
    counting cost (micro-USD), tokens or requests (`unit`)."""

    organization_id: str
    api_key_id: str  # "" for an organization's quota
    period: str  # daily | monthly | total
    start: datetime
    limit: int  # in `unit`s; micro-USD for cost
    label: str
    unit: str = COST_UNIT

    @property
    def _name(self) -> str:
        scope = f"key:{self.api_key_id}" if self.api_key_id else f"org:{self.organization_id}"
        return f"{scope}:{self.unit}:{self.period}:{int(self.start.timestamp())}"

    @property
    def key(self) -> str:
        return f"{TAG}:budget:{self._name}"

    @property
    def holds(self) -> str:
        return f"{TAG}:holds:{self._name}"

    @property
    def ttl_s(self) -> int:
        """How long the hash lives: its period and a day more (0: no end)."""
        end = period_end(self.period, self.start)
        return 0 if end is None else int((end - self.start).total_seconds()) + 86400

    def amount(self, cost: Decimal, tokens: int) -> int:
        """What a settled request counts in this budget."""
        return unit_amount(self.unit, cost, tokens)


def unit_amount(unit: str, cost: Decimal, tokens: int) -> int:
    """What a request of this true cost and tokens counts in a budget of `unit`."""
    return micro(cost) if unit == COST_UNIT else tokens if unit == TOKENS_UNIT else 1


def key_budget(principal: Any, now: datetime) -> Budget | None:
    """The budget of the caller's key, if it has one."""
    if not principal.api_key_id or not principal.max_budget_usd:
        return None
    period = principal.budget_period or "monthly"
    return Budget(principal.organization_id, principal.api_key_id, period, period_start(period, now),
                  micro(Decimal(principal.max_budget_usd)),
                  f"the {period} budget of this API key (${principal.max_budget_usd})")


def worst_case_tokens(prompt_chars: int, max_output_tokens: int, candidates: Sequence[Any]) -> int:
    """The most tokens a request may use: its prompt and the most it may generate (as below)."""
    prompt = math.ceil(prompt_chars / 4)
    return prompt + max((max_output_tokens or c.max_output_tokens or max(c.context_window - prompt, 0) or 4096
                         for c in candidates), default=max_output_tokens or 4096)


def worst_case_micro(prompt_chars: int, max_output_tokens: int, candidates: Sequence[Any],
                     images: int = 0) -> int:
    """The most a request may cost: its prompt (4 characters a token, rounded up) and the most it
    may generate (its max_tokens, else the model's output limit, else what is left of its context
    window, else 4096), and `images` at a route's per-image price, at the dearest candidate. Each
    token is priced at the dearest class it may turn out to be (prompt tokens: input, cache read
    or cache write; completion tokens: output or reasoning; docs/pricing.md §1), so the hold stays
    an upper bound of the true cost."""
    prompt = math.ceil(prompt_chars / 4)
    most = 0
    for candidate in candidates:
        prices = of_candidate(candidate)
        output = max_output_tokens or candidate.max_output_tokens or max(
            candidate.context_window - prompt, 0) or 4096
        cost = (prompt * max(prices.input_per_1k, prices.cached_input_per_1k, prices.cache_write_per_1k)
                + output * max(prices.output_per_1k, prices.reasoning_per_1k)) / 1000
        if images and prices.per_image is not None:
            cost += images * prices.per_image
        most = max(most, micro(cost))
    return most


class SpendStore:
    """Settled usage per key or organization and budget period in PostgreSQL
    (`rate_limit_tracking`; an organization's row has no key)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def settled(self, organization_id: str, api_key_id: str, period: str,
                      start: datetime) -> tuple[int, int, Decimal]:
        """Requests, tokens and cost settled in a period of a key (or of the organization, with no
        key)."""
        row = await self._pool.fetchrow(
            "SELECT requests, tokens, cost_usd FROM rate_limit_tracking WHERE organization_id = $1::uuid "
            "AND api_key_id IS NOT DISTINCT FROM $2::uuid AND period = $3 AND period_start = $4",
            organization_id, api_key_id or None, STORED_PERIODS[period], start)
        if row is None:
            return 0, 0, Decimal(0)
        return int(row["requests"]), int(row["tokens"]), row["cost_usd"]

    async def spent(self, budget: Budget) -> int:
        """What was settled in the budget's period, in its unit (micro-USD for cost)."""
        requests, tokens, cost = await self.settled(budget.organization_id, budget.api_key_id, budget.period,
                                                    budget.start)
        return micro(cost) if budget.unit == COST_UNIT else tokens if budget.unit == TOKENS_UNIT else requests

    async def add(self, entries: Sequence[tuple[Sequence[Budget], Decimal, int]]) -> None:
        """Adds each settled request (its budgets, true cost, tokens) once to every period row its
        budgets count in, in one transaction."""
        rows: dict[tuple[str, str, str, datetime], list[Any]] = {}
        for budgets, cost, tokens in entries:
            for row in {(b.organization_id, b.api_key_id, b.period, b.start) for b in budgets}:
                totals = rows.setdefault(row, [0, 0, Decimal(0)])
                totals[0] += 1
                totals[1] += tokens
                totals[2] += cost
        if not rows:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            # In one order everywhere: two workers' batches never deadlock on each other's rows.
            await conn.executemany(_ADD, [(org, key or None, STORED_PERIODS[period], start, n, tokens, cost)
                                          for (org, key, period, start), (n, tokens, cost)
                                          in sorted(rows.items(), key=_row_order)])

    async def add_row(self, organization_id: str, api_key_id: str, period: str, start: datetime, *,
                      requests: int = 0, tokens: int = 0, cost: Decimal = Decimal(0)) -> None:
        """Adds amounts to one period row (the reconciler's correction of a dead worker's request)."""
        await self._pool.execute(_ADD, organization_id, api_key_id or None, STORED_PERIODS[period], start,
                                 requests, tokens, cost)


_ADD = ("INSERT INTO rate_limit_tracking (organization_id, api_key_id, period, period_start, requests, "
        "tokens, cost_usd) VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7) "
        "ON CONFLICT (organization_id, COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'), "
        "period, period_start) DO UPDATE SET requests = rate_limit_tracking.requests + EXCLUDED.requests, "
        "tokens = rate_limit_tracking.tokens + EXCLUDED.tokens, "
        "cost_usd = rate_limit_tracking.cost_usd + EXCLUDED.cost_usd, updated_at = now()")


def _row_order(item: tuple[tuple[str, str, str, datetime], list[Any]]) -> tuple[str, str, str, datetime]:
    return item[0]
