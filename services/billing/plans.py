"""Plans, subscriptions and prepaid credits in PostgreSQL (docs/billing.md), managed by
`aggregator admin create-plan | subscribe | top-up` (services/runtime/admin_cli.py).

Prepaid credits reuse the limits layer instead of a second balance (docs/limits.md "Budgets"): an
organization on a prepaid plan has a `total` cost quota (`usage_quotas`, period 'total', no key)
whose limit is the sum of its credit purchases. Every request holds its worst case against it in
the limiter's one Redis round trip and settles to its true cost, and the spend is durable in
`rate_limit_tracking` (period 'total'); over the balance, 429 `insufficient_quota`. A top-up
raises the limit; the change reaches every process over NATS (`limits.quotas.changed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from services.billing.charges import CENT, PLAN_KINDS, PREPAID, Plan, month_bounds, month_of
from services.core.errors import GatewayError, Reason, quote
from services.limits.budgets import SpendStore, period_start

MAX_USD = Decimal("1000000000")
MAX_MARKUP_PERCENT = Decimal(100_000)
PLAN_COLUMNS = ("id, name, kind, monthly_fee_usd, included_requests, included_tokens, overage_per_1k_tokens, "
                "overage_per_1k_requests, markup_percent")


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def amount(value: str | Decimal | int, param: str, *, places: int = 10, positive: bool = False) -> Decimal:
    """A non-negative (or positive) USD amount given as a decimal string, at most `places` decimals."""
    try:
        parsed = Decimal(str(value).strip())
    except InvalidOperation:
        parsed = Decimal("NaN")
    exponent = parsed.as_tuple().exponent
    if (not parsed.is_finite() or parsed < 0 or (positive and parsed == 0) or parsed > MAX_USD
            or not isinstance(exponent, int) or exponent < -places):
        kind = "a positive" if positive else "a non-negative"
        raise _invalid(f"{param} must be {kind} decimal of at most {places} decimals; "
                       f"got {quote(str(value))}.", param)
    return parsed


@dataclass(frozen=True, slots=True)
class Subscription:
    """An organization's live subscription and its plan."""

    id: str
    organization_id: str
    status: str
    plan: Plan
    created_at: datetime


async def create_plan(pool: asyncpg.Pool, name: str, *, kind: str = "subscription",
                      monthly_fee_usd: str = "0", included_requests: int = 0, included_tokens: int = 0,
                      overage_per_1k_tokens: str = "0", overage_per_1k_requests: str = "0",
                      markup_percent: str = "0", description: str = "") -> str:
    """Creates a plan; answers its id. Names are unique."""
    name = name.strip()
    if not name or len(name) > 200:
        raise _invalid("A plan name has 1 to 200 characters.", "name")
    if kind not in PLAN_KINDS:
        raise _invalid(f"Invalid kind {quote(kind)}: expected 'subscription' or 'prepaid'.", "kind")
    for count, param in ((included_requests, "included_requests"), (included_tokens, "included_tokens")):
        if count < 0:
            raise _invalid(f"{param} must not be negative.", param)
    markup = amount(markup_percent, "markup_percent", places=4)
    if markup >= MAX_MARKUP_PERCENT:  # NUMERIC(9, 4)
        raise _invalid(f"markup_percent must be below {MAX_MARKUP_PERCENT}.", "markup_percent")
    try:
        return str(await pool.fetchval(
            "INSERT INTO billing_plans (name, description, kind, monthly_fee_usd, included_requests, "
            "included_tokens, overage_per_1k_tokens, overage_per_1k_requests, markup_percent) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            name, description, kind, amount(monthly_fee_usd, "monthly_fee_usd"), included_requests,
            included_tokens, amount(overage_per_1k_tokens, "overage_per_1k_tokens"),
            amount(overage_per_1k_requests, "overage_per_1k_requests"), markup))
    except asyncpg.UniqueViolationError:
        raise _invalid(f"A plan named {quote(name)} exists already.", "name") from None


async def subscribe(pool: asyncpg.Pool, organization_id: str, plan_name: str, now: datetime) -> str:
    """Puts an organization on a plan from `now`, ending its previous subscription; answers the new
    subscription's id. On a prepaid plan its credit balance is enforced from then on (a balance of
    0 until the first top-up); off one, it is not. Callers announce the quota change."""
    async with pool.acquire() as conn, conn.transaction():
        plan = await conn.fetchrow(f"SELECT {PLAN_COLUMNS} FROM billing_plans WHERE name = $1 AND active",
                                   plan_name)
        if plan is None:
            raise GatewayError(Reason.NOT_FOUND, f"No plan named {quote(plan_name)}.", param="plan")
        await conn.execute("UPDATE subscriptions SET status = 'canceled', canceled_at = $2 "
                           "WHERE organization_id = $1::uuid AND status <> 'canceled'", organization_id, now)
        start, end = month_bounds(month_of(now))
        subscription = await conn.fetchval(
            "INSERT INTO subscriptions (organization_id, plan_id, status, current_period_start, "
            "current_period_end, created_at) VALUES ($1::uuid, $2, 'active', $3, $4, $5) RETURNING id",
            organization_id, plan["id"], start, end, now)
        await _sync_credit_limit(conn, organization_id, plan["kind"] == PREPAID)
    return str(subscription)


async def top_up(pool: asyncpg.Pool, organization_id: str, value: str, note: str = "") -> Decimal:
    """Adds prepaid credits (USD, whole cents) to an organization on a prepaid plan; answers its
    credits bought in all. Callers announce the quota change."""
    credits = amount(value, "amount", places=2, positive=True)
    async with pool.acquire() as conn, conn.transaction():
        kind = await conn.fetchval(
            "SELECT p.kind FROM subscriptions s JOIN billing_plans p ON p.id = s.plan_id "
            "WHERE s.organization_id = $1::uuid AND s.status <> 'canceled' FOR UPDATE OF s", organization_id)
        if kind != PREPAID:
            raise _invalid("This organization is not on a prepaid plan: subscribe it to one first.", "org")
        await conn.execute("INSERT INTO credit_purchases (organization_id, amount_usd, note) "
                           "VALUES ($1::uuid, $2, $3)", organization_id, credits.quantize(CENT), note)
        return await _sync_credit_limit(conn, organization_id, True)


async def _sync_credit_limit(conn: Any, organization_id: str, prepaid: bool) -> Decimal:
    """Makes the organization's `total` cost quota the sum of its credit purchases (prepaid), or
    removes it (not prepaid); answers the credits bought."""
    bought = await purchased(conn, organization_id)
    if not prepaid:
        await conn.execute("DELETE FROM usage_quotas WHERE organization_id = $1::uuid AND api_key_id IS NULL "
                           "AND period = 'total'", organization_id)
        return bought
    await conn.execute(
        "INSERT INTO usage_quotas (organization_id, period, max_cost_usd) VALUES ($1::uuid, 'total', $2) "
        "ON CONFLICT (organization_id, COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'), period) "
        "DO UPDATE SET max_cost_usd = EXCLUDED.max_cost_usd, enabled = true", organization_id, bought)
    return bought


async def purchased(conn: Any, organization_id: str) -> Decimal:
    """The prepaid credits an organization bought in all."""
    return Decimal(await conn.fetchval(
        "SELECT coalesce(sum(amount_usd), 0) FROM credit_purchases WHERE organization_id = $1::uuid",
        organization_id))


async def credit_spent(pool: asyncpg.Pool, organization_id: str) -> Decimal:
    """What settled requests drew from the organization's prepaid credits (requests in flight are
    not included)."""
    start = period_start("total", datetime.now(UTC))
    _, _, cost = await SpendStore(pool).settled(organization_id, "", "total", start)
    return cost


async def live_subscription(conn: Any, organization_id: str) -> Subscription | None:
    """The organization's subscription that is not canceled, with its plan."""
    row = await conn.fetchrow(
        f"SELECT s.id AS subscription_id, s.status, s.created_at AS subscribed_at, "
        f"{', '.join('p.' + c.strip() for c in PLAN_COLUMNS.split(','))} "
        "FROM subscriptions s JOIN billing_plans p ON p.id = s.plan_id "
        "WHERE s.organization_id = $1::uuid AND s.status <> 'canceled'", organization_id)
    if row is None:
        return None
    return Subscription(str(row["subscription_id"]), organization_id, row["status"], Plan.from_row(row),
                        row["subscribed_at"])
