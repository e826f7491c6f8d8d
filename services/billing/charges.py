"""What a month of usage costs under a plan, as invoice lines (docs/billing.md "Invoices" and
"Rounding"). Pure arithmetic on Decimal, no I/O: the invoice job, `aggregator admin invoice` and
`GET /v1/billing/subscription` (the running month's charges so far) share it.

The rounding rule: every line's amount is computed exactly (quantity x unit price, in Decimal, no
intermediate rounding), then rounded half-up to the cent; the invoice's total is the sum of the
rounded lines, so the lines printed always add up to the total printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CENT = Decimal("0.01")
THOUSAND = Decimal(1000)
HUNDRED = Decimal(100)
SUBSCRIPTION, PREPAID = "subscription", "prepaid"
PLAN_KINDS = (SUBSCRIPTION, PREPAID)


def to_cents(value: Decimal) -> Decimal:
    """An exact amount rounded half-up to the cent: 0.005 -> 0.01, 0.0049999 -> 0.00."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Plan:
    """A row of `billing_plans`."""

    id: str
    name: str
    kind: str  # subscription | prepaid
    monthly_fee_usd: Decimal
    included_requests: int
    included_tokens: int
    overage_per_1k_tokens: Decimal
    overage_per_1k_requests: Decimal
    markup_percent: Decimal

    @classmethod
    def from_row(cls, row: Any) -> Plan:
        return cls(str(row["id"]), row["name"], row["kind"], row["monthly_fee_usd"],
                   int(row["included_requests"]), int(row["included_tokens"]), row["overage_per_1k_tokens"],
                   row["overage_per_1k_requests"], row["markup_percent"])


@dataclass(frozen=True, slots=True)
class Usage:
    """What an organization used in a month: billable requests, tokens and provider cost."""

    requests: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line: `quantity` units at `unit_price`, `amount` = their product to the cent."""

    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal

    @property
    def exact(self) -> Decimal:
        return self.quantity * self.unit_price

    @property
    def amount(self) -> Decimal:
        return to_cents(self.exact)


def charges(plan: Plan, usage: Usage, credits: Sequence[tuple[datetime, Decimal]] = ()) -> list[Line]:
    """The lines a month costs under `plan`:

    * `base_fee`: the plan's monthly fee, whenever it is not 0;
    * `token_overage`: tokens past `included_tokens`, at `overage_per_1k_tokens` per 1,000;
    * `request_overage`: requests past `included_requests`, at `overage_per_1k_requests` per 1,000;
    * `markup`: `markup_percent` of the month's provider cost;
    * `credits` (prepaid plans): each credit purchase of the month, billed at its price; the
      requests that drew the balance down are not billed again, and no markup applies to them.
    Lines of a rate that is 0 or of no quantity are left out (the base fee line stays when the
    invoice would otherwise be empty, so every invoice shows its plan)."""
    lines: list[Line] = []
    if plan.monthly_fee_usd:
        lines.append(Line("base_fee", f"{plan.name}: monthly base fee", Decimal(1), plan.monthly_fee_usd))
    if plan.kind == PREPAID:
        for when, amount in credits:
            lines.append(Line("credits", f"Prepaid credits bought {when.astimezone(UTC):%Y-%m-%d}",
                              Decimal(1), amount))
    else:
        over_tokens = max(usage.tokens - plan.included_tokens, 0)
        if over_tokens and plan.overage_per_1k_tokens:
            lines.append(Line("token_overage",
                              f"{over_tokens} tokens over the {plan.included_tokens} included",
                              Decimal(over_tokens), plan.overage_per_1k_tokens / THOUSAND))
        over_requests = max(usage.requests - plan.included_requests, 0)
        if over_requests and plan.overage_per_1k_requests:
            lines.append(Line("request_overage",
                              f"{over_requests} requests over the {plan.included_requests} included",
                              Decimal(over_requests), plan.overage_per_1k_requests / THOUSAND))
        if usage.cost_usd and plan.markup_percent:
            lines.append(Line("markup", f"Markup of {plan.markup_percent.normalize():f}% on provider cost",
                              usage.cost_usd, plan.markup_percent / HUNDRED))
    if not lines:
        lines.append(Line("base_fee", f"{plan.name}: monthly base fee", Decimal(1), plan.monthly_fee_usd))
    return lines


def total(lines: list[Line]) -> Decimal:
    """The invoice total: the sum of the lines' rounded amounts."""
    return sum((line.amount for line in lines), Decimal("0.00"))


def month_bounds(period: str) -> tuple[datetime, datetime]:
    """'YYYY-MM' as the UTC instants [start, end) of that month; ValueError when malformed."""
    if len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit():
        raise ValueError(period)
    year, month = int(period[:4]), int(period[5:])
    if not 1 <= month <= 12 or year < 1970:
        raise ValueError(period)
    start = datetime(year, month, 1, tzinfo=UTC)
    return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def month_of(when: datetime) -> str:
    """The 'YYYY-MM' of the UTC month containing `when`."""
    return f"{when.astimezone(UTC):%Y-%m}"


def previous_month(when: datetime) -> str:
    """The 'YYYY-MM' of the UTC month before the one containing `when`."""
    start, _ = month_bounds(month_of(when))
    return month_of(datetime(start.year - (start.month == 1), (start.month - 2) % 12 + 1, 1, tzinfo=UTC))
