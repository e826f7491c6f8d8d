"""Effective-dated prices in the in-memory catalog (services/routing/catalog.py, docs/pricing.md §3):
candidates carry the prices in effect at the instant they are resolved for, with the start of the
next ones, and a cached catalog switches at the instant by its clock, with no reload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aggregator.routing.v1 import route_pb2
from services.core.prices import EPOCH, Prices
from services.routing.catalog import Catalog, CatalogModel

SWITCH = datetime(2026, 12, 1, tzinfo=UTC)
BEFORE = Prices(Decimal("0.003"), Decimal("0.015"), Decimal("0.0003"), Decimal("0.00375"), Decimal("0.015"))
AFTER = Prices(Decimal("0.002"), Decimal("0.01"), Decimal("0.0002"), Decimal("0.0025"), Decimal("0.04"),
               effective_from=SWITCH)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def catalog(clock: Clock) -> Catalog:
    route = route_pb2.RouteCandidate(public_model="claude", upstream_model="claude-sonnet-4-5",
                                     input_per_1k="9", output_per_1k="9", model_type="chat",
                                     endpoint=route_pb2.Endpoint(provider="anthropic", kind="anthropic"))
    other = route_pb2.RouteCandidate(public_model="claude", upstream_model="fixed", input_per_1k="0.5",
                                     output_per_1k="0.7", model_type="chat",
                                     endpoint=route_pb2.Endpoint(provider="other", kind="openai"))
    half, most = Decimal("0.5"), Decimal("0.7")
    fixed = Prices(half, most, half, half, most)
    return Catalog([CatalogModel("claude", "chat", 0, 0, (route, other), ((BEFORE, AFTER), (fixed,)))],
                   [], clock=clock)


def prices(candidate: route_pb2.RouteCandidate) -> tuple[str, ...]:
    return (candidate.input_per_1k, candidate.cached_input_per_1k, candidate.cache_write_per_1k,
            candidate.output_per_1k, candidate.reasoning_per_1k)


def test_candidates_carry_the_prices_in_effect_and_the_next_start() -> None:
    clock = Clock(SWITCH - timedelta(seconds=1))
    first, second = catalog(clock).resolve("claude", [], "chat")
    assert prices(first) == ("0.003", "0.0003", "0.00375", "0.015", "0.015")
    assert first.prices_effective_from.ToDatetime(tzinfo=UTC) == EPOCH
    assert first.next_prices_from.ToDatetime(tzinfo=UTC) == SWITCH
    # A route without a later price says so: no next start.
    assert prices(second) == ("0.5", "0.5", "0.5", "0.7", "0.7") and not second.HasField("next_prices_from")


def test_a_cached_catalog_switches_at_the_instant_without_a_reload() -> None:
    clock = Clock(SWITCH - timedelta(microseconds=1))
    served = catalog(clock)
    before = served.resolve("claude", [], "chat")[0]
    clock.now = SWITCH
    after = served.resolve("claude", [], "chat")[0]
    assert prices(after) == ("0.002", "0.0002", "0.0025", "0.01", "0.04")
    assert after.prices_effective_from.ToDatetime(tzinfo=UTC) == SWITCH
    assert not after.HasField("next_prices_from")
    # A candidate already handed out is never changed under its request.
    assert prices(before) == ("0.003", "0.0003", "0.00375", "0.015", "0.015")
    # The public catalog and route ids follow the same clock.
    (listed,) = [m for m in served.models() if m.id == "claude"]
    assert listed.to_proto().pricing.reasoning_per_1k == "0.04"
    assert served.resolve("anthropic/claude-sonnet-4-5", [], "chat")[0].input_per_1k == "0.002"


def test_a_request_is_priced_at_its_own_instant() -> None:
    # Arrived just before the change, resolved just after it: the old prices, as at its created_at.
    served = catalog(Clock(SWITCH + timedelta(milliseconds=5)))
    assert served.resolve("claude", [], "chat")[0].input_per_1k == "0.002"
    late = served.resolve("claude", [], "chat", at=SWITCH - timedelta(milliseconds=1))[0]
    assert late.input_per_1k == "0.003" and late.next_prices_from.ToDatetime(tzinfo=UTC) == SWITCH
    assert served.resolve("claude", [], "chat")[0].input_per_1k == "0.002"


def test_candidates_without_a_price_history_keep_their_own_prices() -> None:
    plain = route_pb2.RouteCandidate(public_model="m", upstream_model="m", input_per_1k="0.1",
                                     output_per_1k="0.2",
                                     endpoint=route_pb2.Endpoint(provider="p", kind="openai"))
    served = Catalog([CatalogModel("m", "chat", 0, 0, (plain,))], [])
    (only,) = served.resolve("m", [], "chat")
    assert (only.input_per_1k, only.output_per_1k, only.cached_input_per_1k) == ("0.1", "0.2", "")
    pricing = served.get("m").to_proto().pricing
    assert (pricing.cached_input_per_1k, pricing.cache_write_per_1k, pricing.reasoning_per_1k) == (
        "0.1", "0.1", "0.2")
