"""The check every gRPC server runs before a servicer sees a call (docs/architecture.md §2.10):
internal services answer only callers holding the service token (service_token.py).

A refused call never reaches the servicer, and its request is not even decoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.core.errors import GatewayError, Reason
from services.core.rpc import abort
from services.core.service_token import SERVICE_TOKEN_KEY, is_public, token_matches


def _denied() -> GatewayError:
    return GatewayError(Reason.SERVICE_UNAUTHENTICATED,
                        f"This service is internal: calls need the deployment's service token "
                        f"({SERVICE_TOKEN_KEY}).")


def _ignore(_: bytes) -> None:
    return None


def refusing(handler: grpc.RpcMethodHandler, error: GatewayError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers `error` without decoding the request."""

    async def unary(request: Any, context: Any) -> Any:
        await abort(context, error)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await abort(context, error)
        yield  # never reached: makes this an async generator, as a streaming handler must be

    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, _ignore, serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, _ignore, serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, _ignore, serializer)
    return grpc.stream_stream_rpc_method_handler(streaming, _ignore, serializer)


class ServerGuard(grpc.aio.ServerInterceptor):
    """Refuses calls to internal services without the service token (UNAUTHENTICATED)."""

    def __init__(self, service_token: str) -> None:
        self._token = service_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or is_public(details.method):
            return handler
        if token_matches(self._token, details.invocation_metadata):
            return handler
        return refusing(handler, _denied())
