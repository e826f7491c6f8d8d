"""The invoice arithmetic and its rounding rule (docs/billing.md "Rounding"): each line exact,
then rounded half-up to the cent; the total is the sum of the rounded lines."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.billing.charges import (
    PREPAID,
    Line,
    Plan,
    Usage,
    charges,
    month_bounds,
    previous_month,
    to_cents,
    total,
)

D = Decimal


def plan(**overrides: object) -> Plan:
    values: dict[str, object] = dict(id="p", name="Team", kind="subscription", monthly_fee_usd=D("49"),
                                     included_requests=1000, included_tokens=1_000_000,
                                     overage_per_1k_tokens=D("0.002"), overage_per_1k_requests=D("0.5"),
                                     markup_percent=D("5.5"))
    values.update(overrides)
    return Plan(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exact", "cents"), [
    ("0.005", "0.01"), ("0.025", "0.03"), ("2.675", "2.68"), ("0.0049999999", "0.00"), ("1.994999", "1.99"),
    ("10", "10.00"), ("0", "0.00"),
])
def test_an_amount_rounds_half_up_to_the_cent(exact: str, cents: str) -> None:
    assert str(to_cents(D(exact))) == cents


def test_a_line_is_computed_exactly_before_it_is_rounded() -> None:
    line = Line("token_overage", "", D(1_234_567), D("0.0015") / 1000)
    assert line.exact == D("1.8518505")
    assert line.amount == D("1.85")
    # Rounding the unit price first would have billed 0.00 per token.
    assert to_cents(D("0.0015") / 1000) == 0


def test_the_total_is_the_sum_of_the_rounded_lines() -> None:
    lines = [Line("a", "", D(1), D("0.005")), Line("b", "", D(1), D("0.005"))]
    assert total(lines) == D("0.02")  # rounding the exact sum (0.01) would not match the lines shown
    assert str(total([])) == "0.00"


def test_a_month_within_the_allowance_pays_the_base_fee_and_the_markup() -> None:
    lines = charges(plan(), Usage(requests=1000, tokens=1_000_000, cost_usd=D("3.3333333333")))
    assert [line.kind for line in lines] == ["base_fee", "markup"]
    assert lines[0].amount == D("49.00")
    assert lines[1].exact == D("0.183333333331500") and lines[1].amount == D("0.18")


def test_overage_past_the_included_requests_and_tokens() -> None:
    lines = charges(plan(markup_percent=D(0)), Usage(requests=1801, tokens=3_456_789, cost_usd=D("9")))
    by_kind = {line.kind: line for line in lines}
    assert by_kind["token_overage"].quantity == 2_456_789
    assert by_kind["token_overage"].amount == D("4.91")  # 4.913578
    assert by_kind["request_overage"].quantity == 801
    assert by_kind["request_overage"].amount == D("0.40")  # 0.4005: under half a cent
    assert total(lines) == D("49.00") + D("4.91") + D("0.40")


def test_a_free_plan_without_usage_still_shows_its_plan() -> None:
    lines = charges(plan(monthly_fee_usd=D(0), markup_percent=D(0)), Usage())
    assert [(line.kind, line.amount) for line in lines] == [("base_fee", D("0.00"))]


def test_a_prepaid_month_bills_the_credits_bought_not_the_usage() -> None:
    bought = [(datetime(2026, 11, 3, tzinfo=UTC), D("20.00")),
              (datetime(2026, 11, 20, tzinfo=UTC), D("5.50"))]
    lines = charges(plan(kind=PREPAID, monthly_fee_usd=D(0)), Usage(50_000, 9_000_000, D("17")), bought)
    assert [(line.kind, line.amount) for line in lines] == [("credits", D("20.00")), ("credits", D("5.50"))]
    assert "2026-11-20" in lines[1].description
    assert total(lines) == D("25.50")


def test_months_are_utc_calendar_months() -> None:
    assert month_bounds("2026-11") == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert month_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert previous_month(datetime(2027, 1, 1, 0, 30, tzinfo=UTC)) == "2026-12"
    assert previous_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-11"
    for bad in ("2026-13", "2026-1", "26-11", "2026/11", "abcd-ef", "2026-00"):
        with pytest.raises(ValueError):
            month_bounds(bad)
