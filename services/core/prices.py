"""A route's prices as the config file gives them: every token class at its own price, and dated
price sets so that a price change takes effect at its instant without rewriting history
(docs/pricing.md). Parsed once at start-up; pure logic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

# The catalog keeps prices as numeric(20, 10) (migrations/0002, 0017): ten digits before the
# point and ten after. A price it cannot keep exactly is refused, never rounded (docs/pricing.md §4).
MAX_DECIMALS = 10
# The ledger keeps a request's cost as numeric(20, 10) too, and a per-1k price is divided by 1000
# (tokens × price / 1000): such a price may have at most 7 decimal places for every request's cost
# to be kept to its last decimal (docs/pricing.md §4). A per-image price is not divided.
MAX_PER_1K_DECIMALS = MAX_DECIMALS - 3
MAX_INTEGER_DIGITS = 10
_LIMIT = Decimal(10) ** MAX_INTEGER_DIGITS
# The start of a route's undated prices: in effect since before any request.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TOKEN_KEYS = ("input_per_1k", "output_per_1k", "cached_input_per_1k", "cache_write_per_1k",
              "reasoning_per_1k")


class PriceError(ValueError):
    """A price the catalog cannot keep; `services/core/config.py` turns it into a ConfigError."""


@dataclass(frozen=True, slots=True)
class Prices:
    """One set of a route's prices in USD, in effect from `effective_from` until the next set.

    Token prices are per 1,000 tokens: `input_per_1k` for prompt tokens neither read from nor
    written to the provider's cache, `cached_input_per_1k` for those read from it,
    `cache_write_per_1k` for those written to it, `output_per_1k` for completion tokens other than
    reasoning, `reasoning_per_1k` for reasoning tokens; `per_image` per generated image (None when
    images are priced by tokens)."""

    input_per_1k: Decimal
    output_per_1k: Decimal
    cached_input_per_1k: Decimal
    cache_write_per_1k: Decimal
    reasoning_per_1k: Decimal
    per_image: Decimal | None = None
    effective_from: datetime = EPOCH

    def same_prices(self, other: Prices) -> bool:
        """Whether both charge the same for everything, wherever they start."""
        return all(getattr(self, k) == getattr(other, k) for k in (*TOKEN_KEYS, "per_image"))


def decimal_price(value: Any, where: str, max_decimals: int = MAX_DECIMALS) -> Decimal:
    """A price from the config file, exact: finite, not negative, within numeric(20, 10), and with
    at most `max_decimals` decimal places."""
    if isinstance(value, bool):
        raise PriceError(f"{where}: not a decimal price: {value!r}")
    try:
        # str() first: a YAML float such as 0.00015 must not pass through binary floating point.
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise PriceError(f"{where}: not a decimal price: {value!r}") from exc
    if not price.is_finite() or price < 0:  # finiteness first: ordering a NaN raises InvalidOperation
        raise PriceError(f"{where}: price must be a finite non-negative number")
    decimals = -price.normalize().as_tuple().exponent  # type: ignore[operator]
    if decimals > max_decimals:
        raise PriceError(f"{where}: {value} has {decimals} decimal places; at most {max_decimals} are "
                         "kept exactly (numeric(20, 10) for prices and for each request's cost, which "
                         "divides a per-1k price by 1000), and a price is never rounded")
    if price >= _LIMIT:
        raise PriceError(f"{where}: {value} has more than {MAX_INTEGER_DIGITS} digits before the decimal "
                         "point; the catalog keeps at most that many (numeric(20, 10))")
    return price


def parse_instant(value: Any, where: str) -> datetime:
    """An RFC 3339 instant with its UTC offset (`2026-12-01T00:00:00Z`), as a UTC datetime."""
    if isinstance(value, datetime):
        instant = value
    elif isinstance(value, date) or not isinstance(value, str):
        raise PriceError(f"{where}: effective_from must be an RFC 3339 instant such as 2026-12-01T00:00:00Z")
    else:
        try:
            instant = datetime.fromisoformat(value)
        except ValueError as exc:
            raise PriceError(f"{where}: effective_from {value!r} is not an RFC 3339 instant "
                             "such as 2026-12-01T00:00:00Z") from exc
    if instant.tzinfo is None:
        raise PriceError(f"{where}: effective_from needs its UTC offset, e.g. 2026-12-01T00:00:00Z")
    instant = instant.astimezone(UTC)
    if instant <= EPOCH:
        raise PriceError(f"{where}: effective_from must be after 1970-01-01T00:00:00Z")
    return instant


def parse_prices(raw: dict[str, Any], where: str, *, effective_from: datetime = EPOCH,
                 per_image: Decimal | None = None) -> Prices:
    """One price set: `input_per_1k` and `output_per_1k` are required (a missing price is an
    error, never free); the cache prices default to the input price, the reasoning price to the
    output price, and `per_image` to `per_image` (the route's own, for a dated set)."""
    if raw.get("input_per_1k") is None or raw.get("output_per_1k") is None:
        # An unpriced model is an error, never $0 (docs/architecture.md §2.5).
        raise PriceError(f"{where}: input_per_1k and output_per_1k are required")
    given = {key: decimal_price(raw[key], f"{where}.{key}", MAX_PER_1K_DECIMALS)
             for key in TOKEN_KEYS if raw.get(key) is not None}
    image = decimal_price(raw["per_image"], f"{where}.per_image") if raw.get("per_image") is not None \
        else per_image
    return Prices(
        input_per_1k=given["input_per_1k"], output_per_1k=given["output_per_1k"],
        cached_input_per_1k=given.get("cached_input_per_1k", given["input_per_1k"]),
        cache_write_per_1k=given.get("cache_write_per_1k", given["input_per_1k"]),
        reasoning_per_1k=given.get("reasoning_per_1k", given["output_per_1k"]),
        per_image=image, effective_from=effective_from)


def route_timeline(raw: dict[str, Any], where: str) -> tuple[Prices, ...]:
    """A route's prices in order of their start: its own keys (in effect since ever), then each
    entry of its `prices` list from its `effective_from`."""
    base = parse_prices(raw, where)
    dated = raw.get("prices") or []
    if not isinstance(dated, list):
        raise PriceError(f"{where}.prices: must be a list of dated price sets")
    timeline = [base]
    for k, entry in enumerate(dated):
        at = f"{where}.prices[{k}]"
        if not isinstance(entry, dict) or "effective_from" not in entry:
            raise PriceError(f"{at}: effective_from is required")
        timeline.append(parse_prices(entry, at, effective_from=parse_instant(entry["effective_from"], at),
                                     per_image=base.per_image))
    timeline.sort(key=lambda p: p.effective_from)
    for earlier, later in zip(timeline, timeline[1:], strict=False):
        if earlier.effective_from == later.effective_from:
            raise PriceError(f"{where}.prices: two price sets start at {later.effective_from.isoformat()}")
    return tuple(timeline)


def in_effect(timeline: tuple[Prices, ...], at: datetime) -> Prices:
    """The price set in effect at `at` (the earliest one before the first start)."""
    current = timeline[0]
    for prices in timeline[1:]:
        if prices.effective_from > at:
            break
        current = prices
    return current


def history_changes(stored: list[Prices], timeline: tuple[Prices, ...],
                    now: datetime) -> tuple[list[datetime], list[Prices]]:
    """What a catalog sync at `now` changes in a route's stored price history (oldest first) for
    the config file's `timeline`: the starts of the stored rows to delete, and the rows to add.

    Never rewrites the past (docs/pricing.md §2): prices that have not taken effect are the file's
    (stale ones go, identical ones stay untouched); a row that has taken effect is never changed or
    deleted, and none is added before `now` except on the route's first sync, which records the
    whole configured timeline; if the file's price in effect now differs from the last stored one
    that took effect, the file's takes effect at `now`."""
    taken = [p for p in stored if p.effective_from <= now]
    coming = [p for p in timeline if p.effective_from > now]
    pending = [p for p in stored if p.effective_from > now]
    stale = [p.effective_from for p in pending
             if not any(p.effective_from == c.effective_from and p.same_prices(c) for c in coming)]
    kept = {p.effective_from for p in pending} - set(stale)
    added = [p for p in timeline if p.effective_from <= now] if not taken else []
    current = in_effect(timeline, now)
    if taken and not current.same_prices(taken[-1]):
        added.append(replace(current, effective_from=now))
    added += [p for p in coming if p.effective_from not in kept]
    return stale, added


def of_candidate(candidate: Any) -> Prices:
    """The prices a route candidate (`RouteCandidate`) carries as decimals, each empty class price
    at its default: the input price for cache reads and writes, the output price for reasoning."""

    def field(name: str) -> str:
        return str(getattr(candidate, name, "") or "")

    input_price = Decimal(field("input_per_1k") or "0")
    output_price = Decimal(field("output_per_1k") or "0")
    return Prices(
        input_per_1k=input_price, output_per_1k=output_price,
        cached_input_per_1k=Decimal(field("cached_input_per_1k") or input_price),
        cache_write_per_1k=Decimal(field("cache_write_per_1k") or input_price),
        reasoning_per_1k=Decimal(field("reasoning_per_1k") or output_price),
        per_image=Decimal(field("per_image")) if field("per_image") else None)
