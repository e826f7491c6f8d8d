"""CacheService: `POST /v1/cache/invalidate` (docs/limits.md, "Response cache"), for admins
(`write:cache`). The caller's organization by default; another organization, or every one when a
platform admin names none, needs `admin:platform` (docs/reference.md §4)."""

from __future__ import annotations

from typing import Any

from aggregator.limits.v1 import cache_service_pb2, cache_service_pb2_grpc
from services.auth.audit import AuditTrail, audited_check, authorized
from services.auth.audit_repository import actor_of
from services.auth.authenticator import Authenticator
from services.auth.permissions import ADMIN_PLATFORM, WRITE_CACHE, requires
from services.auth.validation import key_id
from services.core.errors import GatewayError, Reason, quote
from services.core.rpc import rpc_method
from services.core.server import Registration
from services.limits.response_cache import ResponseCache


class CacheServicer(cache_service_pb2_grpc.CacheServiceServicer):
    """CacheService: forgetting cached answers."""

    def __init__(self, authenticator: Authenticator, cache: ResponseCache,
                 trail: AuditTrail | None = None) -> None:
        self._authenticator = authenticator
        self._cache = cache
        self._trail = trail

    @rpc_method
    @requires(WRITE_CACHE)
    async def InvalidateCache(self, request: cache_service_pb2.InvalidateCacheRequest,
                              context: Any) -> cache_service_pb2.InvalidateCacheResponse:
        """Deletes the cached answers the request names; answers how many."""
        caller = await authorized(self._authenticator, self._trail, context)
        platform = ADMIN_PLATFORM in caller.permissions
        organization: str | None = caller.organization_id
        if request.organization_id and request.organization_id != caller.organization_id:
            audited_check(self._trail, caller, context, ADMIN_PLATFORM)
            organization = key_id(request.organization_id)
            if organization is None:
                raise GatewayError(Reason.INVALID_REQUEST, f"organization_id {quote(request.organization_id)}"
                                   " is not an organization id.", param="organization_id")
        elif not request.organization_id and platform:
            organization = None  # a platform admin's scope is the whole gateway
        if len(request.model) > 256:
            raise GatewayError(Reason.INVALID_REQUEST, "model is too long.", param="model")
        deleted = await self._cache.invalidate(organization_id=organization, model=request.model or None)
        if self._trail is not None:
            self._trail.record_soon(action="cache.invalidate", actor=actor_of(caller),
                                    organization_id=caller.organization_id, target=organization or "*",
                                    details={"model": request.model or None, "deleted": deleted})
        return cache_service_pb2.InvalidateCacheResponse(object="cache.invalidation", deleted=deleted)


def cache_registration(authenticator: Authenticator, cache: ResponseCache,
                       trail: AuditTrail | None = None) -> Registration:
    return Registration(cache_service_pb2_grpc.add_CacheServiceServicer_to_server,
                        CacheServicer(authenticator, cache, trail),
                        cache_service_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name)
