"""The service credential: what internal RPCs require (docs/architecture.md §2.10).

The services' own port serves the internal services too (AuthService, RoutingService,
AdapterService, BillingService), and any local process can reach it. So a call to a service that
is not public needs metadata `x-aggregator-service-token`: an HMAC of a fixed label keyed by the
server secret (`AGGREGATOR_SECRET`), which every process of a deployment already shares and no
client ever sees. Remote channels add it (`token_interceptors`, used by
`services/runtime/topology.py`); servers check it in constant time (`services/core/server_guard.py`).
In-process calls pass no server and need none.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import grpc

SERVICE_TOKEN_KEY = "x-aggregator-service-token"
_LABEL = b"aggregator service token v1"

# The services clients may call, through Envoy's public listener or on the services' port; they
# authenticate callers with API keys themselves. Every other service is internal.
PUBLIC_GRPC_SERVICES = (
    "aggregator.openai.v1.OpenAIService",
    "aggregator.openai.v1.InferenceService",
    "aggregator.auth.v1.ApiKeyService",
    "aggregator.tenancy.v1.OrganizationService",
    "aggregator.tenancy.v1.UserService",
    "aggregator.auth.v1.SessionService",
    "aggregator.auth.v1.AuditLogService",
    "aggregator.auth.v1.OAuthService",
    "aggregator.limits.v1.CacheService",
    "aggregator.limits.v1.QuotaService",
    "aggregator.limits.v1.RateLimitRuleService",
    "aggregator.analytics.v1.AnalyticsService",
    "aggregator.billing.v1.BillingAccountService",
    "aggregator.ops.v1.OpsService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_PUBLIC = frozenset(PUBLIC_GRPC_SERVICES)


def derive_service_token(secret: bytes) -> str:
    """The deployment's service token: derived, so that the secret itself never travels."""
    return hmac.new(secret, _LABEL, hashlib.sha256).hexdigest()


def is_public(method: str) -> bool:
    """Whether a full method name (`/package.Service/Method`) belongs to a public service."""
    return method.lstrip("/").partition("/")[0] in _PUBLIC


def token_matches(expected: str, metadata: Any) -> bool:
    """Whether invocation metadata carries `expected` (compared in constant time)."""
    for key, value in metadata or ():
        if key == SERVICE_TOKEN_KEY:
            given = value if isinstance(value, bytes) else str(value).encode()
            return hmac.compare_digest(given, expected.encode())
    return False


class _WithToken:
    """Adds the service token to the metadata of a call."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(SERVICE_TOKEN_KEY, self._token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_WithToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_WithToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_WithToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def token_interceptors(token: str) -> list[Any]:
    """Client interceptors adding the service token to every call of a channel to another process
    of the deployment. One per call shape: a grpc.aio channel files each interceptor under the
    first shape it implements only."""
    return [_UnaryUnary(token), _UnaryStream(token), _StreamUnary(token), _StreamStream(token)]
