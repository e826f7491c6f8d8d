"""Budget periods and worst-case holds (services/limits/budgets.py), with an injected clock: a daily
budget starts anew at 00:00 UTC, a monthly one on the 1st (December rolls into January), `total`
never; the hold prices the most a request may generate at its dearest candidate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

from services.limits.budgets import key_budget, micro, period_end, period_start, worst_case_micro
from services.limits.quotas import QuotaRow


def principal(budget: str = "5", period: str = "daily") -> SimpleNamespace:
    return SimpleNamespace(organization_id="org", api_key_id="key", max_budget_usd=budget,
                           budget_period=period)


def test_a_daily_budget_resets_at_utc_midnight() -> None:
    before = datetime(2026, 12, 4, 23, 59, 59, 999999, tzinfo=UTC)
    after = before + timedelta(microseconds=1)
    first, second = key_budget(principal(), before), key_budget(principal(), after)
    assert first is not None and second is not None
    assert first.start == datetime(2026, 12, 4, tzinfo=UTC)
    assert second.start == datetime(2026, 12, 5, tzinfo=UTC)
    assert first.key != second.key and first.holds != second.holds  # a new period, a new counter
    assert period_end("daily", first.start) == second.start
    assert first.limit == 5_000_000 and first.ttl_s == 2 * 86400


def test_a_monthly_budget_resets_on_the_first_and_total_never() -> None:
    december = key_budget(principal(period="monthly"), datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert december is not None and december.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_end("monthly", december.start) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_start("monthly", datetime(2027, 1, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    total = key_budget(principal(period="total"), datetime(2026, 12, 4, tzinfo=UTC))
    assert total is not None and total.ttl_s == 0 and period_end("total", total.start) is None
    assert key_budget(principal(budget=""), datetime(2026, 12, 4, tzinfo=UTC)) is None


def test_the_hold_is_the_dearest_candidates_worst_case() -> None:
    cheap = SimpleNamespace(input_per_1k="0.001", output_per_1k="0.002", max_output_tokens=0,
                            context_window=0)
    dear = SimpleNamespace(input_per_1k="0.01", output_per_1k="0.03", max_output_tokens=4096,
                           context_window=128000)
    # 400 characters: 100 prompt tokens; max_tokens 50 given.
    assert worst_case_micro(400, 50, [cheap, dear]) == micro((Decimal(100) * Decimal("0.01")
                                                              + Decimal(50) * Decimal("0.03")) / 1000)
    # Without max_tokens: the model's output limit; without one, the rest of the context, else 4096.
    assert worst_case_micro(400, 0, [dear]) == micro((Decimal(100) * Decimal("0.01")
                                                      + Decimal(4096) * Decimal("0.03")) / 1000)
    assert worst_case_micro(400, 0, [cheap]) == micro((Decimal(100) * Decimal("0.001")
                                                       + Decimal(4096) * Decimal("0.002")) / 1000)
    assert micro(Decimal("0.0000001")) == 1  # rounded up: a check never errs low


def test_images_are_held_at_their_per_image_price() -> None:
    dalle = SimpleNamespace(input_per_1k="0", output_per_1k="0", max_output_tokens=0, context_window=0,
                            per_image="0.04")
    assert worst_case_micro(100, 0, [dalle], images=3) == micro(Decimal("0.12"))


def test_a_daily_quota_starts_again_at_utc_midnight() -> None:
    quota = QuotaRow("org", "daily", max_requests=3, max_tokens=None, max_cost_usd=Decimal("2.5"))
    late = quota.budgets(datetime(2026, 12, 4, 23, 59, 59, tzinfo=UTC))
    early = quota.budgets(datetime(2026, 12, 5, 0, 0, 0, tzinfo=UTC))
    assert [(b.unit, b.limit) for b in late] == [("requests", 3), ("cost", 2_500_000)]
    assert all(not b.api_key_id for b in late)  # the organization's, not a key's
    assert {b.key for b in late}.isdisjoint({b.key for b in early})
    assert early[0].start == datetime(2026, 12, 5, tzinfo=UTC)
