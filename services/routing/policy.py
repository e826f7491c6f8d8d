"""Provider preferences (OpenRouter's `provider` object) and the `:floor` / `:nitro` suffixes applied
to a model's candidates; pure logic, no I/O (docs/routing.md §2, §3).

Candidates come grouped by model (the requested model's routes, then each fallback model's); every
rule works inside a group, so fallback models stay fallbacks. A preference nothing can satisfy is a
400 that says why.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aggregator.routing.v1 import route_pb2
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str
from services.routing.health import Health, endpoint_id

SORTS = ("price", "latency", "throughput")
SUFFIXES = {":floor": "price", ":nitro": "throughput"}
_MILLION_PER_1K = Decimal(1000)  # max_price is USD per 1M tokens; candidates carry USD per 1k
_KNOWN = frozenset({"order", "only", "ignore", "allow_fallbacks", "sort", "max_price", "require_parameters"})


def _bad(param: str, message: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=f"provider.{param}")


@dataclass(frozen=True, slots=True)
class Preferences:
    """A request's provider preferences, validated."""

    order: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    allow_fallbacks: bool = True
    sort: str = ""
    max_prompt: Decimal | None = None  # USD per 1M prompt tokens
    max_completion: Decimal | None = None  # USD per 1M completion tokens
    require_parameters: bool = False


def _names(raw: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = raw[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(name, f"provider.{name} must be an array of provider names.")
    return tuple(value)


def _flag(raw: Mapping[str, Any], name: str) -> bool:
    if not isinstance(raw[name], bool):
        raise _bad(name, f"provider.{name} must be a boolean.")
    return bool(raw[name])


def _price(raw: Mapping[str, Any], name: str) -> Decimal | None:
    if name not in raw or raw[name] is None:
        return None
    try:
        # A JSON number reaches us as a float: its shortest repr is the number the client wrote.
        value = Decimal(repr(raw[name])) if isinstance(raw[name], float) else Decimal(str(raw[name]))
    except InvalidOperation:
        value = Decimal(-1)
    if isinstance(raw[name], bool) or not value.is_finite() or value < 0:
        raise _bad(f"max_price.{name}", f"provider.max_price.{name} must be a non-negative number "
                                        "(USD per million tokens).")
    return value


def parse(raw: Mapping[str, Any] | None, suffix_sort: str = "") -> Preferences:
    """Validates the `provider` object (as JSON values); `suffix_sort` is the sort a model-id suffix
    asks for, which an explicit `sort` overrides."""
    raw = {k: v for k, v in (raw or {}).items() if v is not None}  # null: as if absent
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise _bad(unknown[0], f"Unrecognized provider preference {quote(unknown[0])}; supported: "
                               f"{', '.join(sorted(_KNOWN))}.")
    sort = raw.get("sort", suffix_sort) or suffix_sort
    if sort not in ("", *SORTS):
        raise _bad("sort", f"provider.sort must be one of {', '.join(SORTS)}.")
    max_price = raw.get("max_price") or {}
    if not isinstance(max_price, dict):
        raise _bad("max_price", "provider.max_price must be an object with `prompt` and/or `completion`.")
    extra = sorted(set(max_price) - {"prompt", "completion"})
    if extra:
        raise _bad(f"max_price.{extra[0]}", f"provider.max_price.{extra[0]} is not supported; "
                                            "use `prompt` and `completion` (USD per million tokens).")
    return Preferences(
        order=_names(raw, "order") if "order" in raw else (),
        only=_names(raw, "only") if "only" in raw else None,
        ignore=_names(raw, "ignore") if "ignore" in raw else (),
        allow_fallbacks=_flag(raw, "allow_fallbacks") if "allow_fallbacks" in raw else True,
        sort=sort,
        max_prompt=_price(max_price, "prompt"),
        max_completion=_price(max_price, "completion"),
        require_parameters=_flag(raw, "require_parameters") if "require_parameters" in raw else False,
    )


def split_suffix(model_id: str) -> tuple[str, str]:
    """`("gpt-4o", "price")` for "gpt-4o:floor"; the id unchanged and "" without a suffix."""
    for suffix, sort in SUFFIXES.items():
        if model_id.endswith(suffix) and len(model_id) > len(suffix):
            return model_id[: -len(suffix)], sort
    return model_id, ""


def _per_million(per_1k: str) -> Decimal:
    return Decimal(per_1k or "0") * _MILLION_PER_1K


def _allowed(c: route_pb2.RouteCandidate, prefs: Preferences) -> bool:
    name = c.endpoint.provider
    return (prefs.only is None or name in prefs.only) and name not in prefs.ignore


def _within(c: route_pb2.RouteCandidate, prefs: Preferences) -> bool:
    return ((prefs.max_prompt is None or _per_million(c.input_per_1k) <= prefs.max_prompt)
            and (prefs.max_completion is None or _per_million(c.output_per_1k) <= prefs.max_completion))


def weighted_order(candidates: Sequence[route_pb2.RouteCandidate],
                   rng: Callable[[], float] = random.random) -> list[route_pb2.RouteCandidate]:
    """The weighted candidates drawn by weight without replacement (the first is candidate i with
    probability weight_i / total; Efraimidis-Spirakis keys), then the unweighted in their order."""
    weighted = [c for c in candidates if c.weight > 0]
    keyed = sorted(weighted, key=lambda c: math.log(max(rng(), 1e-300)) / c.weight, reverse=True)
    return keyed + [c for c in candidates if c.weight <= 0]


def _sort_key(sort: str, health: Mapping[str, Health]) -> Callable[[route_pb2.RouteCandidate], Any]:
    def key(c: route_pb2.RouteCandidate) -> Any:
        h = health.get(endpoint_id(c), Health())
        if sort == "price":
            return Decimal(c.input_per_1k or "0") + Decimal(c.output_per_1k or "0")
        if sort == "latency":  # unmeasured endpoints after the measured ones
            return (h.ttft_s is None, round(h.ttft_s or 0.0, 3))
        return (h.tokens_per_s is None, -round(h.tokens_per_s or 0.0, 1))
    return key


def _balanced(group: list[route_pb2.RouteCandidate], prefs: Preferences, health: Mapping[str, Health],
              rng: Callable[[], float]) -> list[route_pb2.RouteCandidate]:
    """A model's candidates in the order to try: sorted when asked, ties (or, unsorted, the weighted
    routes, at the first one's place) shared by weight."""
    if not prefs.sort:
        if not any(c.weight > 0 for c in group):
            return group
        at = next(i for i, c in enumerate(group) if c.weight > 0)
        rest = [c for c in group[at:] if c.weight <= 0]
        return group[:at] + weighted_order([c for c in group[at:] if c.weight > 0], rng) + rest
    key = _sort_key(prefs.sort, health)
    ordered: list[route_pb2.RouteCandidate] = []
    for c in sorted(group, key=key):
        if ordered and key(ordered[-1]) == key(c):
            continue
        ordered += weighted_order([d for d in group if key(d) == key(c)], rng)
    return ordered


def apply(model_id: str, groups: Sequence[list[route_pb2.RouteCandidate]], prefs: Preferences,
          health: Mapping[str, Health], parameters: Sequence[str] = (),
          supported: Callable[[str], Sequence[str]] = lambda kind: (),
          rng: Callable[[], float] = random.random) -> list[route_pb2.RouteCandidate]:
    """The candidates of every model group filtered and ordered by `prefs`; a 400 when none is left."""
    result: list[route_pb2.RouteCandidate] = []
    everything = [c for g in groups for c in g]
    for group in groups:
        kept = [c for c in group if _allowed(c, prefs) and _within(c, prefs)]
        if prefs.require_parameters:
            kept = [c for c in kept if set(parameters) <= set(supported(c.endpoint.kind))]
        kept = _balanced(kept, prefs, health, rng)
        if prefs.order:
            named = [c for name in prefs.order for c in kept if c.endpoint.provider == name]
            kept = named + ([c for c in kept if c.endpoint.provider not in prefs.order]
                            if prefs.allow_fallbacks else [])
        elif not prefs.allow_fallbacks:
            kept = kept[:1]
        result += kept
    if not result:
        raise _unsatisfiable(model_id, everything, prefs, parameters, supported)
    return result


def _unsatisfiable(model_id: str, candidates: list[route_pb2.RouteCandidate], prefs: Preferences,
                   parameters: Sequence[str], supported: Callable[[str], Sequence[str]]) -> GatewayError:
    """The 400 naming the first preference that left no candidate."""
    model = quote(model_id, "`")
    providers = ", ".join(sorted({c.endpoint.provider for c in candidates}))
    left = [c for c in candidates if _allowed(c, prefs)]
    if not left:
        param = "only" if prefs.only is not None else "ignore"
        return _bad(param, f"No provider of the model {model} is left by provider.only and provider.ignore "
                           f"(the model's providers: {providers}).")
    priced = [c for c in left if _within(c, prefs)]
    if not priced:
        cheapest = min(left, key=lambda c: (_per_million(c.input_per_1k), _per_million(c.output_per_1k)))
        prompt = decimal_str(_per_million(cheapest.input_per_1k))
        completion = decimal_str(_per_million(cheapest.output_per_1k))
        return _bad("max_price", f"No provider of the model {model} is priced within provider.max_price; "
                                 f"the cheapest charges ${prompt} prompt and ${completion} completion per "
                                 "million tokens.")
    able = [c for c in priced if set(parameters) <= set(supported(c.endpoint.kind))]
    if prefs.require_parameters and not able:
        return _bad("require_parameters", f"No provider of the model {model} supports every parameter of the "
                                          f"request ({', '.join(sorted(parameters))}).")
    return _bad("order", f"None of the providers in provider.order serves the model {model} and "
                         f"provider.allow_fallbacks is false (the model's providers: {providers}).")
