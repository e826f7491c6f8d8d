"""The in-memory catalog and candidate selection; pure logic, no I/O."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str
from services.core.prices import Prices, in_effect, of_candidate

# How many price periods a catalog keeps built: the current one, and the one before for requests
# that arrived just before a price change and are resolved just after it.
_PERIODS_KEPT = 3

# Which model types serve an endpoint's kind: legacy completions also run on chat models (as
# vLLM and other OpenAI-compatible servers allow); adapters refuse where the provider cannot.
SERVES: dict[str, tuple[str, ...]] = {"completion": ("completion", "chat")}


def now_utc() -> datetime:
    return datetime.now(UTC)


def priced(candidate: route_pb2.RouteCandidate, timeline: tuple[Prices, ...],
           at: datetime) -> route_pb2.RouteCandidate:
    """A copy of `candidate` carrying the prices of `timeline` in effect at `at`, with the instant
    the next ones start (docs/pricing.md)."""
    current = in_effect(timeline, at)
    following = next((p for p in timeline if p.effective_from > at), None)
    result = route_pb2.RouteCandidate()
    result.CopyFrom(candidate)
    result.input_per_1k = decimal_str(current.input_per_1k)
    result.output_per_1k = decimal_str(current.output_per_1k)
    result.cached_input_per_1k = decimal_str(current.cached_input_per_1k)
    result.cache_write_per_1k = decimal_str(current.cache_write_per_1k)
    result.reasoning_per_1k = decimal_str(current.reasoning_per_1k)
    result.per_image = decimal_str(current.per_image) if current.per_image is not None else ""
    result.prices_effective_from.FromDatetime(current.effective_from)
    if following is not None:
        result.next_prices_from.FromDatetime(following.effective_from)
    return result


def supported_parameters(kind: str, model_type: str) -> tuple[str, ...]:
    """The request parameters the first route's provider honours (chat models; OpenRouter's
    `supported_parameters`). The adapters declare them; this reads their static tables."""
    if model_type != "chat":
        return ()
    from services.adapters.capabilities import supported_chat_parameters

    return supported_chat_parameters(kind)


def pricing(candidate: route_pb2.RouteCandidate) -> model_pb2.ModelPricing:
    """A route's prices in effect, as `GET /v1/models` shows them."""
    prices = of_candidate(candidate)
    return model_pb2.ModelPricing(
        input_per_1k=candidate.input_per_1k, output_per_1k=candidate.output_per_1k,
        per_image=candidate.per_image or None,
        cached_input_per_1k=decimal_str(prices.cached_input_per_1k),
        cache_write_per_1k=decimal_str(prices.cache_write_per_1k),
        reasoning_per_1k=decimal_str(prices.reasoning_per_1k),
    )


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """A public model id and its candidates in order; `timelines`, when given, holds each
    candidate's price sets oldest first (services/core/prices.py), else a candidate's own prices
    stand for ever."""

    id: str
    type: str
    context_window: int
    created: int
    candidates: tuple[route_pb2.RouteCandidate, ...]
    timelines: tuple[tuple[Prices, ...], ...] = ()

    def at(self, instant: datetime) -> CatalogModel:
        """The model with each candidate priced as in effect at `instant`."""
        if not self.timelines:
            return self
        candidates = zip(self.candidates, self.timelines, strict=True)
        return CatalogModel(self.id, self.type, self.context_window, self.created,
                            tuple(priced(c, timeline, instant) for c, timeline in candidates))

    def to_proto(self) -> model_pb2.Model:
        first = self.candidates[0]
        return model_pb2.Model(
            id=self.id,
            object="model",
            created=self.created,
            owned_by=first.endpoint.provider,
            type=self.type,
            context_window=self.context_window,
            max_output_tokens=first.max_output_tokens,
            pricing=pricing(first),
            supported_parameters=supported_parameters(first.endpoint.kind, self.type),
        )


class Catalog:
    """Models by id: the configured ids and every "<provider>/<upstream model>" route id.

    Candidates carry the prices in effect at the instant they are resolved for. The models of a
    price period (between two consecutive price starts of any route) are built once, on the first
    request of the period, from memory: a price change takes effect at its instant with no reload
    and no database read (docs/pricing.md §3). `clock` is injectable for tests."""

    def __init__(self, models: list[CatalogModel], providers: list[model_pb2.Provider],
                 clock: Callable[[], datetime] = now_utc) -> None:
        self._sources = tuple(models)
        self._clock = clock
        self._starts = sorted({p.effective_from for m in models for line in m.timelines for p in line})
        self._periods: dict[int, dict[str, CatalogModel]] = {}
        self.providers = tuple(providers)

    def _models(self, at: datetime | None = None) -> dict[str, CatalogModel]:
        """The models priced for `at` (default: now), built once per price period."""
        instant = at if at is not None else self._clock()
        period = bisect.bisect_right(self._starts, instant)
        models = self._periods.get(period)
        if models is None:
            models = self._build(instant)
            while len(self._periods) >= _PERIODS_KEPT:
                del self._periods[min(self._periods)]
            self._periods[period] = models
        return models

    def _build(self, instant: datetime) -> dict[str, CatalogModel]:
        sources = [m.at(instant) for m in self._sources]
        built: dict[str, CatalogModel] = {}
        for model in sources:
            built[model.id] = model
        for model in sources:
            for candidate in model.candidates:
                route_id = f"{candidate.endpoint.provider}/{candidate.upstream_model}"
                if route_id not in built:
                    direct = route_pb2.RouteCandidate()
                    direct.CopyFrom(candidate)
                    direct.public_model = route_id
                    built[route_id] = CatalogModel(route_id, model.type, model.context_window, model.created,
                                                   (direct,))
        return built

    def models(self) -> list[CatalogModel]:
        return list(self._models().values())

    def knows(self, model_id: str) -> bool:
        """Whether `model_id` is a model id of the catalog."""
        return model_id in self._models()

    def get(self, model_id: str, at: datetime | None = None) -> CatalogModel:
        model = self._models(at).get(model_id)
        if model is None:
            raise GatewayError(
                Reason.MODEL_NOT_FOUND,
                f"The model {quote(model_id, '`')} does not exist or you do not have access to it.",
                param="model",
            )
        return model

    def resolve(self, model_id: str, fallbacks: list[str], model_type: str,
                at: datetime | None = None) -> list[route_pb2.RouteCandidate]:
        """Candidates for `model_id`, then for each fallback model, without repeats, priced as in
        effect at `at` (default: now)."""
        return [c for group in self.resolve_groups(model_id, fallbacks, model_type, at) for c in group]

    def resolve_groups(self, model_id: str, fallbacks: list[str], model_type: str,
                       at: datetime | None = None) -> list[list[route_pb2.RouteCandidate]]:
        """`resolve`'s candidates grouped by model: the requested model's, then each fallback's."""
        if not model_id:
            raise GatewayError(Reason.INVALID_REQUEST, "you must provide a model parameter", param="model")
        groups: list[list[route_pb2.RouteCandidate]] = []
        seen: set[tuple[str, str]] = set()
        for index, wanted in enumerate([model_id, *fallbacks]):
            model = self.get(wanted, at)
            if model_type and model.type not in SERVES.get(model_type, (model_type,)):
                raise GatewayError(
                    Reason.INVALID_REQUEST,
                    f"The model {quote(wanted, '`')} is a {model.type} model and cannot serve this endpoint.",
                    param="model" if index == 0 else "models",
                )
            group: list[route_pb2.RouteCandidate] = []
            for candidate in model.candidates:
                key = (candidate.endpoint.provider, candidate.upstream_model)
                if key not in seen:
                    seen.add(key)
                    group.append(candidate)
            groups.append(group)
        return groups
