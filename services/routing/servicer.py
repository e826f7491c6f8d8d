"""RoutingService: answers candidates and the catalog from memory; reloads on `catalog.changed`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC
from typing import Any

import asyncpg
from google.protobuf import json_format

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2, routing_service_pb2_grpc
from aggregator.routing.v1 import routing_service_pb2 as pb
from services.core.errors import GatewayError
from services.core.rpc import rpc_method
from services.routing import policy
from services.routing.catalog import Catalog, pricing, supported_parameters
from services.routing.health import Health, RouteHealth, endpoint_id
from services.routing.repository import load_catalog

log = logging.getLogger(__name__)
CATALOG_CHANGED_SUBJECT = "catalog.changed"


class RoutingServicer(routing_service_pb2_grpc.RoutingServiceServicer):
    """Serves the catalog loaded from PostgreSQL; no database access per request. With `health`
    (Redis), `sort: latency|throughput` and `:nitro` use the measured figures, and providers show
    their health (docs/routing.md §4)."""

    def __init__(self, pool: asyncpg.Pool, nc: Any | None = None, health: RouteHealth | None = None) -> None:
        self._pool = pool
        self._health = health
        self._nc = nc
        self._catalog = Catalog([], [])
        self._subscription: Any = None

    async def start(self) -> None:
        await self.reload()
        if self._nc is not None:
            self._subscription = await self._nc.subscribe(CATALOG_CHANGED_SUBJECT, cb=self._on_changed)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def reload(self) -> None:
        self._catalog = await load_catalog(self._pool)
        log.info("catalog loaded: %d model ids", len(self._catalog.models()))

    async def _on_changed(self, _msg: Any) -> None:
        await self.reload()

    @rpc_method
    async def ResolveRoute(self, request: pb.ResolveRouteRequest, context: Any) -> pb.ResolveRouteResponse:
        """The candidates of the model and its fallbacks, filtered and ordered by the request's
        provider preferences and model-id suffix (docs/routing.md §2)."""
        at = request.at.ToDatetime(tzinfo=UTC) if request.HasField("at") else None
        model_id, suffix_sort = policy.split_suffix(request.model)
        if suffix_sort and self._catalog.knows(request.model):  # an id that ends so itself
            model_id, suffix_sort = request.model, ""
        raw = json_format.MessageToDict(request.provider) if request.HasField("provider") else None
        prefs = policy.parse(raw, suffix_sort)
        groups = self._catalog.resolve_groups(model_id, list(request.fallback_models), request.model_type, at)
        health = {}
        if prefs.sort in ("latency", "throughput") and self._health is not None:
            health = await self._health.snapshot(endpoint_id(c) for g in groups for c in g)
        candidates = policy.apply(model_id, groups, prefs, health, list(request.parameters),
                                  lambda kind: supported_parameters(kind, "chat"))
        return pb.ResolveRouteResponse(candidates=candidates)

    @rpc_method
    async def ListCatalogModels(
        self, request: pb.ListCatalogModelsRequest, context: Any
    ) -> pb.ListCatalogModelsResponse:
        """The catalog; with `id`, that model alone with its endpoints' health."""
        if not request.id:
            return pb.ListCatalogModelsResponse(models=[m.to_proto() for m in self._catalog.models()])
        try:
            model = self._catalog.get(request.id)
        except GatewayError:
            return pb.ListCatalogModelsResponse()
        shown = model.to_proto()
        health = await self._health_of(model.candidates)
        for c in model.candidates:
            shown.endpoints.add(provider=c.endpoint.provider, model=c.upstream_model, pricing=pricing(c),
                                weight=c.weight, health=health[endpoint_id(c)])
        return pb.ListCatalogModelsResponse(models=[shown])

    async def _health_of(
        self, candidates: Iterable[route_pb2.RouteCandidate]
    ) -> dict[str, model_pb2.ProviderHealth]:
        """The endpoints' health as the API shows it (closed and unmeasured without Redis)."""
        endpoints = [endpoint_id(c) for c in candidates]
        read = await self._health.snapshot(endpoints) if self._health is not None else {}
        return {e: shown_health(read.get(e, Health())) for e in endpoints}

    @rpc_method
    async def ListCatalogProviders(
        self, request: pb.ListCatalogProvidersRequest, context: Any
    ) -> pb.ListCatalogProvidersResponse:
        """The providers, each with its endpoint's breaker and measured figures (docs/routing.md §4)."""
        routes = {c.endpoint.provider: c for m in self._catalog.models() for c in m.candidates}
        health = await self._health_of(routes.values())
        providers = []
        for provider in self._catalog.providers:
            shown = model_pb2.Provider()
            shown.CopyFrom(provider)
            route = routes.get(provider.id)
            shown.health.CopyFrom(health[endpoint_id(route)] if route is not None else shown_health(Health()))
            providers.append(shown)
        return pb.ListCatalogProvidersResponse(providers=providers)


def shown_health(h: Health) -> model_pb2.ProviderHealth:
    """A provider endpoint's health as the API shows it: milliseconds, rounded figures."""
    return model_pb2.ProviderHealth(
        circuit=h.circuit, consecutive_failures=h.failures,
        time_to_first_token_ms=None if h.ttft_s is None else round(h.ttft_s * 1000, 1),
        time_to_first_token_p95_ms=None if h.ttft_p95_s is None else round(h.ttft_p95_s * 1000, 1),
        tokens_per_second=None if h.tokens_per_s is None else round(h.tokens_per_s, 1),
        error_rate=None if h.error_rate is None else round(h.error_rate, 4))
