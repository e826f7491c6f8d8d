"""Route prices in the config file (services/core/prices.py, docs/pricing.md): every token class,
its defaults, dated price sets, and the refusals of prices the catalog cannot keep exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from services.core.config import ConfigError, parse_config
from services.core.prices import EPOCH, Prices, history_changes, in_effect


def config(**route: Any) -> dict[str, Any]:
    return {"providers": [{"name": "p", "kind": "openai", "base_url": "http://h/v1"}],
            "models": [{"id": "m", "routes": [{"provider": "p", "model": "m", "input_per_1k": "0.003",
                                               "output_per_1k": "0.015", **route}]}]}


def timeline(**route: Any) -> Any:
    return parse_config(config(**route)).models[0].routes[0].timeline()


def test_class_prices_default_to_the_input_and_output_prices() -> None:
    (only,) = timeline()
    assert (only.cached_input_per_1k, only.cache_write_per_1k) == (Decimal("0.003"), Decimal("0.003"))
    assert only.reasoning_per_1k == Decimal("0.015") and only.per_image is None
    assert only.effective_from == EPOCH


def test_every_class_takes_its_own_price_exactly() -> None:
    document = yaml.safe_load("""
        providers: [{name: p, kind: anthropic, base_url: "http://h"}]
        models:
          - id: m
            routes:
              - {provider: p, model: m, input_per_1k: 0.003, output_per_1k: 0.015,
                 cached_input_per_1k: 0.0003, cache_write_per_1k: 0.00375, reasoning_per_1k: 0.02}
    """)
    (only,) = parse_config(document).models[0].routes[0].timeline()
    assert (only.input_per_1k, only.cached_input_per_1k, only.cache_write_per_1k, only.output_per_1k,
            only.reasoning_per_1k) == tuple(
        Decimal(t) for t in ("0.003", "0.0003", "0.00375", "0.015", "0.02"))
    assert str(only.cached_input_per_1k) == "0.0003"  # never through a binary float


def test_dated_price_sets_are_ordered_and_complete() -> None:
    document = yaml.safe_load("""
        providers: [{name: p, kind: openai, base_url: "http://h/v1"}]
        models:
          - id: m
            type: image
            routes:
              - provider: p
                model: m
                input_per_1k: 0.003
                output_per_1k: 0.015
                per_image: 0.04
                prices:
                  - {effective_from: "2027-03-01T00:00:00+01:00", input_per_1k: 0.001, output_per_1k: 0.002}
                  - {effective_from: 2026-12-01T00:00:00Z, input_per_1k: 0.002, output_per_1k: 0.01,
                     cached_input_per_1k: 0.0005, per_image: 0.05}
    """)
    base, december, march = parse_config(document).models[0].routes[0].timeline()
    assert base.effective_from == EPOCH and base.input_per_1k == Decimal("0.003")
    assert december.effective_from == datetime(2026, 12, 1, tzinfo=UTC)
    assert december.cached_input_per_1k == Decimal("0.0005")
    assert december.cache_write_per_1k == Decimal("0.002")
    assert december.per_image == Decimal("0.05")
    # Given with an offset, kept in UTC; an omitted per-image price is the route's own.
    assert march.effective_from == datetime(2027, 2, 28, 23, tzinfo=UTC)
    assert march.reasoning_per_1k == Decimal("0.002") and march.per_image == Decimal("0.04")
    line = (base, december, march)
    assert in_effect(line, datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) is base
    assert in_effect(line, datetime(2026, 12, 1, tzinfo=UTC)) is december
    assert in_effect(line, datetime(2030, 1, 1, tzinfo=UTC)) is march


@pytest.mark.parametrize(("route", "fragment"), [
    ({"input_per_1k": "0.00000000001"}, "routes[0].input_per_1k: 0.00000000001 has 11 decimal places; "
                                        "at most 7 are kept exactly"),
    # 8 places: the catalog could keep it, a request's cost (÷ 1000) could not.
    ({"output_per_1k": "0.00000001"}, "routes[0].output_per_1k: 0.00000001 has 8 decimal places"),
    ({"per_image": "0.00000000001"}, "routes[0].per_image: 0.00000000001 has 11 decimal places; "
                                     "at most 10"),
    ({"cached_input_per_1k": "1.12345678901"}, "routes[0].cached_input_per_1k: 1.12345678901 has 11 decimal"),
    ({"reasoning_per_1k": "10000000000"}, "routes[0].reasoning_per_1k: 10000000000 has more than 10 digits "
                                          "before the decimal point"),
    ({"cache_write_per_1k": "-0.1"}, "routes[0].cache_write_per_1k: price must be a finite non-negative"),
    ({"output_per_1k": "NaN"}, "routes[0].output_per_1k: price must be a finite non-negative"),
    ({"per_image": "Infinity"}, "routes[0].per_image: price must be a finite non-negative"),
    ({"input_per_1k": True}, "routes[0].input_per_1k: not a decimal price"),
    ({"input_per_1k": None}, "routes[0]: input_per_1k and output_per_1k are required"),
    ({"prices": [{"effective_from": "2026-12-01T00:00:00Z", "input_per_1k": "0.1"}]},
     "routes[0].prices[0]: input_per_1k and output_per_1k are required"),
    ({"prices": [{"input_per_1k": "0.1", "output_per_1k": "0.2"}]},
     "routes[0].prices[0]: effective_from is required"),
    ({"prices": [{"effective_from": "2026-12-01T00:00:00", "input_per_1k": "1", "output_per_1k": "1"}]},
     "routes[0].prices[0]: effective_from needs its UTC offset"),
    ({"prices": [{"effective_from": "December", "input_per_1k": "1", "output_per_1k": "1"}]},
     "routes[0].prices[0]: effective_from 'December' is not an RFC 3339 instant"),
    ({"prices": [{"effective_from": "2026-12-01T00:00:00Z", "input_per_1k": "1", "output_per_1k": "1",
                  "reasoning_per_1k": "0.000000000001"}]},
     "routes[0].prices[0].reasoning_per_1k: 0.000000000001 has 12 decimal places"),
    ({"prices": [{"effective_from": "2026-12-01T00:00:00Z", "input_per_1k": "1", "output_per_1k": "1"},
                 {"effective_from": "2026-12-01T01:00:00+01:00", "input_per_1k": "2", "output_per_1k": "2"}]},
     "routes[0].prices: two price sets start at 2026-12-01T00:00:00+00:00"),
    ({"prices": {"effective_from": "2026-12-01T00:00:00Z"}}, "routes[0].prices: must be a list"),
])
def test_prices_the_catalog_cannot_keep_are_refused(route: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(**route))
    assert fragment in str(caught.value)


@pytest.mark.parametrize("text", ["0.0000001", "9999999999.9999999", "0.10000000000000", "1E+2"])
def test_prices_within_numeric_20_10_are_kept_exactly(text: str) -> None:
    (only,) = timeline(input_per_1k=text)
    assert only.input_per_1k == Decimal(text)


def test_a_per_image_price_keeps_ten_decimals() -> None:
    (only,) = timeline(per_image="0.0000000001")
    assert only.per_image == Decimal("0.0000000001")


def test_a_date_without_a_time_is_refused() -> None:
    document = yaml.safe_load("""
        providers: [{name: p, kind: openai, base_url: "http://h/v1"}]
        models:
          - id: m
            routes:
              - {provider: p, model: m, input_per_1k: 1, output_per_1k: 1,
                 prices: [{effective_from: 2026-12-01, input_per_1k: 2, output_per_1k: 2}]}
    """)
    with pytest.raises(ConfigError, match=r"routes\[0\].prices\[0\]: effective_from must be an RFC 3339"):
        parse_config(document)


def history(*starts_and_prices: tuple[datetime, str]) -> list[Any]:
    return [Prices(Decimal(p), Decimal(1), Decimal(p), Decimal(p), Decimal(1), None, at)
            for at, p in starts_and_prices]


JAN, JUN, NOW, LATER = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 6, 9, 12))


def test_a_first_sync_records_the_whole_configured_timeline() -> None:
    line = tuple(history((EPOCH, "3"), (JAN, "2"), (LATER, "1")))
    assert history_changes([], line, NOW) == ([], list(line))


def test_a_resync_of_the_same_file_changes_nothing() -> None:
    line = tuple(history((EPOCH, "3"), (JAN, "2"), (LATER, "1")))
    assert history_changes(list(line), line, NOW) == ([], [])


def test_the_past_is_never_rewritten_and_a_changed_price_starts_now() -> None:
    stored = history((EPOCH, "3"), (JAN, "2"), (LATER, "1"))
    # The file rewrites January, adds June after the fact and moves the coming price.
    line = tuple(history((EPOCH, "3"), (JAN, "2.5"), (JUN, "2.2"), (LATER, "0.5")))
    stale, added = history_changes(stored, line, NOW)
    assert stale == [LATER]
    assert [(p.effective_from, p.input_per_1k) for p in added] == [
        (NOW, Decimal("2.2")), (LATER, Decimal("0.5"))]


def test_a_coming_price_that_leaves_the_file_is_dropped() -> None:
    stored = history((EPOCH, "3"), (LATER, "1"))
    assert history_changes(stored, tuple(history((EPOCH, "3"))), NOW) == ([LATER], [])
