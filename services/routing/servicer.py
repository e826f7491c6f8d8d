"""RoutingService: answers candidates and the catalog from memory; reloads on `catalog.changed`."""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

import asyncpg

from aggregator.routing.v1 import routing_service_pb2 as pb
from aggregator.routing.v1 import routing_service_pb2_grpc
from services.core.rpc import rpc_method
from services.routing.catalog import Catalog
from services.routing.repository import load_catalog

log = logging.getLogger(__name__)
CATALOG_CHANGED_SUBJECT = "catalog.changed"


class RoutingServicer(routing_service_pb2_grpc.RoutingServiceServicer):
    """Serves the catalog loaded from PostgreSQL; no database access per request."""

    def __init__(self, pool: asyncpg.Pool, nc: Any | None = None) -> None:
        self._pool = pool
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
        at = request.at.ToDatetime(tzinfo=UTC) if request.HasField("at") else None
        candidates = self._catalog.resolve(request.model, list(request.fallback_models), request.model_type,
                                           at)
        return pb.ResolveRouteResponse(candidates=candidates)

    @rpc_method
    async def ListCatalogModels(
        self, request: pb.ListCatalogModelsRequest, context: Any
    ) -> pb.ListCatalogModelsResponse:
        return pb.ListCatalogModelsResponse(models=[m.to_proto() for m in self._catalog.models()])

    @rpc_method
    async def ListCatalogProviders(
        self, request: pb.ListCatalogProvidersRequest, context: Any
    ) -> pb.ListCatalogProvidersResponse:
        return pb.ListCatalogProvidersResponse(providers=self._catalog.providers)
