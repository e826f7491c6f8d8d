"""Invoices (docs/billing.md "Invoices"): one per organization and UTC calendar month, made from
the usage ledger (`request_analytics`) by a job every billing process runs (at start and every
EVERY_S, for the month before once GRACE has passed since it ended: the ledger writes a few
seconds behind the requests) and by `aggregator admin invoice --period YYYY-MM`.

Idempotent: `invoices` is unique on (organization_id, period), and an invoice, its lines and the
month's `usage_billing` rows are written in one transaction, so any number of runs, in any number
of processes, make one invoice with its lines or none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services.billing.charges import Line, Plan, Usage, charges, month_bounds, month_of, previous_month, total
from services.billing.plans import PLAN_COLUMNS
from services.core.errors import GatewayError, Reason, quote
from services.core.periodic import PeriodicJob

log = logging.getLogger(__name__)

EVERY_S = 3600
GRACE = timedelta(hours=1)
INVOICE_COLUMNS = ("id, organization_id, period, period_start, period_end, plan_name, plan_kind, currency, "
                   "status, requests, tokens, cost_usd, total_usd, created_at")
_ZERO_KEY = "'00000000-0000-0000-0000-000000000000'"


async def month_usage(conn: Any, organization_id: str, start: datetime, end: datetime) -> Usage:
    """What the ledger recorded for an organization in [start, end): billable requests (answered or
    cut off by the client: failed ones cost nothing), tokens (prompt and completion) and provider
    cost, summed exactly."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status <> 'failed') AS requests, "
        "coalesce(sum(prompt_tokens::bigint + completion_tokens), 0) AS tokens, "
        "coalesce(sum(cost_usd), 0) AS cost FROM request_analytics "
        "WHERE organization_id = $1::uuid AND created_at >= $2 AND created_at < $3",
        organization_id, start, end)
    return Usage(int(row["requests"]), int(row["tokens"]), Decimal(row["cost"]))


async def month_credits(conn: Any, organization_id: str, start: datetime,
                        end: datetime) -> list[tuple[datetime, Decimal]]:
    """The prepaid credits bought in [start, end), oldest first."""
    rows = await conn.fetch("SELECT created_at, amount_usd FROM credit_purchases WHERE organization_id = "
                            "$1::uuid AND created_at >= $2 AND created_at < $3 ORDER BY created_at, id",
                            organization_id, start, end)
    return [(row["created_at"], row["amount_usd"]) for row in rows]


async def invoice_month(pool: asyncpg.Pool, period: str, now: datetime) -> list[str]:
    """Invoices every organization subscribed during the month `period` ('YYYY-MM') that has no
    invoice for it yet; answers the ids of the invoices made (none on a second run). Each
    organization is billed on the last plan it subscribed to before the month ended."""
    try:
        start, end = month_bounds(period)
    except ValueError:
        raise GatewayError(Reason.INVALID_REQUEST, f"Invalid period {quote(period)}: expected YYYY-MM.",
                           param="period") from None
    if end > now:
        raise GatewayError(Reason.INVALID_REQUEST, f"The month {period} has not ended yet.", param="period")
    columns = ", ".join("p." + column.strip() for column in PLAN_COLUMNS.split(","))
    subscribed = await pool.fetch(
        f"SELECT DISTINCT ON (s.organization_id) s.organization_id, {columns} FROM subscriptions s "
        "JOIN billing_plans p ON p.id = s.plan_id WHERE s.created_at < $2 "
        "AND (s.canceled_at IS NULL OR s.canceled_at > $1) "
        "AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.organization_id = s.organization_id "
        "AND i.period = $3) "
        "ORDER BY s.organization_id, s.created_at DESC", start, end, period)
    made = []
    for row in subscribed:
        organization = str(row["organization_id"])
        invoice = await _invoice_one(pool, organization, Plan.from_row(row), period, start, end)
        if invoice is not None:
            made.append(invoice)
    if made:
        log.info("billing: %d invoices made for %s", len(made), period)
    return made


async def _invoice_one(pool: asyncpg.Pool, organization_id: str, plan: Plan, period: str, start: datetime,
                       end: datetime) -> str | None:
    async with pool.acquire() as conn, conn.transaction():
        usage = await month_usage(conn, organization_id, start, end)
        lines = charges(plan, usage, await month_credits(conn, organization_id, start, end))
        invoice = await conn.fetchval(
            "INSERT INTO invoices (organization_id, period, period_start, period_end, plan_id, plan_name, "
            "plan_kind, requests, tokens, cost_usd, total_usd) "
            "VALUES ($1::uuid, $2, $3, $4, $5::uuid, $6, $7, $8, $9, $10, $11) "
            "ON CONFLICT (organization_id, period) DO NOTHING RETURNING id",
            organization_id, period, start, end, plan.id, plan.name, plan.kind, usage.requests, usage.tokens,
            usage.cost_usd, total(lines))
        if invoice is None:  # another run made it meanwhile
            return None
        await conn.executemany(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, unit_price, "
            "amount_usd) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(invoice, n, line.kind, line.description, line.quantity, line.unit_price, line.amount)
             for n, line in enumerate(lines, 1)])
        await _record_usage(conn, organization_id, start, end)
    return str(invoice)


async def _record_usage(conn: Any, organization_id: str, start: datetime, end: datetime) -> None:
    """The month's billed usage per key, UTC day and model (`usage_billing`), marked invoiced."""
    await conn.execute(
        "INSERT INTO usage_billing (organization_id, api_key_id, usage_date, public_model, requests, "
        "prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, invoiced_at) "
        "SELECT organization_id, api_key_id, (created_at AT TIME ZONE 'UTC')::date, public_model, "
        "count(*) FILTER (WHERE status <> 'failed'), sum(prompt_tokens), sum(completion_tokens), "
        "sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), now() FROM request_analytics "
        "WHERE organization_id = $1::uuid AND created_at >= $2 AND created_at < $3 GROUP BY 1, 2, 3, 4 "
        f"ON CONFLICT (organization_id, COALESCE(api_key_id, {_ZERO_KEY}), usage_date, public_model) "
        "DO UPDATE SET requests = EXCLUDED.requests, prompt_tokens = EXCLUDED.prompt_tokens, "
        "completion_tokens = EXCLUDED.completion_tokens, cached_tokens = EXCLUDED.cached_tokens, "
        "reasoning_tokens = EXCLUDED.reasoning_tokens, cost_usd = EXCLUDED.cost_usd, invoiced_at = now()",
        organization_id, start, end)


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice with its lines, as stored."""

    row: Any
    lines: list[Line]
    amounts: list[Decimal]


async def get_invoice(pool: asyncpg.Pool, organization_id: str, invoice_id: str) -> Invoice | None:
    """The organization's invoice with this id (None for another organization's)."""
    row = await pool.fetchrow(f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1::uuid "
                              "AND organization_id = $2::uuid", invoice_id, organization_id)
    return None if row is None else (await _with_lines(pool, [row]))[0]


async def list_invoices(pool: asyncpg.Pool, organization_id: str, after: str | None,
                        limit: int) -> tuple[list[Invoice], bool]:
    """A page of the organization's invoices, newest month first, after the invoice `after`
    (an id of this organization, else NOT_FOUND); and whether more follow."""
    cursor = None
    if after is not None:
        cursor = await pool.fetchrow("SELECT period_start, id FROM invoices WHERE id = $1::uuid "
                                     "AND organization_id = $2::uuid", after, organization_id)
        if cursor is None:
            raise GatewayError(Reason.NOT_FOUND, f"No invoice found with id {quote(after)}.", param="after")
    rows = await pool.fetch(
        f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE organization_id = $1::uuid "
        "AND ($2::timestamptz IS NULL OR (period_start, id) < ($2, $3::uuid)) "
        "ORDER BY period_start DESC, id DESC LIMIT $4", organization_id,
        None if cursor is None else cursor["period_start"], None if cursor is None else cursor["id"],
        limit + 1)
    return await _with_lines(pool, rows[:limit]), len(rows) > limit


async def _with_lines(pool: asyncpg.Pool, rows: list[Any]) -> list[Invoice]:
    """The invoices of `rows` with their lines, read in one query."""
    lines: dict[Any, list[Any]] = {row["id"]: [] for row in rows}
    if lines:
        for line in await pool.fetch(
                "SELECT invoice_id, kind, description, quantity, unit_price, amount_usd FROM invoice_lines "
                "WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id, position", list(lines)):
            lines[line["invoice_id"]].append(line)
    return [Invoice(row, [Line(r["kind"], r["description"], r["quantity"], r["unit_price"])
                          for r in lines[row["id"]]], [r["amount_usd"] for r in lines[row["id"]]])
            for row in rows]


async def roll_periods(pool: asyncpg.Pool, now: datetime) -> None:
    """Moves every live subscription's current period to the month containing `now`."""
    start, end = month_bounds(month_of(now))
    await pool.execute("UPDATE subscriptions SET current_period_start = $1, current_period_end = $2 "
                       "WHERE status <> 'canceled' AND current_period_end <= $1", start, end)


class InvoiceJob(PeriodicJob):
    """At start and every `every_s`: once GRACE has passed since a month ended, invoices it
    (`invoice_month`, a no-op once done) and moves subscriptions to the new month."""

    name = "invoices"

    def __init__(self, pool: asyncpg.Pool, *, every_s: float = EVERY_S,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(every_s)
        self._pool = pool
        self._clock = clock

    async def run_once(self) -> list[str]:
        """One run at the clock's time; answers the invoices made."""
        now = self._clock()
        month_start, _ = month_bounds(month_of(now))
        await roll_periods(self._pool, now)
        if now < month_start + GRACE:
            return []  # the ledger may still be writing the month's last requests
        return await invoice_month(self._pool, previous_month(now), now)
